"""Causal self-attention: the NumPy reference and the launch wrappers of `cuda/attention.cu`.

Layout (llm.c): qkv (B, T, 3C) holds q = qkv[..., :C], k = qkv[..., C:2C], v = qkv[..., 2C:], each
split into NH heads of hs = C // NH channels; out (B, T, C) holds the heads' outputs side by side.
For one sequence and one head:

    scores = q k^T / sqrt(hs),  masked: scores[t, t2] = -inf for t2 > t
    att    = softmax(scores)      (rows; zeros above the diagonal)
    y      = att v

Backward, given dy (the head's slice of dout):

    dv = att^T dy,   datt = dy v^T,   dscores = att * (datt - rowsum(datt * att)),
    dq = dscores k / sqrt(hs),   dk = dscores^T q / sqrt(hs)      (added into dqkv)

Memory the kernel versions need besides qkv and out (plan it from here):

    version 1  att (B, NH, T, T) from the forward, kept for the backward; the backward allocates a
               scratch of the same size (dscores) unless one is passed
    version 2  lse (B, NH, T) from the forward, kept for the backward; the backward allocates a
               (B, NH, T) scratch (D = rowsum(dout * out)) unless one is passed
    version 3  as version 2
    version 4  as version 2, with qkv, out, dout and dqkv in bf16 (lse and the scratch stay float32)

Version 4 is the mixed-precision one (notebook 13): bf16 storage, float32 arithmetic. Its arrays are
ml_dtypes.bfloat16 device arrays (helpers.ops.common.BF16): forward(out bf16, qkv bf16, n_head,
version=4, lse=float32 (B, NH, T)); backward(dqkv bf16 (+=), dout bf16, qkv bf16, out bf16, n_head,
version=4, lse=float32, scratch=float32 (B, NH, T) or None). hs = C / n_head a multiple of 8 and <= 128,
the bf16 arrays 16-byte aligned. The references below run on its inputs upcast (bf16 -> float64 is exact).

Kernels: cuda/attention.cu (reductions from cuda/common.cuh) · notebook: notebooks/04_attention.ipynb ·
tests: tests/test_op_attention.py
"""
from __future__ import annotations

import math

import numpy as np

from ..runtime import device
from .common import BF16, Launch, ceil_div, check_16_byte_aligned, check_array, check_block, check_grid_y, \
    check_int32, check_multiple_of, check_shared_memory, check_version, run, shape_of

#: Kernel versions in cuda/attention.cu: attention_forward<N>[_part], attention_backward<N>_part.
VERSIONS = {
    "forward": {
        1: "naive: scores, softmax and att @ v as three kernels, the (B, NH, T, T) matrix in memory",
        2: "fused: one warp per query row, online softmax, only the row's log-sum-exp stored",
        3: "tiled: K/V tiles of 32 rows in shared memory shared by the warps of a block, one key per lane, "
           "one online-softmax update per tile of 32 keys",
        4: "bf16: version 3 on bf16 out and qkv (16-byte bf16x8 loads and stores, float32 tiles, scores and "
           "softmax; lse float32); hs % 8 == 0, 16-byte aligned",
    },
    "backward": {
        1: "naive: four kernels through a (B, NH, T, T) scratch (datt, then dscores)",
        2: "recomputes the probabilities from lse (flash-attention-2 style): one warp per query row (dq) "
           "and per key row (dk, dv)",
        3: "tiled: Q/dy and K/V tiles of 32 rows in shared memory, as forward version 3",
        4: "bf16: version 3 on bf16 dqkv (+=, rounded once), dout, qkv and out; lse, D scratch and accumulators "
           "float32; hs % 8 == 0, 16-byte aligned",
    },
}

MAX_HEAD_SIZE = 128      # versions 2 to 4: a lane holds channels lane, lane + 32, lane + 64, lane + 96
BF16_VERSION = 4         # forward and backward: bf16 storage
BF16_CHUNK = 8           # version 4 moves 8 bf16 (16 bytes) at a time


