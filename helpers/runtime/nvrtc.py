"""NVRTC, the CUDA runtime compiler (the compiler CuPy uses), called directly through ctypes.

NVRTC is a plain library: it compiles CUDA C++ to PTX and cubins for any architecture without a GPU
or a driver. The `nvidia-cuda-nvrtc-cu12` wheel (a dependency on Linux and Windows) ships it; a CUDA
toolkit's copy (`CUDA_PATH`, `CUDA_HOME`, /usr/local/cuda) is found too. NVIDIA makes no NVRTC for
macOS, so there `available()` is False and `problem()` says why.

    from helpers.runtime import nvrtc
    result = nvrtc.compile_program(source, "k.cu", ["-arch=sm_90", "--ptxas-options=--verbose"])
    result.log, result.cubin, result.lowered_names
"""
from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .cpu_backend import cache
from .errors import CompileError

INSTALL_HINT = "pip install nvidia-cuda-nvrtc-cu12  (installed with this project on Linux and Windows)"

_library = None
_problem: str | None = None


def _candidates() -> list[str]:
    """Places NVRTC may be, best first: the pip wheels, then a CUDA toolkit, then the loader's path."""
    found: list[str] = []
    names = ("nvrtc64_*.dll",) if sys.platform == "win32" else ("libnvrtc.so.*", "libnvrtc.so")
    for entry in sys.path:
        nvidia = Path(entry) / "nvidia"
        if nvidia.is_dir():
            for sub in ("cuda_nvrtc/lib", "cuda_nvrtc/bin", "cu13/lib", "cu13/bin", "cu12/lib", "cu12/bin"):
                for pattern in names:
                    found += sorted(glob.glob(str(nvidia / sub / pattern)))
    for var in ("CUDA_PATH", "CUDA_HOME"):
        if os.environ.get(var):
            for sub in ("lib64", "lib", "bin"):
                for pattern in names:
                    found += sorted(glob.glob(os.path.join(os.environ[var], sub, pattern)))
    for pattern in names:
        found += sorted(glob.glob(os.path.join("/usr/local/cuda/lib64", pattern)))
    system = ctypes.util.find_library("nvrtc")
    if system:
        found.append(system)
    # the plain "libnvrtc.so.12" (a real file) before "libnvrtc.alt.so.12" or builtins
    return [f for f in dict.fromkeys(found) if "builtins" not in f and ".alt." not in f]


def _load():
    global _library, _problem
    if _library is not None or _problem is not None:
        return _library
    if sys.platform == "darwin":
        _problem = ("NVIDIA ships no NVRTC (no CUDA at all) for macOS, so the GPU compile check cannot run here; "
                    "the kernels still run on the CPU backend. It runs on Linux, Windows and Colab")
        return None
    errors = []
    for path in _candidates():
        try:
            lib = ctypes.CDLL(path)
            major, minor = ctypes.c_int(), ctypes.c_int()
            if lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor)) != 0:
                raise OSError("nvrtcVersion failed")
        except OSError as e:
            errors.append(f"{path}: {e}")
            continue
        _declare(lib)
        lib.version = (major.value, minor.value)
        lib.path = path
        _library = lib
        return lib
    tried = "; ".join(errors) if errors else "no libnvrtc found in the nvidia wheels, CUDA_PATH, CUDA_HOME or /usr/local/cuda"
    _problem = f"the NVRTC library is not installed ({tried}). Install it with: {INSTALL_HINT}"
    return None


