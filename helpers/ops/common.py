"""What every op module shares: the `Launch` type, the checks a wrapper makes before it launches, and
their limits. One implementation, the same behaviour on both backends (a misaligned view is refused
on the CPU as on a GPU), messages that name the kernel, the argument and the fix.

    from .common import INT_MAX, Launch, check_array, check_float4, check_version, run
"""
from __future__ import annotations

from typing import NamedTuple

import ml_dtypes
import numpy as np

from ..runtime import device

INT_MAX = 2**31 - 1                 # the kernels index with 32-bit ints
SHARED_MEMORY_LIMIT = 48 * 1024     # bytes of shared memory a block may use without opting in (CUDA's default)
MAX_GRID_Y = 65535                  # blocks along a grid's y (and z) axis
WARP_SIZE = 32
FLOAT4_BYTES = 16
SCRATCH_BYTES = 32 * 4              # the `__shared__ float scratch[32]` of common.cuh's block reductions


def ceil_div(a: int, b: int) -> int:
    """Blocks needed to cover a items with b per block."""
    return -(-int(a) // int(b))


# ------------------------------------------------------------------------------------------------
# Launches
# ------------------------------------------------------------------------------------------------
class Launch(NamedTuple):
    """One checked kernel launch, not yet run. `launch()` runs it; it unpacks into what
    `device.racecheck(*launch)` and `bench.measure(name, *launch)` take."""
    fn: object          # a kernel of a loaded module (module().get_function(...))
    grid: tuple
    block: tuple
    args: tuple
    shared_mem: int = 0

    @property
    def name(self) -> str:
        return self.fn.name

    def __call__(self):
        self.fn(self.grid, self.block, self.args, shared_mem=self.shared_mem)


def run(launches: list[Launch]) -> None:
    """Run launches one after the other (a wrapper: `run(launches("forward", ...))`)."""
    for launch in launches:
        launch()


# ------------------------------------------------------------------------------------------------
# Checks
# ------------------------------------------------------------------------------------------------
def shape_of(a) -> tuple:
    """A shape as plain ints (CuPy and NumPy report theirs as different int types)."""
    return tuple(int(s) for s in a.shape)


def rows_and_channels(kernel: str, x, dtype=np.float32) -> tuple[int, int]:
    """N, C of a row-wise op's input x (..., C) of `dtype`: N = the product of the leading axes, each row C
    channels (layernorm, rmsnorm); both at least 1 and, as the kernels count them in int, below 2^31."""
    check_array(kernel, "x", x, dtype=dtype)
    shape = shape_of(x)
    if len(shape) < 1:
        raise ValueError(f"{kernel}: x must have at least one axis (the C channels), got a scalar")
    C = shape[-1]
    N = int(np.prod(shape[:-1], dtype=np.int64))
    if C < 1 or N < 1:
        raise ValueError(f"{kernel}: needs at least one row of at least one channel, got x of shape {shape}")
    check_int32(kernel, N=N, C=C)
    return N, C


def check_version(op: str, step: str, version, versions: dict) -> None:
    """`version` must be one of versions[step] (an op's VERSIONS)."""
    if step not in versions:
        raise ValueError(f"{op} has no {step!r} step; its steps are {', '.join(versions)}")
    if isinstance(version, bool) or version not in versions[step]:
        raise ValueError(f"{op}.{step}: no version {version!r}; the versions are {sorted(versions[step])}")


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


#: The storage type of the bf16 kernel versions: ml_dtypes' bfloat16 (NumPy's extension type; the CPU
#: backend and CuPy >= 14 take arrays of it for `__nv_bfloat16*`).
BF16 = np.dtype(ml_dtypes.bfloat16)


def float32_versions(table: dict) -> list[int]:
    """The versions of one step (an op's VERSIONS[step]) that take float32 arrays: all but the bf16 ones,
    whose lines start with "bf16:" (notebook 13), in order."""
    return sorted(v for v, line in table.items() if not line.startswith("bf16:"))


def bf16_versions(table: dict) -> list[int]:
    """The bf16 versions of one step, in order."""
    return sorted(v for v, line in table.items() if line.startswith("bf16:"))


def is_bf16(a) -> bool:
    return a is not None and a.dtype == BF16


def check_array(kernel: str, name: str, a, ndim: int | None = None, dtype=np.float32, shape=None) -> None:
    """A clear ValueError unless `a` is a device array with ndim dimensions (or exactly `shape`),
    the dtype, and C-contiguous memory. `None` is refused: pass a required array."""
    if a is None:
        raise ValueError(f"{kernel}: `{name}` is required" + (f", a {np.dtype(dtype).name} array of shape {shape}"
                                                              if shape is not None else ""))
    device_arrays(kernel, **{name: a})
    if shape is not None and shape_of(a) != tuple(shape):
        raise ValueError(f"{kernel}: `{name}` must have shape {tuple(shape)}, got {shape_of(a)}")
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{kernel}: `{name}` must have {ndim} dimensions, got shape {shape_of(a)}")
    if a.dtype != dtype:
        hint = (" (a bf16 array: the bf16 versions take it, their VERSIONS lines start with \"bf16:\")"
                if a.dtype == BF16 else " (use a bf16 version's float32 counterpart, or .astype(ml_dtypes.bfloat16))"
                if dtype == BF16 else "")
        raise ValueError(f"{kernel}: `{name}` must be {np.dtype(dtype).name}, got {a.dtype}{hint}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{kernel}: `{name}` must be C-contiguous (xp.ascontiguousarray)")


def address(a) -> int:
    """Where an array's data starts, for either backend's arrays (CuPy: its device pointer)."""
    interface = getattr(a, "__cuda_array_interface__", None)
    if interface is not None:
        return int(interface["data"][0])
    return int(a.__array_interface__["data"][0])


def _check_16_bytes(kernel: str, loads: str, fix: str, fallback: str, arrays: dict) -> None:
    device_arrays(kernel, **arrays)
    for name, a in arrays.items():
        if a is not None and address(a) % FLOAT4_BYTES:
            raise ValueError(f"{kernel} loads {loads}: `{name}` must start at a 16-byte aligned address, but "
                             f"it starts {address(a) % FLOAT4_BYTES} bytes past one (a view such as x[1:]?); pass a "
                             f"{fix} or use {fallback}")


def check_float4(kernel: str, fallback: str, **arrays) -> None:
    """Arrays a kernel reads or writes as float4 must start at a 16-byte aligned address (on a GPU a
    misaligned float4 stops the kernel). `fallback` says what to use instead (\"version 1\")."""
    _check_16_bytes(kernel, "float4", "fresh array (device.asarray(x.copy()))", fallback, arrays)


def check_16_byte_aligned(kernel: str, fallback: str, **arrays) -> None:
    """Arrays a kernel reads or writes 16 bytes at a time (8 bf16 values, llm.c's Packed128) must start at
    a 16-byte aligned address, as for float4 (check_float4)."""
    _check_16_bytes(kernel, "16 bytes at a time", "fresh array", fallback, arrays)


def check_multiple_of(kernel: str, what: str, value: int, k: int, why: str, fallback: str) -> None:
    """A dimension a kernel splits into groups of k (8 bf16 per 16-byte load, ...) must be a multiple of k."""
    if value % k:
        raise ValueError(f"{kernel} {why}: {what} must be a multiple of {k}, got {what}={value} (use {fallback})")


def check_multiple_of_4(kernel: str, what: str, value: int, fallback: str) -> None:
    """float4 loads along a dimension need it to be a multiple of 4."""
    if value % 4:
        raise ValueError(f"{kernel} loads float4: {what} must be a multiple of 4, got {what}={value} (use {fallback})")


def check_int32(kernel: str, **sizes) -> None:
    """Element counts a kernel indexes with int must stay below 2^31."""
    for what, size in sizes.items():
        if size > INT_MAX:
            raise ValueError(f"{kernel} indexes with 32-bit ints: {what} = {size:,} must be below 2^31 "
                             f"(split the work into smaller launches)")


def check_block(kernel: str, block_size, whole_warps: bool) -> None:
    """1..1024 threads; kernels that reduce with full-mask shuffles need whole warps."""
    if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)) or not 1 <= block_size <= 1024:
        raise ValueError(f"{kernel}: block_size must be an int between 1 and 1024 threads, got {block_size!r}")
    if whole_warps and block_size % WARP_SIZE:
        raise ValueError(f"{kernel} reduces with full-warp shuffles: block_size must be a multiple of 32, "
                         f"got {block_size}")


