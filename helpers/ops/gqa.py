"""Grouped-query attention (GQA), causal: the NumPy reference and the launch wrappers of `cuda/gqa.cu`.

NH query heads share NKV key/value heads (NKV divides NH): G = NH // NKV query heads per group,
and query head h reads key/value head h // G. NKV == NH is GPT-2's multi-head attention
(helpers/ops/attention.py, the same numbers), NKV == 1 multi-query attention.

Layout: qkv (B, T, W) with W = (NH + 2*NKV) * hs holds, along its last axis, the NH query heads
(channels [0, NH*hs)), then the NKV key heads, then the NKV value heads, hs channels each; out
(B, T, NH*hs) holds the query heads' outputs side by side. For one sequence, query head h and its
key/value head g = h // G:

    scores = q_h k_g^T / sqrt(hs),  masked: scores[t, t2] = -inf for t2 > t
    att_h  = softmax(scores)        (rows; zeros above the diagonal)
    y_h    = att_h v_g

Backward, given dy_h (head h's slice of dout): per head as attention's,

    datt_h = dy_h v_g^T,  dscores_h = att_h * (datt_h - rowsum(datt_h * att_h)),
    dq_h   = dscores_h k_g / sqrt(hs),

while a key/value head collects the gradients of the G query heads of its group:

    dk_g = sum over h in g of dscores_h^T q_h / sqrt(hs),   dv_g = sum over h in g of att_h^T dy_h

(added into dqkv). The references broadcast q as (B, NKV, G, T, hs) against k and v as
(B, NKV, 1, T, hs): the key/value heads are never repeated, in NumPy as in the kernels.

Decode (generation): caches k_cache, v_cache (NKV, maxT, hs); one position's qkv (W values, any
shape) appends its keys and values at row `pos` in place, and its NH queries attend over rows
0..pos: out (NH*hs,).

Memory the kernel versions need besides qkv and out:

    forward/backward 1   att (B, NH, T, T) from the forward, kept for the backward; the backward
                         allocates a scratch of the same size (dscores) unless one is passed
    forward/backward 2   lse (B, NH, T) from the forward, kept for the backward; the backward
                         allocates a (B, NH, T) scratch (D = rowsum(dout * out)) unless one is passed
    forward/backward 3   as version 2
    decode 1, 2          nothing (scores in shared memory)

Kernels: cuda/gqa.cu (reductions from cuda/common.cuh) · notebook: notebooks/11_llama_ops.ipynb ·
tests: tests/test_op_gqa.py
"""
from __future__ import annotations

import math

import numpy as np

from ..runtime import device
from .common import SCRATCH_BYTES, SHARED_MEMORY_LIMIT, Launch, ceil_div, check_array, check_block, check_grid_y, \
    check_int32, check_shared_memory, check_version, run, shape_of

#: Kernel versions in cuda/gqa.cu: gqa_forward<N>[_part], gqa_backward<N>_part, gqa_decode<N>_part.
VERSIONS = {
    "forward": {
        1: "naive: scores, softmax and att @ v as three kernels, the (B, NH, T, T) matrix in memory",
        2: "fused: one warp per query row, online softmax, only the row's log-sum-exp stored",
        3: "tiled: a block's warps are the G heads of consecutive positions of one key/value head and share "
           "its K/V tiles of 32 rows in shared memory, one key per lane",
    },
    "backward": {
        1: "naive: four kernels through a (B, NH, T, T) scratch; dk, dv one thread per element summing the group",
        2: "recomputes the probabilities from lse: one warp per query row (dq) and one warp per key row (dk, dv) "
           "summing the G query heads of its group",
        3: "tiled: K/V tiles (dq) and tiles of the group's query rows (dk, dv) in shared memory, as forward 3",
    },
    "decode": {
        1: "append: one thread per key/value channel; attend: one block per query head, block reductions",
        2: "append as version 1; attend: one block per key/value head, each key and value row read once for "
           "up to 8 heads of its group",
    },
}

