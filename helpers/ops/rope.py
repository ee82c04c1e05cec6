"""Rotary position embedding (RoPE, Llama; Hugging Face's `rotate_half` convention): the cos/sin
tables, the NumPy reference and the launch wrappers of the kernels in `cuda/rope.cu`.

Layout: qkv (B, T, W), W = (NH + 2*NKV) * hs, each row holding NH query heads, then NKV key heads,
then NKV value heads of hs channels (grouped-query attention: NKV divides NH). Row (b, t) is at
position p = pos0 + t. For a query or key head x, half = hs / 2 and i < half, with
angle = p * inv_freq[i], inv_freq[i] = 1 / theta^(2i / hs):

    out[i]        = x[i] * cos(angle) - x[i + half] * sin(angle)
    out[i + half] = x[i + half] * cos(angle) + x[i] * sin(angle)

(Hugging Face's q * cos + rotate_half(q) * sin, its cos/sin being these half values twice); value
heads are copied. The backward is the transposed rotation, by -angle, ACCUMULATED like every backward
here:

    dqkv[i]        += dout[i] * cos + dout[i + half] * sin
    dqkv[i + half] += dout[i + half] * cos - dout[i] * sin          (value heads: dqkv += dout)

The tables: `frequencies(hs, n_positions, theta)` returns (cos, sin), float32 host arrays
(n_positions, hs // 2), row p for position p; the wrappers take them as device arrays
(device.asarray). References (dtype-generic; float64 for finite differences):
`rope_forward(qkv, cos, sin, n_head, n_kv_head, pos0=0) -> out` and
`rope_backward(dqkv, dout, cos, sin, n_head, n_kv_head, *, pos0=0)`. Wrappers:
`forward(out, qkv, cos, sin, n_head, n_kv_head, version=2, *, pos0=0, block_size=None)` (out may be
qkv itself: each thread reads only the pair it writes) and
`backward(dqkv, dout, cos, sin, n_head, n_kv_head, version=2, *, pos0=0, block_size=None)`. The decode
step of generation calls forward with B = T = 1 and pos0 = the position.

Kernels: cuda/rope.cu · notebook: notebooks/11_llama_ops.ipynb · tests: tests/test_op_rope.py
"""
from __future__ import annotations

import numpy as np

from ..runtime import device
from .common import Launch, ceil_div, check_array, check_block, check_float4, check_int32, check_multiple_of_4, \
    check_version, run, shape_of

THETA = 10000.0   # Llama 2's rope_theta (Llama 3: 500000.0); the model passes its config's

#: Kernel versions in cuda/rope.cu: rope_forward<N>, rope_backward<N>.
VERSIONS = {
    "forward": {
        1: "one thread per pair (x[i], x[i + half]), 4-byte loads and stores; any even head size",
        2: "one thread per four pairs, float4 loads of both halves and of the tables; hs % 8 == 0, 16-byte aligned",
    },
    "backward": {
        1: "one thread per pair, the rotation by -angle added into dqkv; any even head size",
        2: "one thread per four pairs through float4, as forward 2; hs % 8 == 0, 16-byte aligned",
    },
}

BLOCK_SIZE = 256


# ------------------------------------------------------------------------------------------------
# The tables
# ------------------------------------------------------------------------------------------------
def inverse_frequencies(head_size: int, theta: float = THETA) -> np.ndarray:
    """inv_freq (head_size // 2,) float32: 1 / theta^(2i / hs), as Hugging Face's LlamaRotaryEmbedding
    (the exponent 2i / hs a float32 division, the power and the reciprocal float32 values).

    theta^e is evaluated in float64 and rounded once to float32: the correctly rounded float32 value,
    the same on every machine. Hugging Face's float32 pow (torch's, vectorised) is within one unit in
    the last place of it and equal to it for ~99% of the entries (tests/test_op_rope.py measures it)."""
    exponent = np.arange(0, head_size, 2, dtype=np.float32) / np.float32(head_size)
    power = (np.float64(theta) ** exponent.astype(np.float64)).astype(np.float32)
    return np.float32(1.0) / power


