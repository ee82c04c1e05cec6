"""Causal self-attention (cuda/attention.cu, helpers/ops/attention.py): every kernel version against the
NumPy reference at odd shapes, race-checked; the NumPy backward against finite differences; every
shape assumption refused with a clear error."""
import numpy as np
import pytest

from helpers import check, device
from helpers.ops import attention as A
from helpers.teaching import gradcheck
from support import oversized

# llm.c checks attention at 1e-3. The kernels agree with a float64 reference to ~2e-6 absolute at
# these shapes (float32 rounding of dot products over hs <= 128 channels and T <= 40 keys), so the
# tests hold them 100x tighter: |ref - out| <= 1e-5 + 1e-4 |ref|.
ATOL, RTOL = 1e-5, 1e-4

SHAPES = [  # B, T, C, NH: odd T, head sizes 16, 40 (not a multiple of 32), 64 (GPT-2) and 128 (the largest)
    (3, 37, 48, 3),
    (2, 33, 120, 3),
    (2, 29, 128, 2),
    (1, 19, 256, 2),
]
BLOCK_SIZES = {1: 96, 2: 64, 3: 96}  # odd block counts (v1: not a power of two; v3: 3 query rows per block)


def make_inputs(B, T, C, seed=0):
    rng = np.random.default_rng(seed)
    qkv = rng.standard_normal((B, T, 3 * C)).astype(np.float32)
    dout = rng.standard_normal((B, T, C)).astype(np.float32)
    dqkv0 = rng.standard_normal((B, T, 3 * C)).astype(np.float32)  # nonzero: the backward must accumulate
    return qkv, dout, dqkv0


def reference(qkv, dout, dqkv0, NH):
    """Forward and backward in float64 from the float32 inputs."""
    out, att = A.attention_forward(qkv.astype(np.float64), NH)
    lse = A.attention_logsumexp(qkv.astype(np.float64), NH)
    dqkv = dqkv0.astype(np.float64)
    A.attention_backward(dqkv, dout.astype(np.float64), qkv.astype(np.float64), out, NH, att=att)
    return out, att, lse, dqkv


def aux_buffers(version, B, T, NH):
    return dict(att=device.empty((B, NH, T, T))) if version == 1 else dict(lse=device.empty((B, NH, T)))


def run_checked(launches):
    """Race-check each launch, then run it (the next launch reads what this one wrote)."""
    for launch in launches:
        device.racecheck(*launch)
        launch()


@pytest.mark.parametrize("version", sorted(A.VERSIONS["forward"]))
@pytest.mark.parametrize("B, T, C, NH", SHAPES)
def test_forward_and_backward_match_the_reference(version, B, T, C, NH):
    qkv, dout, dqkv0 = make_inputs(B, T, C)
    out_ref, att_ref, lse_ref, dqkv_ref = reference(qkv, dout, dqkv0, NH)
    qkv_d, dout_d = device.asarray(qkv), device.asarray(dout)
    out = device.empty((B, T, C))
    aux = aux_buffers(version, B, T, NH)
    A.forward(out, qkv_d, NH, version=version, **aux)
    name = f"attention v{version} {B}x{T}x{C}/{NH}"
    check(f"{name} out", out, out_ref, ATOL, RTOL)
    if version == 1:
        check(f"{name} att", aux["att"], att_ref, ATOL, RTOL)
    else:
        check(f"{name} lse", aux["lse"], lse_ref, ATOL, RTOL)
    dqkv = device.asarray(dqkv0)
    A.backward(dqkv, dout_d, qkv_d, out, NH, version=version, **aux)
    check(f"{name} dqkv", dqkv, dqkv_ref, ATOL, RTOL)


