"""The CPU backend: the same `.cu` files, compiled with the system C++ compiler and run with CUDA
semantics by the runtime in `gpt2cpu.h` and `gpt2cpu/` (read gpt2cpu.h's top comment for the
execution model).

A launch:
1. copies each array argument into the shared arena (arena.py), against the end of its pages, and
   writes the tables of arguments, windows and module globals into the arena's header;
2. has the launcher process (launcher.cpp) fork a child that maps every array into a window of
   inaccessible address space of its own, runs the blocks on all cores and exits (without the
   launcher, this process forks itself);
3. waits for the child (with a timeout) and turns any fault it reported into a KernelError that names
   the kernel, the argument and element, the thread, the block and the source line;
4. copies the arrays the kernel may write back into the caller's arrays (only if it succeeded), the
   module's globals into the module, and prints the kernel's printf output in block order.
"""
from __future__ import annotations

import atexit
import ctypes
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import cuda_source
from ..errors import CompileError, KernelError, LaunchError
from . import abi, cache
from . import launcher as _launcher
from .abi import ArgSlot, GlobalSlot, LaunchConfig, Report
from .arena import MAP_ANONYMOUS, MAP_NORESERVE, MAP_SHARED, PAGE, Arena, _libc, mmap_or_raise, stage

HEADER = Path(__file__).with_name("gpt2cpu.h")
RUNTIME_DIR = Path(__file__).with_name("gpt2cpu")
INCLUDE_DIR = Path(__file__).with_name("include")   # the CUDA headers kernels include: <cooperative_groups.h>, <cuda_fp16.h>...
FORWARD, REVERSE, RANDOM, DEPTH_FIRST = abi.FORWARD, abi.REVERSE, abi.RANDOM, abi.DEPTH_FIRST


def schedule_name(schedule: int, seed: int = 0) -> str:
    name = {FORWARD: "forward", REVERSE: "reverse", RANDOM: f"random (seed {seed})"}[schedule & abi.ORDER_MASK]
    return name + (", each warp running ahead after its shuffles" if schedule & DEPTH_FIRST else "")


# ------------------------------------------------------------------------------------------------
# Settings
# ------------------------------------------------------------------------------------------------
def _setting(name: str, default: str, parse, meaning: str, example: str):
    raw = os.environ.get(name, default)
    try:
        value = parse(raw)
    except ValueError:
        value = None
    if value is None:
        raise ValueError(f"{name}={raw!r} is not valid: it sets {meaning}. Set it to {example}, or unset it "
                         f"(default {default})")
    return value


def _positive_float(s: str):
    v = float(s)
    return v if v > 0 and v == v and v != float("inf") else None


def _workers(s: str):
    v = int(s)
    return v if v >= 0 else None


timeout_s = _setting("GPT2_KERNEL_TIMEOUT", "300", _positive_float,
                     "the seconds a CPU-backend launch may run before it is stopped", "a number of seconds > 0, e.g. 600")
workers = _setting("GPT2_CPU_WORKERS", "0", _workers, "the CPU backend's worker threads (0: one per core)",
                   "a whole number >= 0, e.g. 2") or (os.cpu_count() or 1)
isolate = os.environ.get("GPT2_CPU_ISOLATE", "1") != "0"


def context_switch() -> str:
    """'asm' (the hand-written switch, x86-64 and aarch64) or 'ucontext' (portable; GPT2_CPU_CONTEXT=ucontext)."""
    return "ucontext" if os.environ.get("GPT2_CPU_CONTEXT", "asm") == "ucontext" else "asm"


def cache_dir() -> Path:
    return cache.directory()


# ------------------------------------------------------------------------------------------------
# Compiling
# ------------------------------------------------------------------------------------------------
def find_compiler() -> str:
    candidates = [os.environ["CXX"]] if os.environ.get("CXX") else []
    candidates += ["g++", "clang++", "c++"]
    for c in candidates:
        path = shutil.which(c)
        if path:
            return path
    raise CompileError(
        "The CPU backend compiles the .cu kernels with a C++ compiler, and none was found "
        f"(looked for {', '.join(candidates)}). Install one and restart the kernel: "
        "Debian/Ubuntu `sudo apt install g++`, Fedora `sudo dnf install gcc-c++`, "
        "macOS `xcode-select --install`, conda `conda install -c conda-forge cxx-compiler`. "
        "Or set CXX to the compiler's path."
    )


_compiler_kind: dict[str, str] = {}


def compiler_kind(cxx: str) -> str:
    """'gcc' or 'clang' (what the flags below depend on)."""
    if cxx not in _compiler_kind:
        out = subprocess.run([cxx, "-dM", "-E", "-x", "c++", os.devnull], capture_output=True, text=True).stdout
        _compiler_kind[cxx] = "clang" if "__clang__" in out else "gcc"
    return _compiler_kind[cxx]