def frequencies(head_size: int, n_positions: int, theta: float = THETA,
                inv_freq: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(cos, sin): float32 host arrays (n_positions, head_size // 2), row p the cosines and sines of
    the angles p * inv_freq[i] for positions p = 0 .. n_positions - 1. `inv_freq` (head_size // 2
    values) replaces inverse_frequencies(head_size, theta): a model with scaled frequencies (Llama 3.1's,
    notebook 12's exercise) needs other tables, not other kernels.

    The angle is float32(p) * inv_freq in float32, as Hugging Face computes it (so it carries that
    product's rounding: up to 2^-24 |angle|); its cosine and sine are evaluated in float64 and rounded
    once to float32 (Hugging Face's float32 cos/sin are within a unit in the last place of those, and
    equal to them for ~90-99% of the entries at positions 260-299: tests/test_op_rope.py)."""
    if isinstance(head_size, bool) or not isinstance(head_size, (int, np.integer)) or head_size < 2 or head_size % 2:
        raise ValueError(f"rope.frequencies: RoPE rotates pairs of channels: head_size must be even and at least 2, "
                         f"got {head_size!r}")
    if isinstance(n_positions, bool) or not isinstance(n_positions, (int, np.integer)) or n_positions < 1:
        raise ValueError(f"rope.frequencies: n_positions must be a positive int, got {n_positions!r}")
    if inv_freq is None:
        inv_freq = inverse_frequencies(head_size, theta)
    inv_freq = np.asarray(inv_freq, dtype=np.float32)
    if inv_freq.shape != (head_size // 2,):
        raise ValueError(f"rope.frequencies: inv_freq must hold head_size // 2 = {head_size // 2} values, got shape "
                         f"{inv_freq.shape}")
    positions = np.arange(n_positions, dtype=np.float32)
    angles = positions[:, None] * inv_freq[None, :]                                   # float32 products
    angles = angles.astype(np.float64)
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


# ------------------------------------------------------------------------------------------------
# The NumPy reference
# ------------------------------------------------------------------------------------------------
def split_qkv_heads(x, n_head, n_kv_head):
    """(B, T, W) -> (B, T, NH + 2*NKV, hs): head h is channels h*hs .. (h+1)*hs - 1 of the row."""
    B, T, W = x.shape
    heads = n_head + 2 * n_kv_head
    return x.reshape(B, T, heads, W // heads)


def rope_forward(qkv, cos, sin, n_head, n_kv_head, pos0=0):
    """out (B, T, W): the query and key heads of qkv rotated pair by pair by the angles of positions
    pos0 .. pos0 + T - 1 (rows of the cos/sin tables), the value heads copied."""
    B, T, W = qkv.shape
    x = split_qkv_heads(qkv, n_head, n_kv_head)
    half = x.shape[-1] // 2
    c = cos[pos0:pos0 + T][None, :, None, :]          # (1, T, 1, half): one angle per position and pair
    s = sin[pos0:pos0 + T][None, :, None, :]
    rotated = slice(0, n_head + n_kv_head)            # the query and key heads
    x1, x2 = x[:, :, rotated, :half], x[:, :, rotated, half:]
    out = x.copy()                                    # the value heads: unchanged
    out[:, :, rotated, :half] = x1 * c - x2 * s
    out[:, :, rotated, half:] = x2 * c + x1 * s
    return out.reshape(B, T, W)


def rope_backward(dqkv, dout, cos, sin, n_head, n_kv_head, *, pos0=0) -> None:
    """dqkv += R^T dout: the query and key heads of dout rotated by -angle, the value heads as they are."""
    B, T, W = dout.shape
    g = split_qkv_heads(dout, n_head, n_kv_head)
    d = split_qkv_heads(dqkv, n_head, n_kv_head)     # a view: adding into it adds into dqkv
    half = g.shape[-1] // 2
    c = cos[pos0:pos0 + T][None, :, None, :]
    s = sin[pos0:pos0 + T][None, :, None, :]
    rotated = slice(0, n_head + n_kv_head)
    g1, g2 = g[:, :, rotated, :half], g[:, :, rotated, half:]
    d[:, :, rotated, :half] += g1 * c + g2 * s
    d[:, :, rotated, half:] += g2 * c - g1 * s
    d[:, :, n_head + n_kv_head:] += g[:, :, n_head + n_kv_head:]


# ------------------------------------------------------------------------------------------------
# Kernel wrappers
# ------------------------------------------------------------------------------------------------
def module():
    """cuda/rope.cu, compiled for the active backend (device.load_module caches it)."""
    return device.load_module("rope.cu")


def _is_int(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, np.integer))


def _dims(kernel, x_name, x, cos, sin, n_head, n_kv_head, pos0):
    """B, T, hs from the shapes, with the assumptions every version makes."""
    check_array(kernel, x_name, x, 3)
    B, T, W = shape_of(x)
    if not (_is_int(n_head) and _is_int(n_kv_head) and n_head >= 1 and n_kv_head >= 1):
        raise ValueError(f"{kernel}: n_head and n_kv_head must be positive ints, got n_head={n_head!r}, "
                         f"n_kv_head={n_kv_head!r}")
    if n_head % n_kv_head:
        raise ValueError(f"{kernel}: grouped-query attention shares each key/value head among n_head / n_kv_head "
                         f"query heads: n_kv_head must divide n_head, got n_head={n_head}, n_kv_head={n_kv_head}")
    heads = n_head + 2 * n_kv_head
    if W % heads:
        raise ValueError(f"{kernel}: the last dimension of `{x_name}` holds n_head + 2*n_kv_head = {heads} heads "
                         f"(q, k, v) of hs channels: it must be a multiple of {heads}, got W={W}")
    hs = W // heads
    if hs < 2 or hs % 2:
        raise ValueError(f"{kernel}: RoPE rotates pairs of channels (i, i + hs/2): the head size hs = W / "
                         f"(n_head + 2*n_kv_head) must be even and at least 2, got hs={hs} (an odd head size "
                         f"cannot be rotated)")
    check_array(kernel, "cos", cos, 2)
    check_array(kernel, "sin", sin, shape=shape_of(cos))
    n_positions, columns = shape_of(cos)
    if columns != hs // 2:
        raise ValueError(f"{kernel}: the cos/sin tables must have hs/2 = {hs // 2} columns (one angle per pair of "
                         f"channels), got {columns}: build them with rope.frequencies(head_size={hs}, n_positions)")
    if not _is_int(pos0) or pos0 < 0:
        raise ValueError(f"{kernel}: pos0 (the position of t = 0) must be an int >= 0, got {pos0!r}")
    if pos0 + T > n_positions:
        raise ValueError(f"{kernel}: positions pos0 .. pos0 + T - 1 = {pos0} .. {pos0 + T - 1} need cos/sin tables of "
                         f"at least {pos0 + T} rows, got {n_positions}: the table is too short; build a longer one "
                         f"with rope.frequencies(head_size={hs}, n_positions={pos0 + T}) (or the model's "
                         f"max_position_embeddings)")
    check_int32(kernel, **{"B*T*W": B * T * W, "n_positions*hs/2": n_positions * columns})
    return B, T, hs


def launches(step: str, *args, version: int, **options) -> list[Launch]:
    """The checked launch of `forward` (out, qkv, cos, sin, n_head, n_kv_head) or `backward` (dqkv, dout,
    cos, sin, n_head, n_kv_head), same options (pos0, block_size)."""
    check_version("rope", step, version, VERSIONS)
    return _launches(step, *args, version=version, **options)


def _launches(step, y, x, cos, sin, n_head, n_kv_head, *, version, pos0=0, block_size=None):
    kernel = f"rope_{step}{version}"
    y_name, x_name = ("out", "qkv") if step == "forward" else ("dqkv", "dout")
    B, T, hs = _dims(kernel, x_name, x, cos, sin, n_head, n_kv_head, pos0)
    check_array(kernel, y_name, y, shape=shape_of(x))
    block_size = BLOCK_SIZE if block_size is None else block_size
    check_block(kernel, block_size, whole_warps=False)
    half = hs // 2
    if version == 2:
        check_multiple_of_4(kernel, "hs/2", half, "version 1, which takes any even head size")
        check_float4(kernel, "version 1", **{y_name: y, x_name: x, "cos": cos, "sin": sin})
    threads = B * T * (n_head + 2 * n_kv_head) * (half if version == 1 else half // 4)
    if threads == 0:
        return []   # no rows (B or T is 0): nothing to launch (a grid of 0 blocks is not a valid launch)
    args = (y, x, cos, sin, B * T, T, int(n_head), int(n_kv_head), half, int(pos0))
    return [Launch(module().get_function(kernel), (ceil_div(threads, block_size),), (block_size,), args)]


def forward(out, qkv, cos, sin, n_head, n_kv_head, version=2, *, pos0=0, block_size=None) -> None:
    """out (B, T, W) = qkv with its query and key heads rotated for positions pos0 .. pos0 + T - 1 and its
    value heads copied, on the device; returns None. out may be qkv itself (in place).

    cos, sin: device arrays (n_positions, hs // 2) from frequencies(), n_positions >= pos0 + T.
    version 1 takes any even hs; version 2 needs hs % 8 == 0 and 16-byte aligned arrays.
    block_size: threads per block (default 256)."""
    run(launches("forward", out, qkv, cos, sin, n_head, n_kv_head, version=version, pos0=pos0, block_size=block_size))


def backward(dqkv, dout, cos, sin, n_head, n_kv_head, version=2, *, pos0=0, block_size=None) -> None:
    """Accumulate (+=) into dqkv (B, T, W) the gradient of forward: dout's query and key heads rotated by
    -angle, its value heads as they are; returns None. Assumptions as forward's."""
    run(launches("backward", dqkv, dout, cos, sin, n_head, n_kv_head, version=version, pos0=pos0,
                 block_size=block_size))
