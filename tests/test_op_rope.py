"""Rotary position embedding (cuda/rope.cu, helpers/ops/rope.py): every kernel version against the NumPy
reference at odd shapes (head sizes 2, 6, 10, 14 that only version 1 takes, 8 ... 128 for both; grouped
and ungrouped heads; one row; the decode step), race-checked; the reference against Hugging Face's
LlamaRotaryEmbedding + apply_rotary_pos_emb and torch autograd, its backward against finite
differences; a rotation's properties; every refused assumption and its message.

Tolerances (u = 2^-24, float32's unit roundoff; the reference runs in float64 on the same float32
inputs and the same float32 tables, so the tables contribute no error to a kernel-vs-reference check):

- forward: each rotated output is fl(a*c - b*s) (or fl(b*c + a*s)) of a pair (a, b) and table values
  |c|, |s| <= 1: two rounded products and a rounded sum (or an FMA and one product: no worse), so
  |error| <= gamma_2 (|a c| + |b s|) <= gamma_2 S, with S = |a| + |b| the pair's absolute sum and
  gamma_2 = 2u / (1 - 2u). A copied value head is exact. The tests use atol = gamma_2 * max S.
- backward: fl(d0 + fl(g_a c + g_b s)) with d0 the accumulated value: gamma_2 S_g from the rotation,
  plus u |d0 + t| from the addition, so |error| <= u (3 S_g + |d0|) (1 + 3u) (value heads: u |d0 + g|,
  below the same bound). atol = that bound's maximum.
"""
import importlib.util

import numpy as np
import pytest
import torch
import transformers
from transformers import LlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

import helpers
from helpers import device
from helpers.ops import rope
from helpers.runtime.cuda_source import REPO_ROOT
from helpers.teaching import gradcheck
from support import f64, oversized

U = 2.0**-24                       # float32 unit roundoff
GAMMA2 = 2 * U / (1 - 2 * U)
FORWARD, BACKWARD = sorted(rope.VERSIONS["forward"]), sorted(rope.VERSIONS["backward"])

# (B, T, n_head, n_kv_head, hs): threads never a multiple of the block (256) nor of 32
ANY_HS = [(2, 7, 4, 2, 6), (1, 1, 1, 1, 2), (3, 5, 6, 3, 10), (2, 3, 2, 1, 14)]   # hs/2 odd: version 1 only
HS_8 = [(2, 9, 4, 1, 8), (1, 13, 3, 3, 24), (2, 5, 8, 2, 64), (1, 3, 2, 1, 128)]  # hs % 8 == 0: every version
CASES = [(v, shape) for v in FORWARD for shape in (ANY_HS + HS_8 if v == 1 else HS_8)]


def width(n_head, n_kv_head, hs):
    return (n_head + 2 * n_kv_head) * hs


def pair_sums(x, n_head, n_kv_head):
    """S = |x[i]| + |x[i + half]| at each element of the rotated heads, |x| at the value heads."""
    heads = rope.split_qkv_heads(np.abs(f64(x)), n_head, n_kv_head)
    half = heads.shape[-1] // 2
    s = heads.copy()
    rotated = heads[:, :, :n_head + n_kv_head]
    s[:, :, :n_head + n_kv_head] = np.concatenate([rotated[..., :half] + rotated[..., half:]] * 2, axis=-1)
    return s.reshape(x.shape)


def forward_atol(x, n_head, n_kv_head):
    return GAMMA2 * float(pair_sums(x, n_head, n_kv_head).max())


def backward_atol(dout, dqkv0, n_head, n_kv_head):
    return U * (1 + 3 * U) * float((3 * pair_sums(dout, n_head, n_kv_head) + np.abs(f64(dqkv0))).max())


def make_case(shape, pos0=5, extra_rows=3, theta=rope.THETA, seed=0):
    """qkv, dout, dqkv0 (float32 host) and the tables (host) for positions up to pos0 + T + extra_rows."""
    B, T, NH, NKV, hs = shape
    rng = np.random.default_rng(seed)
    W = width(NH, NKV, hs)
    qkv, dout, dqkv0 = (rng.standard_normal((B, T, W)).astype(np.float32) for _ in range(3))
    cos, sin = rope.frequencies(hs, pos0 + T + extra_rows, theta)
    return qkv, dout, dqkv0, cos, sin


def tables(cos, sin):
    return device.asarray(cos), device.asarray(sin)


def run_forward(version, qkv, cos, sin, NH, NKV, **kw):
    out = device.empty(qkv.shape)
    rope.forward(out, device.asarray(qkv.copy()), *tables(cos, sin), NH, NKV, version=version, **kw)
    return out


