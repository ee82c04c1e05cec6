"""RawModule and RawKernel of the stand-in: compiled by the real NVRTC (so that a kernel NVRTC rejects
fails here too), launched on the CPU backend with CuPy's conversion of the arguments."""
from __future__ import annotations

import hashlib
import numbers
import os
from pathlib import Path

import numpy as np

from . import compiler, driver
from .memory import MemoryPointer, UnownedMemory

# the NumPy scalar types CuPy's launcher passes as their own bytes ('?bhilqBHILQefdFD')
_NUMPY_SCALARS = {np.dtype(c).type for c in "?bhilqBHILQefdFD"}


def _dim3(v, what):
    items = tuple(v) if isinstance(v, (tuple, list)) else (v,)
    if not 1 <= len(items) <= 3 or not all(isinstance(i, numbers.Integral) for i in items):
        raise TypeError(f"{what} must be an int or a tuple of 1 to 3 ints, got {v!r}")
    return tuple(int(i) for i in items) + (1,) * (3 - len(items))


class RawModule:
    def __init__(self, code=None, *, path=None, options=(), backend="nvrtc", translate_cucomplex=False,
                 enable_cooperative_groups=False, name_expressions=None, jitify=False):
        if code is None:
            raise NotImplementedError("the CuPy stand-in compiles source code (code=...), not cubin/ptx files")
        self.code, self.options = code, tuple(options)
        self.name_expressions = tuple(name_expressions or ())
        self._library = None
        self._lowered: dict[str, str] = {}

    def compile(self, log_stream=None):
        """Compile now (CuPy compiles lazily: at the first get_function or get_global)."""
        if self._library is not None:
            return
        from helpers.runtime import cpu_backend, nvrtc
        from .device import Device
        options = (f"-arch=sm_{Device().compute_capability}",) + self.options
        try:
            result = nvrtc.compile_program(self.code, "kernel.cu", options, self.name_expressions)
        except nvrtc.NVRTCError as e:
            raise compiler.CompileException(e.log, self.code, "kernel.cu", options) from None
        if log_stream is not None:
            log_stream.write(result.log)
        self._lowered = result.lowered_names
        # the same source for the CPU backend, from a file named by its content
        digest = hashlib.sha256((self.code + "\0".join(self.options + self.name_expressions)).encode()).hexdigest()
        path = cpu_backend.cache_dir() / "standin" / f"module-{digest[:24]}.cu"
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not path.is_file():   # written whole or not at all: ranks of an mpirun compile the same module at once
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            tmp.write_text(self.code)
            os.replace(tmp, path)
        self._path = path
        # without NVIDIA's include folders (helpers.device passes them for NVRTC): the CPU backend has its own
        # cuda_fp16.h and cuda_bf16.h, which NVIDIA's, found first, would hide
        nvidia = {f"-I{d}" for d in nvrtc.cuda_include_dirs()}
        cpu_options = tuple(o for o in self.options if o not in nvidia)
        self._library = cpu_backend.Library(cpu_backend.compile_module(path, cpu_options, self.name_expressions))

    def get_function(self, name: str) -> "RawKernel":
        self.compile()
        return RawKernel(self, name)

    def get_global(self, name: str) -> MemoryPointer:
        """A pointer to a __device__ variable: the CPU backend's copy of it, which every launch updates."""
        self.compile()
        names = [g.name for g in self._library.compiled.globals]
        if name not in names:
            raise driver.CUDADriverError(f"CUDA_ERROR_NOT_FOUND: named symbol not found ({name})")
        address, nbytes = self._library.globals[names.index(name)]
        return MemoryPointer(UnownedMemory(address, nbytes, self._library), 0)


class RawKernel:
    def __init__(self, module: RawModule, name: str):
        from helpers.runtime import cuda_source
        self.module, self.name = module, name
        entries = module._library.compiled.entries
        if name not in entries:
            raise driver.CUDADriverError(f"CUDA_ERROR_NOT_FOUND: named symbol not found ({name}); the module has "
                                         f"{', '.join(entries)}")
        self._kernel = cuda_source.kernel_signature(module.code, name)

    def __call__(self, grid, block, args, *, shared_mem=0, stream=None, enable_cooperative_groups=False):
        from helpers.runtime import cpu_backend
        from helpers.runtime.errors import KernelError
        from .. import ndarray
        grid3, block3 = _dim3(grid, "grid"), _dim3(block, "block")
        params = self._kernel.params
        if len(args) != len(params):
            raise TypeError(f"{self.name} takes {len(params)} arguments, {len(args)} were given (on a GPU the "
                            f"kernel would read garbage)")
        values = []
        for p, a in zip(params, args):
            if a is None:
                values.append(None)   # a null pointer
            elif isinstance(a, ndarray):
                if not p.pointer:
                    raise TypeError(f"{self.name}: an array passed for the scalar parameter `{p.name}`")
                values.append(a._a)
            elif p.pointer:
                raise TypeError(f"{self.name}: {type(a).__name__} passed for the pointer parameter `{p.name}`")
            elif type(a) in _NUMPY_SCALARS:
                values.append(a)               # its own bytes: the kernel reads what its parameter's size says
            elif isinstance(a, numbers.Integral):
                values.append(np.int64(a))     # CuPy: Python int -> int64 (bool too: it is an int)
            elif isinstance(a, float):
                values.append(np.float64(a))   # CuPy: Python float -> double
            else:
                raise TypeError(f"Unsupported type {type(a)}")
        try:
            cpu_backend.launch(self.module._library, self._kernel, self.name, grid3, block3, int(shared_mem), values)
        except KernelError as e:
            raise driver.CUDADriverError(f"CUDA_ERROR_ILLEGAL_ADDRESS: an illegal memory access was encountered "
                                         f"(the stand-in's CPU backend found: {e})") from None