_SHARED_DYNAMIC = re.compile(
    r"extern\s+(?:__align__\s*\(\s*\d+\s*\)\s*)?__shared__\s+(?:__align__\s*\(\s*\d+\s*\)\s*)?"
    r"(?P<type>[\w:\s]*?[\w:]+)\s+(?:__align__\s*\(\s*\d+\s*\)\s*)?(?P<name>\w+)\s*\[\s*\]\s*;")
_SHARED_STATIC = re.compile(
    r"(?P<quals>(?:(?:static|volatile)\s+)*)__shared__\s+(?P<quals2>(?:(?:static|volatile)\s+)*)"
    r"(?:__align__\s*\(\s*\d+\s*\)\s*)?(?P<type>[\w:<>,\s]*?[\w:>]+)\s+(?P<name>\w+)\s*(?P<dims>(?:\[[^\]]*\]\s*)*);")


def rewrite_shared(src: str) -> str:
    """`__shared__` declarations -> variables in guarded shared memory (line numbers unchanged)."""
    text = cuda_source.strip_comments(src)
    text = _SHARED_DYNAMIC.sub(lambda m: f"{m['type']}* {m['name']} = ({m['type']}*)__gpt2cpu_dynamic_shared();", text)
    counter = iter(range(1, 1 << 30))

    def static(m):
        volatile = "volatile " if "volatile" in (m["quals"] + m["quals2"]) else ""
        dims = re.sub(r"\s+", "", m["dims"])
        declaration = f"{' '.join(m['type'].split())} {m['name']}{dims}".replace('"', "")
        return f'auto& {m["name"]} = __gpt2cpu_shared_var<{volatile}{m["type"]}{dims}>({next(counter)}, "{declaration}");'

    return _SHARED_STATIC.sub(static, text)


def _generated_tail(entries: list[str], module_globals=()) -> str:
    lines = ["", "// ---- generated by helpers.runtime.cpu_backend ----", "namespace gpt2cpu {", "EntryFn entry_table[] = {"]
    lines += [f"    +[](void** a) {{ invoke(&{e}, a); }}," for e in entries]
    lines += ["};", "const char* entry_names[] = {"]
    lines += [f'    "{e}",' for e in entries]
    lines += ["};", f"const int entry_count = {len(entries)};"]
    lines += ["const ModuleGlobal module_globals[] = {"]
    lines += [f'    {{"{g.name}", (void*)&::{g.name}, sizeof(::{g.name})}},' for g in module_globals]
    lines += ["    {nullptr, nullptr, 0}", "};", f"const int module_global_count = {len(module_globals)};",
              "}  // namespace gpt2cpu",
              "GPT2CPU_EXPORT const char* gpt2cpu_entry_signature(int i) {", "    switch (i) {"]
    lines += [f"    case {i}: return gpt2cpu::signature_of(&{e});" for i, e in enumerate(entries)]
    lines += ["    }", '    return "";', "}", ""]
    return "\n".join(lines)


def _user_defines(options) -> list[str]:
    """Options that mean the same to g++: -D and -I. NVRTC-only ones (-arch, --use_fast_math) are dropped."""
    keep, it = [], iter(options)
    for o in it:
        if o in ("-D", "-I"):
            keep += [o, next(it)]
        elif o.startswith(("-D", "-I", "--define-macro=", "--include-path=")):
            keep.append(o.replace("--define-macro=", "-D").replace("--include-path=", "-I"))
    return keep


_compile_lock = threading.Lock()


@dataclass
class CompiledModule:
    path: Path
    library: Path
    entries: list[str]
    plain: dict[str, bool]   # entry -> runs as a plain loop (no barrier, no warp collective)
    stack_bound: int | None  # bytes of stack any thread can need at most (None: unknown, e.g. recursion)
    globals: list            # cuda_source.DeviceVariable, in the module's order