# ------------------------------------------------------------------------------------------------
# The kernels against the reference
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("version, shape", CASES)
def test_forward_matches_the_reference(version, shape):
    B, T, NH, NKV, hs = shape
    qkv, _, _, cos, sin = make_case(shape)
    out = run_forward(version, qkv, cos, sin, NH, NKV, pos0=5)
    ref = rope.rope_forward(f64(qkv), f64(cos), f64(sin), NH, NKV, pos0=5)
    helpers.check(f"rope_forward{version} {shape}", out, ref, atol=forward_atol(qkv, NH, NKV), rtol=0)
    v = slice((NH + NKV) * hs, None)
    np.testing.assert_array_equal(device.asnumpy(out)[..., v], qkv[..., v])   # value heads: copied exactly


@pytest.mark.parametrize("version, shape", CASES)
def test_backward_matches_the_reference(version, shape):
    """Onto nonzero dqkv0: the kernels must accumulate."""
    B, T, NH, NKV, hs = shape
    _, dout, dqkv0, cos, sin = make_case(shape, seed=1)
    dqkv = device.asarray(dqkv0.copy())      # on the CPU backend asarray does not copy
    rope.backward(dqkv, device.asarray(dout), *tables(cos, sin), NH, NKV, version=version, pos0=5)
    ref = f64(dqkv0)
    rope.rope_backward(ref, f64(dout), f64(cos), f64(sin), NH, NKV, pos0=5)
    helpers.check(f"rope_backward{version} {shape}", dqkv, ref, atol=backward_atol(dout, dqkv0, NH, NKV), rtol=0)


@pytest.mark.parametrize("version", FORWARD)
def test_forward_in_place(version):
    """out may be qkv itself: each thread reads only the pair it writes."""
    shape = (2, 7, 4, 2, 8)
    qkv, _, _, cos, sin = make_case(shape)
    x = device.asarray(qkv.copy())
    rope.forward(x, x, *tables(cos, sin), 4, 2, version=version, pos0=5)
    helpers.check(f"rope_forward{version} in place", x, rope.rope_forward(f64(qkv), f64(cos), f64(sin), 4, 2, pos0=5),
                  atol=forward_atol(qkv, 4, 2), rtol=0)


@pytest.mark.parametrize("version", FORWARD)
def test_decode_steps_equal_the_full_sequence(version):
    """Generation: one position at a time (B = T = 1, pos0 = the position) gives the same bits as the
    whole sequence at once (every element is the same arithmetic on the same inputs)."""
    B, T, NH, NKV, hs = 1, 11, 4, 2, 16
    qkv, _, _, cos, sin = make_case((B, T, NH, NKV, hs), pos0=0, extra_rows=0)
    full = device.asnumpy(run_forward(version, qkv, cos, sin, NH, NKV))
    for pos in range(T):
        step = run_forward(version, np.ascontiguousarray(qkv[:, pos:pos + 1]), cos, sin, NH, NKV, pos0=pos)
        np.testing.assert_array_equal(device.asnumpy(step)[0, 0], full[0, pos], err_msg=f"position {pos}")
    helpers.check(f"rope_forward{version} decode", full, rope.rope_forward(f64(qkv), f64(cos), f64(sin), NH, NKV),
                  atol=forward_atol(qkv, NH, NKV), rtol=0)


@pytest.mark.parametrize("version", FORWARD)
def test_the_last_rows_of_the_table(version):
    """pos0 = n_positions - T, the largest allowed: the last table row is read (one more is refused,
    test_positions_must_fit_the_table)."""
    shape = (2, 4, 2, 1, 8)
    qkv, dout, dqkv0, cos, sin = make_case(shape, pos0=9, extra_rows=0)
    assert cos.shape[0] == 9 + 4
    out = run_forward(version, qkv, cos, sin, 2, 1, pos0=9)
    helpers.check(f"rope_forward{version} last rows", out, rope.rope_forward(f64(qkv), f64(cos), f64(sin), 2, 1, pos0=9),
                  atol=forward_atol(qkv, 2, 1), rtol=0)
    dqkv = device.asarray(dqkv0.copy())
    rope.backward(dqkv, device.asarray(dout), *tables(cos, sin), 2, 1, version=version, pos0=9)
    ref = f64(dqkv0)
    rope.rope_backward(ref, f64(dout), f64(cos), f64(sin), 2, 1, pos0=9)
    helpers.check(f"rope_backward{version} last rows", dqkv, ref, atol=backward_atol(dout, dqkv0, 2, 1), rtol=0)


@pytest.mark.parametrize("block_size", [1, 32, 96, 1024])
@pytest.mark.parametrize("version", FORWARD)
def test_block_sizes(version, block_size):
    shape = (3, 5, 4, 2, 8)
    qkv, dout, dqkv0, cos, sin = make_case(shape)
    out = run_forward(version, qkv, cos, sin, 4, 2, pos0=5, block_size=block_size)
    helpers.check(f"rope_forward{version} block {block_size}", out,
                  rope.rope_forward(f64(qkv), f64(cos), f64(sin), 4, 2, pos0=5), atol=forward_atol(qkv, 4, 2), rtol=0)
    dqkv = device.asarray(dqkv0.copy())
    rope.backward(dqkv, device.asarray(dout), *tables(cos, sin), 4, 2, version=version, pos0=5, block_size=block_size)
    ref = f64(dqkv0)
    rope.rope_backward(ref, f64(dout), f64(cos), f64(sin), 4, 2, pos0=5)
    helpers.check(f"rope_backward{version} block {block_size}", dqkv, ref, atol=backward_atol(dout, dqkv0, 4, 2),
                  rtol=0)


