"""Grouped-query attention (cuda/gqa.cu, helpers/ops/gqa.py): every kernel version of every step against
the NumPy reference at odd shapes, race-checked; the reference against helpers.ops.attention (NKV == NH),
finite differences and torch autograd on the obvious repeat_interleave implementation; decode against
the reference and against the full forward; every refused assumption's message.

Tolerances: a bound on float32 rounding, derived per element and per test case (`bounds` below), not
picked. The inputs are float32 values, which the float64 reference takes exactly; u = 2^-24.

- A float32 sum of n terms x_i (each a rounded product) is off by at most gamma(n') * sum_i |x_i|,
  n' = 2n + 1 roundings (the products, the additions, one more for the query's scaling), in any order
  of summation (a butterfly as a loop), with gamma(n) = 7 sqrt(n) u: the probabilistic bound of Higham
  and Mary (SIAM J. Sci. Comput. 41, 2019), which fails with probability below 2 exp(-7^2 / 2) < 1e-10
  per sum. (The worst case, n u, needs every rounding to go the same way.) So every bound is gamma
  times the reference recomputed on ABSOLUTE values (|q|, |k|, ...): Higham's componentwise analysis.
- Scores: e_s = gamma(2 hs + 1) max_t2 sum_i |q_i k_i| / sqrt(hs), the worst score error of the row.
- Softmax: score errors e_t2 move p_t2 by p_t2 (e_t2 - sum p e), at most 2 e_s relative; the sum l of
  at most T exps, exp and the division add gamma(2T) + 4u: e_p = 2 e_s + gamma(2T) + 4u bounds every
  |delta p| / p of the row (also for p recomputed from lse in backward 2 and 3).
- out = sum_t2 p v: (e_p + gamma(3T)) sum_t2 p |v| (the sum's roundings and the online softmax's
  rescalings of acc, at most T); lse = m + log l: e_s + gamma(2T) + 2u (1 + |lse|); att: e_p p.
- Backward: dp = dy . v: gamma(2 hs + 1) sum_i |dy_i v_i|; D = dy . out (versions 2, 3) or
  rowsum(datt * att) (version 1), the sum of both bounds; ds = p (dp - D):
  b_ds = p (e_p |dp - D| + b_dp + b_D). Then, scale = 1/sqrt(hs), |.| taken everywhere:
      dq = scale sum_t2 ds k               scale (b_ds |k| + gamma(2T + 1) |ds| |k|)
      dk = scale sum_{h in g, t} ds q      scale sum_h (b_ds^T |q| + gamma(2GT + 1) |ds|^T |q|)
      dv = sum_{h in g, t} p dy            sum_h ((e_p p)^T |dy| + gamma(2GT) p^T |dy|)
  and accumulating into a nonzero dqkv adds 2u |dqkv|.
The checks print error / bound: observed errors use 1-5 % of it (up to 50 % where the float32 storage
of an accumulated dqkv dominates, at most u |dqkv| against the 2u allowed); an indexing or masking
mistake is O(p |v|), far outside it.
"""
import math

import numpy as np
import pytest
import torch

from helpers import check, device
from helpers.ops import attention, gqa
from helpers.teaching import gradcheck
from support import f64, oversized

U = 2.0 ** -24

SHAPES = [  # B, T, NH, NKV, hs
    (2, 37, 6, 2, 8),       # G = 3, T = 37: two key tiles, a partial one; hs below a warp
    (1, 19, 6, 3, 10),      # G = 2: blocks of forward/backward 3 straddle positions
    (3, 5, 4, 1, 13),       # multi-query attention (NKV = 1), odd T and hs
    (2, 1, 4, 2, 8),        # one position
    (1, 33, 3, 3, 16),      # NKV == NH: multi-head attention
    (1, 35, 4, 2, 128),     # the largest head versions 2 and 3 hold in registers
]
FORWARD, BACKWARD, DECODE = (sorted(gqa.VERSIONS[step]) for step in ("forward", "backward", "decode"))
BLOCK_SIZES = {1: 96, 2: 64, 3: 96}   # odd block counts (v1 not a power of two; v3: 3 rows (t, j) per block)


def gamma(n):
    return 7 * math.sqrt(n) * U


def make_inputs(B, T, NH, NKV, hs, seed=0):
    rng = np.random.default_rng(seed)
    qkv = rng.standard_normal((B, T, (NH + 2 * NKV) * hs)).astype(np.float32)
    dout = rng.standard_normal((B, T, NH * hs)).astype(np.float32)
    dqkv0 = rng.standard_normal(qkv.shape).astype(np.float32)   # nonzero: the backward must accumulate
    return qkv, dout, dqkv0


def reference(qkv, dout, dqkv0, NH, NKV):
    """Forward and backward in float64 from the float32 inputs."""
    out, att = gqa.gqa_forward(f64(qkv), NH, NKV)
    lse = gqa.gqa_logsumexp(f64(qkv), NH, NKV)
    dqkv = f64(dqkv0)
    gqa.gqa_backward(dqkv, f64(dout), f64(qkv), out, NH, NKV, att=att)
    return out, att, lse, dqkv


