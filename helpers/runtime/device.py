"""The kernel runtime every notebook uses: one API, two backends.

- ``cupy``: kernels are compiled by NVRTC through CuPy and run on an NVIDIA GPU;
- ``cpu``: the very same ``.cu`` files are compiled with the system C++ compiler and run on the
  CPU with CUDA semantics (see ``helpers/runtime/cpu_backend``).

The backend is chosen at import: ``GPT2_DEVICE=cpu|cupy`` if set, else CuPy when a CUDA device is
usable, else the CPU. On both, every launch is checked against the kernel's C signature first,
and kernel calls follow CuPy's convention exactly: ``fn(grid, block, args, shared_mem=0)``.

    from helpers import device
    mod = device.load_module("vector_add.cu")
    add = mod.get_function("vector_add")
    add((blocks,), (256,), (a, b, out, n))
"""
from __future__ import annotations

import ctypes
import os
import time
from pathlib import Path

import numpy as np

from . import cpu_backend, cuda_source, nvrtc
from .cuda_source import Kernel
from .errors import CompileError, DeviceUnavailableError, KernelError, LaunchError, RaceError
from .launch_checks import check_config, convert_args

__all__ = ["name", "xp", "asarray", "asnumpy", "empty", "zeros", "synchronize", "load_module", "racecheck",
           "set_timeout", "time_kernel", "memory_info", "peak_memory", "fit_batch", "compute_capability", "bf16_arrays", "KernelError", "LaunchError", "RaceError", "CompileError",
           "DeviceUnavailableError"]


def _cupy_problem() -> str | None:
    """None if CuPy can run kernels here, else the reason it cannot."""
    try:
        import cupy
    except ImportError as e:
        return (f"CuPy is not installed ({e}). Install the GPU extra: pip install -e '.[gpu]' "
                f"(cupy-cuda12x; for CUDA 13 drivers use cupy-cuda13x)")
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # CUDARuntimeError: no driver, driver too old, no device
        return f"CuPy is installed but cannot use a GPU: {e}. Is there an NVIDIA GPU and a driver (nvidia-smi)?"
    if count == 0:
        return "CuPy is installed but sees no CUDA device"
    return None


def _choose() -> str:
    wanted = os.environ.get("GPT2_DEVICE", "auto").strip().lower() or "auto"
    if wanted not in ("auto", "cpu", "cupy"):
        raise DeviceUnavailableError(f"GPT2_DEVICE={wanted!r}: use 'cpu', 'cupy' or 'auto' (or leave it unset)")
    if wanted == "cpu":
        return "cpu"
    problem = _cupy_problem()
    if wanted == "cupy" and problem:
        raise DeviceUnavailableError(f"GPT2_DEVICE=cupy was asked for, but {problem}. "
                                     f"Unset GPT2_DEVICE (or set it to cpu) to run the kernels on the CPU.")
    return "cpu" if problem else "cupy"


name: str = _choose()
if name == "cupy":
    import cupy as xp  # noqa: N813
else:
    xp = np

_FOREIGN: tuple = ()
try:  # arrays of the other backend, to say so when they are passed
    import cupy as _cp
    _CUPY_ARRAY = (_cp.ndarray,)
except ImportError:
    _CUPY_ARRAY = ()
_ARRAY_TYPES = _CUPY_ARRAY if name == "cupy" else (np.ndarray,)
_FOREIGN = (np.ndarray,) if name == "cupy" else _CUPY_ARRAY


def array_types() -> tuple:
    """The array classes kernels of the active backend take (numpy.ndarray, or cupy.ndarray)."""
    return _ARRAY_TYPES


def asarray(a, dtype=None):
    """An array on the active device (contiguous)."""
    if name == "cupy":
        return xp.ascontiguousarray(xp.asarray(a, dtype=dtype))
    if _CUPY_ARRAY and isinstance(a, _CUPY_ARRAY):
        a = a.get()
    return np.ascontiguousarray(a, dtype=dtype)


def asnumpy(a):
    """A NumPy array in host memory, from either backend's array."""
    if _CUPY_ARRAY and isinstance(a, _CUPY_ARRAY):
        return a.get()
    return np.asarray(a)