def stack_bound(su_files, ci_files) -> int | None:
    """An upper bound of a thread's stack use from gcc's -fstack-usage report: the frames of all the
    module's functions added up (any call chain uses a subset of them). None (unknown, so the threads
    get guarded stacks) if any frame is unbounded, or if the call graph (-fcallgraph-info) has a cycle
    (recursion) or an indirect call, whose depth no compiler knows."""
    total = 0
    for su in su_files:
        for line in su.read_text().splitlines():
            fields = line.rsplit("\t", 2)
            if len(fields) != 3 or fields[2] not in ("static", "dynamic,bounded"):
                return None
            total += int(fields[1])
    if not su_files or not ci_files:
        return None
    edges: dict[str, set[str]] = {}
    for ci in ci_files:
        for m in re.finditer(r'edge:\s*\{\s*sourcename:\s*"([^"]+)"\s+targetname:\s*"([^"]+)"', ci.read_text()):
            if m.group(2) == "__indirect_call":
                if re.search(r"_ZN7gpt2cpuL1[01](fiber|plain)_main", m.group(1)):
                    continue  # the runtime's dispatch to the module's own entry points
                return None
            edges.setdefault(m.group(1), set()).add(m.group(2))
    state: dict[str, int] = {}   # 1: on the current path, 2: done

    def cyclic(node) -> bool:
        stack = [(node, iter(edges.get(node, ())))]
        state[node] = 1
        while stack:
            n, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                state[n] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return True
            elif nxt not in state:
                state[nxt] = 1
                stack.append((nxt, iter(edges.get(nxt, ()))))
        return False

    if any(n not in state and cyclic(n) for n in list(edges)):
        return None
    return total


def module_source(path: Path, name_expressions=()) -> tuple[str, list[str]]:
    """The C++ translation unit of a module (the rewritten .cu and its entry points) and the entries."""
    src = path.read_text()
    kernels = cuda_source.parse_kernels(src)
    entries = [n for n, k in kernels.items() if not k["template_params"]] + list(name_expressions)
    if not entries:
        templates = [n for n, k in kernels.items() if k["template_params"]]
        if templates:
            example = ", ".join(f"'{n}<{', '.join('float' for _ in kernels[n]['template_params'])}>'" for n in templates)
            raise CompileError(f"{path.name} has only template kernels ({', '.join(templates)}): say which "
                               f"instantiations to compile, e.g. load_module(..., name_expressions=[{example}]), "
                               f"or list them in a `// name_expressions: ...` line of the file")
        raise CompileError(f"{path} declares no __global__ kernel")
    # (local headers inlined, so that their __shared__ declarations are rewritten too)
    expanded = cuda_source.inline_local_includes(path)
    gpu_only = gpu_only_features(expanded)
    if gpu_only:
        raise CompileError(f"{path.name} uses CUDA the CPU backend does not run (it compiles for a GPU with CuPy):\n"
                           + "\n".join(f"- {m}" for m in gpu_only))
    body = f'#line 1 "{path}"\n' + rewrite_shared(expanded)
    return body + _generated_tail(entries, cuda_source.device_variables(src)), entries


def module_flags(path: Path, options=(), cxx: str | None = None) -> list[str]:
    """The compiler flags of a module (a shared library; gpt2cpu.h included first)."""
    flags = ["-std=c++17", "-O2", "-g1", "-fPIC", "-shared", "-fvisibility=hidden", "-fno-strict-aliasing",
             "-ffp-contract=off", "-pthread", "-Wno-unused-function", "-Wno-unused-variable", "-Wno-attributes",
             # every page of a large stack frame is touched in order, so an overflow always hits the guard page
             "-fstack-clash-protection",
             f"-I{path.parent}", f"-I{cuda_source.CUDA_DIR}", *_user_defines(options),
             # CUDA's own headers as the CPU backend provides them: cooperative_groups.h, cuda_fp16.h, cuda_bf16.h, mma.h
             f"-I{INCLUDE_DIR}", "-include", str(HEADER)]
    if sys.platform.startswith("linux"):
        flags.append("-Wl,-z,defs")  # an undefined function is a link error, not a failure at load
    if context_switch() == "ucontext":
        flags.append("-DGPT2CPU_USE_UCONTEXT=1")
    return flags


def _runtime_text() -> str:
    parts = [HEADER, *sorted(RUNTIME_DIR.glob("*.h")), *sorted(p for p in INCLUDE_DIR.rglob("*") if p.is_file())]
    return "".join(p.read_text() for p in parts)


_UNDEFINED = re.compile(r"undefined reference to [`']([^'`]+)'|Undefined symbols? .*?\"([^\"]+)\"")


