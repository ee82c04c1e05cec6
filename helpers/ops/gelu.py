"""GELU (GPT-2's tanh form) and the residual connection: NumPy references and kernel wrappers.

Kernels: `cuda/gelu.cu` (gelu_forward1/2, gelu_backward1/2) and `cuda/residual.cu`
(residual_forward1/2, residual_backward1/2); notebook: `notebooks/05_gelu_residual.ipynb`.

References (NumPy, dtype-generic: float32 in use, float64 for finite differences; written with operators
and NumPy ufuncs only, so they also run on CuPy arrays, which implement NumPy's ufunc protocol):
    gelu_forward(x) -> out                 gelu_backward(dx, dout, x)          (dx += gelu'(x) * dout)
    residual_forward(a, b) -> out          residual_backward(da, db, dout)     (da += dout; db += dout)
Kernel wrappers (device arrays, float32, C-contiguous; they check the version's assumptions and return None):
    forward(out, x, version=2)             backward(dx, dout, x, version=2)
    residual_forward(out, a, b, version=2) residual_backward(da, db, dout, version=2)

`residual_forward` and `residual_backward` are both reference and wrapper, since both names were
asked for: `residual_forward(a, b)` (two arrays) is the reference and returns a + b,
`residual_forward(out, a, b)` (three arrays) launches a kernel. `residual_backward(da, db, dout)`
without `version` is the reference (`da += dout; db += dout`, written with operators only, so it
also runs on CuPy arrays and gives the kernels' bits exactly: one float32 addition per element);
with `version=1` or `version=2` it launches that kernel.
"""
from __future__ import annotations

import math

import numpy as np

from .. import ceil_div
from ..runtime import device
from . import checks

GELU_SCALING_FACTOR = math.sqrt(2.0 / math.pi)  # 0.7978845608028654; a literal in gelu.cu (NVRTC has no M_PI)
GELU_CUBIC = 0.044715

VERSIONS = {
    1: "one element per thread (4-byte loads and stores)",
    2: "four elements per thread through float4 (16-byte loads and stores); n % 4 == 0, 16-byte aligned arrays",
}
BLOCK_SIZE = 256


# ------------------------------------------------------------------------------------------------
# References
# ------------------------------------------------------------------------------------------------
def gelu_forward(x):
    """GPT-2's GELU, the tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    u = GELU_SCALING_FACTOR * (x + GELU_CUBIC * x**3)
    return 0.5 * x * (1 + np.tanh(u))


def gelu_derivative(x):
    """d gelu / dx = 0.5 (1 + tanh u) + 0.5 x sech^2(u) du/dx, with sech^2 u = 1 - tanh^2 u."""
    u = GELU_SCALING_FACTOR * (x + GELU_CUBIC * x**3)
    tanh_u = np.tanh(u)
    du_dx = GELU_SCALING_FACTOR * (1 + 3 * GELU_CUBIC * x**2)
    return 0.5 * (1 + tanh_u) + 0.5 * x * (1 - tanh_u**2) * du_dx


def gelu_backward(dx, dout, x) -> None:
    """dx += gelu'(x) * dout (accumulates, like every backward here)."""
    dx += gelu_derivative(x) * dout


def gelu_erf(x):
    """The exact GELU, x Phi(x) = 0.5 x (1 + erf(x / sqrt 2)), in float64: NOT what GPT-2 uses.

    For comparison only (PyTorch's default nn.GELU()); NumPy has no erf, so math.erf per element."""
    x = np.asarray(x, dtype=np.float64)
    return 0.5 * x * (1 + np.vectorize(math.erf, otypes=[np.float64])(x / math.sqrt(2.0)))


def _residual_forward_reference(a, b):
    return a + b


def _residual_backward_reference(da, db, dout) -> None:
    da += dout
    db += dout


# ------------------------------------------------------------------------------------------------
# Kernel wrappers
# ------------------------------------------------------------------------------------------------
_KERNEL_FILES = {"gelu": "gelu.cu", "residual": "residual.cu"}


def _function(op: str, kernel: str):
    return device.load_module(_KERNEL_FILES[op]).get_function(kernel)


def _check_version(version):
    if version not in VERSIONS:
        raise ValueError(f"unknown version {version!r}: the versions are {sorted(VERSIONS)} ({VERSIONS})")


def _check_same_shape(kernel: str, arrays: dict):
    shapes = {name: tuple(a.shape) for name, a in arrays.items()}
    if len(set(shapes.values())) != 1:
        listed = ", ".join(f"{name} {shape}" for name, shape in shapes.items())
        raise ValueError(f"{kernel} works elementwise: all arrays must have the same shape, got {listed}")


def _check_float4(kernel: str, arrays: dict):
    """Version 2 reads and writes float4: n % 4 == 0 and every array 16-byte aligned."""
    n = next(iter(arrays.values())).size
    if n % 4:
        raise ValueError(f"{kernel} loads float4: the number of elements must be a multiple of 4, got n={n} "
                         f"(n % 4 = {n % 4}); use version 1, which takes any n")
    checks.check_float4(kernel, "version 1", **arrays)


def _launch(op: str, kernel_base: str, version: int, arrays: dict, block_size: int):
    _check_version(version)
    kernel = f"{kernel_base}{version}"
    _check_same_shape(kernel, arrays)
    n = next(iter(arrays.values())).size
    if version == 2:
        _check_float4(kernel, arrays)
        n = n // 4  # the kernel counts float4s
    if n == 0:
        return  # nothing to do (a grid of 0 blocks is not a valid launch)
    fn = _function(op, kernel)
    fn((ceil_div(n, block_size),), (block_size,), (*arrays.values(), n))


def forward(out, x, version=2, block_size=BLOCK_SIZE) -> None:
    """out = gelu(x) with gelu_forward<version>."""
    _launch("gelu", "gelu_forward", version, {"out": out, "x": x}, block_size)


def backward(dx, dout, x, version=2, block_size=BLOCK_SIZE) -> None:
    """dx += gelu'(x) * dout with gelu_backward<version>."""
    _launch("gelu", "gelu_backward", version, {"dx": dx, "dout": dout, "x": x}, block_size)


def residual_forward(*arrays, version=None, block_size=BLOCK_SIZE):
    """residual_forward(a, b) -> a + b: the reference.
    residual_forward(out, a, b, version=2): out = a + b with residual_forward<version>; returns None."""
    if len(arrays) == 2 and version is None:
        return _residual_forward_reference(*arrays)
    if len(arrays) == 3:
        out, a, b = arrays
        _launch("residual", "residual_forward", 2 if version is None else version, {"out": out, "a": a, "b": b},
                block_size)
        return None
    raise TypeError(f"residual_forward takes (a, b) for the reference or (out, a, b, version=...) for a kernel; "
                    f"got {len(arrays)} arrays" + (" and a version" if version is not None else ""))


def residual_backward(da, db, dout, version=None, block_size=BLOCK_SIZE) -> None:
    """da += dout; db += dout. Without `version`: the reference (operators only: NumPy or CuPy arrays);
    with version=1 or 2: residual_backward<version>."""
    if version is None:
        _residual_backward_reference(da, db, dout)
        return
    _launch("residual", "residual_backward", version, {"da": da, "db": db, "dout": dout}, block_size)