def empty(shape, dtype=np.float32):
    """Uninitialised memory. On the CPU it is filled with 0xff bytes (NaN as float, -1 as int), so a
    kernel that reads what nobody wrote shows it instead of silently reading zeros."""
    if name == "cupy":
        return xp.empty(shape, dtype=dtype)
    a = np.empty(shape, dtype=dtype)
    a.reshape(-1).view(np.uint8).fill(0xFF)  # (reshape: a 0-d array has no byte view)
    return a


def zeros(shape, dtype=np.float32):
    return xp.zeros(shape, dtype=dtype)


def synchronize() -> None:
    """Wait for the GPU to finish queued work (CPU-backend launches are synchronous)."""
    if name == "cupy":
        xp.cuda.get_current_stream().synchronize()


# ------------------------------------------------------------------------------------------------
# Memory: what the device has, and the most a notebook used
# ------------------------------------------------------------------------------------------------
_peak = {"bytes": 0, "current": 0, "installed": False}


def memory_info() -> tuple[int, int]:
    """(free, total) bytes of the device's memory: the GPU's (CuPy's pool counted as used), or the
    machine's on the CPU backend."""
    if name == "cupy":
        free, total = xp.cuda.runtime.memGetInfo()
        return int(free) + int(xp.get_default_memory_pool().free_bytes()), int(total)
    try:
        pages, avail = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_AVPHYS_PAGES")
        return avail * os.sysconf("SC_PAGE_SIZE"), pages * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0, 0


def _track_allocations() -> None:
    """On CuPy: route allocations through the pool while counting the high-water mark."""
    if _peak["installed"] or name != "cupy":
        return
    pool = xp.get_default_memory_pool()

    def malloc(size):
        p = pool.malloc(size)
        _peak["current"] = pool.used_bytes()
        _peak["bytes"] = max(_peak["bytes"], _peak["current"])
        return p
    xp.cuda.set_allocator(malloc)
    _peak["installed"] = True


def peak_memory(reset: bool = False) -> int | None:
    """The most GPU memory this process has held at once (bytes, CuPy's pool), since the start or the
    last reset; None on the CPU backend, where arrays are ordinary NumPy arrays."""
    if name != "cupy":
        return None
    value = max(_peak["bytes"], int(xp.get_default_memory_pool().used_bytes()))
    if reset:
        _peak["bytes"] = int(xp.get_default_memory_pool().used_bytes())
    return value


def fit_batch(preferred: int, bytes_per_item: int, fixed_bytes: int = 0, fraction: float = 0.6,
              what: str = "B") -> int:
    """The largest batch, halving from `preferred`, whose memory (fixed + batch * per item) stays within
    `fraction` of the device's free memory; says what it chose and why. Raises MemoryError if even 1
    does not fit."""
    free, total = memory_info()
    budget = int(fraction * free)
    batch = int(preferred)
    while batch > 1 and fixed_bytes + batch * bytes_per_item > budget:
        batch //= 2
    need = fixed_bytes + batch * bytes_per_item
    if need > budget:
        raise MemoryError(f"even {what}=1 needs {need / 2**30:.1f} GiB, more than {fraction:.0%} of the "
                          f"{free / 2**30:.1f} GiB free on the device")
    note = "" if batch == preferred else f" (halved from {preferred} to fit)"
    print(f"{what}={batch}{note}: about {need / 2**30:.1f} GiB of the {free / 2**30:.1f} GiB free "
          f"({total / 2**30:.0f} GiB device)")
    return batch


def set_timeout(seconds: float) -> None:
    """Longest a CPU-backend launch may run before it is stopped with a KernelError."""
    if not seconds > 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {seconds!r}")
    cpu_backend.timeout_s = float(seconds)