def check_shared_memory(kernel: str, nbytes: int, what: str, fix: str) -> None:
    """A launch may ask for at most 48 KiB of shared memory without opting in."""
    if nbytes > SHARED_MEMORY_LIMIT:
        raise ValueError(f"{kernel}: {what} needs {nbytes:,} bytes of shared memory, more than the "
                         f"{SHARED_MEMORY_LIMIT // 1024} KiB a block may use: {fix}")


def check_grid_y(kernel: str, blocks: int, what: str) -> None:
    if blocks > MAX_GRID_Y:
        raise ValueError(f"{kernel} puts {what} on the grid's y axis, which has at most {MAX_GRID_Y} blocks: "
                         f"got {blocks}")


# ------------------------------------------------------------------------------------------------
# Elementwise ops (gelu, residual): one shape of launch
# ------------------------------------------------------------------------------------------------
#: The versions of every elementwise op (gelu, residual), forward and backward alike.
ELEMENTWISE_VERSIONS = {
    1: "one element per thread (4-byte loads and stores)",
    2: "four elements per thread through float4 (16-byte loads and stores); n % 4 == 0, 16-byte aligned",
    3: "bf16: bf16 storage, float32 math, each result rounded once; eight elements per thread through one "
       "16-byte bf16x8 load/store per array; n % 8 == 0, 16-byte aligned",
}


