"""A strict stand-in for CuPy, so that the project's GPU path runs, and fails where CuPy would, without
a GPU. CI puts this folder first on PYTHONPATH and runs the test suite and every notebook with
GPT2_DEVICE=cupy; `cupy.__standin__` is True.

Faithful where the project depends on CuPy:
- `ndarray` holds "device" memory: `np.asarray(a)` and every other implicit conversion to NumPy raise
  TypeError as CuPy's do ("Implicit conversion to a NumPy array is not allowed"); mixing with NumPy
  arrays in ufuncs, operators and NumPy functions raises TypeError ("Unsupported type"); `.get()`,
  `cupy.asnumpy`, `__cuda_array_interface__`, `.data.ptr`, views that share memory, 0-d arrays from
  indexing and reductions, and `a[:] = numpy_array` (the one host-to-device assignment CuPy allows);
- allocations come from a memory pool whose blocks are 512-byte aligned, as CuPy's allocator's, with
  `used_bytes`, `total_bytes`, `free_all_blocks`, `set_limit` (an allocation past the limit raises
  `cupy.cuda.memory.OutOfMemoryError`) and a device of a given size (GPT2_STANDIN_GPU=t4, the
  default: Colab's 16 GB T4, sm_75; or h100);
- `RawModule(code=..., options=..., name_expressions=...)` compiles with the real NVRTC (helpers.runtime.nvrtc)
  for the device's architecture, lazily as CuPy does (on `compile()` or the first `get_function`),
  raising `cupy.cuda.compiler.CompileException` with NVRTC's log; `get_function`, `get_global`;
- kernel calls `fn(grid, block, args, shared_mem=0)` convert the arguments as CuPy's launcher does
  (ndarray: its pointer; NumPy scalars: their bytes; Python int: int64; float: float64; None: a null
  pointer; anything else: TypeError) and run on the CPU backend, which reads each parameter with the
  size the kernel declares, as a GPU does;
- `cuda.Event`/`Stream`/`get_elapsed_time`/`get_current_stream`, `cuda.runtime` device queries
  (`getDeviceCount`, `getDeviceProperties`, `memGetInfo`), `cuda.Device`.

Not faithful (said where it matters): times are CPU times, not a GPU's (events measure wall clock);
launches are synchronous; there is one device and one stream; floating-point results are the CPU's
(NumPy's for array functions, the CPU backend's for kernels), not cuBLAS's; only the NumPy functions
and ndarray methods the project uses are checked against CuPy's behaviour (others pass through to
NumPy with the same strictness about NumPy arrays); CuPy's own compile options (its include paths
and -D defines) are not added, only `-arch=sm_XX`.
"""
from __future__ import annotations

import ctypes
import functools
import numbers

import numpy as _np

__standin__ = True
__version__ = "14.2.0+standin"   # CuPy 14: bfloat16 arrays (ml_dtypes)

from . import cuda  # noqa: E402
from .cuda import memory as _memory  # noqa: E402

# dtypes, as CuPy re-exports them
float16, float32, float64 = _np.float16, _np.float32, _np.float64
int8, int16, int32, int64 = _np.int8, _np.int16, _np.int32, _np.int64
uint8, uint16, uint32, uint64 = _np.uint8, _np.uint16, _np.uint32, _np.uint64
bool_, complex64, complex128 = _np.bool_, _np.complex64, _np.complex128
dtype, newaxis, inf, nan, pi, e = _np.dtype, _np.newaxis, _np.inf, _np.nan, _np.pi, _np.e
finfo, iinfo, result_type, can_cast = _np.finfo, _np.iinfo, _np.result_type, _np.can_cast


def _unsupported(x):
    return TypeError(f"Unsupported type {type(x)}")


def _unwrap(x):
    """The host view standing in for device memory; NumPy arrays are refused, as CuPy refuses them."""
    if isinstance(x, ndarray):
        return x._a
    if isinstance(x, _np.ndarray):
        raise _unsupported(x)
    if isinstance(x, (list, tuple)):
        return type(x)(_unwrap(v) for v in x)
    return x


def _memories(objs):
    found = []
    for o in objs:
        if isinstance(o, ndarray):
            found.append(o._mem)
        elif isinstance(o, (list, tuple)):
            found += _memories(o)
    return found


