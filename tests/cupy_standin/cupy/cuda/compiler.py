"""cupy.cuda.compiler of the stand-in: the exception NVRTC's errors come as."""


class CompileException(Exception):
    def __init__(self, msg, source, name, options, backend="nvrtc"):
        self._msg, self.source, self.name, self.options, self.backend = msg, source, name, options, backend
        super().__init__(msg)

    def get_message(self):
        return self._msg

    def __str__(self):
        return f"{self.name} ({self.backend}): {self._msg}"

    def dump(self, f):
        f.write(f"{self.backend.upper()} compilation error: {self._msg}\n")