def bounds(qkv, dout, NH, NKV):
    """The elementwise rounding bounds of the module docstring for float32 kernels on these inputs:
    float64 arrays shaped like out, lse, att and dqkv."""
    qkv, dout = f64(qkv), f64(dout)
    B, T, W = qkv.shape
    hs, G = W // (NH + 2 * NKV), NH // NKV
    scale = 1 / math.sqrt(hs)
    out, att = gqa.gqa_forward(qkv, NH, NKV)
    lse = gqa.gqa_logsumexp(qkv, NH, NKV).reshape(B, NKV, G, T, 1)
    p = att.reshape(B, NKV, G, T, T)
    causal = np.tril(np.ones((T, T), dtype=bool))
    q, k, v = gqa.split_qkv(np.abs(qkv), NH, NKV)                            # |q|, |k|, |v|
    dy = gqa.split_groups(np.abs(dout), NKV, hs)                             # |dy|
    e_s = gamma(2 * hs + 1) * np.where(causal, q @ k.swapaxes(-1, -2), 0).max(-1, keepdims=True) * scale
    e_p = 2 * e_s + gamma(2 * T) + 4 * U                                     # (B, NKV, G, T, 1)
    b_out = (e_p + gamma(3 * T)) * (p @ v) + U * np.abs(gqa.split_groups(out, NKV, hs))
    b_lse = e_s + gamma(2 * T) + 2 * U * (1 + np.abs(lse))
    # backward
    _, _, v_signed = gqa.split_qkv(qkv, NH, NKV)
    dp = gqa.split_groups(dout, NKV, hs) @ v_signed.swapaxes(-1, -2)        # datt
    D = (dp * p).sum(-1, keepdims=True)
    dp_abs = np.where(causal, dy @ v.swapaxes(-1, -2), 0)                    # sum_i |dy_i v_i|
    D_abs = (dy * np.abs(gqa.split_groups(out, NKV, hs))).sum(-1, keepdims=True)
    p_dp_abs = (p * dp_abs).sum(-1, keepdims=True)
    b_D = (gamma(2 * hs + 1) * (D_abs + p_dp_abs) + (e_p + gamma(3 * T)) * p_dp_abs     # dy . out
           + (e_p + gamma(2 * T)) * (p * np.abs(dp)).sum(-1, keepdims=True))           # rowsum(datt * att)
    b_ds = p * (e_p * np.abs(dp - D) + gamma(2 * hs + 1) * dp_abs + b_D)
    ds = np.abs(p * (dp - D))
    b_dq = scale * (b_ds @ k + gamma(2 * T + 1) * (ds @ k))
    b_dk = scale * (b_ds.swapaxes(-1, -2) @ q + gamma(2 * G * T + 1) * (ds.swapaxes(-1, -2) @ q)).sum(2)
    b_dv = ((e_p * p).swapaxes(-1, -2) @ dy + gamma(2 * G * T) * (p.swapaxes(-1, -2) @ dy)).sum(2)
    b_dqkv = np.concatenate([gqa.merge_groups(b_dq), gqa.merge_groups(b_dk[:, :, None]),
                             gqa.merge_groups(b_dv[:, :, None])], axis=-1)
    return dict(out=gqa.merge_groups(b_out), lse=b_lse.reshape(B, NH, T), att=(e_p * p).reshape(B, NH, T, T),
                dqkv=b_dqkv)


def within(name, out, ref, bound, extra_rtol=0.0):
    """|out - ref| <= bound (+ extra_rtol |ref|) elementwise, printed as the fraction of the bound used."""
    bound = bound + extra_rtol * np.abs(ref) + 1e-300       # (exact zeros, as above the diagonal, stay 0 / bound)
    ratio = (device.asnumpy(out).astype(np.float64) - ref) / bound
    check(f"{name}: error / bound", ratio, np.zeros_like(ratio), atol=1.0, rtol=0.0)


def check_dqkv(name, dqkv, ref, NH, NKV, tol):
    """dq, dk, dv against the reference (accumulated into a nonzero dqkv: 2u |dqkv| more)."""
    dqkv, hs = device.asnumpy(dqkv), ref.shape[-1] // (NH + 2 * NKV)
    C, KC = NH * hs, NKV * hs
    for part, cols in [("dq", slice(0, C)), ("dk", slice(C, C + KC)), ("dv", slice(C + KC, None))]:
        within(f"{name} {part}", dqkv[..., cols], ref[..., cols], tol["dqkv"][..., cols], 2 * U)


def aux_buffers(version, B, T, NH):
    return dict(att=device.empty((B, NH, T, T))) if version == 1 else dict(lse=device.empty((B, NH, T)))


def run_checked(launches):
    """Race-check each launch, then run it (the next launch reads what this one wrote)."""
    for launch in launches:
        device.racecheck(*launch)
        launch()