# CUDA that only a GPU can run: found in the source before g++ sees it, so the error says what it is.
_GPU_ONLY = [
    (re.compile(r"\b(?:asm|__asm__)\s*(?:volatile\s*|__volatile__\s*)?\("),
     "inline PTX (`asm(...)`)", "the CPU backend cannot run GPU assembly: write the operation in C++ (most PTX "
     "idioms have an intrinsic: __shfl_sync, __ffs, __brev, __funnelshift_l, __ldcg ...)"),
    (re.compile(r"<<<"), "a kernel launch inside a kernel (dynamic parallelism)",
     "launch the second kernel from Python after the first one instead"),
    (re.compile(r"\b(?:tex[123]D\w*|texture\s*<|cudaTextureObject_t|surf[123]D\w*|cudaSurfaceObject_t)\b"),
     "textures and surfaces", "read the array through a plain pointer (`const float* __restrict__` gets the same "
     "read-only cache on a GPU)"),
    (re.compile(r"\bcuda::(?:barrier|pipeline|memcpy_async)\b|\b__pipeline_\w+|cooperative_groups/memcpy_async|"
                r"\bcg::memcpy_async|#\s*include\s*<cuda/(?:barrier|pipeline)>"),
     "asynchronous copies (cp.async: cuda::memcpy_async, cuda::barrier, cuda::pipeline)",
     "copy to shared memory with plain loads and __syncthreads(), which is what they do, synchronously"),
]
PROVIDED_HEADERS = ("cooperative_groups.h", "cooperative_groups/reduce.h", "cooperative_groups/scan.h",
                    "cuda_fp16.h", "cuda_bf16.h", "mma.h")


def gpu_only_features(text: str) -> list[str]:
    """What in a (comment-stripped) source only a GPU can run: one message per feature, with its line."""
    found = []
    for pattern, what, instead in _GPU_ONLY:
        m = pattern.search(text)
        if m:
            line = text.count("\n", 0, m.start()) + 1
            found.append(f"{what} (line {line}) runs only on a GPU: {instead}")
    return found


def compile_module(path: Path, options=(), name_expressions=()) -> CompiledModule:
    body, entries = module_source(path, name_expressions)
    cxx = find_compiler()
    flags = module_flags(path, options, cxx)
    gcc = compiler_kind(cxx) == "gcc"
    analysis = ["-fstack-usage", "-fcallgraph-info=su"] if gcc else []
    digest = cuda_source.source_digest(path, body + _runtime_text() + cxx + " ".join(flags + analysis))
    out_dir = cache_dir()
    library = out_dir / f"{path.stem}-{digest}.so"
    waiting = cuda_source.kernels_needing_fibers(path)
    plain = {e: e.partition("<")[0].strip() not in waiting for e in entries}
    device_vars = cuda_source.device_variables(path.read_text())
    bound_file = library.with_suffix(".stack")
    if cache.trusted(library) and bound_file.is_file():
        text = bound_file.read_text().strip()
        return CompiledModule(path, library, entries, plain, int(text) if text.isdigit() else None, device_vars)
    with _compile_lock:
        with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
            src_file = Path(tmp) / (path.stem + ".cpp")
            src_file.write_text(body)
            tmp_lib = Path(tmp) / library.name
            proc = subprocess.run([cxx, *flags, *analysis, "-x", "c++", str(src_file), "-o", str(tmp_lib)],
                                  capture_output=True, text=True, cwd=tmp)
            if proc.returncode != 0:
                raise CompileError(_compile_failure(path, proc.stderr))
            bound = stack_bound(list(Path(tmp).glob("*.su")), list(Path(tmp).glob("*.ci")))
            (Path(tmp) / "bound").write_text("unknown" if bound is None else str(bound))
            os.replace(Path(tmp) / "bound", bound_file)
            cache.seal(tmp_lib, library)  # atomic: a concurrent compile of the same file is harmless
    return CompiledModule(path, library, entries, plain, bound, device_vars)


def _compile_failure(path: Path, log: str) -> str:
    missing = re.search(r"fatal error: ([^\s:]+): No such file or directory", log)
    if missing and missing.group(1) not in PROVIDED_HEADERS:
        name = missing.group(1)
        return (f"{path.name} includes {name}, which the CPU backend does not provide. Of CUDA's headers it has "
                f"{', '.join(f'<{h}>' for h in PROVIDED_HEADERS)}; the others are for the host (cuda_runtime.h: "
                f"kernels need nothing from it) or the GPU only. A header of your own must be next to the .cu file "
                f"or in cuda/.\n{_tidy(log)}")
    undefined = sorted({a or b for a, b in _UNDEFINED.findall(log)})
    compile_errors = [l for l in log.splitlines() if ": error:" in l and "collect2" not in l and "ld:" not in l]
    if undefined and not compile_errors:
        names = ", ".join(f"`{u}`" for u in undefined)
        return (f"{path.name} does not link for the CPU backend: {names} is declared but never defined. A "
                f"__device__ function needs its body in this file or in a header it includes.")
    return f"{path.name} does not compile for the CPU backend:\n{_tidy(log)}"


def _tidy(log: str) -> str:
    lines = [l for l in log.splitlines() if not any(p in l for p in ("gpt2cpu.h", "/gpt2cpu/")) or "error" in l]
    return "\n".join(lines[:60])