def _wrap(result, sources=()):
    """A result of NumPy on host views: a view of one of the sources' memory stays a view; a fresh
    array is copied into pool memory (so its pointer is aligned as CuPy's are); scalars become 0-d."""
    if isinstance(result, tuple):
        return tuple(_wrap(r, sources) for r in result)
    if isinstance(result, list):
        return [_wrap(r, sources) for r in result]
    if isinstance(result, _np.generic):
        result = _np.asarray(result)
    if not isinstance(result, _np.ndarray):
        return result
    ptr = result.__array_interface__["data"][0]
    for mem in sources:
        if mem.ptr <= ptr < mem.ptr + max(mem.size, 1) or (result.size == 0 and ptr == mem.ptr):
            return ndarray._view(result, mem)
    out = ndarray(result.shape, result.dtype)
    out._a[...] = result
    return out


class ndarray:
    """An array in (stand-in) device memory."""

    __array_priority__ = 100

    def __init__(self, shape, dtype=float, memptr=None, strides=None, order="C"):
        shape = (shape,) if isinstance(shape, numbers.Integral) else tuple(int(s) for s in shape)
        dt = _np.dtype(dtype)
        nbytes = int(_np.prod(shape, dtype=_np.int64)) * dt.itemsize
        if memptr is None:
            memptr = _memory.alloc(nbytes)
        self._mem = memptr.mem
        raw = (ctypes.c_uint8 * max(memptr.mem.size - memptr.offset, 0)).from_address(memptr.ptr) \
            if memptr.mem.size - memptr.offset > 0 else bytearray(0)
        self._a = _np.ndarray(shape, dt, buffer=raw, strides=strides, order=order)

    @classmethod
    def _view(cls, host: _np.ndarray, mem) -> "ndarray":
        v = cls.__new__(cls)
        v._mem, v._a = mem, host
        return v

    # -- what CuPy refuses -----------------------------------------------------------------------------
    def __array__(self, dtype=None, copy=None):
        raise TypeError("Implicit conversion to a NumPy array is not allowed. Please use `.get()` to construct "
                        "a NumPy array explicitly.")

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        out = kwargs.get("out")
        outs = out if isinstance(out, tuple) else (() if out is None else (out,))
        for o in outs:
            if not isinstance(o, ndarray):
                raise _unsupported(o)
        if outs:
            kwargs["out"] = tuple(o._a for o in outs)
        result = getattr(ufunc, method)(*(_unwrap(x) for x in inputs), **kwargs)
        if outs:
            return outs[0] if len(outs) == 1 else outs
        return _wrap(result, _memories(inputs))

    def __array_function__(self, func, types, args, kwargs):
        if any(issubclass(t, _np.ndarray) for t in types):
            raise TypeError(f"Unsupported type {_np.ndarray}")
        result = func(*_unwrap(list(args)), **{k: _unwrap(v) for k, v in kwargs.items()})
        return _wrap(result, _memories(list(args) + list(kwargs.values())))

    # -- memory ------------------------------------------------------------------------------------------
    @property
    def data(self):
        return _memory.MemoryPointer(self._mem, self._a.__array_interface__["data"][0] - self._mem.ptr)

    @property
    def __cuda_array_interface__(self):
        return {"shape": self.shape, "typestr": self.dtype.str, "version": 3,
                "data": (self._a.__array_interface__["data"][0], False),
                "strides": None if self._a.flags.c_contiguous else self._a.strides}

    def get(self, stream=None, order="C", out=None):
        host = _np.array(self._a, order=order, copy=True)
        if out is not None:
            out[...] = host
            return out
        return host

    def set(self, arr, stream=None):
        if not isinstance(arr, _np.ndarray):
            raise TypeError(f"Only numpy.ndarray can be set to cupy.ndarray, got {type(arr)}")
        if arr.shape != self.shape:
            raise ValueError(f"Shape mismatch. Old shape: {self.shape}, new shape: {arr.shape}")
        self._a[...] = arr

    # -- attributes --------------------------------------------------------------------------------------
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    size = property(lambda self: self._a.size)
    ndim = property(lambda self: self._a.ndim)
    nbytes = property(lambda self: self._a.nbytes)
    itemsize = property(lambda self: self._a.itemsize)
    strides = property(lambda self: self._a.strides)
    flags = property(lambda self: self._a.flags)
    base = property(lambda self: None)
    device = property(lambda self: cuda.Device(0))
    T = property(lambda self: _wrap(self._a.T, [self._mem]))
    real = property(lambda self: _wrap(self._a.real, [self._mem]))
    imag = property(lambda self: _wrap(self._a.imag, [self._mem]))

    def __len__(self):
        return len(self._a)

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def __repr__(self):
        return "array(" + _np.array2string(self._a, separator=", ", prefix="array(") + f", dtype={self.dtype})"

    __str__ = lambda self: str(self._a)

    def item(self):
        return self._a.item()

    def tolist(self):
        return self._a.tolist()

    def __bool__(self):
        return bool(self._a)

    def __float__(self):
        return float(self._a)

    def __int__(self):
        return int(self._a)

    def __index__(self):
        if self.dtype.kind not in "iu" or self.size != 1:
            raise TypeError("only integer scalar arrays can be converted to a scalar index")
        return int(self._a)

    def __complex__(self):
        return complex(self._a)

    # -- indexing ----------------------------------------------------------------------------------------
    def __getitem__(self, key):
        return _wrap(self._a[_unwrap(key)], [self._mem])

    def __setitem__(self, key, value):
        if isinstance(value, _np.ndarray) and value.ndim > 0:
            whole = key == slice(None) or key is Ellipsis
            if not whole:
                raise ValueError("non-scalar numpy.ndarray cannot be used for fill")
        elif isinstance(value, ndarray):
            value = value._a
        self._a[_unwrap(key)] = value

    # -- methods ------------------------------------------------------------------------------------------
    def copy(self, order="C"):
        return _wrap(self._a.copy(order=order))

    def astype(self, dtype, order="K", casting=None, subok=None, copy=True):
        if not copy and _np.dtype(dtype) == self.dtype:
            return self
        return _wrap(self._a.astype(dtype, order=order))

    def view(self, dtype=None):
        return _wrap(self._a.view(dtype), [self._mem])

    def reshape(self, *shape, order="C"):
        return _wrap(self._a.reshape(*shape, order=order), [self._mem])

    def ravel(self, order="C"):
        return _wrap(self._a.ravel(order=order), [self._mem])

    def transpose(self, *axes):
        return _wrap(self._a.transpose(*axes), [self._mem])

    def fill(self, value):
        if isinstance(value, _np.ndarray) and value.ndim:
            raise ValueError("non-scalar numpy.ndarray cannot be used for fill")
        self._a.fill(value)


