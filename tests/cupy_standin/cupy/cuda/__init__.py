"""cupy.cuda of the stand-in: streams, events, the device, memory, the runtime, the compiler."""
from __future__ import annotations

import time

from . import _module, compiler, driver, memory, runtime  # noqa: F401
from .device import Device  # noqa: F401
from .memory import MemoryPointer, OutOfMemoryError, set_allocator  # noqa: F401


class Stream:
    """One stream: launches are synchronous, so synchronize() has nothing to wait for."""
    ptr = 0

    def __init__(self, null=False, non_blocking=False, ptds=False):
        pass

    def synchronize(self):
        pass

    def use(self):
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


Stream.null = Stream(null=True)


def get_current_stream():
    return Stream.null


class Event:
    """Records the host's clock (launches are synchronous, so that is when the work before it ended)."""

    def __init__(self, block=False, disable_timing=False, interprocess=False):
        self.time = None

    def record(self, stream=None):
        self.time = time.perf_counter()

    def synchronize(self):
        pass

    @property
    def done(self):
        return self.time is not None


def get_elapsed_time(start: Event, end: Event) -> float:
    if start.time is None or end.time is None:
        raise driver.CUDADriverError("CUDA_ERROR_INVALID_HANDLE: an event was not recorded")
    return (end.time - start.time) * 1e3


def is_available() -> bool:
    try:
        return runtime.getDeviceCount() > 0
    except runtime.CUDARuntimeError:
        return False
