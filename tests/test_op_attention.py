"""Causal self-attention (cuda/attention.cu, helpers/ops/attention.py): every kernel version against the
NumPy reference at odd shapes, race-checked; the NumPy backward against finite differences; every
shape assumption refused with a clear error. The bf16 version (4) is checked at the end of the file."""
import ml_dtypes
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
BLOCK_SIZES = {1: 96, 2: 64, 3: 96, 4: 96}  # odd block counts (v1: not a power of two; v3, v4: 3 query rows per block)
FP32 = [v for v, line in sorted(A.VERSIONS["forward"].items()) if not line.startswith("bf16:")]
BF16 = [v for v, line in sorted(A.VERSIONS["forward"].items()) if line.startswith("bf16:")]


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


@pytest.mark.parametrize("version", FP32)
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


@pytest.mark.parametrize("version", FP32)
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
    for version in FP32:
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
    with pytest.raises(ValueError, match=r"attention.forward: no version 5; the versions are \[1, 2, 3, 4\]"):
        A.forward(out, qkv, 2, version=5, lse=lse)


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
    for version in sorted(A.VERSIONS["forward"]):
        huge = oversized_bf16((2, 2**20, 3 * 384)) if version in BF16 else oversized((2, 2**20, 3 * 384))
        with pytest.raises(ValueError, match=f"attention_forward{version} indexes with 32-bit ints: B\\*T\\*3C = "
                                             f"2,415,919,104 must be below"):
            A.forward(out, huge, 6, version=version)


def test_versions_are_described():
    for step in ("forward", "backward"):
        assert sorted(A.VERSIONS[step]) == [1, 2, 3, 4]
        assert all(isinstance(d, str) and d for d in A.VERSIONS[step].values())
        assert [v for v, d in A.VERSIONS[step].items() if d.startswith("bf16:")] == BF16 == [4]


# ------------------------------------------------------------------------------------------------
# Version 4: bf16 storage (out, qkv, dout, dqkv), float32 arithmetic, lse and scratch float32
# ------------------------------------------------------------------------------------------------
BF = ml_dtypes.bfloat16
U_BF16 = 2.0**-8   # unit roundoff of bf16 (8 significant bits), round to nearest: |rnd(x) - x| <= u |x|


def oversized_bf16(shape):
    """As support.oversized, a bf16 array claiming `shape` over one element of memory (never launched)."""
    strides, step = [], 2
    for n in reversed(shape):
        strides.insert(0, step)
        step *= n
    return device.xp.lib.stride_tricks.as_strided(device.zeros(1, BF), shape=tuple(shape), strides=tuple(strides))


def bf16_inputs(B, T, C, seed=0, scale=1.0):
    """make_inputs' values rounded to bf16 (host arrays); the reference takes them upcast, exactly."""
    qkv, dout, dqkv0 = make_inputs(B, T, C, seed)
    return (qkv * scale).astype(BF), dout.astype(BF), dqkv0.astype(BF)


def bf16_reference(qkv, dout, dqkv0, NH, atol=ATOL, rtol=RTOL):
    """(out, lse, dqkv) in float64 from the bf16 inputs upcast, and elementwise bounds on version 4's error.

    e32 = atol + rtol |ref| bounds the float32 versions' error at these shapes (the tests above); version 4
    does version 3's float32 arithmetic on the same values, so its float32 results y32 obey it too.
    - out is y32 rounded once to bf16: |rnd(y32) - y| <= u |y32| + e32 <= u |y| + (1 + u) e32.
    - lse is float32, never rounded to bf16: e32.
    - dqkv = rnd(dqkv0 + grad32): dqkv0 is exact, the += is float32 and rounded once, so the same two terms
      for g = dqkv0 + dL/dqkv, plus what reading the bf16 out costs: D_t = dy_t . out_t is off by
      dD_t <= sum_i |dy_t,i| bound(out_t,i). D enters ds[t, t2] = p[t, t2] (dp - D_t) linearly, so dq_t moves
      by at most dD_t sum_t2 p[t, t2] |k_t2| / sqrt(hs), dk_t2 by sum_t p[t, t2] dD_t |q_t| / sqrt(hs), and dv
      (which does not read D) not at all: |dqkv - g| <= u |g| + (1 + u) (e32(g) + that term).
    """
    x, dy, g0 = (a.astype(np.float64) for a in (qkv, dout, dqkv0))
    out, att, lse, g = reference(x, dy, g0, NH)
    B, T, C = out.shape
    hs = C // NH
    out_bound = U_BF16 * np.abs(out) + (1 + U_BF16) * (atol + rtol * np.abs(out))
    dD = (A.split_heads(np.abs(dy), NH) * A.split_heads(out_bound, NH)).sum(-1, keepdims=True)   # (B, NH, T, 1)
    q, k = A.split_heads(np.abs(x[..., :C]), NH), A.split_heads(np.abs(x[..., C:2 * C]), NH)
    ddq = dD * (att @ k) / np.sqrt(hs)
    ddk = att.transpose(0, 1, 3, 2) @ (dD * q) / np.sqrt(hs)
    from_D = np.concatenate([A.merge_heads(ddq), A.merge_heads(ddk), np.zeros((B, T, C))], axis=-1)
    g_bound = U_BF16 * np.abs(g) + (1 + U_BF16) * (atol + rtol * np.abs(g) + from_D)
    return (out, lse, g), (out_bound, atol + rtol * np.abs(lse), g_bound)


