"""The residual connection: out = a + b, and its backward pass da += dout, db += dout.

References (operators only, so they also run on CuPy arrays; one float32 addition per element, so
the kernels agree with them bit for bit): `residual_forward(a, b) -> out`,
`residual_backward(da, db, dout)`. Wrappers (device arrays, all of one shape):
`forward(out, a, b, version=2)`, `backward(da, db, dout, version=2)`. Version 3 (bf16, asked for by
number) takes bf16 arrays (ml_dtypes.bfloat16, every argument) and rounds each float32 sum once, so
it equals ml_dtypes' rounding of NumPy's float32 sum bit for bit.

Kernels: cuda/residual.cu · notebook: notebooks/05_gelu_residual.ipynb · tests: tests/test_op_residual.py
"""
from __future__ import annotations

from ..runtime import device
from .common import ELEMENTWISE_VERSIONS, Launch, check_version, elementwise_launches, run

#: Kernel versions in cuda/residual.cu: residual_forward<N>, residual_backward<N>.
VERSIONS = {"forward": ELEMENTWISE_VERSIONS, "backward": ELEMENTWISE_VERSIONS}
BLOCK_SIZE = 256


# ------------------------------------------------------------------------------------------------
# NumPy reference
# ------------------------------------------------------------------------------------------------
def residual_forward(a, b):
    """out = a + b."""
    return a + b


def residual_backward(da, db, dout) -> None:
    """The gradient of a sum reaches both terms unchanged: da += dout; db += dout."""
    da += dout
    db += dout


# ------------------------------------------------------------------------------------------------
# Kernel wrappers
# ------------------------------------------------------------------------------------------------
def module():
    """cuda/residual.cu, compiled for the active backend (device.load_module caches it)."""
    return device.load_module("residual.cu")


def launches(step: str, *arrays, version: int, block_size: int = BLOCK_SIZE) -> list[Launch]:
    """The checked launch of `forward` (out, a, b) or `backward` (da, db, dout)."""
    check_version("residual", step, version, VERSIONS)
    names = ("out", "a", "b") if step == "forward" else ("da", "db", "dout")
    if len(arrays) != len(names):
        raise TypeError(f"residual.{step} takes the arrays ({', '.join(names)}), got {len(arrays)}")
    return elementwise_launches(module(), f"residual_{step}{version}", version, block_size, **dict(zip(names, arrays)))


def forward(out, a, b, version=2, block_size=BLOCK_SIZE) -> None:
    """out = a + b on the device; returns None."""
    run(launches("forward", out, a, b, version=version, block_size=block_size))


def backward(da, db, dout, version=2, block_size=BLOCK_SIZE) -> None:
    """da += dout; db += dout on the device; returns None."""
    run(launches("backward", da, db, dout, version=version, block_size=block_size))
