"""cupy.cuda.runtime of the stand-in: one emulated device, chosen by GPT2_STANDIN_GPU (t4, the default,
or h100); GPT2_STANDIN_DEVICES=0 emulates a machine with CuPy but no GPU."""
from __future__ import annotations

import os

DEVICES = {
    "t4": {"name": b"Tesla T4", "totalGlobalMem": 15_843_721_216, "multiProcessorCount": 40, "clockRate": 1_590_000,
           "memoryClockRate": 5_001_000, "memoryBusWidth": 256, "l2CacheSize": 4_194_304, "major": 7, "minor": 5,
           "sharedMemPerBlock": 49_152, "sharedMemPerBlockOptin": 65_536, "regsPerBlock": 65_536,
           "regsPerMultiprocessor": 65_536, "maxThreadsPerBlock": 1024, "maxThreadsPerMultiProcessor": 1024,
           "warpSize": 32},
    "h100": {"name": b"NVIDIA H100 80GB HBM3", "totalGlobalMem": 85_029_158_912, "multiProcessorCount": 132,
             "clockRate": 1_980_000, "memoryClockRate": 2_619_000, "memoryBusWidth": 5120, "l2CacheSize": 52_428_800,
             "major": 9, "minor": 0, "sharedMemPerBlock": 49_152, "sharedMemPerBlockOptin": 232_448,
             "regsPerBlock": 65_536, "regsPerMultiprocessor": 65_536, "maxThreadsPerBlock": 1024,
             "maxThreadsPerMultiProcessor": 2048, "warpSize": 32},
}


class CUDARuntimeError(RuntimeError):
    pass


def _kind() -> str:
    kind = os.environ.get("GPT2_STANDIN_GPU", "t4").lower()
    if kind not in DEVICES:
        raise ValueError(f"GPT2_STANDIN_GPU={kind!r}: one of {', '.join(DEVICES)}")
    return kind


def getDeviceCount() -> int:
    if os.environ.get("GPT2_STANDIN_DEVICES", "1") == "0":
        raise CUDARuntimeError("cudaErrorNoDevice: no CUDA-capable device is detected")
    return 1


def _check(device: int):
    if getDeviceCount() <= device or device < 0:
        raise CUDARuntimeError("cudaErrorInvalidDevice: invalid device ordinal")


def getDeviceProperties(device: int) -> dict:
    _check(device)
    return dict(DEVICES[_kind()])


def getDevice() -> int:
    return 0


def setDevice(device: int):
    _check(device)


def memGetInfo() -> tuple[int, int]:
    from .memory import POOL
    total = getDeviceProperties(0)["totalGlobalMem"]
    return total - POOL.used_bytes(), total


def deviceSynchronize():
    pass


def runtimeGetVersion() -> int:
    return 12080


def driverGetVersion() -> int:
    return 12080