# ------------------------------------------------------------------------------------------------
# The kernels against the reference
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("version", FORWARD)
@pytest.mark.parametrize("B, T, NH, NKV, hs", SHAPES)
def test_forward_and_backward_match_the_reference(version, B, T, NH, NKV, hs):
    qkv, dout, dqkv0 = make_inputs(B, T, NH, NKV, hs)
    out_ref, att_ref, lse_ref, dqkv_ref = reference(qkv, dout, dqkv0, NH, NKV)
    tol = bounds(qkv, dout, NH, NKV)
    qkv_d, dout_d = device.asarray(qkv), device.asarray(dout)
    out = device.empty((B, T, NH * hs))
    aux = aux_buffers(version, B, T, NH)
    gqa.forward(out, qkv_d, NH, NKV, version=version, **aux)
    name = f"gqa v{version} B={B} T={T} NH={NH} NKV={NKV} hs={hs}"
    within(f"{name} out", out, out_ref, tol["out"])
    if version == 1:
        within(f"{name} att", aux["att"], att_ref, tol["att"])
    else:
        within(f"{name} lse", aux["lse"], lse_ref, tol["lse"])
    dqkv = device.asarray(dqkv0.copy())   # (a fresh copy: the CPU backend's asarray may share memory)
    gqa.backward(dqkv, dout_d, qkv_d, out, NH, NKV, version=version, **aux)
    check_dqkv(name, dqkv, dqkv_ref, NH, NKV, tol)


@pytest.mark.parametrize("version", FORWARD)
@pytest.mark.parametrize("B, T, NH, NKV, hs", [SHAPES[0], SHAPES[1], SHAPES[2]])
def test_every_kernel_passes_racecheck_with_odd_block_sizes(version, B, T, NH, NKV, hs):
    """Every kernel gives the same bits whatever order its threads and blocks run in, and no two
    blocks write the same byte: no atomics, so exactly (no tolerance)."""
    qkv, dout, dqkv0 = make_inputs(B, T, NH, NKV, hs, seed=1)
    out_ref, _, _, dqkv_ref = reference(qkv, dout, dqkv0, NH, NKV)
    tol = bounds(qkv, dout, NH, NKV)
    qkv, dout = device.asarray(qkv), device.asarray(dout)
    out = device.empty((B, T, NH * hs))
    aux = aux_buffers(version, B, T, NH)
    bs = BLOCK_SIZES[version]
    run_checked(gqa.launches("forward", out, qkv, NH, NKV, version=version, block_size=bs, **aux))
    within(f"v{version} out, block {bs}", out, out_ref, tol["out"])
    dqkv = device.asarray(dqkv0.copy())
    run_checked(gqa.launches("backward", dqkv, dout, qkv, out, NH, NKV, version=version, block_size=bs, **aux))
    check_dqkv(f"v{version} block {bs}", dqkv, dqkv_ref, NH, NKV, tol)


def test_fused_backwards_read_the_lse_of_either_fused_forward():
    B, T, NH, NKV, hs = 2, 23, 4, 2, 16
    qkv, dout, dqkv0 = make_inputs(B, T, NH, NKV, hs, seed=2)
    _, _, _, dqkv_ref = reference(qkv, dout, dqkv0, NH, NKV)
    tol = bounds(qkv, dout, NH, NKV)
    qkv, dout = device.asarray(qkv), device.asarray(dout)
    for fwd, bwd in [(2, 3), (3, 2)]:
        out, lse = device.empty((B, T, NH * hs)), device.empty((B, NH, T))
        gqa.forward(out, qkv, NH, NKV, version=fwd, lse=lse)
        dqkv = device.asarray(dqkv0.copy())
        gqa.backward(dqkv, dout, qkv, out, NH, NKV, version=bwd, lse=lse)
        check_dqkv(f"forward {fwd}, backward {bwd}", dqkv, dqkv_ref, NH, NKV, tol)


def test_backward_allocates_its_scratch_unless_given():
    B, T, NH, NKV, hs = 1, 9, 4, 2, 8
    qkv, dout, dqkv0 = make_inputs(B, T, NH, NKV, hs, seed=5)
    _, _, _, dqkv_ref = reference(qkv, dout, dqkv0, NH, NKV)
    tol = bounds(qkv, dout, NH, NKV)
    qkv, dout = device.asarray(qkv), device.asarray(dout)
    for version in BACKWARD:
        out, aux = device.empty((B, T, NH * hs)), aux_buffers(version, B, T, NH)
        gqa.forward(out, qkv, NH, NKV, version=version, **aux)
        scratch = device.empty((B, NH, T, T) if version == 1 else (B, NH, T))
        dqkv = device.asarray(dqkv0.copy())
        gqa.backward(dqkv, dout, qkv, out, NH, NKV, version=version, scratch=scratch, **aux)
        check_dqkv(f"v{version} given scratch", dqkv, dqkv_ref, NH, NKV, tol)


