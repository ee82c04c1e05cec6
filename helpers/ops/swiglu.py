"""SwiGLU, the middle of Llama's MLP down(silu(gate(x)) * up(x)): the NumPy reference and the kernel
wrappers. The model fuses gate and up into one matmul whose output row is [gate (H) | up (H)]:

    g = gate_up[..., :H]     u = gate_up[..., H:]     out = silu(g) * u,   silu(g) = g / (1 + exp(-g))
    dg += dout * u * sigmoid(g) * (1 + g * (1 - sigmoid(g)))              du += dout * silu(g)

References (dtype-generic: float32 in use, float64 for finite differences): `swiglu_forward(gate_up)
-> out` and `swiglu_backward(dgate_up, dout, gate_up)`, which accumulates into both halves of
dgate_up. Wrappers (device arrays; gate_up and dgate_up (..., 2H), out and dout (..., H), the same
leading axes): `forward(out, gate_up, version=2)`, `backward(dgate_up, dout, gate_up, version=2)`.

This is elementwise over the H outputs of each row, but gate_up is twice as wide as out, so
common.elementwise_launches (all arrays of one shape) does not fit: `launches` makes the same checks
itself (common's validators), with the shapes of the two halves.

Kernels: cuda/swiglu.cu · notebook: notebooks/11_llama_ops.ipynb · tests: tests/test_op_swiglu.py
"""
from __future__ import annotations

import numpy as np

from ..runtime import device
from .common import Launch, ceil_div, check_array, check_block, check_float4, check_int32, check_multiple_of_4, \
    check_version, run, shape_of

#: Kernel versions in cuda/swiglu.cu: swiglu_forward<N>, swiglu_backward<N>.
VERSIONS = {
    "forward": {
        1: "one output element per thread (4-byte loads and stores); any H",
        2: "four output elements per thread through float4 (16-byte loads and stores); H % 4 == 0, 16-byte aligned",
    },
    "backward": {
        1: "one output element per thread: its gate and up gradients (4-byte loads and stores); any H",
        2: "four output elements per thread through float4 (16-byte loads and stores); H % 4 == 0, 16-byte aligned",
    },
}
BLOCK_SIZE = 256


# ------------------------------------------------------------------------------------------------
# References
# ------------------------------------------------------------------------------------------------
def sigmoid(g):
    """1 / (1 + exp(-g)) without overflow: from e = exp(-|g|), which lies in (0, 1]."""
    e = np.exp(-np.abs(g))
    return np.where(g >= 0, 1 / (1 + e), e / (1 + e))


def silu(g):
    """g * sigmoid(g) = g / (1 + exp(-g))."""
    return g * sigmoid(g)


def silu_derivative(g):
    """d silu / dg = s + g s (1 - s) = s (1 + g (1 - s)), s = sigmoid(g)."""
    s = sigmoid(g)
    return s * (1 + g * (1 - s))


def halves(gate_up):
    """The gate and up halves of gate_up's last axis (views): g = [..., :H], u = [..., H:]."""
    H = gate_up.shape[-1] // 2
    return gate_up[..., :H], gate_up[..., H:]


def swiglu_forward(gate_up):
    """out = silu(g) * u, of shape gate_up.shape[:-1] + (H,)."""
    g, u = halves(gate_up)
    return silu(g) * u


def swiglu_backward(dgate_up, dout, gate_up) -> None:
    """dg += dout * u * silu'(g), du += dout * silu(g), into dgate_up's two halves (accumulates)."""
    g, u = halves(gate_up)
    dg, du = halves(dgate_up)   # views: += writes into dgate_up
    dg += dout * u * silu_derivative(g)
    du += dout * silu(g)


# ------------------------------------------------------------------------------------------------
# Kernel wrappers
# ------------------------------------------------------------------------------------------------
def module():
    """cuda/swiglu.cu, compiled for the active backend (device.load_module caches it)."""
    return device.load_module("swiglu.cu")


def launches(step: str, *arrays, version: int, block_size=None) -> list[Launch]:
    """The checked launch of `forward` (out, gate_up) or `backward` (dgate_up, dout, gate_up)."""
    check_version("swiglu", step, version, VERSIONS)
    names = ("out", "gate_up") if step == "forward" else ("dgate_up", "dout", "gate_up")
    if len(arrays) != len(names):
        raise TypeError(f"swiglu.{step} takes the arrays ({', '.join(names)}), got {len(arrays)}")
    named = dict(zip(names, arrays))
    kernel = f"swiglu_{step}{version}"
    gate_up = named["gate_up"]
    check_array(kernel, "gate_up", gate_up)
    shape = shape_of(gate_up)
    if len(shape) < 1 or shape[-1] % 2:
        raise ValueError(f"{kernel}: gate_up's last axis holds [gate | up], H values each: it must have an even "
                         f"length 2H, got shape {shape}")
    H = shape[-1] // 2
    half = shape[:-1] + (H,)
    for name in names[:-1]:   # out and dout have H values per row; dgate_up has gate_up's shape
        check_array(kernel, name, named[name], shape=shape if name == "dgate_up" else half)
    block_size = BLOCK_SIZE if block_size is None else block_size
    check_block(kernel, block_size, whole_warps=False)
    check_int32(kernel, **{"gate_up.size": int(gate_up.size)})   # the kernels index with int
    N = int(np.prod(shape[:-1], dtype=np.int64))
    n, width = N * H, H   # threads: one per output element (version 2: per float4 of them)
    if version == 2:
        check_multiple_of_4(kernel, "H", H, "version 1, which takes any H")
        check_float4(kernel, "version 1", **named)
        n, width = n // 4, H // 4   # the kernel counts float4s
    if n == 0:
        return []   # nothing to do (a grid of 0 blocks is not a valid launch)
    return [Launch(module().get_function(kernel), (ceil_div(n, block_size),), (block_size,),
                   (*arrays, N, width))]


def forward(out, gate_up, version=2, *, block_size=None) -> None:
    """out = silu(gate_up[..., :H]) * gate_up[..., H:] on the device; returns None.

    block_size: threads per block (default 256), each one output element (version 2: four)."""
    run(launches("forward", out, gate_up, version=version, block_size=block_size))


def backward(dgate_up, dout, gate_up, version=2, *, block_size=None) -> None:
    """dgate_up[..., :H] += dout * u * silu'(g), dgate_up[..., H:] += dout * silu(g); returns None."""
    run(launches("backward", dgate_up, dout, gate_up, version=version, block_size=block_size))
