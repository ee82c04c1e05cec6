"""cuda/rmsnorm.cu and helpers/ops/rmsnorm.py: every kernel version against the NumPy reference (float64)
at odd shapes, in every thread order, the NumPy backward against finite differences, the reference and
the kernels against Hugging Face's LlamaRMSNorm (torch autograd for the gradients), and every shape
assumption of a version refused with a clear ValueError.

Tolerances: rounding bounds, derived. u = 2^-24 is float32's unit roundoff (FLT_EPSILON / 2): one
float32 operation returns the exact result times (1 + d), |d| <= u. A sum of C terms, added in ANY
order (a loop, a warp butterfly, a block reduction), makes C - 1 roundings, so its error is at most
(C - 1) u times the sum of the terms' magnitudes (Higham, Accuracy and Stability, 4.2; first order,
C u << 1). The reference runs in float64 on the same float32 inputs, so its own error (~1e-16) is
negligible next to these.

forward, out and rstd: |kernel - ref| <= (C/2 + 8) u |ref| (no atol: a product of positive factors).
    x*x (u) summed (C - 1 roundings of positive terms: (C - 1) u), /C (u), +eps (u): the mean square
    is within (C + 2) u relatively; the square root halves that; rsqrtf adds at most 2 ulp = 4u (the
    CUDA guide's bound; the CPU backend is closer): rstd within (C/2 + 5) u. out = (x * rstd) *
    weight: two more roundings, (C/2 + 7) u; one u of slack for second-order terms.
backward, given the same float32 rstd to kernel and reference:
    dweight: each term dout * (x * rstd) is 2 roundings from exact, the N rows' sum (in row order
    for version 1, per block then in block order for version 2: N - 1 roundings either way) adds
    (N - 1) u of the sum of |terms| (P), and += onto the starting value one u of the result:
        |err| <= (N + 1) u P + u |ref|    -> atol = (N + 2) u max_c P_c, rtol = 2u.
    dx: the row's sum S of t_c = (dout_c w_c)(x_c rstd) (3 roundings each) is within (C + 2) u sum|t|,
    so m = S / C is within (C + 3) u sum|t| / C. With D_c = |dxhat_c| + |xhat_c| sum|t| / C, the
    bracket dxhat - xhat m is within (C + 7) u D_c (dxhat, xhat, the product, the subtraction: one u
    each), times rstd one more, and += one u of the result:
        |err| <= (C + 8) u rstd D_c + u |ref|    -> atol = (C + 9) u max(rstd D), rtol = 2u.
Hugging Face computes in float32 too, rounding the same sums and a bounded number of products: its
results are within the same bounds of the exact ones, so a kernel and it differ by at most twice them.
These are worst cases (the observed errors are 10-100x smaller); a wrong formula (a missing term, the
wrong eps, a mean over the wrong count) is off by far more (test_the_bounds_catch_a_wrong_formula).
"""
import numpy as np
import pytest
import torch
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaRMSNorm

import helpers
from helpers.ops import rmsnorm as R
from helpers.runtime import device, nvrtc_report
from helpers.runtime.cuda_source import CUDA_DIR
from helpers.teaching import gradcheck
from support import f64, oversized

U = 2.0**-24                                   # float32's unit roundoff
FLT_EPSILON = 2 * U

SHAPES = [(3, 37, 48), (2, 7, 100), (2, 5, 1600)]      # C % 4 == 0: every version
ODD_C = [(3, 7, 50), (2, 3, 1601), (4, 33, 1)]         # C % 4 != 0 (C = 1: one channel): not the float4 ones
ONE_ROW = [(1, 1, 5), (1, 1, 44)]
FORWARD, BACKWARD = sorted(R.VERSIONS["forward"]), sorted(R.VERSIONS["backward"])
FWD_ANY_C = [v for v in FORWARD if "C % 4" not in R.VERSIONS["forward"][v]]   # the versions that take any C
BWD_ANY_C = [v for v in BACKWARD if "C % 4" not in R.VERSIONS["backward"][v]]