def _declare(lib) -> None:
    p, sz, c = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p
    lib.nvrtcCreateProgram.argtypes = [ctypes.POINTER(p), c, c, ctypes.c_int, ctypes.POINTER(c), ctypes.POINTER(c)]
    lib.nvrtcCompileProgram.argtypes = [p, ctypes.c_int, ctypes.POINTER(c)]
    lib.nvrtcDestroyProgram.argtypes = [ctypes.POINTER(p)]
    lib.nvrtcGetProgramLogSize.argtypes = [p, ctypes.POINTER(sz)]
    lib.nvrtcGetProgramLog.argtypes = [p, c]
    lib.nvrtcGetCUBINSize.argtypes = [p, ctypes.POINTER(sz)]
    lib.nvrtcGetCUBIN.argtypes = [p, c]
    lib.nvrtcGetPTXSize.argtypes = [p, ctypes.POINTER(sz)]
    lib.nvrtcGetPTX.argtypes = [p, c]
    lib.nvrtcAddNameExpression.argtypes = [p, c]
    lib.nvrtcGetLoweredName.argtypes = [p, c, ctypes.POINTER(c)]
    lib.nvrtcGetErrorString.restype = c
    lib.nvrtcGetErrorString.argtypes = [ctypes.c_int]
    lib.nvrtcGetSupportedArchs.argtypes = [ctypes.POINTER(ctypes.c_int)]
    lib.nvrtcGetNumSupportedArchs.argtypes = [ctypes.POINTER(ctypes.c_int)]


def available() -> bool:
    return _load() is not None


def problem() -> str | None:
    """None when NVRTC can be used, else why not and how to install it."""
    _load()
    return _problem


def library():
    """The loaded library, or RuntimeError saying why there is none."""
    lib = _load()
    if lib is None:
        raise RuntimeError(f"the NVRTC compile check cannot run: {_problem}")
    return lib


def version() -> tuple[int, int]:
    return library().version


def supported_archs() -> list[str]:
    """The architectures this NVRTC compiles for, e.g. ['sm_75', 'sm_80', ...]."""
    lib = library()
    n = ctypes.c_int()
    lib.nvrtcGetNumSupportedArchs(ctypes.byref(n))
    archs = (ctypes.c_int * n.value)()
    lib.nvrtcGetSupportedArchs(archs)
    return [f"sm_{a}" for a in archs]


@dataclass
class Compiled:
    log: str
    cubin: bytes
    ptx: str
    lowered_names: dict[str, str] = field(default_factory=dict)   # name expression -> mangled name


class NVRTCError(CompileError):
    """NVRTC refused the source; `log` holds its messages."""

    def __init__(self, message: str, log: str):
        super().__init__(message)
        self.log = log


def _check(lib, status: int, what: str) -> None:
    if status != 0:
        raise RuntimeError(f"NVRTC {what} failed: {lib.nvrtcGetErrorString(status).decode()}")


def cuda_include_dirs() -> list[str]:
    """Where CUDA's headers are (NVRTC has none built in): cuda_fp16.h, cuda_bf16.h, mma.h and
    cooperative_groups.h from the nvidia-cuda-runtime-cu12 wheel, nv/target and cuda/barrier (which
    cooperative groups include) from nvidia-cuda-cccl-cu12, crt/mma.h (what mma.h includes) from
    nvidia-cuda-crt (mma_headers_dir), all dependencies on Linux and Windows; else a CUDA toolkit named
    by CUDA_PATH or CUDA_HOME. Empty if there is none."""
    for base in sys.path:
        runtime, cccl = (Path(base) / "nvidia" / name / "include" for name in ("cuda_runtime", "cuda_cccl"))
        if (runtime / "cuda_fp16.h").is_file():
            mma = mma_headers_dir()
            return ([str(runtime)] + ([str(cccl)] if (cccl / "nv" / "target").is_file() else [])
                    + ([mma] if mma else []))
    for var in ("CUDA_PATH", "CUDA_HOME"):
        toolkit = Path(os.environ.get(var, "/nonexistent")) / "include"
        if (toolkit / "cuda_fp16.h").is_file():   # (a toolkit's include/ has crt/mma.h itself)
            return [str(toolkit)] + [str(p) for p in [toolkit / "cccl"] if (p / "nv" / "target").is_file()]
    return []


MMA_HEADERS = ("mma.h", "mma.hpp")   # the part of crt/ that <mma.h> (the warp matrix functions) includes