def test_no_rows_launch_nothing():
    cos, sin = tables(*rope.frequencies(8, 4))
    for version in FORWARD:
        assert rope.launches("forward", device.empty((0, 3, 32)), device.zeros((0, 3, 32)), cos, sin, 2, 1,
                             version=version) == []
        rope.backward(device.zeros((2, 0, 32)), device.zeros((2, 0, 32)), cos, sin, 2, 1, version=version)


# ------------------------------------------------------------------------------------------------
# Races: no shared memory, no atomics: identical bits in every thread order
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("version", FORWARD)
def test_racecheck_every_launch(version):
    shape = (2, 5, 4, 2, 8)
    qkv, dout, dqkv0, cos, sin = make_case(shape)
    c, s = tables(cos, sin)
    x = device.asarray(qkv)
    for launch in (rope.launches("forward", device.empty(qkv.shape), x, c, s, 4, 2, version=version, pos0=5,
                                 block_size=64) +
                   rope.launches("forward", x, x, c, s, 4, 2, version=version, pos0=5, block_size=64) +   # in place
                   rope.launches("backward", device.asarray(dqkv0), device.asarray(dout), c, s, 4, 2, version=version,
                                 pos0=5, block_size=64)):
        device.racecheck(*launch)


# ------------------------------------------------------------------------------------------------
# The reference: against Hugging Face, torch autograd, finite differences; a rotation's properties
# ------------------------------------------------------------------------------------------------
def hugging_face_tables(hs, theta, positions, n_head=4, n_kv_head=2):
    """cos, sin (len(positions), hs) float32 from transformers' LlamaRotaryEmbedding, and its inv_freq."""
    config = LlamaConfig(hidden_size=n_head * hs, num_attention_heads=n_head, num_key_value_heads=n_kv_head,
                         head_dim=hs, rope_theta=theta, max_position_embeddings=1024)
    assert config.head_dim == hs and config.rope_parameters["rope_theta"] == theta
    rotary = LlamaRotaryEmbedding(config)
    cos, sin = rotary(torch.zeros(1, dtype=torch.float32), torch.as_tensor(positions)[None])
    return cos[0].numpy(), sin[0].numpy(), rotary.inv_freq.numpy()


def ulps(a, b):
    """How many float32 values lie between a and b (same sign assumed: inv_freq > 0)."""
    return np.abs(a.astype(np.float32).view(np.int32).astype(np.int64) - b.astype(np.float32).view(np.int32))


HF_CASES = [(hs, theta) for hs in (2, 6, 10, 14, 64) for theta in (10000.0, 500000.0)]
POS0, HF_T = 260, 40           # positions 260 .. 299


@pytest.mark.parametrize("hs, theta", HF_CASES + [(256, 10000.0)])   # hs = 256: one 1-ulp inv_freq here
def test_frequencies_match_hugging_face(hs, theta):
    """inv_freq: within one unit in the last place of Hugging Face's (torch's float32 pow is not correctly
    rounded; ours is); the angle p * inv_freq is then the same float32 product, off by at most
    p |d inv_freq| <= 2^-23 a from inv_freq plus a rounding of each product, 2^-24 a each (a = the angle):
    |da| <= 2^-22 a. cos/sin: |d cos| <= |da| + 1 ulp of torch's cos (<= 2^-24 below 1) + half an ulp
    of ours (2^-25): the bound 2^-22 a + 2^-23 per entry."""
    positions = np.arange(POS0, POS0 + HF_T)
    hf_cos, hf_sin, hf_inv = hugging_face_tables(hs, theta, positions)
    half = hs // 2
    # Hugging Face's convention: the same half values twice (cat(freqs, freqs))
    np.testing.assert_array_equal(hf_cos[:, :half], hf_cos[:, half:])
    np.testing.assert_array_equal(hf_sin[:, :half], hf_sin[:, half:])
    inv = rope.inverse_frequencies(hs, theta)
    assert inv.dtype == np.float32 and ulps(inv, hf_inv).max() <= 1, (inv, hf_inv)
    cos, sin = rope.frequencies(hs, POS0 + HF_T, theta)
    cos, sin = cos[POS0:], sin[POS0:]
    angle = positions[:, None] * inv.astype(np.float64)
    bound = 2.0**-22 * angle + 2.0**-23
    for name, ours, theirs in (("cos", cos, hf_cos[:, :half]), ("sin", sin, hf_sin[:, :half])):
        err = np.abs(ours.astype(np.float64) - theirs)
        worst = np.unravel_index(int(np.argmax(err - bound)), err.shape)
        assert (err <= bound).all(), f"{name}: error {err[worst]:.3g} above the bound {bound[worst]:.3g} at {worst}"
    print(f"hs={hs} theta={theta:g}: inv_freq equal to Hugging Face's in {np.mean(inv == hf_inv):.0%} of entries, "
          f"cos/sin in {np.mean(cos == hf_cos[:, :half]):.0%} / {np.mean(sin == hf_sin[:, :half]):.0%}")