def forward_tol(C, factor=1):
    """The forward bound of the module docstring: rtol (C/2 + 8) u, no atol (`factor` 2: two float32
    computations compared with each other)."""
    return dict(atol=0.0, rtol=factor * (C / 2 + 8) * U)


def backward_tols(dout, x, weight, rstd, factor=1):
    """The backward bounds of the module docstring, from the float64 inputs: (dx's, dweight's)."""
    N, C = int(np.prod(x.shape[:-1])), x.shape[-1]
    xhat = x * rstd[..., None]
    dxhat = dout * weight
    row_sum = np.abs(dxhat * xhat).sum(axis=-1, keepdims=True)             # sum |t| per row
    D = np.abs(dxhat) + np.abs(xhat) * row_sum / C
    rows = tuple(range(x.ndim - 1))
    P = np.abs(dout * xhat).sum(axis=rows)                                 # sum |terms| per channel
    dx_tol = dict(atol=factor * (C + 9) * U * float((rstd[..., None] * D).max()), rtol=factor * FLT_EPSILON)
    dw_tol = dict(atol=factor * (N + 2) * U * float(P.max()), rtol=factor * FLT_EPSILON)
    return dx_tol, dw_tol


def make_inputs(shape, seed=0):
    """x with a different spread per row (as in a residual stream), weight around 1, dout."""
    rng = np.random.default_rng(seed)
    C = shape[-1]
    scale = rng.uniform(0.2, 3, size=shape[:-1] + (1,))
    x = (scale * rng.standard_normal(shape)).astype(np.float32)
    weight = (1 + 0.5 * rng.standard_normal(C)).astype(np.float32)
    dout = rng.standard_normal(shape).astype(np.float32)
    return x, weight, dout


def ones(shape):
    return device.asarray(np.ones(shape, np.float32))


def empty(shape):
    # device.empty(()) fails on the CPU backend (it cannot view a 0-d array as bytes): zeros for a scalar
    return device.empty(shape) if shape else device.zeros(shape)


def run_forward(version, x, weight, **kw):
    out, rstd = empty(x.shape), empty(x.shape[:-1])
    R.forward(out, rstd, device.asarray(x), device.asarray(weight), version=version, **kw)
    return out, rstd


# ------------------------------------------------------------------------------------------------
# The reference
# ------------------------------------------------------------------------------------------------
def test_reference_by_hand():
    x = np.array([[3.0, 4.0], [0.0, 0.0]])
    out, rstd = R.rmsnorm_forward(x, np.array([1.0, 2.0]), eps=1e-300)
    # mean of squares (9 + 16) / 2 = 12.5: rstd = 1 / sqrt(12.5); a zero row stays zero (rstd 1/sqrt(eps))
    np.testing.assert_allclose(rstd[0], 1 / np.sqrt(12.5), rtol=1e-15)
    np.testing.assert_allclose(out[0], [3 / np.sqrt(12.5), 8 / np.sqrt(12.5)], rtol=1e-15)
    assert (out[1] == 0).all()
    out32, rstd32 = R.rmsnorm_forward(x.astype(np.float32), np.ones(2, np.float32))
    assert out32.dtype == rstd32.dtype == np.float32                          # dtype-generic


def test_reference_backward_matches_finite_differences(rng):
    x = rng.standard_normal((2, 3, 7)) * 1.5
    weight = 1 + 0.5 * rng.standard_normal(7)
    dout = rng.standard_normal(x.shape)
    _, rstd = R.rmsnorm_forward(x, weight)
    dx0, dw0 = rng.standard_normal(x.shape), rng.standard_normal(7)
    dx, dw = dx0.copy(), dw0.copy()
    R.rmsnorm_backward(dx, dw, dout, x, weight, rstd)
    num_dx = gradcheck.numerical_gradient(lambda v: R.rmsnorm_forward(v, weight)[0], x, dout)
    num_dw = gradcheck.numerical_gradient(lambda v: R.rmsnorm_forward(x, v)[0], weight, dout)
    gradcheck.assert_gradient("rmsnorm_backward dx", dx - dx0, num_dx)      # accumulates: the difference
    gradcheck.assert_gradient("rmsnorm_backward dweight", dw - dw0, num_dw)