# ------------------------------------------------------------------------------------------------
# Running
# ------------------------------------------------------------------------------------------------
class Library:
    """A compiled module loaded into this process; its copy of the module's globals is theirs for good."""

    def __init__(self, compiled: CompiledModule):
        self.compiled = compiled
        self.lib = ctypes.CDLL(str(compiled.library))
        self.lib.gpt2cpu_launch.restype = ctypes.c_long
        self.lib.gpt2cpu_launch.argtypes = [ctypes.POINTER(LaunchConfig), ctypes.c_void_p, ctypes.c_int]
        self.lib.gpt2cpu_entry_signature.restype = ctypes.c_char_p
        self.lib.gpt2cpu_entry_signature.argtypes = [ctypes.c_int]
        self.lib.gpt2cpu_global_address.restype = ctypes.c_void_p
        self.lib.gpt2cpu_global_address.argtypes = [ctypes.c_int]
        self.lib.gpt2cpu_global_bytes.restype = ctypes.c_uint64
        self.lib.gpt2cpu_global_bytes.argtypes = [ctypes.c_int]
        for name, struct in (("report", Report), ("config", LaunchConfig), ("window", abi.Window),
                             ("arg", ArgSlot)):
            have = getattr(self.lib, f"gpt2cpu_sizeof_{name}")()
            if have != ctypes.sizeof(struct):
                raise CompileError(f"{compiled.library.name}: its {name} struct has {have} bytes, Python reads "
                                   f"{ctypes.sizeof(struct)} from gpt2cpu/abi.h: delete the cache ({cache_dir()})")
        n = self.lib.gpt2cpu_global_count()
        if n != len(compiled.globals):
            raise CompileError(f"{compiled.path.name}: the module has {n} __device__ variables, the source reader "
                               f"found {len(compiled.globals)}")
        # (address, bytes) of each global in this process's copy of the module
        self.globals = [(self.lib.gpt2cpu_global_address(i), int(self.lib.gpt2cpu_global_bytes(i))) for i in range(n)]

    def signature(self, entry: str) -> str:
        """The parameter types as the C++ compiler sees them, e.g. "const float*,float*,int"."""
        return self.lib.gpt2cpu_entry_signature(self.compiled.entries.index(entry)).decode()

    def global_array(self, name: str) -> np.ndarray:
        """A NumPy view of this process's copy of a `__device__` variable (launches read and update it)."""
        names = [g.name for g in self.compiled.globals]
        if name not in names:
            raise KeyError(f"{self.compiled.path.name} has no __device__ variable `{name}`; it has: "
                           f"{', '.join(names) or 'none'}")
        i = names.index(name)
        var = self.compiled.globals[i]
        if var.dtype is None:
            raise TypeError(f"`{name}` is a {var.base}, which NumPy cannot describe: get_global views scalars and "
                            f"vector types (and arrays of them)")
        address, nbytes = self.globals[i]
        raw = (ctypes.c_uint8 * nbytes).from_address(address)
        return np.frombuffer(raw, dtype=var.dtype).reshape(var.shape)


_launch_lock = threading.RLock()
_state: dict = {}
FIBER_REGION = 1 << abi.kRegionShift  # one thread's stack, its lowest page a guard
LIBC_STACK_MARGIN = 64 * 1024         # for what a module calls outside itself (printf formatting, math)


def _arena() -> Arena:
    """This process's arena (a forked Python process makes its own)."""
    if _state.get("arena_pid") != os.getpid():
        _state.update(arena=Arena(), arena_pid=os.getpid(), launcher=None, pool=None, dirty=False)
    return _state["arena"]


def _discard() -> None:
    """After a launch that did not finish (an interrupt, a lost launcher): kill the launcher with anything
    it still runs and drop the arena, so that nothing left of that launch can touch the next one."""
    launcher = _state.get("launcher")
    if launcher is not None:
        launcher.close()
    arena = _state.get("arena")
    if arena is not None:
        arena.close()
    _state.update(arena=None, arena_pid=None, launcher=None)
    _state["dirty"] = False


def _get_launcher():
    """The launcher process, started (and compiled) on first use; None where it cannot work."""
    l = _state.get("launcher")
    if l is not None and l.alive():
        return l
    if l is not None:
        l.close()
    arena = _arena()
    if arena.fd is None or os.environ.get("GPT2_CPU_LAUNCHER", "1") == "0":
        return None
    _state["launcher"] = _launcher.Launcher(_launcher.build(find_compiler(), cache_dir()), arena)
    if not _state.get("atexit"):
        atexit.register(lambda: _state.get("launcher") and _state["launcher"].close())
        _state["atexit"] = True
    return _state["launcher"]


def _fiber_pool(regions: int):
    """Unguarded stacks for in-process launches of kernels that provably fit them, mapped once."""
    have = _state.get("pool")
    if have is None or have[1] < regions:
        if have is not None:
            _libc.munmap(have[0], have[1] * FIBER_REGION)
        _state["pool"] = (mmap_or_raise(regions * FIBER_REGION, MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE), regions)
    return _state["pool"]


