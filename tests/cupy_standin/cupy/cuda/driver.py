"""cupy.cuda.driver of the stand-in: the error a fault in a kernel comes as on a GPU."""


class CUDADriverError(RuntimeError):
    pass