# ------------------------------------------------------------------------------------------------
# Kernels against the reference
# ------------------------------------------------------------------------------------------------
def check_forward(version, shape, **kw):
    x, weight, _ = make_inputs(shape)
    out, rstd = run_forward(version, x, weight, **kw)
    ref_out, ref_rstd = R.rmsnorm_forward(f64(x), f64(weight))
    helpers.check(f"forward{version} out {shape}", out, ref_out, **forward_tol(shape[-1]))
    helpers.check(f"forward{version} rstd {shape}", rstd, ref_rstd, **forward_tol(shape[-1]))


@pytest.mark.parametrize("shape", SHAPES + ODD_C + ONE_ROW)
@pytest.mark.parametrize("version", FWD_ANY_C)
def test_forward_any_c(version, shape):
    check_forward(version, shape)


@pytest.mark.parametrize("shape", SHAPES + ONE_ROW[1:])
@pytest.mark.parametrize("version", [v for v in FORWARD if v not in FWD_ANY_C])
def test_forward_float4(version, shape):
    check_forward(version, shape)


@pytest.mark.parametrize("eps", [1e-5, 1e-2])
def test_forward_passes_eps(eps):
    """Rows with mean(x^2) ~ eps, where eps changes rstd by a lot: the kernels use the eps given."""
    x, weight, _ = make_inputs((3, 64))
    x *= np.float32(np.sqrt(eps))
    for version in FORWARD:
        out, rstd = run_forward(version, x, weight, eps=eps)
        ref_out, ref_rstd = R.rmsnorm_forward(f64(x), f64(weight), eps=eps)
        helpers.check(f"forward{version} eps={eps}", out, ref_out, **forward_tol(64))
        helpers.check(f"forward{version} rstd eps={eps}", rstd, ref_rstd, **forward_tol(64))


def test_forward_on_2d_and_1d_inputs():
    x, weight, _ = make_inputs((5, 64))
    for version in FORWARD:
        for xs in (x, x[0]):   # (N, C) and a single row (C,)
            out, rstd = run_forward(version, np.ascontiguousarray(xs), weight)
            for got, want in zip((out, rstd), R.rmsnorm_forward(f64(xs), f64(weight))):
                helpers.check(f"forward{version} {xs.shape}", got, want, **forward_tol(64))


@pytest.mark.parametrize("block_size", [32, 64, 96, 1024])
@pytest.mark.parametrize("version", FORWARD)
def test_forward_block_sizes(version, block_size):
    check_forward(version, (3, 11, 200), block_size=block_size)


def test_forward1_takes_any_block_size():
    check_forward(1, (3, 11, 50), block_size=7)


def run_backward(version, shape, seed=1, **kw):
    """Kernel and reference gradients, both accumulated onto the same nonzero starting values, and
    the bounds of the module docstring."""
    x, weight, dout = make_inputs(shape, seed)
    _, rstd = R.rmsnorm_forward(x, weight)   # float32, as a forward pass saves it
    rng = np.random.default_rng(seed + 100)
    dx0 = rng.standard_normal(shape).astype(np.float32)
    dw0 = rng.standard_normal(shape[-1]).astype(np.float32)
    ref = [f64(dx0), f64(dw0)]   # copies, made before the kernel (on the CPU backend asarray does not copy)
    dx, dw = device.asarray(dx0), device.asarray(dw0)
    R.backward(dx, dw, *(device.asarray(a) for a in (dout, x, weight, rstd)), version=version, **kw)
    inputs = list(map(f64, (dout, x, weight, rstd)))
    R.rmsnorm_backward(*ref, *inputs)
    return (dx, dw), ref, backward_tols(*inputs)


def check_backward(version, shape, **kw):
    got, ref, tols = run_backward(version, shape, **kw)
    for name, g, r, tol in zip(("dx", "dweight"), got, ref, tols):
        helpers.check(f"backward{version} {name} {shape}", g, r, **tol)