def test_large_scores_do_not_overflow():
    """Scores of a hundred and more: exp would overflow float32 without the running maximum. The
    bounds grow with the scores (S is 36 times larger), as they should."""
    B, T, NH, NKV, hs = 1, 40, 4, 2, 64
    qkv, dout, dqkv0 = make_inputs(B, T, NH, NKV, hs, seed=3)
    qkv *= 6.0
    out_ref, _, lse_ref, dqkv_ref = reference(qkv, dout, dqkv0, NH, NKV)
    assert lse_ref.max() > 89, "the test needs scores beyond float32's exp range"
    tol = bounds(qkv, dout, NH, NKV)
    qkv_d, dout_d = device.asarray(qkv), device.asarray(dout)
    for version in FORWARD:
        out, aux = device.empty((B, T, NH * hs)), aux_buffers(version, B, T, NH)
        gqa.forward(out, qkv_d, NH, NKV, version=version, **aux)
        within(f"v{version} out, large scores", out, out_ref, tol["out"])
        dqkv = device.asarray(dqkv0.copy())
        gqa.backward(dqkv, dout_d, qkv_d, out, NH, NKV, version=version, **aux)
        check_dqkv(f"v{version} large scores", dqkv, dqkv_ref, NH, NKV, tol)


def test_version1_takes_heads_above_128():
    B, T, NH, NKV, hs = 1, 6, 2, 1, 129
    qkv, dout, dqkv0 = make_inputs(B, T, NH, NKV, hs, seed=6)
    out_ref, att_ref, _, dqkv_ref = reference(qkv, dout, dqkv0, NH, NKV)
    tol = bounds(qkv, dout, NH, NKV)
    out, att = device.empty((B, T, NH * hs)), device.empty((B, NH, T, T))
    gqa.forward(out, device.asarray(qkv), NH, NKV, version=1, att=att)
    within("v1 hs=129 out", out, out_ref, tol["out"])
    dqkv = device.asarray(dqkv0.copy())
    gqa.backward(dqkv, device.asarray(dout), device.asarray(qkv), out, NH, NKV, version=1, att=att)
    check_dqkv("v1 hs=129", dqkv, dqkv_ref, NH, NKV, tol)


# ------------------------------------------------------------------------------------------------
# Decode
# ------------------------------------------------------------------------------------------------
DECODE_SHAPES = [  # NH, NKV, hs, maxT
    (6, 2, 8, 40),
    (6, 3, 10, 19),
    (4, 1, 13, 37),
    (10, 1, 8, 12),     # G = 10 > GROUP_CHUNK: decode 2 takes the group in two chunks of heads
    (4, 4, 16, 33),     # NKV == NH
    (2, 1, 136, 5),     # hs above the block of 128 threads and above 128 (no limit in decode)
]


@pytest.mark.parametrize("version", DECODE)
@pytest.mark.parametrize("NH, NKV, hs, maxT", DECODE_SHAPES)
def test_decode_steps_equal_full_attention(version, NH, NKV, hs, maxT):
    """Decoding positions 0, 1, ... one at a time gives full causal attention's rows: the reference
    decode equals the reference forward (float64, to rounding), the kernels are within the forward's
    bound of it (T = pos + 1 keys), and the caches end up holding the keys and values."""
    T = min(maxT, 37)
    qkv, _, _ = make_inputs(1, T, NH, NKV, hs, seed=7)
    full, _ = gqa.gqa_forward(f64(qkv), NH, NKV)
    tol = bounds(qkv, np.zeros((1, T, NH * hs), np.float32), NH, NKV)["out"]
    k_ref, v_ref = np.zeros((NKV, maxT, hs)), np.zeros((NKV, maxT, hs))
    k_dev, v_dev = device.zeros((NKV, maxT, hs)), device.zeros((NKV, maxT, hs))
    out = device.empty(NH * hs)
    for pos in range(T):
        row = qkv[0, pos]
        np.testing.assert_allclose(gqa.gqa_decode(k_ref, v_ref, f64(row), pos, NH), full[0, pos], atol=1e-12)
        gqa.decode(out, k_dev, v_dev, device.asarray(row.copy()), pos, NH, version=version)
        within(f"gqa_decode{version} NH={NH} NKV={NKV} hs={hs} pos {pos}", out, full[0, pos], tol[0, pos])
    np.testing.assert_array_equal(device.asnumpy(k_dev)[:, :T], k_ref[:, :T].astype(np.float32))
    np.testing.assert_array_equal(device.asnumpy(v_dev)[:, :T], v_ref[:, :T].astype(np.float32))


@pytest.mark.parametrize("version", DECODE)
def test_prefill_then_decode_is_the_last_row_of_the_full_forward(version):
    """A prompt's T-1 positions go into the caches at once (as a prefill writes them), then the
    last position is decoded: its output is the last row of the full forward, the reference's and
    the forward kernel's (two float32 results: twice the bound)."""
    NH, NKV, hs, T, maxT = 6, 2, 12, 29, 40
    qkv, _, _ = make_inputs(1, T, NH, NKV, hs, seed=8)
    tol = bounds(qkv, np.zeros((1, T, NH * hs), np.float32), NH, NKV)["out"]
    full_ref, _ = gqa.gqa_forward(f64(qkv), NH, NKV)
    full = device.empty((1, T, NH * hs))
    gqa.forward(full, device.asarray(qkv), NH, NKV, lse=device.empty((1, NH, T)))
    _, k, v = gqa.split_qkv(qkv, NH, NKV)                         # (1, NKV, 1, T, hs)
    k_cache, v_cache = np.zeros((NKV, maxT, hs), np.float32), np.zeros((NKV, maxT, hs), np.float32)
    k_cache[:, :T - 1], v_cache[:, :T - 1] = k[0, :, 0, :T - 1], v[0, :, 0, :T - 1]
    ref = gqa.gqa_decode(f64(k_cache), f64(v_cache), f64(qkv[0, T - 1]), T - 1, NH)
    np.testing.assert_allclose(ref, full_ref[0, T - 1], atol=1e-12)
    out = device.empty(NH * hs)
    k_dev, v_dev = device.asarray(k_cache.copy()), device.asarray(v_cache.copy())
    gqa.decode(out, k_dev, v_dev, device.asarray(qkv[0, T - 1].copy()), T - 1, NH, version=version)
    within(f"decode{version} vs reference forward", out, full_ref[0, T - 1], tol[0, T - 1])
    within(f"decode{version} vs forward kernel", out, device.asnumpy(full)[0, T - 1], 2 * tol[0, T - 1])
    np.testing.assert_array_equal(device.asnumpy(k_dev)[:, T - 1], k[0, :, 0, T - 1])