# ------------------------------------------------------------------------------------------------
# The NumPy reference
# ------------------------------------------------------------------------------------------------
def split_heads(x, n_head):
    """(B, T, C) -> (B, NH, T, hs): head h is channels h*hs .. (h+1)*hs - 1."""
    B, T, C = x.shape
    return x.reshape(B, T, n_head, C // n_head).transpose(0, 2, 1, 3)


def merge_heads(y):
    """(B, NH, T, hs) -> (B, T, C), the heads side by side."""
    B, NH, T, hs = y.shape
    return y.transpose(0, 2, 1, 3).reshape(B, T, NH * hs)


def causal_scores(qkv, n_head):
    """The masked, scaled scores (B, NH, T, T): q k^T / sqrt(hs), -inf where the key is in the future."""
    B, T, C3 = qkv.shape
    C = C3 // 3
    q = split_heads(qkv[..., :C], n_head)
    k = split_heads(qkv[..., C:2 * C], n_head)
    scale = 1.0 / math.sqrt(C // n_head)
    scores = (q @ k.transpose(0, 1, 3, 2)) * scale
    future = np.triu(np.ones((T, T), dtype=bool), k=1)   # future[t, t2] = t2 > t
    return np.where(future, -np.inf, scores).astype(qkv.dtype)


def attention_logsumexp(qkv, n_head):
    """lse (B, NH, T) = log sum_t2 exp(scores[t, t2]) over the keys t2 <= t: what versions 2 and 3 store."""
    scores = causal_scores(qkv, n_head)
    m = scores.max(axis=-1, keepdims=True)               # finite: the diagonal is never masked
    return (m + np.log(np.exp(scores - m).sum(axis=-1, keepdims=True)))[..., 0]


def attention_forward(qkv, n_head):
    """out (B, T, C) and att (B, NH, T, T), the softmax probabilities (zeros above the diagonal)."""
    B, T, C3 = qkv.shape
    C = C3 // 3
    scores = causal_scores(qkv, n_head)
    e = np.exp(scores - scores.max(axis=-1, keepdims=True))   # exp(-inf) = 0 above the diagonal
    att = e / e.sum(axis=-1, keepdims=True)
    v = split_heads(qkv[..., 2 * C:], n_head)
    out = merge_heads(att @ v)
    return out, att


def attention_backward(dqkv, dout, qkv, out, n_head, *, att=None):
    """Add dL/dqkv into dqkv (B, T, 3C), given dout = dL/dout (B, T, C); the arguments of the
    wrapper `backward`. att is the forward's probabilities (recomputed from qkv when not given);
    out, which kernel versions 2 and 3 read, is not needed here (None is fine)."""
    if att is None:
        att = attention_forward(qkv, n_head)[1]
    B, T, C3 = qkv.shape
    C = C3 // 3
    scale = 1.0 / math.sqrt(C // n_head)
    q = split_heads(qkv[..., :C], n_head)
    k = split_heads(qkv[..., C:2 * C], n_head)
    v = split_heads(qkv[..., 2 * C:], n_head)
    dy = split_heads(dout, n_head)
    dv = att.transpose(0, 1, 3, 2) @ dy
    datt = dy @ v.transpose(0, 1, 3, 2)
    dscores = att * (datt - (datt * att).sum(axis=-1, keepdims=True))   # softmax backward, row by row
    dq = (dscores @ k) * scale
    dk = (dscores.transpose(0, 1, 3, 2) @ q) * scale
    dqkv[..., :C] += merge_heads(dq)
    dqkv[..., C:2 * C] += merge_heads(dk)
    dqkv[..., 2 * C:] += merge_heads(dv)


# ------------------------------------------------------------------------------------------------
# Kernel wrappers
# ------------------------------------------------------------------------------------------------
def module():
    """cuda/attention.cu, compiled for the active backend (device.load_module caches it)."""
    return device.load_module("attention.cu")


def _expect(kernel, name, a, shape, dtype=np.float32):
    check_array(kernel, name, a, shape=shape, dtype=dtype)


def _storage(version):
    """The dtype of qkv, out, dout and dqkv: bf16 for version 4, float32 for the others."""
    return BF16 if version == BF16_VERSION else np.float32


def _dims(kernel, qkv, n_head, dtype=np.float32):
    """B, T, C, hs from qkv's shape, with the assumptions every version makes."""
    check_array(kernel, "qkv", qkv, 3, dtype=dtype)
    B, T, C3 = shape_of(qkv)
    if C3 % 3:
        raise ValueError(f"{kernel}: qkv's last dimension holds q, k and v: it must be 3*C, got {C3}")
    C = C3 // 3
    if isinstance(n_head, bool) or not isinstance(n_head, (int, np.integer)) or n_head < 1 or C % n_head:
        raise ValueError(f"{kernel}: C must be a multiple of n_head (heads of hs = C / n_head channels), "
                         f"got C={C}, n_head={n_head!r}")
    check_int32(kernel, **{"B*T*3C": B * T * C3})
    return B, T, C, C // n_head


def _check_head_size(kernel, hs):
    if hs > MAX_HEAD_SIZE:
        raise ValueError(f"{kernel}: a lane holds at most 4 channels of a head in registers: head size hs = C / n_head "
                         f"must be <= {MAX_HEAD_SIZE}, got hs={hs} (use version 1)")


def _block_size(kernel, block_size, default, whole_warps):
    bs = default if block_size is None else block_size
    check_block(kernel, bs, whole_warps)
    return bs


def forward3_shared_bytes(hs, block_size):
    """Dynamic shared memory of attention_forward3: Ks 32*(hs+1), Vs 32*hs, Qs NW*hs, Ps NW*32 floats."""
    nw = block_size // 32
    return 4 * (32 * (hs + 1) + 32 * hs + nw * hs + nw * 32)


def backward3_dq_shared_bytes(hs, block_size):
    """attention_backward3_dq: Ks, Vs 32*(hs+1) each, Qs, dYs NW*hs each, DSs NW*32 floats."""
    nw = block_size // 32
    return 4 * (2 * 32 * (hs + 1) + 2 * nw * hs + nw * 32)


def backward3_dkdv_shared_bytes(hs, block_size):
    """attention_backward3_dkdv: Qs, dYs 32*(hs+1) each, Ls, Ds 32 each, Kw, Vw NW*hs each, Ps, DSs NW*32."""
    nw = block_size // 32
    return 4 * (2 * 32 * (hs + 1) + 64 + 2 * nw * hs + 2 * nw * 32)


def _check_bf16_rows(kernel, hs, **arrays):
    """Version 4 moves rows of a head 8 bf16 (16 bytes) at a time: hs % 8 == 0, arrays 16-byte aligned."""
    fallback = "version 3 on float32 arrays, .astype(np.float32)"
    check_multiple_of(kernel, "hs", hs, BF16_CHUNK,
                      "moves a head's rows of hs = C / n_head channels 8 bf16 (16 bytes) at a time", fallback)
    check_16_byte_aligned(kernel, fallback, **arrays)


def _check_version3(kernel, B, n_head, hs, bs, smem):
    check_shared_memory(kernel, smem, f"hs={hs} with block_size={bs}", "use a smaller block_size")
    check_grid_y(kernel, B * n_head, f"the (b, h) pairs (B*NH = {B}*{n_head})")


def launches(step: str, *args, version: int, **options) -> list[Launch]:
    """The checked launches of `forward` or `backward` (same arguments), in the order they run."""
    check_version("attention", step, version, VERSIONS)
    return (_forward_launches if step == "forward" else _backward_launches)(*args, version=version, **options)


def _forward_launches(out, qkv, n_head, *, version, att=None, lse=None, block_size=None):
    kernel = f"attention_forward{version}"
    dtype = _storage(version)
    B, T, C, hs = _dims(kernel, qkv, n_head, dtype)
    _expect(kernel, "out", out, (B, T, C), dtype)
    fn = module().get_function
    args = (qkv, B, T, C, n_head)
    if version == 1:
        check_int32(kernel, **{"B*NH*T*T": B * n_head * T * T})
        _expect(kernel, "att", att, (B, n_head, T, T))
        bs = _block_size(kernel, block_size, 256, whole_warps=False)
        return [Launch(fn("attention_forward1_scores"), (ceil_div(B * n_head * T * T, bs),), (bs,), (att, *args)),
                Launch(fn("attention_forward1_softmax"), (ceil_div(B * n_head * T, bs),), (bs,), (att, B, n_head, T)),
                Launch(fn("attention_forward1_values"), (ceil_div(B * T * C, bs),), (bs,), (out, att, *args))]
    _check_head_size(kernel, hs)
    _expect(kernel, "lse", lse, (B, n_head, T))
    bs = _block_size(kernel, block_size, 128 if version == 2 else 256, whole_warps=True)
    if version == 2:
        return [Launch(fn("attention_forward2"), (ceil_div(B * n_head * T, bs // 32),), (bs,), (out, lse, *args))]
    if version == BF16_VERSION:
        _check_bf16_rows(kernel, hs, out=out, qkv=qkv)
    smem = forward3_shared_bytes(hs, bs)   # version 4: the same float32 tiles
    _check_version3(kernel, B, n_head, hs, bs, smem)
    return [Launch(fn(kernel), (ceil_div(T, bs // 32), B * n_head), (bs,), (out, lse, *args), smem)]


def _backward_launches(dqkv, dout, qkv, out, n_head, *, version, att=None, lse=None, scratch=None, block_size=None):
    kernel = f"attention_backward{version}"
    dtype = _storage(version)
    B, T, C, hs = _dims(kernel, qkv, n_head, dtype)
    _expect(kernel, "dqkv", dqkv, (B, T, 3 * C), dtype)
    _expect(kernel, "dout", dout, (B, T, C), dtype)
    fn = module().get_function
    dims = (B, T, C, n_head)
    if version == 1:
        check_int32(kernel, **{"B*NH*T*T": B * n_head * T * T})
        _expect(kernel, "att", att, (B, n_head, T, T))
        scratch = device.empty((B, n_head, T, T)) if scratch is None else scratch
        _expect(kernel, "scratch", scratch, (B, n_head, T, T))
        bs = _block_size(kernel, block_size, 256, whole_warps=False)
        return [
            Launch(fn("attention_backward1_datt"), (ceil_div(B * n_head * T * T, bs),), (bs,), (scratch, dout, qkv, *dims)),
            Launch(fn("attention_backward1_softmax"), (ceil_div(B * n_head * T, bs),), (bs,), (scratch, att, B, n_head, T)),
            Launch(fn("attention_backward1_dq"), (ceil_div(B * T * C, bs),), (bs,), (dqkv, scratch, qkv, *dims)),
            Launch(fn("attention_backward1_dkdv"), (ceil_div(B * T * C, bs),), (bs,),
                   (dqkv, scratch, att, dout, qkv, *dims))]
    _check_head_size(kernel, hs)
    _expect(kernel, "out", out, (B, T, C), dtype)
    _expect(kernel, "lse", lse, (B, n_head, T))
    bs = _block_size(kernel, block_size, 128 if version == 2 else 256, whole_warps=True)
    if version == BF16_VERSION:
        _check_bf16_rows(kernel, hs, dqkv=dqkv, dout=dout, qkv=qkv, out=out)
    if version >= 3:   # version 4: version 3's shared memory
        smem_dq, smem_dkdv = backward3_dq_shared_bytes(hs, bs), backward3_dkdv_shared_bytes(hs, bs)
        _check_version3(kernel, B, n_head, hs, bs, max(smem_dq, smem_dkdv))
    scratch = device.empty((B, n_head, T)) if scratch is None else scratch
    _expect(kernel, "scratch", scratch, (B, n_head, T))
    rows = B * n_head * T
    grads = (dqkv, dout, qkv, lse, scratch, *dims)
    preprocess = "attention_backward4_preprocess" if version == BF16_VERSION else "attention_backward2_preprocess"
    runs = [Launch(fn(preprocess), (ceil_div(rows, 128),), (128,), (scratch, dout, out, *dims))]
    if version == 2:
        return runs + [Launch(fn("attention_backward2_dq"), (ceil_div(rows, bs // 32),), (bs,), grads),
                       Launch(fn("attention_backward2_dkdv"), (ceil_div(rows, bs // 32),), (bs,), grads)]
    grid = (ceil_div(T, bs // 32), B * n_head)
    return runs + [Launch(fn(f"{kernel}_dq"), grid, (bs,), grads, smem_dq),
                   Launch(fn(f"{kernel}_dkdv"), grid, (bs,), grads, smem_dkdv)]


def forward(out, qkv, n_head, version=3, *, att=None, lse=None, block_size=None) -> None:
    """out (B, T, C) = causal self-attention of qkv (B, T, 3C) with n_head heads, on the device.

    version 1: needs `att`, a (B, NH, T, T) float32 buffer; it is left holding the probabilities
               (zeros above the diagonal), which backward version 1 reads. B*NH*T*T < 2^31.
               Three launches; any block_size (default 256).
    version 2: needs `lse`, a (B, NH, T) float32 buffer; it is left holding each row's log-sum-exp
               of the scaled scores, which backward versions 2 and 3 read. hs = C / n_head <= 128;
               block_size a multiple of 32 (one warp per query row; default 128).
    version 3: like version 2 (same `lse`), tiled; default block_size 256 (8 query rows per block),
               its shared memory (forward3_shared_bytes) must fit in 48 KiB, B*NH <= 65535.
    version 4: version 3 on bf16 `out` and `qkv` (ml_dtypes.bfloat16 device arrays), `lse` float32;
               hs a multiple of 8, out and qkv 16-byte aligned. out is version 3's float32 result
               rounded once to bf16.
    """
    run(launches("forward", out, qkv, n_head, version=version, att=att, lse=lse, block_size=block_size))


def backward(dqkv, dout, qkv, out, n_head, version=3, *, att=None, lse=None, scratch=None, block_size=None) -> None:
    """Add dL/dqkv into dqkv (B, T, 3C), given dout (B, T, C) and what the forward left.

    version 1: `att` (B, NH, T, T) from forward version 1; uses a (B, NH, T, T) float32 scratch
               (datt, then dscores in place), allocated here unless `scratch` is given. `out` is not
               read. Four launches; any block_size (default 256).
    version 2: `lse` (B, NH, T) from forward version 2 or 3, and the forward's `out`; uses a
               (B, NH, T) float32 scratch (D = rowsum(dout * out)), allocated here unless given.
               hs <= 128, block_size a multiple of 32 (default 128). Three launches.
    version 3: as version 2, tiled (default block_size 256; shared memory, see
               backward3_dq_shared_bytes and backward3_dkdv_shared_bytes, within 48 KiB; B*NH <= 65535).
    version 4: version 3 on bf16 `dqkv`, `dout`, `qkv` and `out`, with `lse` (float32) from forward
               version 4; the scratch is float32. dqkv += ... adds in float32 and rounds once to bf16.
               hs a multiple of 8, the bf16 arrays 16-byte aligned.
    """
    run(launches("backward", dqkv, dout, qkv, out, n_head, version=version, att=att, lse=lse, scratch=scratch,
                 block_size=block_size))