@dataclass
class LaunchStats:
    seconds: float = 0.0
    switches: int = 0


last_launch = LaunchStats()


LaunchTimeout = _launcher.LaunchTimeout


class BlockRace(KernelError):
    """racecheck's write tracking found a place written by two blocks (message names it)."""


def launch(library: Library, kernel, entry: str, grid, block, shared_mem, values, *,
           schedule=FORWARD, seed=0, n_workers=None, timeout=None, track_writes=False) -> None:
    """Run one launch (arguments already checked). Raises KernelError on any fault.

    One launch at a time, from any thread. A launch that is interrupted (Ctrl-C, the notebook's stop
    button) at any point leaves a mark; the next launch then starts from a new launcher and arena."""
    with _launch_lock:
        if _state.get("dirty") and _state.get("arena_pid") == os.getpid():
            _discard()
        _arena()
        _state["dirty"] = True
        try:
            _launch(library, kernel, entry, grid, block, shared_mem, values, schedule, seed, n_workers, timeout,
                    track_writes)
        except _launcher.LauncherLost:
            raise
        except KernelError:
            _state["dirty"] = False  # a fault or a timeout that was fully handled: the state is consistent
            raise
        _state["dirty"] = False


def _launch(library, kernel, entry, grid, block, shared_mem, values, schedule, seed, n_workers, timeout,
            track_writes):
    arena = _arena()
    arena.reset()
    arena.clear_header()
    report = Report.from_address(arena.base)
    groups = stage(kernel, values, arena)
    module_globals = _stage_globals(library, arena)
    cfg = LaunchConfig(entry=library.compiled.entries.index(entry), schedule=schedule, shared_mem=shared_mem,
                       workers=n_workers or workers, plain=int(library.compiled.plain[entry]), seed=seed,
                       arena_fd=arena.fd if arena.fd is not None else -1, nwindows=len(groups),
                       nargs=len(kernel.params), nglobals=len(module_globals), track_writes=int(track_writes))
    cfg.grid[:] = grid
    cfg.block[:] = block
    # Kernels whose stack use gcc's reports bound run on a reused, unguarded stack pool;
    # others (huge local arrays, recursion) get fresh stacks with guard pages in the child.
    bound = library.compiled.stack_bound
    regions = 0
    if bound is not None and bound + LIBC_STACK_MARGIN <= FIBER_REGION - PAGE:
        regions = min(cfg.workers, grid[0] * grid[1] * grid[2]) * (1 if cfg.plain else block[0] * block[1] * block[2])
    timeout = timeout if timeout is not None else timeout_s
    t0 = time.perf_counter()
    runner = _get_launcher() if isolate else None
    if runner is not None:
        status = runner.run(library.compiled.library, cfg, regions, timeout, kernel.name)
    else:
        if regions and not isolate:
            cfg.pool, cfg.pool_regions = _fiber_pool(regions)
        if isolate:  # no launcher here: fork this process
            status = _run_forked(library, cfg, arena, timeout, kernel)
        else:
            cfg.arena_fd = -1
            status = library.lib.gpt2cpu_launch(ctypes.byref(cfg), arena.base, 0)
    last_launch.seconds = time.perf_counter() - t0
    last_launch.switches = report.switches
    windows = (abi.Window * max(1, len(groups))).from_address(arena.base + abi.kWindowsOffset)
    for w, g in enumerate(groups):
        g.mapped_data = windows[w].mapped_data   # (for the messages: where the launch process put it)
    _print_kernel_output(report, arena.base + abi.kPrintfOffset)
    if report.status == abi.RACE:
        raise BlockRace(_describe_race(kernel, report, groups, grid))
    if report.status != 0 or status != 0:
        nulls = [p.name for p, v in zip(kernel.params, values) if p.pointer and v is None]
        raise KernelError(_describe_failure(library, kernel, report, status, groups, shared_mem, nulls))
    for g in groups:
        if g.lead_written(arena):
            names = ", ".join(f"`{p.name}`" for _, p, _ in g.members)
            raise KernelError(f"kernel `{kernel.name}`: out-of-bounds write just before the start of {names} (found "
                              f"after the launch in the bytes in front of it, so the thread is unknown). Check the "
                              f"index bounds of every write to it.")
    for g in groups:
        g.copy_back(arena)
    for (address, nbytes), offset in zip(library.globals, module_globals):
        ctypes.memmove(address, arena.base + offset, nbytes)


