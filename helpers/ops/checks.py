"""The checks every op wrapper makes before it launches, and their limits: one implementation, the same
behaviour on both backends (a misaligned view is refused on the CPU as on a GPU), messages that name
the kernel, the argument and the fix.

    from helpers.ops.checks import INT_MAX, SHARED_MEMORY_LIMIT, check_float4, check_version, device_arrays
"""
from __future__ import annotations

from ..runtime import device

INT_MAX = 2**31 - 1                 # the kernels index with 32-bit ints
SHARED_MEMORY_LIMIT = 48 * 1024     # bytes of shared memory a block may use without opting in (CUDA's default)
FLOAT4_BYTES = 16


def address(a) -> int:
    """Where an array's data starts, for either backend's arrays (CuPy: its device pointer)."""
    interface = getattr(a, "__cuda_array_interface__", None)
    if interface is not None:
        return int(interface["data"][0])
    return int(a.__array_interface__["data"][0])


def device_arrays(kernel: str, **arrays) -> None:
    """Every argument must be an array of the active backend (None: an optional argument left out)."""
    for name, a in arrays.items():
        if a is None or isinstance(a, device.array_types()):
            continue
        hint = ("a NumPy array in host memory, but kernels run on the GPU: pass helpers.device.asarray(x)"
                if device.name == "cupy" and hasattr(a, "__array_interface__") else
                "pass helpers.device.asarray(x)")
        raise ValueError(f"{kernel}: `{name}` must be an array on the {device.name} device, got "
                         f"{type(a).__module__}.{type(a).__name__}; {hint}")


def check_float4(kernel: str, fallback: str = "version 1", **arrays) -> None:
    """Arrays a kernel reads or writes as float4 must start at a 16-byte aligned address (on a GPU a
    misaligned float4 stops the kernel). `fallback` says what to use instead."""
    device_arrays(kernel, **arrays)
    for name, a in arrays.items():
        if a is not None and address(a) % FLOAT4_BYTES:
            raise ValueError(f"{kernel} loads float4: `{name}` must start at a 16-byte aligned address, but it "
                             f"starts {address(a) % FLOAT4_BYTES} bytes past one (a view such as x[1:]?); pass a "
                             f"fresh array (device.asarray(x.copy())) or use {fallback}")


def check_multiple_of_4(kernel: str, what: str, value: int, fallback: str = "version 1") -> None:
    if value % 4:
        raise ValueError(f"{kernel} loads float4: {what} must be a multiple of 4, got {value} (use {fallback})")


def check_version(op: str, version, versions) -> None:
    if version not in versions:
        raise ValueError(f"{op}: no version {version!r}; the versions are {sorted(versions)}")