def _method(name):
    def method(self, *args, **kwargs):
        return getattr(_np, name)(self, *args, **kwargs)
    method.__name__ = name
    return method


for _name in ("sum", "mean", "max", "min", "argmax", "argmin", "any", "all", "std", "var", "prod", "cumsum",
              "squeeze", "swapaxes", "dot", "clip", "round", "nonzero", "argsort"):
    setattr(ndarray, _name, _method(_name))
ndarray.flatten = lambda self: self.copy().ravel()


def _operator(ufunc, swap=False):
    if swap:
        return lambda self, other: ufunc(other, self)
    return lambda self, other: ufunc(self, other)


for _dunder, _uf in (("add", _np.add), ("sub", _np.subtract), ("mul", _np.multiply), ("truediv", _np.true_divide),
                     ("floordiv", _np.floor_divide), ("mod", _np.remainder), ("pow", _np.power),
                     ("matmul", _np.matmul), ("and", _np.bitwise_and), ("or", _np.bitwise_or),
                     ("xor", _np.bitwise_xor), ("lshift", _np.left_shift), ("rshift", _np.right_shift)):
    setattr(ndarray, f"__{_dunder}__", _operator(_uf))
    setattr(ndarray, f"__r{_dunder}__", _operator(_uf, swap=True))
    setattr(ndarray, f"__i{_dunder}__", lambda self, other, _u=_uf: _u(self, other, out=self))
for _dunder, _uf in (("lt", _np.less), ("le", _np.less_equal), ("gt", _np.greater), ("ge", _np.greater_equal),
                     ("eq", _np.equal), ("ne", _np.not_equal)):
    setattr(ndarray, f"__{_dunder}__", _operator(_uf))
ndarray.__neg__ = lambda self: _np.negative(self)
ndarray.__pos__ = lambda self: _np.positive(self)
ndarray.__abs__ = lambda self: _np.absolute(self)
ndarray.__invert__ = lambda self: _np.invert(self)
ndarray.__hash__ = None


# ------------------------------------------------------------------------------------------------
# Creating arrays and moving them
# ------------------------------------------------------------------------------------------------
def asnumpy(a, stream=None, order="C", out=None):
    if isinstance(a, ndarray):
        return a.get(order=order, out=out)
    return _np.asarray(a, order=order)