@pytest.mark.parametrize("shape", SHAPES + ODD_C + ONE_ROW)
@pytest.mark.parametrize("version", BWD_ANY_C)
def test_backward_any_c(version, shape):
    check_backward(version, shape)


@pytest.mark.parametrize("shape", SHAPES + ONE_ROW[1:])
@pytest.mark.parametrize("version", [v for v in BACKWARD if v not in BWD_ANY_C])
def test_backward_float4(version, shape):
    check_backward(version, shape)


@pytest.mark.parametrize("block_size", [1, 7, 33, 1024])   # one thread per row / per channel: any block
def test_backward1_block_sizes(block_size):
    check_backward(1, (2, 5, 50), block_size=block_size)


@pytest.mark.parametrize("num_blocks", [1, 4, 200])   # many rows per block ... blocks with no row
def test_backward2_num_blocks(num_blocks):
    check_backward(2, (3, 37, 48), num_blocks=num_blocks)


@pytest.mark.parametrize("block_size", [32, 96, 1024])
def test_backward2_block_sizes(block_size):
    check_backward(2, (2, 5, 100), block_size=block_size)


def test_backward2_at_the_largest_c():
    assert R.BACKWARD2_MAX_C == 12256 and R.BACKWARD2_MAX_C % 4 == 0
    check_backward(2, (1, 2, R.BACKWARD2_MAX_C))


def test_the_bounds_catch_a_wrong_formula():
    """The tolerances are tight enough to fail: LayerNorm's extra mean(dxhat) term, or rstd from
    C - 1 instead of C, is far outside them."""
    x, weight, dout = map(f64, make_inputs((3, 37, 48)))
    out, rstd = R.rmsnorm_forward(x, weight)
    wrong_rstd = 1 / np.sqrt((x * x).sum(-1) / 47 + R.EPS)
    with pytest.raises(AssertionError):
        helpers.check("rstd over C - 1", wrong_rstd, rstd, **forward_tol(48))
    dx, dw = np.zeros_like(x), np.zeros(48)
    R.rmsnorm_backward(dx, dw, dout, x, weight, rstd)
    dxhat = dout * weight
    with_mean = dx - rstd[..., None] * dxhat.mean(-1, keepdims=True)
    with pytest.raises(AssertionError):
        helpers.check("dx with a mean(dxhat) term", with_mean, dx, **backward_tols(dout, x, weight, rstd)[0])


# ------------------------------------------------------------------------------------------------
# Hugging Face's LlamaRMSNorm
# ------------------------------------------------------------------------------------------------
def test_eps_is_hugging_faces_default():
    assert R.EPS == LlamaConfig().rms_norm_eps == LlamaRMSNorm(8).variance_epsilon == 1e-6


def hugging_face(x, weight, dout, eps):
    """LlamaRMSNorm's out and, by torch autograd, the gradients of sum(out * dout): out, dx, dweight."""
    layer = LlamaRMSNorm(x.shape[-1], eps=eps)
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(weight))
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    out = layer(xt)
    out.backward(torch.from_numpy(dout))
    return out.detach().numpy(), xt.grad.numpy(), layer.weight.grad.numpy()