def _crt_with_mma() -> Path | None:
    """A crt/ folder with NVIDIA's crt/mma.h and crt/mma.hpp: the nvidia-cuda-crt wheel's (CUDA 13's crt
    headers, installed under nvidia/cu13), nvidia-cuda-nvcc-cu12's, or a toolkit's."""
    places = [Path(base) / "nvidia" / sub / "include" / "crt" for sub in ("cuda_nvcc", "cu13") for base in sys.path]
    places += [Path(os.environ[var]) / "include" / "crt" for var in ("CUDA_PATH", "CUDA_HOME") if os.environ.get(var)]
    return next((p for p in places if all((p / h).is_file() for h in MMA_HEADERS)), None)


_mma_dir: list = []


def mma_headers_dir() -> str | None:
    """A folder that holds crt/mma.h and crt/mma.hpp and nothing else, copied (once, and again when they
    change) from the wheel that ships them into the private kernel cache; None if no wheel has them.

    Only those two files: NVRTC has the rest of crt/ built in, for its own CUDA version, and the wheel's
    (CUDA 13's, whose mma.h and mma.hpp are the same as 12.9's) must not shadow them."""
    if _mma_dir and all((Path(_mma_dir[0]) / "crt" / h).is_file() for h in MMA_HEADERS):
        return _mma_dir[0]   # (copied by this process, and still there)
    _mma_dir.clear()
    source = _crt_with_mma()
    if source is None:
        return None
    folder = cache.directory() / "nvrtc-include"
    (folder / "crt").mkdir(mode=0o700, parents=True, exist_ok=True)
    for name in MMA_HEADERS:
        data, target = (source / name).read_bytes(), folder / "crt" / name
        if not target.is_file() or target.read_bytes() != data:
            tmp = target.with_name(f"{name}.{os.getpid()}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, target)   # atomic: a concurrent process copies the same bytes
    _mma_dir.append(str(folder))
    return _mma_dir[0]


def compile_program(source: str, name: str, options=(), name_expressions=()) -> Compiled:
    """Compile one program. Raises NVRTCError (a CompileError) with NVRTC's log if it does not compile.
    CUDA's headers (cuda_include_dirs) are on the include path."""
    options = [*options, *(f"-I{d}" for d in cuda_include_dirs())]
    lib = library()
    program = ctypes.c_void_p()
    _check(lib, lib.nvrtcCreateProgram(ctypes.byref(program), source.encode(), name.encode(), 0, None, None),
           "createProgram")
    try:
        for expr in name_expressions:
            _check(lib, lib.nvrtcAddNameExpression(program, expr.encode()), "addNameExpression")
        encoded = [o.encode() for o in options]
        status = lib.nvrtcCompileProgram(program, len(encoded), (ctypes.c_char_p * max(1, len(encoded)))(*encoded))
        size = ctypes.c_size_t()
        lib.nvrtcGetProgramLogSize(program, ctypes.byref(size))
        buf = ctypes.create_string_buffer(size.value)
        lib.nvrtcGetProgramLog(program, buf)
        log = buf.value.decode(errors="replace")
        if status != 0:
            raise NVRTCError(f"{name}: {lib.nvrtcGetErrorString(status).decode()}", log)
        lowered = {}
        for expr in name_expressions:
            out = ctypes.c_char_p()
            _check(lib, lib.nvrtcGetLoweredName(program, expr.encode(), ctypes.byref(out)), "getLoweredName")
            lowered[expr] = out.value.decode()
        cubin = b""
        if lib.nvrtcGetCUBINSize(program, ctypes.byref(size)) == 0 and size.value:
            raw = ctypes.create_string_buffer(size.value)
            lib.nvrtcGetCUBIN(program, raw)
            cubin = raw.raw
        ptx = ""
        if lib.nvrtcGetPTXSize(program, ctypes.byref(size)) == 0 and size.value:
            raw = ctypes.create_string_buffer(size.value)
            lib.nvrtcGetPTX(program, raw)
            ptx = raw.value.decode(errors="replace")
        return Compiled(log=log, cubin=cubin, ptx=ptx, lowered_names=lowered)
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(program))