def _stage_globals(library: Library, arena: Arena) -> list[int]:
    """Copy this process's values of the module's globals into the arena; returns their offsets."""
    slots = (GlobalSlot * abi.kMaxGlobals).from_address(arena.base + abi.kGlobalsOffset)
    offsets = []
    for i, (address, nbytes) in enumerate(library.globals):
        offset = arena.alloc(max(nbytes, 1))
        ctypes.memmove(arena.base + offset, address, nbytes)
        slots[i].arena_offset, slots[i].bytes = offset, nbytes
        offsets.append(offset)
    return offsets


def _run_forked(library: Library, cfg, arena: Arena, timeout: float, kernel) -> int:
    """Fallback without the launcher: fork this process for the launch and wait for it."""
    pid = library.lib.gpt2cpu_launch(ctypes.byref(cfg), arena.base, 1)
    if pid < 0:
        raise KernelError(f"kernel `{kernel.name}`: could not start the launch process: {os.strerror(-pid)}")
    deadline = time.monotonic() + timeout
    try:
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return status
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                raise _launcher.LaunchTimeout(kernel.name, timeout)
            time.sleep(0.0002)
    except BaseException:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        raise


def _print_kernel_output(report: Report, printf_buf: int) -> None:
    used = min(report.printf_used, abi.kPrintfCapacity)
    if not used:
        return
    raw = ctypes.string_at(printf_buf, used)
    records, off = [], 0
    while off + 16 <= used:
        block_linear = int.from_bytes(raw[off : off + 8], "little")
        length = int.from_bytes(raw[off + 12 : off + 16], "little")
        records.append((block_linear, len(records), raw[off + 16 : off + 16 + length].decode(errors="replace")))
        off += (16 + length + 1 + 7) // 8 * 8
    records.sort()
    sys.stdout.write("".join(r[2] for r in records))
    if report.printf_dropped:
        sys.stdout.write(f"[{report.printf_dropped} printf calls dropped: the 1 MiB printf buffer was full]\n")
    sys.stdout.flush()