def qkv_to_hugging_face(qkv, n_head, n_kv_head):
    """Our (B, T, W) row layout -> q (B, NH, T, hs), k (B, NKV, T, hs), v, as Llama's attention has them."""
    B, T, W = qkv.shape
    heads = qkv.reshape(B, T, n_head + 2 * n_kv_head, -1).transpose(1, 2)
    return heads[:, :n_head], heads[:, n_head:n_head + n_kv_head], heads[:, n_head + n_kv_head:]


def hugging_face_rope(qkv, cos, sin, n_head, n_kv_head):
    """apply_rotary_pos_emb on q and k, v unchanged, back in our layout (torch tensors)."""
    q, k, v = qkv_to_hugging_face(qkv, n_head, n_kv_head)
    q, k = apply_rotary_pos_emb(q, k, cos[None], sin[None])       # cos (1, T, hs): unsqueezed over the heads
    B, T, W = qkv.shape
    return torch.cat([q, k, v], dim=1).transpose(1, 2).reshape(B, T, W)


@pytest.mark.parametrize("hs, theta", HF_CASES)
def test_reference_and_kernels_match_hugging_face(hs, theta):
    """1. rope_forward with Hugging Face's own table equals apply_rotary_pos_emb up to torch's float32
    rounding, gamma_2 S per element (the rotate_half convention, the head layout, GQA);
    2. every kernel with our table (frequencies) equals Hugging Face's end to end, within its rounding
    (gamma_2 S), torch's (gamma_2 S) and the tables' difference (S max|d table|)."""
    B, NH, NKV = 2, 4, 2
    positions = np.arange(POS0, POS0 + HF_T)
    hf_cos, hf_sin, _ = hugging_face_tables(hs, theta, positions, NH, NKV)
    rng = np.random.default_rng(hs)
    qkv = rng.standard_normal((B, HF_T, width(NH, NKV, hs))).astype(np.float32)
    theirs = hugging_face_rope(torch.from_numpy(qkv), torch.from_numpy(hf_cos), torch.from_numpy(hf_sin), NH, NKV)
    theirs = theirs.numpy().astype(np.float64)
    half = hs // 2
    S = float(pair_sums(qkv, NH, NKV).max())
    ours = rope.rope_forward(f64(qkv), f64(hf_cos[:, :half]), f64(hf_sin[:, :half]), NH, NKV)   # positions from row 0
    helpers.check(f"reference vs apply_rotary_pos_emb hs={hs}", ours, theirs, atol=GAMMA2 * S, rtol=0)

    cos, sin = rope.frequencies(hs, POS0 + HF_T, theta)
    d_table = max(np.abs(f64(cos[POS0:]) - hf_cos[:, :half]).max(), np.abs(f64(sin[POS0:]) - hf_sin[:, :half]).max())
    for version in FORWARD if hs % 8 == 0 else [1]:
        out = run_forward(version, qkv, cos, sin, NH, NKV, pos0=POS0)
        helpers.check(f"rope_forward{version} vs Hugging Face hs={hs} theta={theta:g}", out, theirs,
                      atol=S * (2 * GAMMA2 + d_table), rtol=0)


def test_reference_backward_matches_torch_autograd():
    """In float64 on both sides: torch differentiates apply_rotary_pos_emb; the two agree to rounding."""
    B, T, NH, NKV, hs, pos0 = 2, 5, 6, 2, 10, 7
    cos, sin = rope.frequencies(hs, pos0 + T, 500000.0)
    rng = np.random.default_rng(3)
    qkv = rng.standard_normal((B, T, width(NH, NKV, hs)))
    dout = rng.standard_normal(qkv.shape)
    c = torch.from_numpy(np.concatenate([f64(cos[pos0:])] * 2, axis=-1))   # Hugging Face's (T, hs) form
    s = torch.from_numpy(np.concatenate([f64(sin[pos0:])] * 2, axis=-1))
    x = torch.from_numpy(qkv.copy()).requires_grad_()
    out = hugging_face_rope(x, c, s, NH, NKV)
    out.backward(torch.from_numpy(dout))
    np.testing.assert_allclose(rope.rope_forward(qkv, f64(cos), f64(sin), NH, NKV, pos0=pos0), out.detach().numpy(),
                               rtol=0, atol=1e-14)
    dqkv = np.zeros_like(qkv)
    rope.rope_backward(dqkv, dout, f64(cos), f64(sin), NH, NKV, pos0=pos0)
    np.testing.assert_allclose(dqkv, x.grad.numpy(), rtol=0, atol=1e-14)