# ------------------------------------------------------------------------------------------------
# Modules and functions
# ------------------------------------------------------------------------------------------------
class Function:
    """A kernel ready to launch: ``fn(grid, block, args, shared_mem=0)``."""

    def __init__(self, module: "Module", kernel: Kernel):
        self.module = module
        self.kernel = kernel
        self.name = kernel.name
        self._raw = None

    def __repr__(self):
        return f"<kernel {self.kernel.describe()} from {self.module.path.name} on {self.module.backend}>"

    def __call__(self, grid, block, args, shared_mem=0):
        self.prepare(grid, block, args, shared_mem)()

    def prepare(self, grid, block, args, shared_mem=0):
        """Check a launch once and return a function that makes it, with no checks: for timing many
        back-to-back launches (the arguments must not change in between)."""
        grid3, block3, smem = check_config(self.kernel, grid, block, shared_mem)
        values = convert_args(self.kernel, args, self.module.backend, *self._array_types())
        if self.module.backend == "cupy":
            if self._raw is None:
                self._raw = self.module._raw.get_function(self.name)
            raw, packed = self._raw, tuple(values)
            return lambda: raw(grid3, block3, packed, shared_mem=smem)
        library, kernel, entry = self.module._library, self.kernel, self.name
        return lambda: cpu_backend.launch(library, kernel, entry, grid3, block3, smem, values)


    def _array_types(self):
        if self.module.backend == "cupy":
            return _ARRAY_TYPES, (np.ndarray,)
        return (np.ndarray,), _CUPY_ARRAY


class Module:
    """The kernels of one `.cu` file, compiled for one backend."""

    def __init__(self, path: Path, options=(), name_expressions=(), backend: str | None = None):
        self.path = path
        self.options = tuple(options)
        self.name_expressions = tuple(name_expressions)
        self.backend = backend or name
        self.source = path.read_text()
        # what the signature parser reads: the file with its local headers (their typedefs, macros)
        self.expanded_source = cuda_source.inline_local_includes(path)
        self._functions: dict[str, Function] = {}
        if self.backend == "cupy":
            import cupy
            # CuPy caches compiled modules by source text; the digest of the included files makes an
            # edit of a header recompile too.
            digest = cuda_source.source_digest(path, " ".join(self.options))
            code = self.source + f"\n// gpt2 digest {digest}\n"
            includes = [f"-I{d}" for d in (path.parent, cuda_source.CUDA_DIR, *nvrtc.cuda_include_dirs())]
            self._raw = cupy.RawModule(code=code, options=("-std=c++17", *includes, *self.options),
                                       name_expressions=self.name_expressions or None)
            # CuPy compiles lazily, at the first launch, with its own exception: compile now, as the CPU
            # backend does, so that a kernel that does not compile fails here with NVRTC's messages
            try:
                self._raw.compile()
            except cupy.cuda.compiler.CompileException as e:
                raise CompileError(f"{path.name} does not compile with NVRTC (CuPy):\n{e.get_message()}") from None
        else:
            compiled = cpu_backend.compile_module(path, self.options, self.name_expressions)
            self._library = cpu_backend.Library(compiled)

    def get_global(self, name: str):
        """A module global (`__device__` or `__constant__` variable) as an array of its type and shape,
        which launches read and update and which lives as long as the module, on both backends. Write
        into it (`g[...] = value`) to set it for the next launch.

        (On CuPy: an ndarray over `RawModule.get_global(name)`; on the CPU backend: a NumPy view of the
        module's own copy, which every launch reads before it runs and updates after.)"""
        variables = {v.name: v for v in cuda_source.device_variables(self.source)}
        if name not in variables:
            raise KeyError(f"{self.path.name} has no __device__ variable `{name}`; it has: "
                           f"{', '.join(variables) or 'none'}")
        var = variables[name]
        if var.dtype is None:
            raise TypeError(f"`{name}` is a {var.base}, which NumPy cannot describe: get_global views scalars and "
                            f"vector types (and arrays of them)")
        if self.backend == "cupy":
            import cupy
            return cupy.ndarray(var.shape, var.dtype, memptr=self._raw.get_global(name))
        return self._library.global_array(name)

    def get_function(self, kernel_name: str) -> Function:
        if kernel_name not in self._functions:
            kernel = cuda_source.kernel_signature(self.expanded_source, kernel_name, str(self.path))
            if kernel.template_params and kernel_name not in self.name_expressions:
                raise KeyError(f"{kernel_name!r} is a template instantiation: pass it in "
                               f"load_module(..., name_expressions=[{kernel_name!r}])")
            self._functions[kernel_name] = Function(self, kernel)
        return self._functions[kernel_name]

    def __repr__(self):
        return f"<module {self.path.name} on {self.backend}: {', '.join(cuda_source.parse_kernels(self.source))}>"