def check_within(name, got, ref, bound):
    """|got - ref| <= bound elementwise (bound derived per element); got a device array of either dtype."""
    got = device.asnumpy(got).astype(np.float64)
    err = np.abs(got - ref)
    bad = ~(err <= bound)   # NaN fails
    print(f"{name}: max abs error {err.max():.2e}, at most {(err / bound).max():.2f} of its bound")
    assert not bad.any(), (f"{name}: {int(bad.sum())} of {bad.size} elements outside their bound; worst: "
                           f"{got[bad][:3]} vs {ref[bad][:3]} (bounds {bound[bad][:3]})")


def bf16_ulps(a, b):
    """How many bf16 steps apart two bf16 arrays are, elementwise (0: the same bits)."""
    def ordered(x):
        bits = np.ascontiguousarray(x).view(np.uint16).astype(np.int64)
        return np.where(bits & 0x8000, -(bits & 0x7FFF), bits)   # sign-magnitude onto a line (+0 = -0)
    return np.abs(ordered(a) - ordered(b))


def runs_on_the_cpu_backend():
    """The CPU backend (also behind the CuPy stand-in) does each float32 operation exactly as written."""
    return device.name == "cpu" or getattr(device.xp, "__standin__", False)


def bf16_run(qkv, dout, dqkv0, NH, block_size=None, racecheck=False):
    """Forward and backward version 4 on device copies; returns (out, lse, dqkv) as device arrays."""
    B, T, C3 = qkv.shape
    qkv_d, dout_d, dqkv = device.asarray(qkv), device.asarray(dout), device.asarray(dqkv0.copy())  # (the CPU
    # backend's asarray of a host array is that array: the copy keeps dqkv0 as it was)
    out, lse = device.empty((B, T, C3 // 3), BF), device.empty((B, NH, T))
    go = run_checked if racecheck else A.run
    go(A.launches("forward", out, qkv_d, NH, version=4, lse=lse, block_size=block_size))
    go(A.launches("backward", dqkv, dout_d, qkv_d, out, NH, version=4, lse=lse, block_size=block_size))
    return out, lse, dqkv


@pytest.mark.parametrize("B, T, C, NH", SHAPES)   # hs = 16, 40, 64, 128: all multiples of 8
def test_bf16_forward_and_backward_match_the_reference(B, T, C, NH):
    qkv, dout, dqkv0 = bf16_inputs(B, T, C)
    (out_ref, lse_ref, g_ref), (out_tol, lse_tol, g_tol) = bf16_reference(qkv, dout, dqkv0, NH)
    out, lse, dqkv = bf16_run(qkv, dout, dqkv0, NH)
    assert out.dtype == BF and dqkv.dtype == BF and lse.dtype == np.float32
    name = f"attention v4 {B}x{T}x{C}/{NH}"
    check_within(f"{name} out", out, out_ref, out_tol)
    check_within(f"{name} lse", lse, lse_ref, lse_tol)
    check_within(f"{name} dqkv", dqkv, g_ref, g_tol)


@pytest.mark.parametrize("B, T, C, NH, scale", [(3, 37, 48, 3, 1.0), (2, 29, 128, 2, 1.0), (1, 19, 256, 2, 1.0),
                                                (1, 40, 64, 1, 6.0)])   # 6.0: test_large_scores_do_not_overflow's
def test_bf16_is_version3_rounded_once(B, T, C, NH, scale):
    """Version 4 does version 3's float32 arithmetic: given the same values (the bf16 inputs as float32, and
    the bf16 out for D), its out and dqkv are version 3's rounded to bf16 by ml_dtypes (nearest even), its lse
    is version 3's. Bit for bit on the CPU backend; a GPU compiler may contract a multiply-add differently in
    the two kernels, hence at most one bf16 step there."""
    qkv, dout, dqkv0 = bf16_inputs(B, T, C, seed=5, scale=scale)
    out4, lse4, dqkv4 = bf16_run(qkv, dout, dqkv0, NH)
    f32 = lambda a: device.asarray(np.asarray(a, np.float32))   # noqa: E731  (bf16 -> float32 is exact)
    out3, lse3 = device.empty((B, T, C)), device.empty((B, NH, T))
    A.forward(out3, f32(qkv), NH, version=3, lse=lse3)
    dqkv3 = f32(dqkv0)
    A.backward(dqkv3, f32(dout), f32(qkv), f32(device.asnumpy(out4)), NH, version=3, lse=lse3)
    steps = 0 if runs_on_the_cpu_backend() else 1
    assert bf16_ulps(device.asnumpy(out4), device.asnumpy(out3).astype(BF)).max() <= steps
    assert bf16_ulps(device.asnumpy(dqkv4), device.asnumpy(dqkv3).astype(BF)).max() <= steps
    lse_err = np.abs(device.asnumpy(lse4) - device.asnumpy(lse3))
    assert lse_err.max() <= (0 if steps == 0 else 1e-5 * np.abs(device.asnumpy(lse3)).max())
    if scale != 1.0:   # and the large scores against the float64 reference, with that test's float32 bounds
        (out_ref, _, g_ref), (out_tol, _, g_tol) = bf16_reference(qkv, dout, dqkv0, NH, atol=1e-3, rtol=1e-3)
        check_within("v4 out, large scores", out4, out_ref, out_tol)
        check_within("v4 dqkv, large scores", dqkv4, g_ref, g_tol)


@pytest.mark.parametrize("B, T, C, NH", [SHAPES[0], SHAPES[1], (2, 70, 128, 1)])   # hs 16, 40 and 128
def test_bf16_kernels_pass_racecheck(B, T, C, NH):
    """Every launch of version 4 gives the same bits in every thread order (no atomics: exactly), here with
    3 warps per block (an odd number of query and key rows per block, tiles shared unevenly)."""
    qkv, dout, dqkv0 = bf16_inputs(B, T, C, seed=6)
    (out_ref, lse_ref, g_ref), (out_tol, lse_tol, g_tol) = bf16_reference(qkv, dout, dqkv0, NH)
    out, lse, dqkv = bf16_run(qkv, dout, dqkv0, NH, block_size=96, racecheck=True)
    check_within("v4 out, block 96", out, out_ref, out_tol)
    check_within("v4 dqkv, block 96", dqkv, g_ref, g_tol)


def test_bf16_backward_takes_a_scratch_and_accumulates():
    B, T, C, NH = 2, 23, 64, 2
    qkv, dout, dqkv0 = bf16_inputs(B, T, C, seed=7)
    out, lse, dqkv = bf16_run(qkv, dout, dqkv0, NH)
    again = device.asarray(dqkv0.copy())
    scratch = device.empty((B, NH, T))
    A.backward(again, device.asarray(dout), device.asarray(qkv), out, NH, version=4, lse=lse, scratch=scratch)
    assert np.array_equal(device.asnumpy(again).view(np.uint16), device.asnumpy(dqkv).view(np.uint16))
    D = (A.split_heads(dout.astype(np.float64), NH) * A.split_heads(device.asnumpy(out).astype(np.float64), NH)).sum(-1)
    check("v4 scratch holds D = rowsum(dout * out)", scratch, D, 1e-5, 1e-5)


def bf16_buffers(B, T, C, NH):
    return (device.zeros((B, T, C), BF), device.zeros((B, T, 3 * C), BF), device.zeros((B, T, 3 * C), BF),
            device.zeros((B, T, C), BF), device.empty((B, NH, T)))


def misaligned(shape, dtype=BF):
    """A C-contiguous view that starts 2 bytes past a 16-byte boundary."""
    flat = device.zeros(int(np.prod(shape)) + 1, dtype)
    return flat[1:].reshape(shape)


def test_bf16_version_needs_head_size_multiple_of_8():
    B, T, C, NH = 1, 5, 60, 3   # hs = 20
    out, qkv, dqkv, dout, lse = bf16_buffers(B, T, C, NH)
    with pytest.raises(ValueError, match=r"attention_forward4 moves a head's rows of hs = C / n_head channels 8 "
                                         r"bf16 \(16 bytes\) at a time: hs must be a multiple of 8, got hs=20 \(use "
                                         r"version 3 on float32 arrays"):
        A.forward(out, qkv, NH, version=4, lse=lse)
    with pytest.raises(ValueError, match=r"attention_backward4 moves .* hs must be a multiple of 8, got hs=20"):
        A.backward(dqkv, dout, qkv, out, NH, version=4, lse=lse)
    out, qkv, dqkv, dout, lse = bf16_buffers(1, 5, 264, 2)   # hs = 132: a multiple of 4, too large all the same
    with pytest.raises(ValueError, match=r"attention_forward4: .*must be <= 128, got hs=132"):
        A.forward(out, qkv, 2, version=4, lse=lse)


def test_bf16_version_refuses_misaligned_views():
    B, T, C, NH = 1, 5, 64, 2
    out, qkv, dqkv, dout, lse = bf16_buffers(B, T, C, NH)
    message = r"attention_%s4 loads 16 bytes at a time: `%s` must start at a 16-byte aligned address, but it starts " \
              r"2 bytes past one .* or use version 3 on float32 arrays"
    with pytest.raises(ValueError, match=message % ("forward", "qkv")):
        A.forward(out, misaligned(qkv.shape), NH, version=4, lse=lse)
    with pytest.raises(ValueError, match=message % ("forward", "out")):
        A.forward(misaligned(out.shape), qkv, NH, version=4, lse=lse)
    for name in ("dqkv", "dout", "qkv", "out"):
        args = dict(dqkv=dqkv, dout=dout, qkv=qkv, out=out)
        args[name] = misaligned(args[name].shape)
        with pytest.raises(ValueError, match=message % ("backward", name)):
            A.backward(args["dqkv"], args["dout"], args["qkv"], args["out"], NH, version=4, lse=lse)


def test_bf16_and_float32_arrays_go_to_their_versions():
    B, T, C, NH = 1, 5, 64, 2
    out, qkv, dqkv, dout, lse = bf16_buffers(B, T, C, NH)
    with pytest.raises(ValueError, match=r"attention_forward3: `qkv` must be float32, got bfloat16 \(a bf16 array: "
                                         r"the bf16 versions take it"):
        A.forward(device.empty((B, T, C)), qkv, NH, version=3, lse=lse)
    with pytest.raises(ValueError, match=r"attention_backward2: `dout` must be float32, got bfloat16"):
        A.backward(device.zeros((B, T, 3 * C)), dout, device.zeros((B, T, 3 * C)), device.zeros((B, T, C)), NH,
                   version=2, lse=lse)
    with pytest.raises(ValueError, match=r"attention_forward4: `qkv` must be bfloat16, got float32 \(use a bf16 "
                                         r"version's float32 counterpart, or \.astype\(ml_dtypes\.bfloat16\)\)"):
        A.forward(out, device.zeros((B, T, 3 * C)), NH, version=4, lse=lse)
    with pytest.raises(ValueError, match=r"attention_forward4: `out` must be bfloat16, got float32"):
        A.forward(device.empty((B, T, C)), qkv, NH, version=4, lse=lse)
    with pytest.raises(ValueError, match=r"attention_forward4: `lse` must be float32, got bfloat16"):
        A.forward(out, qkv, NH, version=4, lse=device.zeros((B, NH, T), BF))
    with pytest.raises(ValueError, match=r"attention_backward4: `dqkv` must be bfloat16, got float32"):
        A.backward(device.zeros((B, T, 3 * C)), dout, qkv, out, NH, version=4, lse=lse)
    with pytest.raises(ValueError, match=r"attention_backward4: `scratch` must be float32, got bfloat16"):
        A.backward(dqkv, dout, qkv, out, NH, version=4, lse=lse, scratch=device.zeros((B, NH, T), BF))