MAX_HEAD_SIZE = 128      # versions 2 and 3: a lane holds channels lane, lane + 32, lane + 64, lane + 96
APPEND_BLOCK = 256
DECODE_BLOCK = 128       # the decode kernels' __launch_bounds__ (DECODE_BLOCK in gqa.cu)
GROUP_CHUNK = 8          # decode 2: heads whose scores a thread keeps in registers (GROUP_CHUNK in gqa.cu)
#: decode 1 keeps pos+1 scores (and the block reductions' scratch) in 48 KiB of shared memory.
MAX_DECODE1_POSITIONS = (SHARED_MEMORY_LIMIT - SCRATCH_BYTES) // 4


# ------------------------------------------------------------------------------------------------
# The NumPy reference
# ------------------------------------------------------------------------------------------------
def head_size(qkv, n_head, n_kv_head):
    """hs from qkv's last dimension W = (NH + 2*NKV) * hs."""
    return qkv.shape[-1] // (n_head + 2 * n_kv_head)


def split_groups(x, n_kv_head, hs):
    """(B, T, NKV*G*hs) -> (B, NKV, G, T, hs), a view: head h = g*G + j lands at [:, g, j]."""
    B, T, C = x.shape
    return x.reshape(B, T, n_kv_head, C // (n_kv_head * hs), hs).transpose(0, 2, 3, 1, 4)


def merge_groups(y):
    """(B, NKV, G, T, hs) -> (B, T, NKV*G*hs), the heads side by side."""
    B, NKV, G, T, hs = y.shape
    return y.transpose(0, 3, 1, 2, 4).reshape(B, T, NKV * G * hs)


def split_qkv(qkv, n_head, n_kv_head):
    """Views of qkv: q (B, NKV, G, T, hs), k and v (B, NKV, 1, T, hs), the group axis of k and v of
    size 1 so that they broadcast against the G query heads of their group without a copy."""
    hs = head_size(qkv, n_head, n_kv_head)
    C, KC = n_head * hs, n_kv_head * hs
    q = split_groups(qkv[..., :C], n_kv_head, hs)
    k = split_groups(qkv[..., C:C + KC], n_kv_head, hs)
    v = split_groups(qkv[..., C + KC:], n_kv_head, hs)
    return q, k, v


def causal_scores(qkv, n_head, n_kv_head):
    """The masked, scaled scores (B, NKV, G, T, T): q k^T / sqrt(hs), -inf where the key is in the future."""
    q, k, _ = split_qkv(qkv, n_head, n_kv_head)
    T = qkv.shape[1]
    scores = (q * (1.0 / math.sqrt(q.shape[-1]))) @ k.swapaxes(-1, -2)   # k broadcast over the group
    np.copyto(scores, -np.inf, where=np.triu(np.ones((T, T), dtype=bool), k=1))   # t2 > t
    return scores


def gqa_logsumexp(qkv, n_head, n_kv_head):
    """lse (B, NH, T) = log sum_t2 exp(scores[t, t2]) over the keys t2 <= t: what versions 2 and 3 store."""
    B, T, _ = qkv.shape
    scores = causal_scores(qkv, n_head, n_kv_head)
    m = scores.max(axis=-1, keepdims=True)               # finite: the diagonal is never masked
    lse = m + np.log(np.exp(scores - m).sum(axis=-1, keepdims=True))
    return lse.reshape(B, n_head, T)


def gqa_forward(qkv, n_head, n_kv_head):
    """out (B, T, NH*hs) and att (B, NH, T, T), the softmax probabilities (zeros above the diagonal)."""
    B, T, _ = qkv.shape
    att = causal_scores(qkv, n_head, n_kv_head)          # softmax in place, row by row
    att -= att.max(axis=-1, keepdims=True)
    np.exp(att, out=att)                                 # exp(-inf) = 0 above the diagonal
    att /= att.sum(axis=-1, keepdims=True)
    _, _, v = split_qkv(qkv, n_head, n_kv_head)
    out = merge_groups(att @ v)                          # v broadcast over the group
    return out, att.reshape(B, n_head, T, T)


def gqa_backward(dqkv, dout, qkv, out, n_head, n_kv_head, *, att=None):
    """Add dL/dqkv into dqkv (B, T, W), given dout = dL/dout (B, T, NH*hs); the arguments of the
    wrapper `backward`. att is the forward's probabilities (B, NH, T, T), recomputed from qkv when
    not given; out, which kernel versions 2 and 3 read, is not needed here (None is fine)."""
    if att is None:
        att = gqa_forward(qkv, n_head, n_kv_head)[1]
    B, T, _ = qkv.shape
    hs = head_size(qkv, n_head, n_kv_head)
    C, KC = n_head * hs, n_kv_head * hs
    scale = 1.0 / math.sqrt(hs)
    q, k, v = split_qkv(qkv, n_head, n_kv_head)
    att = att.reshape(B, n_kv_head, n_head // n_kv_head, T, T)
    dy = split_groups(dout, n_kv_head, hs)
    dv = (att.swapaxes(-1, -2) @ dy).sum(axis=2)                       # the group's heads summed
    dscores = dy @ v.swapaxes(-1, -2)                                  # datt, then in place:
    dscores -= np.einsum("...ij,...ij->...i", dscores, att)[..., None]   # datt - rowsum(datt * att)
    dscores *= att                                                     # the softmax backward, row by row
    dq = (dscores @ k) * scale
    dk = (dscores.swapaxes(-1, -2) @ q).sum(axis=2) * scale
    dqkv[..., :C] += merge_groups(dq)
    dqkv[..., C:C + KC] += merge_groups(dk[:, :, None])
    dqkv[..., C + KC:] += merge_groups(dv[:, :, None])


def gqa_decode(k_cache, v_cache, qkv, pos, n_head):
    """Store the newest position's keys and values at row `pos` of the caches (NKV, maxT, hs), in place,
    and return out (NH*hs,): its NH queries attending over cache rows 0..pos (no mask needed: the
    cache holds only the past)."""
    NKV, _, hs = k_cache.shape
    C, KC = n_head * hs, NKV * hs
    row = qkv.reshape(-1)
    k_cache[:, pos] = row[C:C + KC].reshape(NKV, hs)
    v_cache[:, pos] = row[C + KC:].reshape(NKV, hs)
    q = row[:C].reshape(NKV, n_head // NKV, hs)                              # the G heads of each group
    scores = (q @ k_cache[:, :pos + 1].swapaxes(-1, -2)) / math.sqrt(hs)    # (NKV, G, pos+1)
    p = np.exp(scores - scores.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    return (p @ v_cache[:, :pos + 1]).reshape(C)


# ------------------------------------------------------------------------------------------------
# Kernel wrappers
# ------------------------------------------------------------------------------------------------
def module():
    """cuda/gqa.cu, compiled for the active backend (device.load_module caches it)."""
    return device.load_module("gqa.cu")


def _is_count(n) -> bool:
    return not isinstance(n, bool) and isinstance(n, (int, np.integer)) and n >= 1


def _check_heads(kernel, n_head, n_kv_head):
    if not _is_count(n_head) or not _is_count(n_kv_head):
        raise ValueError(f"{kernel}: n_head and n_kv_head must be positive ints, got n_head={n_head!r}, "
                         f"n_kv_head={n_kv_head!r}")
    if n_head % n_kv_head:
        raise ValueError(f"{kernel}: n_head must be a multiple of n_kv_head (G = n_head / n_kv_head query heads "
                         f"share each key/value head), got n_head={n_head}, n_kv_head={n_kv_head}")


def _dims(kernel, qkv, n_head, n_kv_head):
    """B, T, hs from qkv's shape, with the assumptions every version makes."""
    check_array(kernel, "qkv", qkv, 3)
    _check_heads(kernel, n_head, n_kv_head)
    B, T, W = shape_of(qkv)
    heads = n_head + 2 * n_kv_head
    if W % heads or W == 0:
        raise ValueError(f"{kernel}: qkv's last dimension holds n_head query, n_kv_head key and n_kv_head value heads "
                         f"of hs channels: it must be a positive multiple of n_head + 2*n_kv_head = {heads}, got {W}")
    check_int32(kernel, **{"B*T*W": B * T * W})
    return B, T, W // heads


def _check_head_size(kernel, hs):
    if hs > MAX_HEAD_SIZE:
        raise ValueError(f"{kernel}: a lane holds at most 4 channels of a head in registers: head size hs must be "
                         f"<= {MAX_HEAD_SIZE}, got hs={hs} (use version 1)")


def _block_size(kernel, block_size, default, whole_warps):
    bs = default if block_size is None else block_size
    check_block(kernel, bs, whole_warps)
    return bs


def forward3_shared_bytes(hs, block_size):
    """Dynamic shared memory of gqa_forward3: Ks 32*(hs+1), Vs 32*hs, Qs NW*hs, Ps NW*32 floats."""
    nw = block_size // 32
    return 4 * (32 * (hs + 1) + 32 * hs + nw * hs + nw * 32)


def backward3_dq_shared_bytes(hs, block_size):
    """gqa_backward3_dq: Ks, Vs 32*(hs+1) each, Qs, dYs NW*hs each, DSs NW*32 floats."""
    nw = block_size // 32
    return 4 * (2 * 32 * (hs + 1) + 2 * nw * hs + nw * 32)


def backward3_dkdv_shared_bytes(hs, block_size):
    """gqa_backward3_dkdv: Qs, dYs 32*(hs+1) each, Ls, Ds 32 each, Kw, Vw NW*hs each, Ps, DSs NW*32."""
    nw = block_size // 32
    return 4 * (2 * 32 * (hs + 1) + 64 + 2 * nw * hs + 2 * nw * 32)


def decode1_shared_bytes(pos):
    """gqa_decode1_attend: the pos+1 scores (dynamic) and the block reductions' 32 floats (static)."""
    return 4 * (pos + 1) + SCRATCH_BYTES


def decode2_shared_bytes(group, hs, pos):
    """gqa_decode2_attend: Qs G*hs, P G*(pos+1), inv_l G floats (all dynamic)."""
    return 4 * (group * hs + group * (pos + 1) + group)


def _check_version3(kernel, B, n_kv_head, hs, bs, smem):
    check_shared_memory(kernel, smem, f"hs={hs} with block_size={bs}", "use a smaller block_size")
    check_grid_y(kernel, B * n_kv_head, f"the (b, key/value head) pairs (B*NKV = {B}*{n_kv_head})")


def launches(step: str, *args, version: int, **options) -> list[Launch]:
    """The checked launches of `forward`, `backward` or `decode` (same arguments), in the order they run."""
    check_version("gqa", step, version, VERSIONS)
    steps = {"forward": _forward_launches, "backward": _backward_launches, "decode": _decode_launches}
    return steps[step](*args, version=version, **options)


def _forward_launches(out, qkv, n_head, n_kv_head, *, version, att=None, lse=None, block_size=None):
    kernel = f"gqa_forward{version}"
    B, T, hs = _dims(kernel, qkv, n_head, n_kv_head)
    check_array(kernel, "out", out, shape=(B, T, n_head * hs))
    fn = module().get_function
    args = (qkv, B, T, n_head, n_kv_head, hs)
    if version == 1:
        check_int32(kernel, **{"B*NH*T*T": B * n_head * T * T})
        check_array(kernel, "att", att, shape=(B, n_head, T, T))
        bs = _block_size(kernel, block_size, 256, whole_warps=False)
        return [Launch(fn("gqa_forward1_scores"), (ceil_div(B * n_head * T * T, bs),), (bs,), (att, *args)),
                Launch(fn("gqa_forward1_softmax"), (ceil_div(B * n_head * T, bs),), (bs,), (att, B, n_head, T)),
                Launch(fn("gqa_forward1_values"), (ceil_div(B * T * n_head * hs, bs),), (bs,), (out, att, *args))]
    _check_head_size(kernel, hs)
    check_array(kernel, "lse", lse, shape=(B, n_head, T))
    bs = _block_size(kernel, block_size, 128 if version == 2 else 256, whole_warps=True)
    if version == 2:
        return [Launch(fn("gqa_forward2"), (ceil_div(B * n_head * T, bs // 32),), (bs,), (out, lse, *args))]
    smem = forward3_shared_bytes(hs, bs)
    _check_version3(kernel, B, n_kv_head, hs, bs, smem)
    group_rows = (n_head // n_kv_head) * T        # the flat rows (t, j) of one (b, g)
    return [Launch(fn("gqa_forward3"), (ceil_div(group_rows, bs // 32), B * n_kv_head), (bs,), (out, lse, *args),
                   smem)]


def _backward_launches(dqkv, dout, qkv, out, n_head, n_kv_head, *, version, att=None, lse=None, scratch=None,
                       block_size=None):
    kernel = f"gqa_backward{version}"
    B, T, hs = _dims(kernel, qkv, n_head, n_kv_head)
    check_array(kernel, "dqkv", dqkv, shape=shape_of(qkv))
    check_array(kernel, "dout", dout, shape=(B, T, n_head * hs))
    fn = module().get_function
    dims = (B, T, n_head, n_kv_head, hs)
    if version == 1:
        check_int32(kernel, **{"B*NH*T*T": B * n_head * T * T})
        check_array(kernel, "att", att, shape=(B, n_head, T, T))
        scratch = device.empty((B, n_head, T, T)) if scratch is None else scratch
        check_array(kernel, "scratch", scratch, shape=(B, n_head, T, T))
        bs = _block_size(kernel, block_size, 256, whole_warps=False)
        return [
            Launch(fn("gqa_backward1_datt"), (ceil_div(B * n_head * T * T, bs),), (bs,), (scratch, dout, qkv, *dims)),
            Launch(fn("gqa_backward1_softmax"), (ceil_div(B * n_head * T, bs),), (bs,), (scratch, att, B, n_head, T)),
            Launch(fn("gqa_backward1_dq"), (ceil_div(B * T * n_head * hs, bs),), (bs,), (dqkv, scratch, qkv, *dims)),
            Launch(fn("gqa_backward1_dkdv"), (ceil_div(B * T * n_kv_head * hs, bs),), (bs,),
                   (dqkv, scratch, att, dout, qkv, *dims))]
    _check_head_size(kernel, hs)
    check_array(kernel, "out", out, shape=(B, T, n_head * hs))
    check_array(kernel, "lse", lse, shape=(B, n_head, T))
    bs = _block_size(kernel, block_size, 128 if version == 2 else 256, whole_warps=True)
    if version == 3:
        smem_dq, smem_dkdv = backward3_dq_shared_bytes(hs, bs), backward3_dkdv_shared_bytes(hs, bs)
        _check_version3(kernel, B, n_kv_head, hs, bs, max(smem_dq, smem_dkdv))
    scratch = device.empty((B, n_head, T)) if scratch is None else scratch
    check_array(kernel, "scratch", scratch, shape=(B, n_head, T))
    rows = B * n_head * T
    grads = (dqkv, dout, qkv, lse, scratch, *dims)
    runs = [Launch(fn("gqa_backward2_preprocess"), (ceil_div(rows, 128),), (128,),
                   (scratch, dout, out, B, T, n_head, hs))]
    if version == 2:
        return runs + [Launch(fn("gqa_backward2_dq"), (ceil_div(rows, bs // 32),), (bs,), grads),
                       Launch(fn("gqa_backward2_dkdv"), (ceil_div(B * n_kv_head * T, bs // 32),), (bs,), grads)]
    group_rows = (n_head // n_kv_head) * T
    return runs + [Launch(fn("gqa_backward3_dq"), (ceil_div(group_rows, bs // 32), B * n_kv_head), (bs,), grads,
                          smem_dq),
                   Launch(fn("gqa_backward3_dkdv"), (ceil_div(T, bs // 32), B * n_kv_head), (bs,), grads, smem_dkdv)]


def _decode_launches(out, k_cache, v_cache, qkv, pos, n_head, *, version):
    kernel = f"gqa_decode{version}"
    check_array(kernel, "k_cache", k_cache, 3)
    check_array(kernel, "v_cache", v_cache, shape=shape_of(k_cache))
    n_kv_head, maxT, hs = shape_of(k_cache)
    _check_heads(kernel, n_head, n_kv_head)
    check_array(kernel, "qkv", qkv)
    check_array(kernel, "out", out)
    W, C = (n_head + 2 * n_kv_head) * hs, n_head * hs
    if int(qkv.size) != W:
        raise ValueError(f"{kernel}: `qkv` must hold one position's W = (n_head + 2*n_kv_head) * hs = {W} values, "
                         f"got {qkv.size}")
    if int(out.size) != C:
        raise ValueError(f"{kernel}: `out` must hold n_head * hs = {C} values, got {out.size}")
    if isinstance(pos, bool) or not isinstance(pos, (int, np.integer)) or not 0 <= pos < maxT:
        raise ValueError(f"{kernel}: position {pos!r} is outside the cache's {maxT} rows")
    pos = int(pos)
    if version == 1:
        smem = decode1_shared_bytes(pos)
        check_shared_memory(kernel, smem, f"keeping the {pos + 1} scores of cache rows 0..{pos}",
                            f"version 1 attends over at most {MAX_DECODE1_POSITIONS} positions")
        grid, dynamic = n_head, smem - SCRATCH_BYTES
    else:
        group = n_head // n_kv_head
        smem = decode2_shared_bytes(group, hs, pos)
        check_shared_memory(kernel, smem, f"staging G={group} queries of hs={hs} and their {pos + 1} scores each",
                            "use version 1, which keeps one head's scores per block")
        grid, dynamic = n_kv_head, smem
    fn = module().get_function
    dims = (int(pos), n_head, n_kv_head, hs, maxT)
    return [Launch(fn("gqa_decode1_append"), (ceil_div(n_kv_head * hs, APPEND_BLOCK),), (APPEND_BLOCK,),
                   (k_cache, v_cache, qkv, *dims)),
            Launch(fn(f"gqa_decode{version}_attend"), (grid,), (DECODE_BLOCK,),
                   (out, qkv, k_cache, v_cache, *dims), dynamic)]


def forward(out, qkv, n_head, n_kv_head, version=3, *, att=None, lse=None, block_size=None) -> None:
    """out (B, T, NH*hs) = causal grouped-query attention of qkv (B, T, (NH + 2*NKV)*hs), on the device.

    version 1: needs `att`, a (B, NH, T, T) float32 buffer; it is left holding the probabilities
               (zeros above the diagonal), which backward version 1 reads. B*NH*T*T < 2^31.
               Three launches; any block_size (default 256).
    version 2: needs `lse`, a (B, NH, T) float32 buffer; it is left holding each row's log-sum-exp
               of the scaled scores, which backward versions 2 and 3 read. hs <= 128;
               block_size a multiple of 32 (one warp per query row; default 128).
    version 3: like version 2 (same `lse`), tiled; default block_size 256 (8 rows (position, head)
               per block), its shared memory (forward3_shared_bytes) within 48 KiB, B*NKV <= 65535.
    """
    run(launches("forward", out, qkv, n_head, n_kv_head, version=version, att=att, lse=lse, block_size=block_size))


def backward(dqkv, dout, qkv, out, n_head, n_kv_head, version=3, *, att=None, lse=None, scratch=None,
             block_size=None) -> None:
    """Add dL/dqkv into dqkv (B, T, W), given dout (B, T, NH*hs) and what the forward left.

    version 1: `att` (B, NH, T, T) from forward version 1; uses a (B, NH, T, T) float32 scratch
               (datt, then dscores in place), allocated here unless `scratch` is given. `out` is not
               read. Four launches; any block_size (default 256).
    version 2: `lse` (B, NH, T) from forward version 2 or 3, and the forward's `out`; uses a
               (B, NH, T) float32 scratch (D = rowsum(dout * out)), allocated here unless given.
               hs <= 128, block_size a multiple of 32 (default 128). Three launches.
    version 3: as version 2, tiled (default block_size 256; shared memory, see
               backward3_dq_shared_bytes and backward3_dkdv_shared_bytes, within 48 KiB; B*NKV <= 65535).
    """
    run(launches("backward", dqkv, dout, qkv, out, n_head, n_kv_head, version=version, att=att, lse=lse,
                 scratch=scratch, block_size=block_size))


def decode(out, k_cache, v_cache, qkv, pos, n_head, version=2) -> None:
    """Append qkv's keys and values (one position, W values) at row `pos` of the caches (NKV, maxT, hs),
    in place, and out (NH*hs values) = its attention over rows 0..pos, on the device; returns None.

    version 1: one block per query head; its pos+1 scores must fit in 48 KiB (pos < MAX_DECODE1_POSITIONS
               = 12256).
    version 2: one block per key/value head; G*hs + G*(pos+1) + G floats within 48 KiB.
    """
    run(launches("decode", out, k_cache, v_cache, qkv, pos, n_head, version=version))