_modules: dict = {}


def load_module(path_or_name, options=(), name_expressions=(), backend: str | None = None) -> Module:
    """Compile (or take from the cache) the kernels of a `.cu` file.

    A bare file name resolves inside `cuda/`. Modules are cached by the content of the file and the
    files it includes, and by the options: editing a `.cu` recompiles it on the next call. Template
    kernels are compiled for `name_expressions` ("softmax<float, 128>"), by default the ones the
    file lists in a `// name_expressions: ...` line."""
    path = cuda_source.resolve(path_or_name)
    name_expressions = tuple(name_expressions) or tuple(cuda_source.declared_name_expressions(path))
    backend = backend or name
    if backend not in ("cpu", "cupy"):
        raise ValueError(f"backend must be 'cpu' or 'cupy', got {backend!r}")
    key = (str(path), tuple(options), tuple(name_expressions), backend,
           cuda_source.source_digest(path), cpu_backend.context_switch(), str(cpu_backend.cache_dir()))
    if key not in _modules:
        _modules[key] = Module(path, options, name_expressions, backend)
    return _modules[key]


# ------------------------------------------------------------------------------------------------
# Race checking
# ------------------------------------------------------------------------------------------------
RACECHECK_SCHEDULES = ((cpu_backend.FORWARD, 0), (cpu_backend.REVERSE, 0), (cpu_backend.RANDOM, 1),
                       (cpu_backend.RANDOM, 2), (cpu_backend.REVERSE | cpu_backend.DEPTH_FIRST, 0))


def _host_images(args) -> list:
    """Host copies of the array arguments that keep their aliasing: arrays that share memory (the same
    array passed twice to an in-place kernel, or x and x[1:]) become views of one copy of that memory.
    CuPy arrays are copied from the GPU, NumPy arrays copied; other arguments pass through."""
    spans = []
    for i, a in enumerate(args):
        if isinstance(a, np.ndarray) or (_CUPY_ARRAY and isinstance(a, _CUPY_ARRAY)):
            start = _address(a)
            spans.append((start, start + a.nbytes, i))
    spans.sort()
    out = list(args)
    group: list = []

    def flush():
        if not group:
            return
        lo, hi = group[0][0], max(end for _, end, _ in group)
        first = args[group[0][2]]
        if _CUPY_ARRAY and isinstance(first, _CUPY_ARRAY):
            raw = xp.ndarray((hi - lo,), np.uint8, memptr=first.data + (lo - first.data.ptr)).get()
        else:
            raw = np.frombuffer(ctypes.string_at(lo, hi - lo), np.uint8).copy()
        for start, _, i in group:
            a = args[i]
            out[i] = np.ndarray(a.shape, a.dtype, buffer=raw, offset=start - lo, strides=a.strides)
        group.clear()

    for span in spans:
        if group and span[0] >= max(end for _, end, _ in group):
            flush()
        group.append(span)
    flush()
    return out


def _address(a) -> int:
    if _CUPY_ARRAY and isinstance(a, _CUPY_ARRAY):
        return int(a.data.ptr)
    return int(a.__array_interface__["data"][0])