@pytest.mark.parametrize("version", sorted(A.VERSIONS["forward"]))
@pytest.mark.parametrize("B, T, C, NH", [SHAPES[0], SHAPES[1]])
def test_every_kernel_passes_racecheck_with_odd_block_sizes(version, B, T, C, NH):
    """Every kernel gives the same bits whatever order its threads run in: no atomics, so exactly."""
    qkv, dout, dqkv0 = make_inputs(B, T, C, seed=1)
    out_ref, att_ref, lse_ref, dqkv_ref = reference(qkv, dout, dqkv0, NH)
    qkv, dout = device.asarray(qkv), device.asarray(dout)
    out = device.empty((B, T, C))
    aux = aux_buffers(version, B, T, NH)
    bs = BLOCK_SIZES[version]
    run_checked(A.launches("forward", out, qkv, NH, version=version, block_size=bs, **aux))
    check(f"v{version} out, block {bs}", out, out_ref, ATOL, RTOL)
    dqkv = device.asarray(dqkv0)
    run_checked(A.launches("backward", dqkv, dout, qkv, out, NH, version=version, block_size=bs, **aux))
    check(f"v{version} dqkv, block {bs}", dqkv, dqkv_ref, ATOL, RTOL)


def test_backward2_and_3_read_the_lse_of_either_fused_forward():
    B, T, C, NH = 2, 23, 64, 1
    qkv, dout, dqkv0 = make_inputs(B, T, C, seed=2)
    _, _, _, dqkv_ref = reference(qkv, dout, dqkv0, NH)
    qkv, dout = device.asarray(qkv), device.asarray(dout)
    for fwd, bwd in [(2, 3), (3, 2)]:
        out, lse = device.empty((B, T, C)), device.empty((B, NH, T))
        A.forward(out, qkv, NH, version=fwd, lse=lse)
        dqkv = device.asarray(dqkv0.copy())
        A.backward(dqkv, dout, qkv, out, NH, version=bwd, lse=lse)
        check(f"forward {fwd}, backward {bwd}", dqkv, dqkv_ref, ATOL, RTOL)


def test_large_scores_do_not_overflow():
    """Scores of several hundred: exp would overflow without the running maximum."""
    B, T, C, NH = 1, 40, 64, 1
    qkv, dout, dqkv0 = make_inputs(B, T, C, seed=3)
    qkv *= 6.0  # scores ~ 36 * N(0, 1) * sqrt(64) / 8: up to ~150, exp(150) overflows float32
    out_ref, att_ref, lse_ref, dqkv_ref = reference(qkv, dout, dqkv0, NH)
    assert lse_ref.max() > 89, "the test needs scores beyond float32's exp range"
    qkv, dout = device.asarray(qkv), device.asarray(dout)
    for version in sorted(A.VERSIONS["forward"]):
        out, aux = device.empty((B, T, C)), aux_buffers(version, B, T, NH)
        A.forward(out, qkv, NH, version=version, **aux)
        check(f"v{version} out, large scores", out, out_ref, 1e-4, RTOL)  # |v| ~ 6: the same relative error
        dqkv = device.asarray(dqkv0.copy())
        A.backward(dqkv, dout, qkv, out, NH, version=version, **aux)
        # near-one-hot rows: ds = p (dp - D) cancels, and p carries float32 rounding of scores ~ 1e2
        check(f"v{version} dqkv, large scores", dqkv, dqkv_ref, 1e-3, 1e-3)


# ------------------------------------------------------------------------------------------------
# The NumPy reference
# ------------------------------------------------------------------------------------------------
def test_reference_rows_are_causal_probabilities():
    qkv, _, _ = make_inputs(2, 9, 12)
    out, att = A.attention_forward(qkv, 3)
    assert out.dtype == att.dtype == np.float32 and att.shape == (2, 3, 9, 9)
    np.testing.assert_allclose(att.sum(-1), 1.0, rtol=1e-6)
    assert (np.triu(att[0, 0], k=1) == 0).all() and (att >= 0).all()
    assert np.allclose(att[..., 0, 0], 1.0), "the first token sees only itself"
    # token 0's output is its own v
    np.testing.assert_allclose(out[:, 0], qkv[:, 0, 24:], rtol=1e-6)