@pytest.mark.parametrize("eps", [1e-6, 1e-5])
@pytest.mark.parametrize("C", [37, 100])   # odd C; a C % 4 == 0 that is not a multiple of 32, for every version
def test_against_hugging_face(C, eps):
    shape = (2, 5, C)
    x, weight, dout = make_inputs(shape, seed=3)
    x *= np.float32(1e-2)   # mean(x^2) ~ 4e-6 .. 1e-3: eps 1e-6 vs 1e-5 changes rstd by up to ~70%
    hf_out, hf_dx, hf_dw = hugging_face(x, weight, dout, eps)
    assert hf_out.dtype == np.float32
    # the reference (float64) against Hugging Face (float32): one bound
    ref_out, ref_rstd = R.rmsnorm_forward(f64(x), f64(weight), eps=eps)
    ref_dx, ref_dw = np.zeros(shape), np.zeros(C)
    R.rmsnorm_backward(ref_dx, ref_dw, f64(dout), f64(x), f64(weight), ref_rstd)
    dx_tol, dw_tol = backward_tols(f64(dout), f64(x), f64(weight), ref_rstd)
    helpers.check(f"reference vs LlamaRMSNorm out eps={eps}", hf_out, ref_out, **forward_tol(C))
    helpers.check(f"reference vs LlamaRMSNorm dx eps={eps}", hf_dx, ref_dx, **dx_tol)
    helpers.check(f"reference vs LlamaRMSNorm dweight eps={eps}", hf_dw, ref_dw, **dw_tol)
    # every kernel version that takes this C against Hugging Face: two float32 computations, twice the bound
    dx_tol2, dw_tol2 = backward_tols(f64(dout), f64(x), f64(weight), ref_rstd, factor=2)
    for version in FORWARD if C % 4 == 0 else FWD_ANY_C:
        out, _ = run_forward(version, x, weight, eps=eps)
        helpers.check(f"forward{version} vs LlamaRMSNorm eps={eps}", out, hf_out, **forward_tol(C, factor=2))
    _, rstd = run_forward(1, x, weight, eps=eps)
    for version in BACKWARD if C % 4 == 0 else BWD_ANY_C:
        dx, dw = device.zeros(shape), device.zeros(C)
        R.backward(dx, dw, *(device.asarray(a) for a in (dout, x, weight)), rstd, version=version)
        helpers.check(f"backward{version} dx vs LlamaRMSNorm eps={eps}", dx, hf_dx, **dx_tol2)
        helpers.check(f"backward{version} dweight vs LlamaRMSNorm eps={eps}", dw, hf_dw, **dw_tol2)


# ------------------------------------------------------------------------------------------------
# Every launch in every thread order gives the same bits (no float atomics anywhere)
# ------------------------------------------------------------------------------------------------
def device_args(shape):
    x, weight, dout = make_inputs(shape)
    _, rstd = R.rmsnorm_forward(x, weight)
    N, C = int(np.prod(shape[:-1])), shape[-1]
    return N, C, [device.asarray(a) for a in (x.reshape(N, C), weight, dout.reshape(N, C), rstd.reshape(N))]


@pytest.mark.parametrize("version, C", [(v, 50) for v in FWD_ANY_C] + [(v, 48) for v in FORWARD if v not in FWD_ANY_C])
def test_racecheck_forward(version, C):
    N, C, (x, w, _, _) = device_args((3, 13, C))
    out, rstd = device.empty((N, C)), device.empty(N)
    for launch in R.launches("forward", out, rstd, x, w, version=version, block_size=64):
        device.racecheck(*launch)


@pytest.mark.parametrize("version, C", [(v, 50) for v in BWD_ANY_C] + [(v, 48) for v in BACKWARD if v not in BWD_ANY_C])
def test_racecheck_backward(version, C):
    """Every launch exact; each runs before the next is checked (a reduction reads partial sums)."""
    N, C, (x, w, dout, rstd) = device_args((3, 13, C))
    dx, dw = device.zeros((N, C)), device.zeros(C)
    steps = R.launches("backward", dx, dw, dout, x, w, rstd, version=version, block_size=64, num_blocks=8)
    assert len(steps) == 2
    for launch in steps:
        device.racecheck(*launch)
        launch()


# ------------------------------------------------------------------------------------------------
# Shape assumptions: clear errors, never a silent wrong answer
# ------------------------------------------------------------------------------------------------
def test_float4_versions_need_c_multiple_of_4():
    x, w, dout = (device.asarray(a) for a in make_inputs((3, 50)))
    with pytest.raises(ValueError, match=r"rmsnorm_forward3 loads float4: C must be a multiple of 4, got C=50 "
                                         r"\(use version 1 or 2, which take any C\)"):
        R.forward(device.empty((3, 50)), device.empty(3), x, w, version=3)
    with pytest.raises(ValueError, match=r"rmsnorm_backward2 loads float4: C must be a multiple of 4, got C=50 "
                                         r"\(use version 1, which takes any C\)"):
        R.backward(device.zeros((3, 50)), device.zeros(50), dout, x, w, ones(3), version=2)