@pytest.mark.parametrize("version", DECODE)
@pytest.mark.parametrize("NH, NKV, hs, maxT, pos", [(6, 2, 8, 200, 150), (10, 1, 8, 40, 33)])
def test_decode_racecheck(version, NH, NKV, hs, maxT, pos):
    rng = np.random.default_rng(9)
    k, v = (device.asarray(rng.standard_normal((NKV, maxT, hs)).astype(np.float32)) for _ in range(2))
    row = device.asarray(rng.standard_normal((NH + 2 * NKV) * hs).astype(np.float32))
    launches = gqa.launches("decode", device.empty(NH * hs), k, v, row, pos, NH, version=version)
    assert [launch.name for launch in launches] == ["gqa_decode1_append", f"gqa_decode{version}_attend"]
    run_checked(launches)


# ------------------------------------------------------------------------------------------------
# The NumPy reference
# ------------------------------------------------------------------------------------------------
def test_with_as_many_kv_heads_as_query_heads_it_is_gpt2_attention():
    B, T, NH, hs = 2, 11, 3, 8
    qkv, dout, dqkv0 = make_inputs(B, T, NH, NH, hs, seed=10)
    qkv, dout, dqkv0 = f64(qkv), f64(dout), f64(dqkv0)
    out, att = gqa.gqa_forward(qkv, NH, NH)
    out_a, att_a = attention.attention_forward(qkv, NH)
    np.testing.assert_allclose(out, out_a, rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(att, att_a, rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(gqa.gqa_logsumexp(qkv, NH, NH), attention.attention_logsumexp(qkv, NH), rtol=1e-13)
    d, d_a = dqkv0.copy(), dqkv0.copy()
    gqa.gqa_backward(d, dout, qkv, out, NH, NH, att=att)
    attention.attention_backward(d_a, dout, qkv, out_a, NH, att=att_a)
    np.testing.assert_allclose(d, d_a, rtol=1e-12, atol=1e-13)


def test_reference_backward_against_finite_differences():
    B, T, NH, NKV, hs = 2, 4, 4, 2, 3
    rng = np.random.default_rng(4)
    qkv = rng.standard_normal((B, T, (NH + 2 * NKV) * hs))
    dout = rng.standard_normal((B, T, NH * hs))
    numeric = gradcheck.numerical_gradient(lambda x: gqa.gqa_forward(x, NH, NKV)[0], qkv, dout)
    out, att = gqa.gqa_forward(qkv, NH, NKV)
    dqkv = np.zeros_like(qkv)
    gqa.gqa_backward(dqkv, dout, qkv, out, NH, NKV, att=att)
    gradcheck.assert_gradient("gqa_backward", dqkv, numeric)
    before = dqkv.copy()
    gqa.gqa_backward(dqkv, dout, qkv, None, NH, NKV)  # accumulates; att recomputed when not given
    np.testing.assert_allclose(dqkv, 2 * before)


def torch_gqa(qkv, n_head, n_kv_head):
    """The obvious implementation: repeat each key/value head G times, then multi-head attention."""
    B, T, W = qkv.shape
    hs = W // (n_head + 2 * n_kv_head)
    C, KC, G = n_head * hs, n_kv_head * hs, n_head // n_kv_head
    heads = lambda x, n: x.reshape(B, T, n, hs).transpose(1, 2)  # noqa: E731  (B, n, T, hs)
    q = heads(qkv[..., :C], n_head)
    k = heads(qkv[..., C:C + KC], n_kv_head).repeat_interleave(G, dim=1)
    v = heads(qkv[..., C + KC:], n_kv_head).repeat_interleave(G, dim=1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(hs)
    future = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
    att = scores.masked_fill(future, float("-inf")).softmax(dim=-1)
    return (att @ v).transpose(1, 2).reshape(B, T, C), att


def test_reference_against_torch_autograd():
    B, T, NH, NKV, hs = 2, 7, 6, 2, 5
    rng = np.random.default_rng(11)
    qkv = rng.standard_normal((B, T, (NH + 2 * NKV) * hs))
    dout = rng.standard_normal((B, T, NH * hs))
    x = torch.tensor(qkv, requires_grad=True)
    out_t, att_t = torch_gqa(x, NH, NKV)
    out_t.backward(torch.tensor(dout))
    out, att = gqa.gqa_forward(qkv, NH, NKV)
    np.testing.assert_allclose(out, out_t.detach().numpy(), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(att, att_t.detach().numpy(), rtol=1e-12, atol=1e-13)
    dqkv = np.zeros_like(qkv)
    gqa.gqa_backward(dqkv, dout, qkv, out, NH, NKV, att=att)
    np.testing.assert_allclose(dqkv, x.grad.numpy(), rtol=1e-11, atol=1e-12)


def test_reference_shares_the_kv_heads_without_copies_and_keeps_the_dtype():
    qkv = make_inputs(2, 9, 6, 2, 4)[0]
    q, k, v = gqa.split_qkv(qkv, 6, 2)
    assert q.shape == (2, 2, 3, 9, 4) and k.shape == v.shape == (2, 2, 1, 9, 4)
    assert all(np.shares_memory(a, qkv) for a in (q, k, v)), "q, k, v must be views of qkv"
    out, att = gqa.gqa_forward(qkv, 6, 2)
    assert out.dtype == att.dtype == np.float32 and out.shape == (2, 9, 24) and att.shape == (2, 6, 9, 9)
    np.testing.assert_allclose(att.sum(-1), 1.0, rtol=1e-6)
    assert (np.triu(att, k=1) == 0).all() and (att >= 0).all()
    # token 0 sees only itself: query head h outputs value head h // 3 of token 0
    np.testing.assert_allclose(out[:, 0].reshape(2, 2, 3, 4), np.broadcast_to(v[:, :, :, 0], (2, 2, 3, 4)), rtol=1e-6)


def test_logsumexp_is_the_softmax_denominator():
    qkv = f64(make_inputs(1, 7, 4, 1, 5)[0])
    scores = gqa.causal_scores(qkv, 4, 1).reshape(1, 4, 7, 7)
    _, att = gqa.gqa_forward(qkv, 4, 1)
    lse = gqa.gqa_logsumexp(qkv, 4, 1)
    np.testing.assert_allclose(np.exp(scores - lse[..., None]), att, atol=1e-12)


# ------------------------------------------------------------------------------------------------
# Assumptions: a clear error, never a wrong answer
# ------------------------------------------------------------------------------------------------
def buffers(B, T, NH, NKV, hs):
    return (device.empty((B, T, NH * hs)), device.zeros((B, T, (NH + 2 * NKV) * hs)), device.empty((B, NH, T, T)),
            device.empty((B, NH, T)))


def test_heads_must_group_and_qkv_must_split_into_them():
    out, qkv, att, lse = buffers(1, 5, 6, 2, 4)   # W = 40
    with pytest.raises(ValueError, match=r"gqa_forward1: n_head must be a multiple of n_kv_head \(G = n_head / "
                                         r"n_kv_head query heads share each key/value head\), got n_head=6, "
                                         r"n_kv_head=4"):
        gqa.forward(out, qkv, 6, 4, version=1, att=att)
    with pytest.raises(ValueError, match=r"gqa_backward2: n_head must be a multiple of n_kv_head"):
        gqa.backward(device.zeros(qkv.shape), out, qkv, out, 6, 4, version=2, lse=lse)
    with pytest.raises(ValueError, match=r"gqa_forward2: n_head and n_kv_head must be positive ints, got n_head=6, "
                                         r"n_kv_head=0"):
        gqa.forward(out, qkv, 6, 0, version=2, lse=lse)
    with pytest.raises(ValueError, match=r"must be positive ints, got n_head=6.0"):
        gqa.forward(out, qkv, 6.0, 2, version=2, lse=lse)
    with pytest.raises(ValueError, match=r"gqa_forward3: qkv's last dimension holds n_head query, n_kv_head key and "
                                         r"n_kv_head value heads of hs channels: it must be a positive multiple of "
                                         r"n_head \+ 2\*n_kv_head = 10, got 41"):
        gqa.forward(out, device.zeros((1, 5, 41)), 6, 2, version=3, lse=lse)
    with pytest.raises(ValueError, match=r"`qkv` must have 3 dimensions, got shape \(5, 40\)"):
        gqa.forward(out, device.zeros((5, 40)), 6, 2, version=1, att=att)
    with pytest.raises(ValueError, match="`qkv` must be float32, got float64"):
        gqa.forward(out, device.zeros((1, 5, 40), np.float64), 6, 2, version=1, att=att)


def test_head_size_above_128_is_refused_by_versions_2_and_3():
    out, qkv, att, lse = buffers(1, 5, 2, 1, 129)
    for version in (2, 3):
        with pytest.raises(ValueError, match=rf"gqa_forward{version}: a lane holds at most 4 channels of a head in "
                                             rf"registers: head size hs must be <= 128, got hs=129 \(use version 1\)"):
            gqa.forward(out, qkv, 2, 1, version=version, lse=lse)
        with pytest.raises(ValueError, match=rf"gqa_backward{version}: .*<= 128, got hs=129"):
            gqa.backward(device.zeros(qkv.shape), out, qkv, out, 2, 1, version=version, lse=lse)


def test_buffers_are_required_with_the_right_shape():
    out, qkv, att, lse = buffers(2, 5, 4, 2, 8)
    with pytest.raises(ValueError, match=r"gqa_forward1: `att` is required, a float32 array of shape \(2, 4, 5, 5\)"):
        gqa.forward(out, qkv, 4, 2, version=1)
    with pytest.raises(ValueError, match=r"gqa_forward2: `lse` must have shape \(2, 4, 5\), got \(2, 4, 5, 5\)"):
        gqa.forward(out, qkv, 4, 2, version=2, lse=att)
    with pytest.raises(ValueError, match=r"gqa_forward3: `out` must have shape \(2, 5, 32\), got \(2, 5, 16\)"):
        gqa.forward(device.empty((2, 5, 16)), qkv, 4, 2, version=3, lse=lse)
    with pytest.raises(ValueError, match=r"gqa_backward1: `scratch` must have shape \(2, 4, 5, 5\)"):
        gqa.backward(device.zeros(qkv.shape), out, qkv, out, 4, 2, version=1, att=att, scratch=lse)
    with pytest.raises(ValueError, match=r"gqa_backward3: `scratch` must have shape \(2, 4, 5\)"):
        gqa.backward(device.zeros(qkv.shape), out, qkv, out, 4, 2, version=3, lse=lse, scratch=att)
    with pytest.raises(ValueError, match=r"gqa_backward2: `dout` must have shape \(2, 5, 32\)"):
        gqa.backward(device.zeros(qkv.shape), qkv, qkv, out, 4, 2, version=2, lse=lse)
    with pytest.raises(ValueError, match=r"gqa_backward2: `dqkv` must have shape \(2, 5, 64\), got \(2, 5, 32\)"):
        gqa.backward(out, out, qkv, out, 4, 2, version=2, lse=lse)
    with pytest.raises(ValueError, match=r"gqa_backward3: `out` is required"):
        gqa.backward(device.zeros(qkv.shape), out, qkv, None, 4, 2, version=3, lse=lse)
    with pytest.raises(ValueError, match=r"gqa.forward: no version 4; the versions are \[1, 2, 3\]"):
        gqa.forward(out, qkv, 4, 2, version=4, lse=lse)
    with pytest.raises(ValueError, match=r"gqa has no 'update' step; its steps are forward, backward, decode"):
        gqa.launches("update", out, qkv, 4, 2, version=1)


def test_warp_versions_need_whole_warps():
    out, qkv, att, lse = buffers(1, 5, 4, 2, 8)
    for version in (2, 3):
        with pytest.raises(ValueError, match=f"gqa_forward{version} reduces with full-warp shuffles: "
                                             f"block_size must be a multiple of 32, got 100"):
            gqa.forward(out, qkv, 4, 2, version=version, lse=lse, block_size=100)
        with pytest.raises(ValueError, match=f"gqa_backward{version} reduces with full-warp shuffles"):
            gqa.backward(device.zeros(qkv.shape), out, qkv, out, 4, 2, version=version, lse=lse, block_size=48)
    with pytest.raises(ValueError, match=r"gqa_forward1: block_size must be an int between 1 and 1024 threads, "
                                         r"got 2048"):
        gqa.forward(out, qkv, 4, 2, version=1, att=att, block_size=2048)


def test_version3_shared_memory_must_fit():
    out, qkv, att, lse = buffers(1, 5, 2, 1, 128)
    with pytest.raises(ValueError, match=r"gqa_forward3: hs=128 with block_size=1024 needs 53,376 bytes of shared "
                                         r"memory, more than the 48 KiB a block may use: use a smaller block_size"):
        gqa.forward(out, qkv, 2, 1, version=3, lse=lse, block_size=1024)
    with pytest.raises(ValueError, match="gqa_backward3: hs=128 with block_size=512 needs 53,760 bytes"):
        gqa.backward(device.zeros(qkv.shape), out, qkv, out, 2, 1, version=3, lse=lse, block_size=512)
    gqa.forward(out, qkv, 2, 1, version=3, lse=lse, block_size=512)   # 45,184 bytes: fits


def test_version3_grid_y_limit():
    # B*NKV = 65536 (b, key/value head) pairs: one too many for grid.y (views that claim the shapes)
    B, T, NH, NKV, hs = 2**15, 1, 2, 2, 1
    qkv, out, lse = (oversized(shape) for shape in [(B, T, (NH + 2 * NKV) * hs), (B, T, NH * hs), (B, NH, T)])
    with pytest.raises(ValueError, match=r"gqa_forward3 puts the \(b, key/value head\) pairs \(B\*NKV = 32768\*2\) "
                                         r"on the grid's y axis, which has at most 65535 blocks: got 65536"):
        gqa.forward(out, qkv, NH, NKV, version=3, lse=lse)
    with pytest.raises(ValueError, match=r"gqa_backward3 puts the \(b, key/value head\) pairs"):
        gqa.backward(qkv, out, qkv, out, NH, NKV, version=3, lse=lse)


def test_32bit_indices_are_checked():
    # T*T = 2.2e9 > 2^31: version 1's (T, T) matrix cannot be indexed with int (qkv itself is small)
    B, T, NH, NKV, hs = 1, 47_000, 1, 1, 1
    qkv, out = device.zeros((B, T, 3)), device.empty((B, T, 1))
    with pytest.raises(ValueError, match=r"gqa_forward1 indexes with 32-bit ints: B\*NH\*T\*T = 2,209,000,000 "
                                         r"must be below 2\^31"):
        gqa.forward(out, qkv, NH, NKV, version=1, att=device.empty((1, 1, 1, 1)))
    with pytest.raises(ValueError, match=r"gqa_backward1 indexes with 32-bit ints: B\*NH\*T\*T"):
        gqa.backward(device.zeros(qkv.shape), out, qkv, out, NH, NKV, version=1, att=device.empty((1, 1, 1, 1)))
    # every version indexes qkv with int: B*T*W < 2^31
    huge = oversized((2, 2**20, 1152))   # NH = 6, NKV = 3: 12 heads of hs = 96
    for version in FORWARD:
        with pytest.raises(ValueError, match=rf"gqa_forward{version} indexes with 32-bit ints: B\*T\*W = "
                                             rf"2,415,919,104 must be below"):
            gqa.forward(out, huge, 6, 3, version=version)
        with pytest.raises(ValueError, match=rf"gqa_backward{version} indexes with 32-bit ints: B\*T\*W"):
            gqa.backward(huge, out, huge, out, 6, 3, version=version)


def test_decode_checks():
    k = device.zeros((2, 8, 4))           # NKV = 2, maxT = 8, hs = 4; NH = 6: W = 40, out 24

    def args(**kw):
        return {**dict(out=device.zeros(24), k_cache=k, v_cache=k.copy(), qkv=device.zeros(40), pos=0, n_head=6), **kw}

    for version in DECODE:
        with pytest.raises(ValueError, match=f"gqa_decode{version}: position 8 is outside the cache's 8 rows"):
            gqa.decode(**args(pos=8), version=version)
        with pytest.raises(ValueError, match=f"gqa_decode{version}: position -1 is outside"):
            gqa.decode(**args(pos=-1), version=version)
        with pytest.raises(ValueError, match=r"`qkv` must hold one position's W = \(n_head \+ 2\*n_kv_head\) \* hs = "
                                             r"40 values, got 24"):
            gqa.decode(**args(qkv=device.zeros(24)), version=version)
        with pytest.raises(ValueError, match="`out` must hold n_head \\* hs = 24 values, got 8"):
            gqa.decode(**args(out=device.zeros(8)), version=version)
        with pytest.raises(ValueError, match=r"`v_cache` must have shape \(2, 8, 4\), got \(2, 8, 2\)"):
            gqa.decode(**args(v_cache=device.zeros((2, 8, 2))), version=version)
        with pytest.raises(ValueError, match=r"`k_cache` must have 3 dimensions, got shape \(16, 4\)"):
            gqa.decode(**args(k_cache=device.zeros((16, 4))), version=version)
        with pytest.raises(ValueError, match=rf"gqa_decode{version}: n_head must be a multiple of n_kv_head .* got "
                                             rf"n_head=5, n_kv_head=2"):
            gqa.decode(**args(n_head=5), version=version)
    with pytest.raises(ValueError, match=r"gqa.decode: no version 3; the versions are \[1, 2\]"):
        gqa.decode(**args(), version=3)


def test_decode_shared_memory_must_fit():
    # version 1: pos+1 scores and 128 bytes of reduction scratch: positions 0 .. 12255 fit in 48 KiB
    k = device.zeros((1, 12_300, 1))
    with pytest.raises(ValueError, match=r"gqa_decode1: keeping the 12257 scores of cache rows 0..12256 needs "
                                         r"49,156 bytes of shared memory, more than the 48 KiB a block may use: "
                                         r"version 1 attends over at most 12256 positions"):
        gqa.decode(device.zeros(1), k, k.copy(), device.zeros(3), 12_256, 1, version=1)
    gqa.decode(device.zeros(1), k, k.copy(), device.zeros(3), 12_255, 1, version=1)
    # version 2, G = 8 heads of hs = 128: 4 (8*128 + 8*(pos+1) + 8) bytes, 49,152 at pos = 1406
    k = device.zeros((1, 1500, 128))
    with pytest.raises(ValueError, match=r"gqa_decode2: staging G=8 queries of hs=128 and their 1408 scores each needs "
                                         r"49,184 bytes of shared memory, more than the 48 KiB a block may use: "
                                         r"use version 1"):
        gqa.decode(device.zeros(1024), k, k.copy(), device.zeros(1280), 1407, 8, version=2)
    gqa.decode(device.zeros(1024), k, k.copy(), device.zeros(1280), 1406, 8, version=2)
    gqa.decode(device.zeros(1024), k, k.copy(), device.zeros(1280), 1407, 8, version=1)


def test_versions_are_described():
    assert set(gqa.VERSIONS) == {"forward", "backward", "decode"}
    for step, count in [("forward", 3), ("backward", 3), ("decode", 2)]:
        table = gqa.VERSIONS[step]
        assert sorted(table) == list(range(1, count + 1)) and all(isinstance(d, str) and d for d in table.values())