def array(obj, dtype=None, copy=True, order="K", subok=False, ndmin=0):
    if isinstance(obj, ndarray):
        host = obj._a.astype(dtype or obj.dtype, order="C", copy=True)
        if not copy and host.dtype == obj.dtype:
            return obj
    else:
        host = _np.array(obj, dtype=dtype, ndmin=ndmin)   # host to device: allowed, as in CuPy
    out = ndarray(host.shape, host.dtype)
    out._a[...] = host
    return out


def asarray(a, dtype=None, order=None):
    if isinstance(a, ndarray) and (dtype is None or _np.dtype(dtype) == a.dtype):
        return a
    return array(a, dtype=dtype)


def ascontiguousarray(a, dtype=None):
    if isinstance(a, ndarray) and a.flags.c_contiguous and (dtype is None or _np.dtype(dtype) == a.dtype):
        return a
    return array(a, dtype=dtype)


def empty(shape, dtype=float, order="C"):
    return ndarray(shape, dtype, order=order)


def zeros(shape, dtype=float, order="C"):
    a = ndarray(shape, dtype, order=order)
    a._a.fill(0)
    return a


def ones(shape, dtype=float, order="C"):
    a = ndarray(shape, dtype, order=order)
    a._a.fill(1)
    return a


def full(shape, fill_value, dtype=None, order="C"):
    a = ndarray(shape, dtype if dtype is not None else _np.asarray(fill_value).dtype, order=order)
    a._a.fill(fill_value)
    return a


def _like(maker):
    def like(a, dtype=None, order="K", subok=None, shape=None):
        return maker(a.shape if shape is None else shape, dtype or a.dtype)
    return like


empty_like, zeros_like, ones_like = _like(empty), _like(zeros), _like(ones)


def full_like(a, fill_value, dtype=None, order="K", subok=None, shape=None):
    return full(a.shape if shape is None else shape, fill_value, dtype or a.dtype)


def get_array_module(*args):
    return __import__(__name__) if any(isinstance(a, ndarray) for a in args) else _np


def get_default_memory_pool():
    return _memory.POOL


def get_default_pinned_memory_pool():
    return _memory.PINNED_POOL


class RawModule(cuda._module.RawModule):
    pass


RawKernel = cuda._module.RawKernel


# ------------------------------------------------------------------------------------------------
# Every other NumPy function, with CuPy's strictness: device arrays in, device arrays out
# ------------------------------------------------------------------------------------------------
_CREATION = {"arange", "linspace", "eye", "identity", "tri", "indices", "logspace"}


def _device_function(name):
    func = getattr(_np, name)

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        if name in _CREATION:
            return _wrap(func(*args, **kwargs))
        for a in list(args) + list(kwargs.values()):
            if isinstance(a, _np.ndarray) or (isinstance(a, (list, tuple)) and
                                              any(isinstance(x, _np.ndarray) for x in a)):
                raise _unsupported(a if isinstance(a, _np.ndarray) else a[0])
        result = func(*_unwrap(list(args)), **{k: _unwrap(v) for k, v in kwargs.items()})
        return _wrap(result, _memories(list(args) + list(kwargs.values())))
    return wrapper


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    if hasattr(_np, name) and callable(getattr(_np, name)):
        f = _device_function(name)
        globals()[name] = f
        return f
    raise AttributeError(f"the CuPy stand-in has no {name!r} (module 'cupy' has no attribute {name!r})")


class _Linalg:
    def __getattr__(self, name):
        func = getattr(_np.linalg, name)

        def wrapper(*args, **kwargs):
            for a in args:
                if isinstance(a, _np.ndarray):
                    raise _unsupported(a)
            return _wrap(func(*_unwrap(list(args)), **kwargs), _memories(args))
        return wrapper


linalg = _Linalg()


class _Random:
    """cupy.random, drawn on the host (the stand-in's numbers are NumPy's, not CuPy's generator's)."""

    def __init__(self):
        self._rng = _np.random.default_rng(0)

    def seed(self, s=None):
        self._rng = _np.random.default_rng(s)

    def __getattr__(self, name):
        func = getattr(self._rng, name, None) or getattr(_np.random, name)

        def wrapper(*args, **kwargs):
            return _wrap(_np.asarray(func(*args, **kwargs)))
        return wrapper


random = _Random()


class _StrideTricks:
    """cupy.lib.stride_tricks: as_strided makes a view with any shape and strides over the array's memory,
    unchecked (as CuPy's and NumPy's)."""

    @staticmethod
    def as_strided(x, shape=None, strides=None):
        return ndarray._view(_np.lib.stride_tricks.as_strided(x._a, shape, strides), x._mem)


class _Lib:
    stride_tricks = _StrideTricks()


lib = _Lib()