def test_float4_versions_need_aligned_arrays():
    base = device.asarray(make_inputs((3 * 64 + 1,))[0])
    x = base[1:].reshape(3, 64)   # starts 4 bytes past an aligned address
    assert x.flags.c_contiguous
    w = ones(64)
    with pytest.raises(ValueError, match=r"rmsnorm_forward3 loads float4: `x` must start at a 16-byte aligned "
                                         r"address.*use version 1 or 2"):
        R.forward(device.empty((3, 64)), device.empty(3), x, w, version=3)
    with pytest.raises(ValueError, match=r"rmsnorm_backward2 loads float4: `dout` must start at a 16-byte aligned "
                                         r"address.*use version 1"):
        R.backward(device.zeros((3, 64)), device.zeros(64), x, device.zeros((3, 64)), w, ones(3), version=2)
    out, rstd = device.empty((3, 64)), device.empty(3)
    R.forward(out, rstd, x, w, version=2)   # versions 1 and 2 have no alignment needs
    helpers.check("forward2 on a view", out, R.rmsnorm_forward(f64(x), f64(w))[0], **forward_tol(64))


def test_backward2_refuses_one_past_the_largest_c():
    C = R.BACKWARD2_MAX_C + 4   # the next C % 4 == 0
    x = device.zeros((1, C))
    with pytest.raises(ValueError, match=rf"rmsnorm_backward2: C={C} .* needs {4 * C + 128:,} bytes of shared "
                                         rf"memory, more than the 48 KiB a block may use: C must be at most "
                                         rf"{R.BACKWARD2_MAX_C} \(use version 1\)"):
        R.backward(device.zeros((1, C)), device.zeros(C), x, x, ones(C), ones(1), version=2)


@pytest.mark.parametrize("num_blocks", [0, -1, 2.5, True])
def test_backward2_num_blocks_must_be_a_positive_int(num_blocks):
    x = device.zeros((2, 8))
    with pytest.raises(ValueError, match="rmsnorm_backward2: num_blocks must be an int of at least 1"):
        R.backward(device.zeros((2, 8)), device.zeros(8), x, x, ones(8), ones(2), version=2,
                   num_blocks=num_blocks)


def test_warp_versions_need_whole_warps():
    x, w, dout = (device.asarray(a) for a in make_inputs((3, 64)))
    for version in (2, 3):
        with pytest.raises(ValueError, match=rf"rmsnorm_forward{version} reduces with full-warp shuffles: "
                                             r"block_size must be a multiple of 32, got 48"):
            R.forward(device.empty((3, 64)), device.empty(3), x, w, version=version, block_size=48)
    with pytest.raises(ValueError, match=r"rmsnorm_backward2 reduces with full-warp shuffles: .* got 48"):
        R.backward(device.zeros((3, 64)), device.zeros(64), dout, x, w, ones(3), version=2, block_size=48)
    with pytest.raises(ValueError, match=r"rmsnorm_backward1: block_size must be an int between 1 and 1024"):
        R.backward(device.zeros((3, 64)), device.zeros(64), dout, x, w, ones(3), version=1, block_size=2048)


def test_shapes_and_dtypes_are_checked():
    x, w, dout = (device.asarray(a) for a in make_inputs((3, 5, 8)))
    with pytest.raises(ValueError, match=r"rmsnorm_forward1: `rstd` must have shape \(3, 5\), got \(15,\)"):
        R.forward(device.empty((3, 5, 8)), device.empty(15), x, w, version=1)
    with pytest.raises(ValueError, match=r"rmsnorm_forward2: `weight` must have shape \(8,\), got \(5,\)"):
        R.forward(device.empty((3, 5, 8)), device.empty((3, 5)), x, ones(5), version=2)
    with pytest.raises(ValueError, match=r"rmsnorm_backward1: `dout` must have shape \(3, 5, 8\), got \(15, 8\)"):
        R.backward(device.zeros((3, 5, 8)), device.zeros(8), dout.reshape(15, 8), x, w, ones((3, 5)),
                   version=1)
    with pytest.raises(ValueError, match=r"rmsnorm_forward3: `x` must be float32, got float64"):
        R.forward(device.empty((3, 8)), device.empty(3), device.zeros((3, 8), np.float64), ones(8), version=3)
    with pytest.raises(ValueError, match=r"rmsnorm_forward1: x must have at least one axis"):
        R.forward(device.zeros(()), device.zeros(()), device.zeros(()), ones(1), version=1)
    with pytest.raises(ValueError, match=r"rmsnorm_backward2: needs at least one row of at least one channel"):
        R.backward(device.zeros((0, 8)), device.zeros(8), device.zeros((0, 8)), device.zeros((0, 8)), w,
                   device.zeros(0), version=2)