def racecheck(fn: Function, grid, block, args, shared_mem=0, *, atol=0.0, rtol=0.0) -> None:
    """Run a launch with its threads and its blocks in several orders and require the same outputs,
    and find places two blocks write.

    The orders: forward, reverse, random (a new random order after every barrier), and reverse with
    each warp running on after its shuffles (so one warp gets far ahead of the others), with the
    blocks in the same kinds of orders, one at a time. Correct kernels give identical bits in every
    order; a missing __syncthreads(), threads that read what others write without one, or a block
    that reads what another block writes give different results. In the first run every byte the
    blocks write is attributed to its block: a byte written by two blocks outside atomics is a race
    between blocks (CUDA runs blocks in no fixed order, and at the same time). A kernel that waits for
    other blocks (a spin on a flag) cannot finish when its blocks run one at a time in the wrong order:
    that is reported too, after at most 20 times the first run's time (and 5 s).

    Works on copies of the arguments (and restores the module's globals); on the CuPy backend it runs
    on the CPU. Kernels whose float atomics sum in a different order may pass atol/rtol.
    Raises RaceError naming the kernel and what differs; returns None when all agree."""
    cpu_module = fn.module if fn.module.backend == "cpu" else load_module(
        fn.module.path, fn.module.options, fn.module.name_expressions, backend="cpu")
    cpu_fn = cpu_module.get_function(fn.name)
    grid3, block3, smem = check_config(fn.kernel, grid, block, shared_mem)
    host_args = convert_args(fn.kernel, _host_images(args), "cpu", (np.ndarray,), _CUPY_ARRAY)
    library = cpu_module._library
    saved_globals = [ctypes.string_at(address, nbytes) for address, nbytes in library.globals]
    results = []
    first_seconds = None
    try:
        for k, (schedule, seed) in enumerate(RACECHECK_SCHEDULES):
            copies = _host_images(host_args)   # fresh copies for each order, aliasing kept
            for (address, nbytes), data in zip(library.globals, saved_globals):
                ctypes.memmove(address, data, nbytes)
            timeout = None if first_seconds is None else max(5.0, 20 * first_seconds)
            order = cpu_backend.schedule_name(schedule, seed)
            t0 = time.perf_counter()
            try:
                cpu_backend.launch(library, cpu_fn.kernel, fn.name, grid3, block3, smem, copies, schedule=schedule,
                                   seed=seed, n_workers=1, timeout=timeout, track_writes=(k == 0 and cpu_backend.isolate))
            except cpu_backend.BlockRace as e:
                raise RaceError(str(e)) from None
            except cpu_backend.LaunchTimeout:
                if timeout is None:
                    raise
                raise RaceError(
                    f"kernel `{fn.name}` did not finish when its blocks ran one at a time in {order} order (stopped "
                    f"after {timeout:.0f} s; in forward order it took {first_seconds:.2f} s): a block waits for "
                    f"other blocks (a spin on a flag or a counter another block sets?). CUDA neither orders blocks "
                    f"nor runs them all at the same time, so such a kernel can hang on a GPU too.") from None
            if first_seconds is None:
                first_seconds = time.perf_counter() - t0
            outs = {p.name: c for p, c in zip(fn.kernel.params, copies) if p.pointer and not p.const}
            results.append((schedule, seed, outs))
    finally:
        for (address, nbytes), data in zip(library.globals, saved_globals):
            ctypes.memmove(address, data, nbytes)
    _, _, first = results[0]
    for schedule, seed, outs in results[1:]:
        for pname, ref in first.items():
            got = outs[pname]
            if ref.dtype.kind == "f":
                same = np.isclose(got, ref, atol=atol, rtol=rtol, equal_nan=True) if (atol or rtol) else \
                    ((got == ref) | (np.isnan(got) & np.isnan(ref)))
            else:
                same = got == ref
            if not np.all(same):
                bad = np.argwhere(~np.asarray(same).reshape(ref.shape))
                idx = tuple(int(i) for i in bad[0])
                where = idx[0] if len(idx) == 1 else idx
                order = cpu_backend.schedule_name(schedule, seed)
                raise RaceError(
                    f"kernel `{fn.name}`: output `{pname}` depends on the order threads run in: running them "
                    f"forward and {order} gives different values at {len(bad)} of {ref.size} elements "
                    f"(first at index {where}: {ref[idx].item()!r} vs {got[idx].item()!r}). Threads read memory that other threads "
                    f"write without a __syncthreads() (or __syncwarp()) between the write and the read, a block reads "
                    f"what another block writes, or float atomics add in an order that changes the rounding (for "
                    f"those, pass atol/rtol).")