def test_reference_backward_against_finite_differences():
    B, T, C, NH = 2, 5, 6, 2
    rng = np.random.default_rng(4)
    qkv = rng.standard_normal((B, T, 3 * C))
    dout = rng.standard_normal((B, T, C))
    numeric = gradcheck.numerical_gradient(lambda x: A.attention_forward(x, NH)[0], qkv, dout)
    out, att = A.attention_forward(qkv, NH)
    dqkv = np.zeros_like(qkv)
    A.attention_backward(dqkv, dout, qkv, out, NH, att=att)
    gradcheck.assert_gradient("attention_backward", dqkv, numeric)
    before = dqkv.copy()
    A.attention_backward(dqkv, dout, qkv, None, NH)  # accumulates; att recomputed when not given
    np.testing.assert_allclose(dqkv, 2 * before)


def test_logsumexp_is_the_softmax_denominator():
    qkv, _, _ = make_inputs(1, 7, 8)
    scores = A.causal_scores(qkv.astype(np.float64), 2)
    _, att = A.attention_forward(qkv.astype(np.float64), 2)
    lse = A.attention_logsumexp(qkv.astype(np.float64), 2)
    np.testing.assert_allclose(np.exp(scores - lse[..., None]), att, atol=1e-12)


# ------------------------------------------------------------------------------------------------
# Shape assumptions: a clear error, never a wrong answer
# ------------------------------------------------------------------------------------------------
def buffers(B, T, C, NH):
    return (device.empty((B, T, C)), device.zeros((B, T, 3 * C)), device.empty((B, NH, T, T)),
            device.empty((B, NH, T)))


def test_head_size_above_128_is_refused_by_versions_2_and_3():
    out, qkv, att, lse = buffers(1, 5, 264, 2)  # hs = 132
    for version in (2, 3):
        with pytest.raises(ValueError, match=r"attention_forward%d: .*hs = C / n_head must be <= 128, got hs=132" % version):
            A.forward(out, qkv, 2, version=version, lse=lse)
        with pytest.raises(ValueError, match=r"attention_backward%d: .*<= 128, got hs=132" % version):
            A.backward(device.zeros(qkv.shape), out, qkv, out, 2, version=version, lse=lse)
    A.forward(out, qkv, 2, version=1, att=att)  # version 1 has no such limit


def test_c_must_split_into_heads_and_qkv_into_three():
    out, qkv, att, _ = buffers(1, 5, 48, 3)
    with pytest.raises(ValueError, match="C must be a multiple of n_head.*C=48, n_head=5"):
        A.forward(out, qkv, 5, version=1, att=att)
    with pytest.raises(ValueError, match=r"must be 3\*C, got 143"):
        A.forward(out, device.zeros((1, 5, 143)), 3, version=1, att=att)
    with pytest.raises(ValueError, match=r"`qkv` must have 3 dimensions, got shape \(5, 144\)"):
        A.forward(out, device.zeros((5, 144)), 3, version=1, att=att)
    with pytest.raises(ValueError, match="`qkv` must be float32, got float64"):
        A.forward(out, device.zeros((1, 5, 144), np.float64), 3, version=1, att=att)


def test_buffers_are_required_with_the_right_shape():
    out, qkv, att, lse = buffers(2, 5, 64, 2)
    with pytest.raises(ValueError, match=r"attention_forward1: `att` is required, a float32 array of shape \(2, 2, 5, 5\)"):
        A.forward(out, qkv, 2, version=1)
    with pytest.raises(ValueError, match=r"attention_forward2: `lse` must have shape \(2, 2, 5\), got \(2, 2, 5, 5\)"):
        A.forward(out, qkv, 2, version=2, lse=att)
    with pytest.raises(ValueError, match=r"`out` must have shape \(2, 5, 64\), got \(2, 5, 32\)"):
        A.forward(device.empty((2, 5, 32)), qkv, 2, version=3, lse=lse)
    with pytest.raises(ValueError, match=r"attention_backward1: `scratch` must have shape \(2, 2, 5, 5\)"):
        A.backward(device.zeros(qkv.shape), out, qkv, out, 2, version=1, att=att, scratch=lse)
    with pytest.raises(ValueError, match=r"attention_backward2: `dout` must have shape \(2, 5, 64\)"):
        A.backward(device.zeros(qkv.shape), qkv, qkv, out, 2, version=2, lse=lse)
    with pytest.raises(ValueError, match=r"attention.forward: no version 4; the versions are \[1, 2, 3\]"):
        A.forward(out, qkv, 2, version=4, lse=lse)