def _source_line(library: Library, report: Report) -> str:
    """'file.cu:LINE' for the faulting instruction, from the module's line tables."""
    addr2line = shutil.which("addr2line")
    if not addr2line or not report.pc or not report.module_base or report.pc < report.module_base:
        return ""
    try:
        out = subprocess.run([addr2line, "-i", "-e", str(library.compiled.library), hex(report.pc - report.module_base)],
                             capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""
    for line in out.splitlines():
        if line.startswith(str(library.compiled.path.parent)) or library.compiled.path.name in line:
            file, _, num = line.rpartition(":")
            return f"{Path(file).name}:{num.split()[0]}"
    return ""


def _where(report: Report) -> str:
    if not report.has_thread:
        return ""
    t, b = tuple(report.thread_idx), tuple(report.block_idx)
    return f" in thread ({t[0]},{t[1]},{t[2]}) of block ({b[0]},{b[1]},{b[2]})"


def _describe_failure(library, kernel, report: Report, status: int, groups, shared_mem: int, nulls=()) -> str:
    head = f"kernel `{kernel.name}` ({library.compiled.path.name})"
    where = _where(report)
    if report.status == abi.RUNTIME_ERROR:
        return f"{head}: {report.message.decode(errors='replace')}{where}"
    if report.status == abi.SIGNAL:
        line = _source_line(library, report)
        at = f" at {line}" if line else ""
        sig = report.signo
        if report.fault_kind == abi.FAULT_MISALIGNED:
            return f"{head}: {_misaligned(report, groups)}{where}{at}"
        if report.fault_kind == abi.FAULT_SHARED:
            return f"{head}: {report.message.decode(errors='replace')}{where}{at}"
        if sig == signal.SIGFPE:
            return f"{head}: arithmetic fault (integer division by zero?){where}{at}"
        if sig in (signal.SIGILL, signal.SIGTRAP):
            return f"{head}: trap (__trap() or an illegal instruction){where}{at}"
        if sig == signal.SIGABRT:
            return f"{head}: aborted{where}{at}"
        if report.fault_kind == abi.FAULT_STACK_OVERFLOW:
            return (f"{head}: stack overflow{where}{at}: the thread's local variables (large local arrays, or a "
                    f"recursion too deep) need more than the {(FIBER_REGION - PAGE) >> 10} KiB a CPU-backend thread "
                    f"has; on a GPU they would spill to slow local memory or overflow its stack")
        if report.fault_kind == abi.FAULT_GENERAL_PROTECTION:
            return (f"{head}: illegal memory access{where}{at}: an address outside the address space (an index "
                    f"far beyond any argument, or a wildly wrong pointer; for a type declared __align__(n), also an "
                    f"address that is not a multiple of n)")
        return f"{head}: {_classify_address(report, groups, nulls)}{where}{at}"
    if os.WIFSIGNALED(status):
        return f"{head}: the launch process was killed by signal {os.WTERMSIG(status)} (out of memory?)"
    return f"{head}: the launch process failed (status {status})"


def _locate(report: Report, addr: int, groups):
    """(group, byte offset from the start of its array) of an address in the launch's windows, or None."""
    base, shift = report.windows_base, report.window_shift
    if not base or not addr >= base:
        return None
    w = (addr - base) >> shift
    if w >= len(groups):
        return None
    return groups[w], addr - groups[w].mapped_data


def _members(g) -> str:
    return " / ".join(f"`{p.name}` (argument {i})" for i, p, _ in g.members)


def _classify_address(report: Report, groups, nulls=()) -> str:
    access = {0: "read", 1: "write"}.get(report.access, "access")
    addr = report.addr
    found = _locate(report, addr, groups)
    if found:
        g, off = found
        _, _, a = g.members[0]
        item = a.itemsize or 1
        if off >= g.nbytes:
            return (f"out-of-bounds {access} of {_members(g)}: {off - g.nbytes} bytes past its end, at element "
                    f"{off // item} of an array of {a.size} {a.dtype.name} elements")
        if off < 0:
            return (f"out-of-bounds {access} of {_members(g)}: {-off} bytes before its start (element "
                    f"-{-(off // item)})")
        return (f"write to {_members(g)}, which the kernel declares const (through a cast?)"
                if report.access == 1 else f"invalid {access} inside {_members(g)}")
    if addr < 1 << 24:   # NULL plus an index: within the first 16 MiB, where nothing is ever mapped
        given = (f": the argument{'s' if len(nulls) > 1 else ''} passed as None "
                 f"{'are' if len(nulls) > 1 else 'is'} {', '.join(f'`{n}`' for n in nulls)}; check it before use "
                 f"(`if ({nulls[0]} != NULL)`) or pass an array" if nulls else "")
        return f"{access} through a null pointer (address {addr:#x}){given}"
    return (f"illegal memory {access} at address {addr:#x}: a pointer that points nowhere the kernel was given "
            f"(an index far beyond any argument, or a pointer computed wrongly)")


def _misaligned(report: Report, groups) -> str:
    vector = report.detail.decode(errors="replace")
    access = {0: "read", 1: "write"}.get(report.access, "access")
    found = _locate(report, report.addr, groups)
    if vector.startswith("wmma::"):   # a warp matrix function's pointer (include/mma.h)
        rule = (f"CUDA requires a 256-bit (32-byte) aligned pointer to the tile's first element; on a GPU the "
                f"{access} goes wrong or the kernel stops with 'misaligned address'")
        if found:
            g, off = found
            _, _, a = g.members[0]
            # (memory not NumPy's own: from the last multiple of 256 before it, as the check measures)
            from_allocation = off + (g.lo - g.origin if g.origin is not None else g.lo % 256)
            return (f"{vector}: the pointer is element {off // (a.itemsize or 1)} of {_members(g)}, {from_allocation} "
                    f"bytes from the start of its allocation: not a multiple of {report.vector_bytes}. {rule}")
        return (f"{vector}: the pointer {report.addr:#x} is not a multiple of {report.vector_bytes} bytes from the "
                f"start of its __shared__ variable: {rule}")
    if found:
        g, off = found
        _, _, a = g.members[0]
        phase = g.lo % 256
        return (f"misaligned {vector} {access} of {_members(g)} at element {off // (a.itemsize or 1)} (byte offset "
                f"{off} from its start): a {vector} must sit at a multiple of {report.vector_bytes} bytes (the array "
                f"starts {phase % report.vector_bytes} bytes past such a multiple); on a GPU the kernel stops with "
                f"'misaligned address'")
    return (f"misaligned {vector} {access} at address {report.addr:#x}: a {vector} must sit at a multiple of "
            f"{report.vector_bytes} bytes; on a GPU the kernel stops with 'misaligned address'")


def _describe_race(kernel, report: Report, groups, grid) -> str:
    found = _locate(report, report.addr, groups)
    blocks = []
    for linear in report.race_blocks:
        gx, gy = grid[0], grid[1]
        blocks.append(f"({linear % gx},{(linear // gx) % gy},{linear // (gx * gy)})")
    if found:
        g, off = found
        _, _, a = g.members[0]
        what = f"element {off // (a.itemsize or 1)} of {_members(g)}"
    else:
        what = f"address {report.addr:#x}"
    return (f"kernel `{kernel.name}`: {what} is written by blocks {blocks[0]} and {blocks[1]}, with no "
            f"atomic: blocks run in no fixed order and at the same time, so the result depends on the order (a lost "
            f"update, or the last writer wins). Give each block its own output, or use an atomic (atomicAdd...).")