# ------------------------------------------------------------------------------------------------
# Timing
# ------------------------------------------------------------------------------------------------
def time_kernel(fn: Function, grid, block, args, shared_mem=0, repeat=5, warmup=1) -> float:
    """Median seconds per launch. On a GPU: CUDA events around `inner` back-to-back launches (checked
    once, so Python's argument checks are not timed), L2 flushed before each repeat as llm.c's dev/cuda
    benchmarks do, `inner` chosen so that a repeat lasts about a millisecond. (A kernel shorter than
    CuPy's launch overhead, a few microseconds, is then measured at the launch rate.) On the CPU
    backend: the wall clock of one launch (emulation)."""
    launch = fn.prepare(grid, block, args, shared_mem)
    return time_calls(launch, repeat=repeat, warmup=warmup)


def time_calls(call, repeat=5, warmup=1) -> float:
    """Median seconds per call of a function that launches GPU work (as time_kernel does for a launch)."""
    for _ in range(warmup):
        call()
    if name != "cupy":
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            call()
            times.append(time.perf_counter() - t0)
        return float(np.median(times))
    start, stop = xp.cuda.Event(), xp.cuda.Event()
    start.record()
    call()
    stop.record()
    stop.synchronize()
    one = max(xp.cuda.get_elapsed_time(start, stop) / 1e3, 1e-7)
    inner = int(min(1000, max(1, 1e-3 // one)))
    times = []
    for _ in range(repeat):
        flush_l2()
        start.record()
        for _ in range(inner):
            call()
        stop.record()
        stop.synchronize()
        times.append(xp.cuda.get_elapsed_time(start, stop) / 1e3 / inner)
    return float(np.median(times))


_l2: dict = {}


def flush_l2() -> None:
    """Overwrite the GPU's L2 cache (a buffer twice its size), so the next launch reads from memory."""
    if name != "cupy":
        return
    if "buffer" not in _l2:
        size = int(xp.cuda.runtime.getDeviceProperties(0).get("l2CacheSize", 1 << 22))
        _l2["buffer"] = xp.empty(2 * max(size, 1 << 20), dtype=np.uint8)
    _l2["buffer"].fill(_l2.setdefault("value", 0) & 0xFF)
    _l2["value"] += 1


def _fp32_lanes_per_sm(major: int, minor: int) -> int:
    """FP32 units per SM, from NVIDIA's tables of compute capabilities."""
    if major >= 8 and (major, minor) != (8, 0):
        return 128          # sm_86, 89, 90, 100, 120
    return 64               # sm_70, 75, 80


def bf16_arrays() -> bool:
    """Whether arrays of ml_dtypes.bfloat16 live on this device: always on the CPU backend; with CuPy 14 or
    later (which added them) on a GPU."""
    if name != "cupy":
        return True
    return int(str(getattr(xp, "__version__", "0")).split(".")[0]) >= 14


def compute_capability() -> tuple[int, int] | None:
    """(major, minor) of the GPU, e.g. (7, 5) for a T4, (9, 0) for an H100; None on the CPU backend, which
    runs every feature the kernels use."""
    if name != "cupy":
        return None
    p = xp.cuda.runtime.getDeviceProperties(0)
    return int(p["major"]), int(p["minor"])


def peak_rates() -> dict | None:
    """This GPU's limits from its properties: memory bandwidth (bytes/s) = 2 x memory clock x bus width,
    fp32 FLOP/s = 2 x FP32 units per SM x SMs x clock. None on the CPU backend."""
    if name != "cupy":
        return None
    p = xp.cuda.runtime.getDeviceProperties(0)
    gpu = p["name"].decode() if isinstance(p["name"], bytes) else str(p["name"])
    bandwidth = 2 * p["memoryClockRate"] * 1e3 * p["memoryBusWidth"] / 8
    fp32 = 2 * _fp32_lanes_per_sm(p["major"], p["minor"]) * p["multiProcessorCount"] * p["clockRate"] * 1e3
    return dict(name=gpu, bandwidth=bandwidth, fp32=fp32, sm=f"sm_{p['major']}{p['minor']}",
                standin=bool(getattr(xp, "__standin__", False)))


_track_allocations()