def test_reference_backward_against_finite_differences():
    B, T, NH, NKV, hs, pos0 = 2, 3, 4, 2, 6, 4
    cos, sin = (f64(t) for t in rope.frequencies(hs, pos0 + T + 2))
    rng = np.random.default_rng(4)
    qkv = rng.standard_normal((B, T, width(NH, NKV, hs)))
    dout = rng.standard_normal(qkv.shape)
    numeric = gradcheck.numerical_gradient(lambda x: rope.rope_forward(x, cos, sin, NH, NKV, pos0=pos0), qkv, dout)
    dqkv = np.zeros_like(qkv)
    rope.rope_backward(dqkv, dout, cos, sin, NH, NKV, pos0=pos0)
    gradcheck.assert_gradient("rope_backward", dqkv, numeric)
    before = dqkv.copy()
    rope.rope_backward(dqkv, dout, cos, sin, NH, NKV, pos0=pos0)   # accumulates
    np.testing.assert_allclose(dqkv, 2 * before)


def pair_norms(x, n_head, n_kv_head):
    """sqrt(x[i]^2 + x[i + half]^2) for each pair of the rotated heads, (B, T, NH + NKV, half)."""
    heads = rope.split_qkv_heads(f64(x), n_head, n_kv_head)[:, :, :n_head + n_kv_head]
    half = heads.shape[-1] // 2
    return np.hypot(heads[..., :half], heads[..., half:])


