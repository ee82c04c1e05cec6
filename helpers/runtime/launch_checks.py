"""Checks of a kernel launch against the kernel's C signature and the GPU's limits.

Run before every launch on both backends. CuPy itself passes a Python int as a 64-bit value
whatever the parameter's C type (so an `int n` reads garbage on some platforms and a `float`
parameter receives an integer's bits); here every scalar is converted to its exact C type or
refused, and every error names the parameter.
"""
from __future__ import annotations

import numbers

import ml_dtypes
import numpy as np

from .cuda_source import Kernel, Param
from .errors import LaunchError

MAX_BLOCK = (1024, 1024, 64)
MAX_THREADS_PER_BLOCK = 1024
MAX_GRID = (2**31 - 1, 65535, 65535)
MAX_DYNAMIC_SHARED = 48 * 1024
MAX_PARAM_BYTES = 4096   # CUDA's kernel parameter space (CuPy's launches stay within it)
MAX_PARAMS = 1024


def _dim3(value, what: str, kernel: Kernel) -> tuple[int, int, int]:
    items = value if isinstance(value, (tuple, list)) else (value,)
    if not 1 <= len(items) <= 3:
        raise LaunchError(f"kernel `{kernel.name}`: {what} must be an int or a tuple of 1 to 3 ints, got {value!r}")
    dims = []
    for v in items:
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (numbers.Integral, np.integer)):
            raise LaunchError(f"kernel `{kernel.name}`: {what} must hold ints, got {value!r} "
                              f"(use integer division, e.g. (n + 255) // 256)")
        if int(v) < 1:
            raise LaunchError(f"kernel `{kernel.name}`: every dimension of {what} must be at least 1, got {value!r}")
        dims.append(int(v))
    return tuple(dims + [1] * (3 - len(dims)))


def check_config(kernel: Kernel, grid, block, shared_mem):
    grid3 = _dim3(grid, "grid", kernel)
    block3 = _dim3(block, "block", kernel)
    for axis, n, limit in zip("xyz", block3, MAX_BLOCK):
        if n > limit:
            raise LaunchError(f"kernel `{kernel.name}`: block.{axis} = {n} exceeds the limit of {limit}")
    threads = block3[0] * block3[1] * block3[2]
    if threads > MAX_THREADS_PER_BLOCK:
        raise LaunchError(f"kernel `{kernel.name}`: a block of {block3} has {threads} threads; "
                          f"at most {MAX_THREADS_PER_BLOCK} are allowed")
    if kernel.max_threads is not None and threads > kernel.max_threads:
        raise LaunchError(f"kernel `{kernel.name}` is declared __launch_bounds__({kernel.max_threads}) but was "
                          f"launched with {threads} threads per block")
    for axis, n, limit in zip("xyz", grid3, MAX_GRID):
        if n > limit:
            raise LaunchError(f"kernel `{kernel.name}`: grid.{axis} = {n} exceeds the limit of {limit}")
    if isinstance(shared_mem, (bool, np.bool_)) or not isinstance(shared_mem, (numbers.Integral, np.integer)):
        raise LaunchError(f"kernel `{kernel.name}`: shared_mem must be an int number of bytes, got {shared_mem!r}")
    if not 0 <= int(shared_mem) <= MAX_DYNAMIC_SHARED:
        raise LaunchError(f"kernel `{kernel.name}`: shared_mem = {int(shared_mem)} bytes; dynamic shared memory "
                          f"must be between 0 and {MAX_DYNAMIC_SHARED} bytes (48 KiB) per block")
    return grid3, block3, int(shared_mem)


def _where(kernel: Kernel, i: int, p: Param) -> str:
    return f"kernel `{kernel.name}`, argument {i} `{p.name}` ({p.ctype})"


