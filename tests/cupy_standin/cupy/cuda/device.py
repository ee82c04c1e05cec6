"""cupy.cuda.Device of the stand-in."""
from __future__ import annotations

from . import runtime


class Device:
    def __init__(self, device=None):
        self.id = 0 if device is None else int(device)

    @property
    def compute_capability(self) -> str:
        p = runtime.getDeviceProperties(self.id)
        return f"{p['major']}{p['minor']}"

    @property
    def attributes(self) -> dict:
        p = runtime.getDeviceProperties(self.id)
        return {"MultiProcessorCount": p["multiProcessorCount"], "L2CacheSize": p["l2CacheSize"],
                "ClockRate": p["clockRate"], "MemoryClockRate": p["memoryClockRate"],
                "GlobalMemoryBusWidth": p["memoryBusWidth"], "MaxThreadsPerBlock": p["maxThreadsPerBlock"],
                "MaxSharedMemoryPerBlockOptin": p["sharedMemPerBlockOptin"], "WarpSize": p["warpSize"]}

    @property
    def mem_info(self):
        return runtime.memGetInfo()

    def synchronize(self):
        pass

    def use(self):
        """Make this the current device (the stand-in has one: device 0)."""
        if not 0 <= self.id < runtime.getDeviceCount():
            raise runtime.CUDARuntimeError(f"cudaErrorInvalidDevice: device {self.id} of {runtime.getDeviceCount()}")
        return self

    def use(self):
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