@pytest.mark.parametrize("version", FORWARD)
def test_rotations_preserve_each_pairs_norm(version):
    """Reference (float64 tables, cos^2 + sin^2 = 1 to 1e-16): norms equal to 1e-12. Kernels: the float32
    table's cos^2 + sin^2 is 1 within 2^-23 (two roundings of values <= 1), moving the norm by <= 2^-24 of
    it, and the rounding error e (per element <= gamma_2 S, S <= sqrt(2) |pair|) moves it by <= |e| <=
    sqrt(2) gamma_2 S <= 2 gamma_2 |pair|: | |out pair| - |x pair| | <= (2^-24 + 2 gamma_2) |x pair| < 6u |x pair|."""
    B, T, NH, NKV, hs = 2, 9, 4, 1, 16
    rng = np.random.default_rng(5)
    qkv = (rng.standard_normal((B, T, width(NH, NKV, hs))) * rng.uniform(0.1, 10, (B, T, 1))).astype(np.float32)
    angles = rng.uniform(-300, 300, (T + 3, hs // 2))
    ref = rope.rope_forward(f64(qkv), np.cos(angles), np.sin(angles), NH, NKV, pos0=2)
    np.testing.assert_allclose(pair_norms(ref, NH, NKV), pair_norms(qkv, NH, NKV), rtol=1e-12)
    cos, sin = np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)
    out = run_forward(version, qkv, cos, sin, NH, NKV, pos0=2)
    np.testing.assert_allclose(pair_norms(out, NH, NKV), pair_norms(qkv, NH, NKV), rtol=6 * U, atol=0)


@pytest.mark.parametrize("version", FORWARD)
def test_forward_then_backward_is_the_identity(version):
    """R^T R = I: the backward of the forward's output with the same angles gives the input back.
    Reference in float64: to 1e-14. Kernels (onto dqkv = 0, so the accumulation is exact): the forward's
    error e_f (<= gamma_2 S per element, S the same for both elements of a pair) comes back through R^T
    as <= 2 gamma_2 S; the backward's rounding adds gamma_2 S_y <= gamma_2 sqrt(2) S; the float32 table's
    R^T R = (cos^2 + sin^2) I is I within 2^-23 = 2u: |error| <= (2 + 4 + 2 sqrt(2)) u S + O(u^2) < 9u S."""
    B, T, NH, NKV, hs, pos0 = 2, 6, 4, 2, 8, 11
    qkv, _, _, cos, sin = make_case((B, T, NH, NKV, hs), pos0=pos0)
    angles = np.arange(pos0 + T)[:, None] * f64(rope.inverse_frequencies(hs))
    c64, s64 = np.cos(angles), np.sin(angles)
    back = np.zeros(qkv.shape)
    rope.rope_backward(back, rope.rope_forward(f64(qkv), c64, s64, NH, NKV, pos0=pos0), c64, s64, NH, NKV, pos0=pos0)
    np.testing.assert_allclose(back, qkv, rtol=0, atol=1e-14)

    c, s = tables(cos, sin)
    out = device.empty(qkv.shape)
    rope.forward(out, device.asarray(qkv), c, s, NH, NKV, version=version, pos0=pos0)
    dqkv = device.zeros(qkv.shape)
    rope.backward(dqkv, out, c, s, NH, NKV, version=version, pos0=pos0)
    helpers.check(f"rope v{version}: backward(forward(x)) = x", dqkv, qkv,
                  atol=9 * U * float(pair_sums(qkv, NH, NKV).max()), rtol=0)


def test_frequencies_table():
    cos, sin = rope.frequencies(6, 301, 500000.0)
    assert cos.shape == sin.shape == (301, 3) and cos.dtype == sin.dtype == np.float32
    np.testing.assert_array_equal(cos[0], 1.0)      # position 0: no rotation
    np.testing.assert_array_equal(sin[0], 0.0)
    inv = rope.inverse_frequencies(6, 500000.0)
    # Hugging Face's exponent 2i/hs is a float32 (relative rounding <= u), which moves theta^e by
    # ln(theta) * e * u relatively; the power and the reciprocal round once each: rtol u (2 + e ln theta)
    e = np.array([0, 2 / 6, 4 / 6])
    np.testing.assert_array_less(np.abs(inv / 500000.0 ** -e - 1), U * (2 + e * np.log(500000.0)) * (1 + 1e-6))
    angle = 300 * inv.astype(np.float64)
    # float32 angle (rounding <= 2^-24 angle) then correctly rounded cos/sin (<= 2^-25)
    np.testing.assert_allclose(cos[300], np.cos(angle), rtol=0, atol=2.0**-24 * angle.max() + 2.0**-25)
    np.testing.assert_allclose(sin[300], np.sin(angle), rtol=0, atol=2.0**-24 * angle.max() + 2.0**-25)
    for bad in (7, 0, 2.0, True):
        with pytest.raises(ValueError, match=r"rope.frequencies: RoPE rotates pairs of channels: head_size must be "
                                             r"even and at least 2"):
            rope.frequencies(bad, 10)
    with pytest.raises(ValueError, match="n_positions must be a positive int, got 0"):
        rope.frequencies(8, 0)


# ------------------------------------------------------------------------------------------------
# Shape assumptions: a clear error, never a wrong answer
# ------------------------------------------------------------------------------------------------
def args(B=1, T=4, NH=4, NKV=2, hs=8, n_positions=16, W=None):
    W = width(NH, NKV, hs) if W is None else W
    cos, sin = tables(*rope.frequencies(hs, n_positions)) if hs >= 2 and hs % 2 == 0 else \
        (device.zeros((n_positions, 1)), device.zeros((n_positions, 1)))
    return device.empty((B, T, W)), device.zeros((B, T, W)), cos, sin


@pytest.mark.parametrize("step", ["forward", "backward"])
@pytest.mark.parametrize("version", FORWARD)
def test_heads_must_split_the_row(step, version):
    kernel = f"rope_{step}{version}"
    wrapper = getattr(rope, step)
    y, x, c, s = args()
    y60, x60, _, _ = args(W=60)
    with pytest.raises(ValueError, match=f"{kernel}: the last dimension of `(qkv|dout)` holds n_head \\+ 2\\*n_kv_head "
                                         f"= 8 heads \\(q, k, v\\) of hs channels: it must be a multiple of 8, got W=60"):
        wrapper(y60, x60, c, s, 4, 2, version=version)
    with pytest.raises(ValueError, match=f"{kernel}: grouped-query attention .* n_kv_head must divide n_head, got "
                                         f"n_head=3, n_kv_head=2"):
        wrapper(*args(NH=3, NKV=2), 3, 2, version=version)
    with pytest.raises(ValueError, match=f"{kernel}: n_head and n_kv_head must be positive ints, got n_head=4, "
                                         f"n_kv_head=0"):
        wrapper(y, x, c, s, 4, 0, version=version)
    with pytest.raises(ValueError, match=r"must be positive ints, got n_head=4.0"):
        wrapper(y, x, c, s, 4.0, 2, version=version)
    with pytest.raises(ValueError, match=f"{kernel}: RoPE rotates pairs of channels .* must be even and at least 2, "
                                         f"got hs=7 \\(an odd head size cannot be rotated\\)"):
        wrapper(*args(NH=2, NKV=1, hs=7), 2, 1, version=version)


@pytest.mark.parametrize("step", ["forward", "backward"])
def test_positions_must_fit_the_table(step):
    wrapper = getattr(rope, step)
    y, x, c, s = args(T=4, n_positions=16)
    for version in FORWARD:
        kernel = f"rope_{step}{version}"
        wrapper(y, x, c, s, 4, 2, version=version, pos0=12)          # positions 12 .. 15: the last rows
        with pytest.raises(ValueError, match=f"{kernel}: positions pos0 .. pos0 \\+ T - 1 = 13 .. 16 need cos/sin "
                                             f"tables of at least 17 rows, got 16: the table is too short; build a "
                                             f"longer one with rope.frequencies\\(head_size=8, n_positions=17\\)"):
            wrapper(y, x, c, s, 4, 2, version=version, pos0=13)
        for bad in (-1, 1.0, None):
            with pytest.raises(ValueError, match=f"{kernel}: pos0 \\(the position of t = 0\\) must be an int >= 0, "
                                                 f"got {bad!r}"):
                wrapper(y, x, c, s, 4, 2, version=version, pos0=bad)


@pytest.mark.parametrize("version", FORWARD)
def test_tables_must_match(version):
    kernel = f"rope_forward{version}"
    y, x, c, s = args(hs=8, n_positions=16)
    with pytest.raises(ValueError, match=f"{kernel}: the cos/sin tables must have hs/2 = 4 columns \\(one angle per "
                                         f"pair of channels\\), got 8: build them with "
                                         f"rope.frequencies\\(head_size=8, n_positions\\)"):
        rope.forward(y, x, *tables(*rope.frequencies(16, 16)), 4, 2, version=version)
    with pytest.raises(ValueError, match=f"{kernel}: `sin` must have shape \\(16, 4\\), got \\(15, 4\\)"):
        rope.forward(y, x, c, s[:15], 4, 2, version=version)
    with pytest.raises(ValueError, match=f"{kernel}: `cos` must have 2 dimensions, got shape \\(64,\\)"):
        rope.forward(y, x, c.reshape(64), s, 4, 2, version=version)
    with pytest.raises(ValueError, match=f"{kernel}: `cos` must be float32, got float64"):
        rope.forward(y, x, device.zeros((16, 4), np.float64), s, 4, 2, version=version)
    with pytest.raises(ValueError, match=f"{kernel}: `cos` must be an array on the {device.name} device"):
        rope.forward(y, x, np.zeros((16, 4), np.float32) if device.name == "cupy" else [[0.0] * 4] * 16, s, 4, 2,
                     version=version)


@pytest.mark.parametrize("version", FORWARD)
def test_arrays_must_match(version):
    y, x, c, s = args()
    with pytest.raises(ValueError, match=f"rope_forward{version}: `out` must have shape \\(1, 4, 64\\), got \\(1, 4, 32\\)"):
        rope.forward(device.empty((1, 4, 32)), x, c, s, 4, 2, version=version)
    with pytest.raises(ValueError, match=f"rope_backward{version}: `dout` must have 3 dimensions, got shape \\(4, 64\\)"):
        rope.backward(y, x.reshape(4, 64), c, s, 4, 2, version=version)
    with pytest.raises(ValueError, match=f"rope_backward{version}: `dqkv` must be float32, got float64"):
        rope.backward(device.zeros((1, 4, 64), np.float64), x, c, s, 4, 2, version=version)
    with pytest.raises(ValueError, match=f"rope_forward{version}: block_size must be an int between 1 and 1024"):
        rope.forward(y, x, c, s, 4, 2, version=version, block_size=2048)


def test_unknown_version_and_step():
    y, x, c, s = args()
    with pytest.raises(ValueError, match=r"rope.forward: no version 3; the versions are \[1, 2\]"):
        rope.forward(y, x, c, s, 4, 2, version=3)
    with pytest.raises(ValueError, match=r"rope has no 'update' step"):
        rope.launches("update", y, x, c, s, 4, 2, version=1)


@pytest.mark.parametrize("step", ["forward", "backward"])
def test_version2_needs_half_a_multiple_of_4(step):
    wrapper = getattr(rope, step)
    for hs in (6, 12, 14):
        y, x, c, s = args(hs=hs)
        with pytest.raises(ValueError, match=f"rope_{step}2 loads float4: hs/2 must be a multiple of 4, got "
                                             f"hs/2={hs // 2} \\(use version 1, which takes any even head size\\)"):
            wrapper(y, x, c, s, 4, 2, version=2)
        wrapper(y, x, c, s, 4, 2, version=1)
    wrapper(*args(hs=16), 4, 2, version=2)


@pytest.mark.parametrize("step", ["forward", "backward"])
def test_version2_needs_aligned_arrays(step):
    """A view 4 bytes past an aligned address would fault on a GPU; version 1 takes it."""
    B, T, NH, NKV, hs = 1, 3, 2, 1, 8
    qkv, dout, dqkv0, cos, sin = make_case((B, T, NH, NKV, hs), pos0=0, extra_rows=0)
    x_host = qkv if step == "forward" else dout
    flat = device.zeros(x_host.size + 1)
    flat[1:] = device.asarray(x_host.reshape(-1))
    x = flat[1:].reshape(x_host.shape)
    assert x.flags.c_contiguous
    table = device.zeros(cos.size + 1)
    table[1:] = device.asarray(cos.reshape(-1))
    cos_view = table[1:].reshape(cos.shape)
    c, s = tables(cos, sin)
    names = ("out", "qkv") if step == "forward" else ("dqkv", "dout")
    wrapper = getattr(rope, step)
    with pytest.raises(ValueError, match=f"rope_{step}2 loads float4: `{names[1]}` must start at a 16-byte aligned "
                                         f"address, but it starts 4 bytes past one"):
        wrapper(device.zeros(qkv.shape), x, c, s, NH, NKV, version=2)
    with pytest.raises(ValueError, match=f"rope_{step}2 loads float4: `cos` must start at a 16-byte aligned"):
        wrapper(device.zeros(qkv.shape), device.asarray(x_host), cos_view, s, NH, NKV, version=2)
    y = device.zeros(qkv.shape)
    wrapper(y, x, cos_view, s, NH, NKV, version=1)
    ref = np.zeros(qkv.shape)
    if step == "forward":
        ref = rope.rope_forward(f64(qkv), f64(cos), f64(sin), NH, NKV)
    else:
        rope.rope_backward(ref, f64(dout), f64(cos), f64(sin), NH, NKV)
    atol = forward_atol(qkv, NH, NKV) if step == "forward" else backward_atol(dout, np.zeros(1), NH, NKV)
    helpers.check(f"rope_{step}1 on views", y, ref, atol=atol, rtol=0)


def test_32bit_indices_are_checked():
    """B*T*W = 2^31 (views that claim the shape over one float: never launched) is refused; just below
    it, launches are built (not run)."""
    NH, NKV, hs = 4, 2, 128                          # W = 1024
    c, s = tables(*rope.frequencies(hs, 128))
    for version in FORWARD:
        huge = oversized((2**14, 2**7, 2**10))
        with pytest.raises(ValueError, match=f"rope_forward{version} indexes with 32-bit ints: B\\*T\\*W = "
                                             f"2,147,483,648 must be below 2\\^31"):
            rope.forward(huge, huge, c, s, NH, NKV, version=version)
        below = oversized((2**14 - 1, 2**7, 2**10))
        [launch] = rope.launches("backward", below, below, c, s, NH, NKV, version=version)
        assert launch.name == f"rope_backward{version}"
        table = oversized((2**25, 64))               # n_positions * hs/2 = 2^31
        with pytest.raises(ValueError, match=f"rope_backward{version} indexes with 32-bit ints: n_positions\\*hs/2 = "
                                             f"2,147,483,648 must be below 2\\^31"):
            rope.backward(below, below, table, table, NH, NKV, version=version)


def test_versions_are_described_and_version2_is_the_default():
    import inspect
    for step in ("forward", "backward"):
        assert sorted(rope.VERSIONS[step]) == [1, 2]
        assert inspect.signature(getattr(rope, step)).parameters["version"].default == 2


# ------------------------------------------------------------------------------------------------
# Other frequencies, same kernels: the exercise of notebooks/12_llama_model.ipynb (Llama 3.1)
# ------------------------------------------------------------------------------------------------
def test_frequencies_take_given_inverse_frequencies():
    inv = np.array([1.0, 0.25, 0.01], np.float32)
    cos, sin = rope.frequencies(6, 5, inv_freq=inv)
    angles = np.arange(5, dtype=np.float32)[:, None] * inv[None, :]
    assert np.array_equal(cos, np.cos(angles.astype(np.float64)).astype(np.float32))
    assert np.array_equal(sin, np.sin(angles.astype(np.float64)).astype(np.float32))
    assert np.array_equal(rope.frequencies(8, 4)[0], rope.frequencies(8, 4, inv_freq=rope.inverse_frequencies(8))[0])
    with pytest.raises(ValueError, match=r"inv_freq must hold head_size // 2 = 3 values, got shape \(4,\)"):
        rope.frequencies(6, 5, inv_freq=np.ones(4))


@pytest.mark.parametrize("head_dim, factor, original", [(128, 8.0, 8192), (64, 4.0, 8), (10, 2.0, 32)])
def test_llama3_solution_matches_hugging_face(head_dim, factor, original):
    """notebooks/solutions/12_llama3_rope.py against transformers' own llama3 frequencies. Theirs are
    float32 arithmetic on float32 inv_freq, ours float64 rounded once: within a few float32 ulps."""
    path = REPO_ROOT / "notebooks" / "solutions" / "12_llama3_rope.py"
    spec = importlib.util.spec_from_file_location("llama3_rope", path)
    solution = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(solution)
    theta = 500000.0
    scaling = {"rope_type": "llama3", "factor": factor, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": original, "rope_theta": theta}
    key = "rope_parameters" if int(transformers.__version__.split(".")[0]) >= 5 else "rope_scaling"
    cfg = LlamaConfig(hidden_size=head_dim * 2, num_attention_heads=2, rope_theta=theta,
                      max_position_embeddings=4 * original, **{key: scaling})
    theirs = ROPE_INIT_FUNCTIONS["llama3"](cfg, "cpu")[0].numpy()
    ours = solution.llama3_inverse_frequencies(rope.inverse_frequencies(head_dim, theta), factor=factor,
                                               original_context=original)
    assert ours.dtype == np.float32 and ours.shape == theirs.shape
    np.testing.assert_allclose(ours, theirs, rtol=4 * np.finfo(np.float32).eps, atol=0)
    assert not np.allclose(ours, rope.inverse_frequencies(head_dim, theta)), "some frequencies must change"