def convert_args(kernel: Kernel, args, backend: str, array_types: tuple, foreign_types: tuple) -> list:
    """Check `args` against the kernel's parameters; return them with scalars as exact numpy types.

    array_types: the array classes of the active backend; foreign_types: those of the other one."""
    if not isinstance(args, (tuple, list)):
        raise LaunchError(f"kernel `{kernel.name}`: args must be a tuple of the kernel's arguments, "
                          f"got {type(args).__name__}; signature: {kernel.describe()}")
    if len(args) != len(kernel.params):
        raise LaunchError(f"kernel `{kernel.name}` takes {len(kernel.params)} arguments but {len(args)} were given; "
                          f"signature: {kernel.describe()}")
    param_bytes = sum(8 if p.pointer else (p.dtype.itemsize if p.dtype is not None else 8) for p in kernel.params)
    if param_bytes > MAX_PARAM_BYTES or len(kernel.params) > MAX_PARAMS:
        raise LaunchError(f"kernel `{kernel.name}` has {len(kernel.params)} parameters ({param_bytes} bytes): CUDA "
                          f"passes at most 4 KiB of kernel parameters ({MAX_PARAM_BYTES} bytes). Pass the values in "
                          f"an array instead")
    out = []
    for i, (p, a) in enumerate(zip(kernel.params, args)):
        where = _where(kernel, i, p)
        if p.pointer:
            if isinstance(a, foreign_types):
                hint = ("a NumPy array in host memory, but kernels run on the GPU: pass helpers.device.asarray(x)"
                        if backend == "cupy" else
                        "a CuPy array on the GPU, but the active backend is the CPU: pass helpers.device.asnumpy(x)")
                raise LaunchError(f"{where}: got {hint}")
            if a is None:   # NULL, as in C: the kernel must test it before it reads (`if (bias != NULL)`)
                out.append(None)
                continue
            if not isinstance(a, array_types):
                raise LaunchError(f"{where}: expects an array (or None for a null pointer), got {type(a).__name__} "
                                  f"{a!r:.40}")
            if p.dtype is not None and a.dtype == p.dtype:
                pass   # (ml_dtypes' bfloat16 is of kind 'V', like a struct; it is the pointee's own type here)
            elif a.dtype.kind not in "biufc" or a.dtype.fields is not None:
                raise LaunchError(f"{where}: got an array of {a.dtype} ({a.dtype.kind!r} kind), but a kernel can only be "
                                  f"given arrays of numbers (bool, int, float): an object or string array holds "
                                  f"Python objects, not the bytes a kernel reads")
            if not a.dtype.isnative:
                raise LaunchError(f"{where}: got a big-endian {a.dtype.name} array ({a.dtype.str}); kernels read "
                                  f"native (little-endian) numbers: convert with x.astype('{a.dtype.newbyteorder('=').str}')")
            if p.dtype is not None and a.dtype != p.dtype:
                module = "ml_dtypes" if p.dtype.name == "bfloat16" else "np"
                raise LaunchError(f"{where}: expects a {p.dtype.name} array, got {a.dtype.name}; "
                                  f"convert it with .astype({module}.{p.dtype.name})")
            if not a.flags.c_contiguous:
                raise LaunchError(f"{where}: the array is not contiguous (a transposed or strided view); "
                                  f"pass xp.ascontiguousarray(x)")
            if p.vector_width > 1 and a.size % p.vector_width:
                raise LaunchError(f"{where}: the kernel reads it as {p.base}, so its size must be a multiple of "
                                  f"{p.vector_width}; got {a.size} elements")
            if backend == "cupy" and p.vector_width > 1 and a.data.ptr % (a.itemsize * p.vector_width):
                raise LaunchError(f"{where}: {p.base} loads need {a.itemsize * p.vector_width}-byte aligned memory")
            if not p.const and isinstance(a, np.ndarray) and not a.flags.writeable:
                raise LaunchError(f"{where}: the kernel may write it but the array is read-only; pass a copy")
            out.append(a)
            continue
        if isinstance(a, array_types + foreign_types) or isinstance(a, np.ndarray):
            raise LaunchError(f"{where}: expects a single {p.base} value, got an array; pass a Python number")
        if p.base not in ("float", "double", "bool") and p.dtype is not None and p.dtype.kind in "iu":
            if isinstance(a, (bool, np.bool_)):
                raise LaunchError(f"{where}: expects an integer, got the bool {a!r}; pass int({a!r}) if that is meant")
            if isinstance(a, (numbers.Integral, np.integer)):
                info = np.iinfo(p.dtype)
                if not info.min <= int(a) <= info.max:
                    raise LaunchError(f"{where}: {int(a)} does not fit; it must be in [{info.min}, {info.max}]")
                out.append(p.dtype.type(int(a)))
                continue
            raise LaunchError(f"{where}: expects an integer, got {type(a).__name__} {a!r}; pass int(...)")
        if p.base == "bool":
            if isinstance(a, (bool, np.bool_)) or (isinstance(a, (numbers.Integral, np.integer)) and int(a) in (0, 1)):
                out.append(np.bool_(bool(a)))
                continue
            raise LaunchError(f"{where}: expects a bool, got {type(a).__name__} {a!r}")
        if p.base in ("float", "double", "__half", "__nv_bfloat16"):
            if isinstance(a, (numbers.Real, np.integer, np.floating)) and not isinstance(a, (bool, np.bool_)):
                try:
                    as_float = float(a)
                except OverflowError:
                    raise LaunchError(f"{where}: {a!r:.30} is too large for a {p.base} (at most "
                                      f"{float(ml_dtypes.finfo(p.dtype).max):.4g})") from None
                with np.errstate(over="ignore"):
                    v = p.dtype.type(as_float)
                if np.isfinite(as_float) and not np.isfinite(v):
                    raise LaunchError(f"{where}: {a!r:.30} is too large for a {p.base} (at most "
                                      f"{float(ml_dtypes.finfo(p.dtype).max):.4g})")
                out.append(v)
                continue
            raise LaunchError(f"{where}: expects a number, got {type(a).__name__} {a!r}")
        raise LaunchError(f"{where}: parameters of type {p.ctype} are not supported by this runtime; "
                          f"pass structs as pointers")
    return out