def elementwise_launches(module, kernel: str, version: int, block_size: int, **arrays) -> list[Launch]:
    """The launch of an elementwise kernel `kernel` (arguments: the arrays in order, then n): all
    arrays of one shape; version 1 one element per thread, version 2 four through float4, version 3
    (bf16 arrays) eight through 16-byte bf16x8 loads."""
    for name, a in arrays.items():
        check_array(kernel, name, a, dtype=BF16 if version == 3 else np.float32)
    shapes = {name: shape_of(a) for name, a in arrays.items()}
    if len(set(shapes.values())) != 1:
        listed = ", ".join(f"`{name}` {shape}" for name, shape in shapes.items())
        raise ValueError(f"{kernel} works elementwise: all arrays must have the same shape, got {listed}")
    check_block(kernel, block_size, whole_warps=False)
    n = int(next(iter(arrays.values())).size)
    check_int32(kernel, n=n)
    if version == 2:
        check_multiple_of_4(kernel, "n", n, "version 1, which takes any n")
        check_float4(kernel, "version 1", **arrays)
        n //= 4  # the kernel counts float4s
    elif version == 3:
        check_multiple_of(kernel, "n", n, 8, "loads 8 bf16 at a time (16 bytes)",
                          "float32 arrays and version 1, which takes any n")
        check_16_byte_aligned(kernel, "float32 arrays and version 1", **arrays)
        n //= 8  # the kernel counts bf16x8s
    if n == 0:
        return []  # nothing to do (a grid of 0 blocks is not a valid launch)
    return [Launch(module.get_function(kernel), (ceil_div(n, block_size),), (block_size,), (*arrays.values(), n))]