def test_rows_past_int32_are_refused():
    """2^31 - 1 rows (the kernels count rows in int) build their launch (not run: the arrays claim
    gigabytes over one float of memory); one row more is refused."""
    N = 2**31 - 1
    [launch] = R.launches("forward", oversized((N, 4)), oversized((N,)), oversized((N, 4)), ones(4), version=3)
    assert launch.grid == (N,)
    x = oversized((2**31, 1))
    with pytest.raises(ValueError, match=r"rmsnorm_forward2 indexes with 32-bit ints: N = 2,147,483,648"):
        R.launches("forward", x, x, x, ones(1), version=2)


def test_unknown_version_and_step():
    x = device.zeros((2, 8))
    with pytest.raises(ValueError, match=r"rmsnorm.forward: no version 4; the versions are \[1, 2, 3\]"):
        R.forward(device.empty((2, 8)), device.empty(2), x, ones(8), version=4)
    with pytest.raises(ValueError, match=r"rmsnorm.backward: no version 3; the versions are \[1, 2\]"):
        R.backward(x, device.zeros(8), x, x, ones(8), ones(2), version=3)
    with pytest.raises(ValueError, match=r"rmsnorm has no 'update' step"):
        R.launches("update", version=1)


def test_compiles_for_the_gpu_without_spills():
    rows = nvrtc_report.compile_report([CUDA_DIR / "rmsnorm.cu"], ["sm_80", "sm_90"])
    assert {r.kernel for r in rows} == {"rmsnorm_forward1", "rmsnorm_forward2", "rmsnorm_forward3",
                                        "rmsnorm_backward1_dx", "rmsnorm_backward1_dweight", "rmsnorm_backward2",
                                        "rmsnorm_backward2_reduce"}
    assert not any(r.spills for r in rows)


# ------------------------------------------------------------------------------------------------
# The exercise of notebooks/11_llama_ops.ipynb: the residual add fused into RMSNorm
# ------------------------------------------------------------------------------------------------
SOLUTION = CUDA_DIR.parent / "notebooks" / "solutions" / "11_residual_rmsnorm.cu"


@pytest.mark.parametrize("N, C", [(37, 50), (1, 1), (5, 1600), (64, 33)])
def test_solution_of_the_exercise(N, C):
    """residual = a + b exactly (one float32 addition, as NumPy's), then RMSNorm within the forward's
    bound of the module docstring (the same roundings as forward2's); race-free."""
    rng = np.random.default_rng(N + C)
    a, b = rng.standard_normal((N, C)).astype(np.float32), rng.standard_normal((N, C)).astype(np.float32)
    w = (1 + 0.5 * rng.standard_normal(C)).astype(np.float32)
    fn = device.load_module(SOLUTION).get_function("residual_rmsnorm_forward")
    res, out, rstd = device.empty((N, C)), device.empty((N, C)), device.empty(N)
    args = (res, out, rstd, device.asarray(a), device.asarray(b), device.asarray(w), N, C, np.float32(1e-5))
    grid = (helpers.ceil_div(N, 4),)
    fn(grid, (128,), args)
    assert np.array_equal(device.asnumpy(res), a + b)
    ref_out, ref_rstd = R.rmsnorm_forward(f64(a + b), f64(w), eps=1e-5)
    helpers.check("fused out", out, ref_out, **forward_tol(C))
    helpers.check("fused rstd", rstd, ref_rstd, **forward_tol(C))
    device.racecheck(fn, grid, (128,), args)