def test_warp_versions_need_whole_warps():
    out, qkv, att, lse = buffers(1, 5, 64, 2)
    for version in (2, 3):
        with pytest.raises(ValueError, match=f"attention_forward{version} reduces with full-warp shuffles: "
                                             f"block_size must be a multiple of 32, got 100"):
            A.forward(out, qkv, 2, version=version, lse=lse, block_size=100)
        with pytest.raises(ValueError, match="multiple of 32"):
            A.backward(device.zeros(qkv.shape), out, qkv, out, 2, version=version, lse=lse, block_size=48)


def test_version3_shared_memory_must_fit():
    out, qkv, att, lse = buffers(1, 5, 256, 2)  # hs = 128
    with pytest.raises(ValueError, match=r"attention_forward3: hs=128 with block_size=1024 needs 53,376 bytes of "
                                         r"shared memory, more than the 48 KiB a block may use: use a smaller"):
        A.forward(out, qkv, 2, version=3, lse=lse, block_size=1024)
    with pytest.raises(ValueError, match="attention_backward3: hs=128 with block_size=512 needs"):
        A.backward(device.zeros(qkv.shape), out, qkv, out, 2, version=3, lse=lse, block_size=512)


def test_version3_grid_y_limit():
    # B*NH = 65536 (b, h) pairs: one too many for grid.y (broadcast views: the shapes without the memory)
    B, T, C, NH = 2**15, 1, 2, 2
    qkv, out, lse = (oversized(shape) for shape in [(B, T, 3 * C), (B, T, C), (B, NH, T)])
    with pytest.raises(ValueError, match=r"attention_forward3 puts the \(b, h\) pairs \(B\*NH = 32768\*2\) on the "
                                         r"grid's y axis, which has at most 65535 blocks: got 65536"):
        A.forward(out, qkv, NH, version=3, lse=lse)
    with pytest.raises(ValueError, match="attention_backward3 puts the"):
        A.backward(qkv, out, qkv, out, NH, version=3, lse=lse)


def test_32bit_indices_are_checked():
    # T*T = 2.2e9 > 2^31: the (T, T) matrix of version 1 cannot be indexed with int (qkv itself is small)
    B, T, C, NH = 1, 47_000, 3, 1
    qkv, out = device.zeros((B, T, 3 * C)), device.empty((B, T, C))
    with pytest.raises(ValueError, match=r"attention_forward1 indexes with 32-bit ints: B\*NH\*T\*T = 2,209,000,000 "
                                         r"must be below 2\^31"):
        A.forward(out, qkv, NH, version=1, att=device.empty((1, 1, 1, 1)))
    with pytest.raises(ValueError, match="attention_backward1 indexes"):
        A.backward(device.zeros(qkv.shape), out, qkv, out, NH, version=1, att=device.empty((1, 1, 1, 1)))
    # every version indexes qkv with int: B*T*3C < 2^31 (a broadcast view: the shape without the memory)
    huge = oversized((2, 2**20, 3 * 384))
    for version in sorted(A.VERSIONS["forward"]):
        with pytest.raises(ValueError, match=f"attention_forward{version} indexes with 32-bit ints: B\\*T\\*3C = "
                                             f"2,415,919,104 must be below"):
            A.forward(out, huge, 6, version=version)


def test_versions_are_described():
    for step in ("forward", "backward"):
        assert sorted(A.VERSIONS[step]) == [1, 2, 3] and all(isinstance(d, str) and d for d in A.VERSIONS[step].values())
