"""GELU, GPT-2's tanh form: the NumPy reference and the kernel wrappers.

    out = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))          dx += gelu'(x) * dout

References (dtype-generic: float32 in use, float64 for finite differences; operators and NumPy
ufuncs only, so they also run on CuPy arrays): `gelu_forward(x) -> out`, `gelu_backward(dx, dout, x)`.
Wrappers (device arrays of any shape, all of one shape): `forward(out, x, version=2)`,
`backward(dx, dout, x, version=2)`. Version 3 (bf16, asked for by number) takes bf16 arrays
(ml_dtypes.bfloat16: out, x; dx, dout, x), computes in float32 and rounds each result once.

Kernels: cuda/gelu.cu · notebook: notebooks/05_gelu_residual.ipynb · tests: tests/test_op_gelu.py
"""
from __future__ import annotations

import math

import numpy as np

from ..runtime import device
from .common import ELEMENTWISE_VERSIONS, Launch, check_version, elementwise_launches, run

GELU_SCALING_FACTOR = math.sqrt(2.0 / math.pi)  # 0.7978845608028654; a literal in gelu.cu (NVRTC has no M_PI)
GELU_CUBIC = 0.044715

#: Kernel versions in cuda/gelu.cu: gelu_forward<N>, gelu_backward<N>.
VERSIONS = {"forward": ELEMENTWISE_VERSIONS, "backward": ELEMENTWISE_VERSIONS}
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


# ------------------------------------------------------------------------------------------------
# Kernel wrappers
# ------------------------------------------------------------------------------------------------
def module():
    """cuda/gelu.cu, compiled for the active backend (device.load_module caches it)."""
    return device.load_module("gelu.cu")


def launches(step: str, *arrays, version: int, block_size: int = BLOCK_SIZE) -> list[Launch]:
    """The checked launch of `forward` (out, x) or `backward` (dx, dout, x)."""
    check_version("gelu", step, version, VERSIONS)
    names = ("out", "x") if step == "forward" else ("dx", "dout", "x")
    if len(arrays) != len(names):
        raise TypeError(f"gelu.{step} takes the arrays ({', '.join(names)}), got {len(arrays)}")
    return elementwise_launches(module(), f"gelu_{step}{version}", version, block_size, **dict(zip(names, arrays)))


def forward(out, x, version=2, block_size=BLOCK_SIZE) -> None:
    """out = gelu(x) on the device; returns None."""
    run(launches("forward", out, x, version=version, block_size=block_size))


def backward(dx, dout, x, version=2, block_size=BLOCK_SIZE) -> None:
    """dx += gelu'(x) * dout on the device; returns None."""
    run(launches("backward", dx, dout, x, version=version, block_size=block_size))
