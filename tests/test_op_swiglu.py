"""SwiGLU (cuda/swiglu.cu, helpers/ops/swiglu.py): every kernel version against the NumPy reference
(float64) at odd shapes and at large |g| (no overflow, no NaN), the reference and the kernels against
torch.nn.functional.silu (torch autograd for the gradients), racecheck on every launch, the NumPy
backward against finite differences, every shape assumption refused with a clear ValueError.

Tolerances: rounding bounds, derived. u = 2^-24 is float32's unit roundoff (FLT_EPSILON / 2): one
float32 operation returns the exact result times (1 + d), |d| <= u. The reference runs in float64 on
the same float32 inputs (its own error, ~1e-16, is negligible). Relative errors, to first order:
    e = expf(-|g|)             4u   (at most 2 ulp, the CUDA guide's bound; 1 ulp <= 2u relatively)
    1 + e                      3u   (e's 4u weighs e / (1 + e) <= 1/2; one rounding)
    r = 1 / (1 + e)            4u
    s, 1 - s  (r, or e * r)    9u   (e * r: 4u + 4u + one rounding)
    silu = g * s              10u          out = silu * u: 11u
forward:  |err| <= 11u |ref|                                       -> rtol = 12u
backward, from the starting values dg0, du0 (+= rounds once more: u of the result, so rtol = 2u):
    du: dout * silu, 11u of |dout silu|                             -> atol = 11u max|dout silu|
    dg: q = g (1 - s) within 10u |q|; p = 1 + q within 10u|q| + u|p|; s p, then (dout u) s p, within
        |dout u| s (10u |q| + 13u |p|) <= 13u |dout u| s (1 + 2|q|)   -> atol = 13u max of that
Below float32's smallest normal number FLT_MIN = 2^-126 (exp(-|g|) for |g| > 87) numbers keep only an
absolute precision, or are flushed to zero: every atol also gets FLT_MIN times the scale of what
multiplies the tiny number (|g u| forward; |dout u| (1 + |g|) for dg; |dout g| for du), plus FLT_MIN.
Scalar atols take the maximum over the elements, which bounds each one. A wrong formula (the
derivative without its g (1 - s) term, sigmoid for silu, the halves swapped) is off by far more
(test_the_bounds_catch_a_wrong_formula).
"""
import numpy as np
import pytest
import torch

import helpers
from helpers import device
from helpers.ops import swiglu as S
from helpers.runtime import nvrtc_report
from helpers.runtime.cuda_source import CUDA_DIR
from helpers.teaching import gradcheck
from support import f64, oversized

U = 2.0**-24                         # float32's unit roundoff
FLT_EPSILON = 2 * U
FLT_MIN = 2.0**-126                  # float32's smallest normal number

SHAPES = [(3, 37, 48), (2, 7, 20), (1, 1, 4)]     # (B, T, H), H % 4 == 0: every version
ODD_H = [(3, 7, 37), (2, 5, 50), (4, 3, 1), (1, 1, 5)]   # H % 4 != 0 (H = 1; one row): version 1 only
FORWARD, BACKWARD = sorted(S.VERSIONS["forward"]), sorted(S.VERSIONS["backward"])
ANY_H = [v for v in FORWARD if "H % 4" not in S.VERSIONS["forward"][v]]
LARGE_G = [100.0, -100.0, 1e4, -1e4, 17.0, -17.0, 88.0, -88.0, 90.0, -90.0, 0.0, -1.2785]   # -1.28: silu'(g) ~ 0


def forward_tol(gate_up):
    g, u = S.halves(f64(gate_up))
    return dict(atol=FLT_MIN * (1 + np.abs(g * u).max(initial=0)), rtol=12 * U)


def backward_tols(dout, gate_up):
    """(dg's, du's) bounds of the module docstring, from the float64 inputs."""
    g, u = S.halves(f64(gate_up))
    dout = f64(dout)
    s = S.sigmoid(g)
    dg = 13 * U * (np.abs(dout * u) * s * (1 + 2 * np.abs(g) * (1 - s))).max(initial=0) \
        + FLT_MIN * (1 + (np.abs(dout * u) * (1 + np.abs(g))).max(initial=0))
    du = 11 * U * np.abs(dout * S.silu(g)).max(initial=0) + FLT_MIN * (1 + np.abs(dout * g).max(initial=0))
    return dict(atol=dg, rtol=FLT_EPSILON), dict(atol=du, rtol=FLT_EPSILON)


def make_inputs(shape, seed=0, special=False):
    """gate_up (..., 2H) with gates of spread 3 (silu's curved part and both tails), dout (..., H),
    and a starting dgate_up; `special`: the first gates set to LARGE_G."""
    rng = np.random.default_rng(seed)
    *lead, H = shape
    gate_up = rng.standard_normal((*lead, 2 * H)).astype(np.float32)
    gate_up[..., :H] *= 3
    if special:
        flat = gate_up.reshape(-1, 2 * H)
        k = min(H, len(LARGE_G))
        flat[0, :k] = LARGE_G[:k]
        flat[-1, H - k:H] = LARGE_G[:k][::-1]
    dout = rng.standard_normal((*lead, H)).astype(np.float32)
    dgate_up0 = rng.standard_normal((*lead, 2 * H)).astype(np.float32)
    return gate_up, dout, dgate_up0


def run_forward(version, gate_up, **kw):
    out = device.empty(gate_up.shape[:-1] + (gate_up.shape[-1] // 2,))
    S.forward(out, device.asarray(gate_up), version=version, **kw)
    return out


def run_backward(version, gate_up, dout, dgate_up0, **kw):
    dgate_up = device.asarray(dgate_up0.copy())   # on the CPU backend asarray does not copy
    S.backward(dgate_up, device.asarray(dout), device.asarray(gate_up), version=version, **kw)
    return dgate_up


def check_both(version, shape, special=False, **kw):
    gate_up, dout, dgate_up0 = make_inputs(shape, special=special)
    H = shape[-1]
    out = run_forward(version, gate_up, **kw)
    helpers.check(f"swiglu_forward{version} {shape}", out, S.swiglu_forward(f64(gate_up)), **forward_tol(gate_up))
    got = device.asnumpy(run_backward(version, gate_up, dout, dgate_up0, **kw))
    ref = f64(dgate_up0)
    S.swiglu_backward(ref, f64(dout), f64(gate_up))
    dg_tol, du_tol = backward_tols(dout, gate_up)
    helpers.check(f"swiglu_backward{version} dg {shape}", got[..., :H], ref[..., :H], **dg_tol)
    helpers.check(f"swiglu_backward{version} du {shape}", got[..., H:], ref[..., H:], **du_tol)
    return out, got


# ------------------------------------------------------------------------------------------------
# The reference
# ------------------------------------------------------------------------------------------------
def test_reference_known_values():
    g = np.array([0.0, 1.0, -1.0, 30.0, -30.0])
    np.testing.assert_allclose(S.silu(g), g / (1 + np.exp(-g)), rtol=1e-15, atol=0)   # the textbook form
    assert S.silu(g)[0] == 0.0 and S.sigmoid(np.array([0.0]))[0] == 0.5
    gate_up = np.array([[2.0, -1.0, 3.0, 5.0]])   # H = 2: g = (2, -1), u = (3, 5)
    np.testing.assert_allclose(S.swiglu_forward(gate_up), [[3 * S.silu(2.0), 5 * S.silu(-1.0)]], rtol=1e-15)
    assert S.swiglu_forward(gate_up.astype(np.float32)).dtype == np.float32   # dtype-generic


def test_reference_never_overflows():
    g = np.array(LARGE_G + [3e38, -3e38])
    with np.errstate(over="raise", invalid="raise", divide="raise"):   # exp(-|g|) only underflows
        s, silu, grad = S.sigmoid(g), S.silu(g), S.silu_derivative(g)
    assert np.isfinite(s).all() and np.isfinite(silu).all() and np.isfinite(grad).all()
    assert s[2] == 1.0 and s[3] == 0.0 and silu[2] == 1e4 and silu[3] == 0.0 and grad[2] == 1.0 and grad[3] == 0.0


def test_reference_backward_matches_finite_differences(rng):
    gate_up = rng.standard_normal((2, 3, 2 * 5)) * 2
    dout = rng.standard_normal((2, 3, 5))
    d0 = rng.standard_normal(gate_up.shape)
    d = d0.copy()
    S.swiglu_backward(d, dout, gate_up)
    numeric = gradcheck.numerical_gradient(S.swiglu_forward, gate_up, dout)
    gradcheck.assert_gradient("swiglu_backward", d - d0, numeric)   # accumulates: the difference


def test_the_bounds_catch_a_wrong_formula():
    gate_up, dout, _ = map(f64, make_inputs((3, 37, 48)))
    g, u = S.halves(gate_up)
    with pytest.raises(AssertionError):   # the halves swapped
        helpers.check("halves swapped", S.silu(u) * g, S.swiglu_forward(gate_up), **forward_tol(gate_up))
    s = S.sigmoid(g)
    with pytest.raises(AssertionError):   # d silu / dg without the g (1 - s) term
        helpers.check("wrong derivative", dout * u * s, dout * u * S.silu_derivative(g),
                      **backward_tols(dout, gate_up)[0])


# ------------------------------------------------------------------------------------------------
# Kernels against the reference
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("version", FORWARD)
def test_every_version(version, shape):
    check_both(version, shape)


@pytest.mark.parametrize("shape", ODD_H)
@pytest.mark.parametrize("version", ANY_H)
def test_odd_h(version, shape):
    check_both(version, shape)


@pytest.mark.parametrize("version", FORWARD)
def test_large_gates_give_no_nan(version):
    """g = +-100, +-1e4 (exp(-g) overflows float32 for g < -88), +-88..90 (subnormal sigmoids)."""
    out, grads = check_both(version, (2, 3, 16), special=True)
    assert np.isfinite(device.asnumpy(out)).all() and np.isfinite(grads).all()


@pytest.mark.parametrize("version", FORWARD)
def test_1d_and_2d_inputs(version):
    for shape in ((16,), (5, 16)):   # a single row (2H,), and (N, 2H)
        check_both(version, shape)


@pytest.mark.parametrize("block_size", [1, 7, 33, 1024])   # elementwise: any block
@pytest.mark.parametrize("version", FORWARD)
def test_block_sizes(version, block_size):
    check_both(version, (3, 5, 20), block_size=block_size)


def test_empty_inputs_launch_nothing():
    for version in FORWARD:
        for shape in ((0, 8), (3, 0)):   # no rows; H = 0
            assert S.launches("forward", device.empty((shape[0], shape[1] // 2)), device.zeros(shape),
                              version=version) == []
            S.backward(device.zeros(shape), device.zeros((shape[0], shape[1] // 2)), device.zeros(shape),
                       version=version)


def test_defaults_are_version_2():
    gate_up, _, _ = make_inputs((4, 8))
    out = device.empty((4, 8))
    S.forward(out, device.asarray(gate_up))
    helpers.check("swiglu default", out, S.swiglu_forward(f64(gate_up)), **forward_tol(gate_up))
    odd = device.zeros((4, 12))   # H = 6
    with pytest.raises(ValueError, match="swiglu_forward2 loads float4"):
        S.forward(device.empty((4, 6)), odd)
    with pytest.raises(ValueError, match="swiglu_backward2 loads float4"):
        S.backward(device.zeros((4, 12)), device.zeros((4, 6)), odd)


# ------------------------------------------------------------------------------------------------
# torch.nn.functional.silu
# ------------------------------------------------------------------------------------------------
def torch_swiglu(gate_up, dout):
    """silu(g) * u in torch, float64, and its gradient by autograd: what the definition gives."""
    t = torch.from_numpy(f64(gate_up)).requires_grad_(True)
    H = t.shape[-1] // 2
    out = torch.nn.functional.silu(t[..., :H]) * t[..., H:]
    out.backward(torch.from_numpy(f64(dout)))
    return out.detach().numpy(), t.grad.numpy()


@pytest.mark.parametrize("shape", [(2, 3, 37), (3, 5, 20)])   # an odd H (version 1), H % 4 == 0 (both)
def test_against_torch_silu(shape):
    gate_up, dout, _ = make_inputs(shape, seed=4, special=True)
    H = shape[-1]
    t_out, t_grad = torch_swiglu(gate_up, dout)
    # the reference and torch, both float64: a few float64 roundings apart (2^-53 each)
    np.testing.assert_allclose(S.swiglu_forward(f64(gate_up)), t_out, rtol=1e-14, atol=1e-300)
    ref = np.zeros(gate_up.shape)
    S.swiglu_backward(ref, f64(dout), f64(gate_up))
    scale = np.abs(t_grad).max()   # dg cancels near g = -1.28 (silu' = 0): an absolute bound there
    np.testing.assert_allclose(ref, t_grad, rtol=1e-14, atol=1e-14 * scale)
    # every kernel version that takes this H against torch, with the float32 bounds
    dg_tol, du_tol = backward_tols(dout, gate_up)
    for version in FORWARD if H % 4 == 0 else ANY_H:
        helpers.check(f"swiglu_forward{version} vs torch", run_forward(version, gate_up), t_out,
                      **forward_tol(gate_up))
        got = device.asnumpy(run_backward(version, gate_up, dout, np.zeros(gate_up.shape, np.float32)))
        helpers.check(f"swiglu_backward{version} dg vs torch", got[..., :H], t_grad[..., :H], **dg_tol)
        helpers.check(f"swiglu_backward{version} du vs torch", got[..., H:], t_grad[..., H:], **du_tol)


# ------------------------------------------------------------------------------------------------
# Races
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("version", FORWARD)
def test_racecheck_every_version(version):
    """No atomics and no shared memory: every thread order must give identical bits."""
    gate_up, dout, dgate_up0 = (device.asarray(a) for a in make_inputs((3, 13, 20)))
    launches = (S.launches("forward", device.empty((3, 13, 20)), gate_up, version=version, block_size=64) +
                S.launches("backward", dgate_up0, dout, gate_up, version=version, block_size=64))
    assert len(launches) == 2
    for launch in launches:
        device.racecheck(*launch)


# ------------------------------------------------------------------------------------------------
# Shape assumptions: clear errors, never a silent wrong answer
# ------------------------------------------------------------------------------------------------
def test_float4_versions_need_h_multiple_of_4():
    gate_up = device.zeros((3, 2 * 37))
    with pytest.raises(ValueError, match=r"swiglu_forward2 loads float4: H must be a multiple of 4, got H=37 "
                                         r"\(use version 1, which takes any H\)"):
        S.forward(device.empty((3, 37)), gate_up, version=2)
    with pytest.raises(ValueError, match=r"swiglu_backward2 loads float4: H must be a multiple of 4, got H=37"):
        S.backward(device.zeros((3, 74)), device.zeros((3, 37)), gate_up, version=2)


def test_float4_versions_need_aligned_arrays():
    base = device.asarray(np.linspace(-4, 4, 3 * 32 + 1, dtype=np.float32))
    gate_up = base[1:].reshape(3, 32)   # H = 16, starting 4 bytes past an aligned address
    assert gate_up.flags.c_contiguous
    with pytest.raises(ValueError, match=r"swiglu_forward2 loads float4: `gate_up` must start at a 16-byte "
                                         r"aligned address.*use version 1"):
        S.forward(device.empty((3, 16)), gate_up, version=2)
    with pytest.raises(ValueError, match=r"swiglu_backward2 loads float4: `dgate_up` must start at a 16-byte"):
        S.backward(gate_up, device.zeros((3, 16)), device.zeros((3, 32)), version=2)
    out = device.empty((3, 16))
    S.forward(out, gate_up, version=1)   # version 1 has no alignment needs
    helpers.check("swiglu_forward1 on a view", out, S.swiglu_forward(f64(gate_up)), **forward_tol(gate_up))


def test_shapes_must_match():
    gate_up = device.zeros((3, 4, 16))
    with pytest.raises(ValueError, match=r"swiglu_forward1: gate_up's last axis holds \[gate \| up\], H values "
                                         r"each: it must have an even length 2H, got shape \(3, 4, 15\)"):
        S.forward(device.empty((3, 4, 7)), device.zeros((3, 4, 15)), version=1)
    with pytest.raises(ValueError, match=r"swiglu_forward2: `out` must have shape \(3, 4, 8\), got \(3, 4, 16\)"):
        S.forward(device.empty((3, 4, 16)), gate_up, version=2)
    with pytest.raises(ValueError, match=r"swiglu_forward1: `out` must have shape \(3, 4, 8\), got \(12, 8\)"):
        S.forward(device.empty((12, 8)), gate_up, version=1)
    with pytest.raises(ValueError, match=r"swiglu_backward1: `dgate_up` must have shape \(3, 4, 16\), got \(3, 4, 8\)"):
        S.backward(device.zeros((3, 4, 8)), device.zeros((3, 4, 8)), gate_up, version=1)
    with pytest.raises(ValueError, match=r"swiglu_backward2: `dout` must have shape \(3, 4, 8\), got \(3, 4, 16\)"):
        S.backward(device.zeros((3, 4, 16)), device.zeros((3, 4, 16)), gate_up, version=2)
    with pytest.raises(ValueError, match=r"swiglu_forward1: gate_up's last axis .* got shape \(\)"):
        S.forward(device.zeros(()), device.zeros(()), version=1)


def test_dtype_block_size_version_and_arity():
    with pytest.raises(ValueError, match=r"swiglu_forward1: `gate_up` must be float32, got float64"):
        S.forward(device.empty((2, 4)), device.zeros((2, 8), np.float64), version=1)
    with pytest.raises(ValueError, match=r"swiglu_backward2: `dout` must be float32, got float64"):
        S.backward(device.zeros((2, 8)), device.zeros((2, 4), np.float64), device.zeros((2, 8)), version=2)
    with pytest.raises(ValueError, match=r"swiglu_forward2: block_size must be an int between 1 and 1024"):
        S.forward(device.empty((2, 4)), device.zeros((2, 8)), version=2, block_size=2048)
    with pytest.raises(ValueError, match=r"swiglu.forward: no version 3; the versions are \[1, 2\]"):
        S.forward(device.empty((2, 4)), device.zeros((2, 8)), version=3)
    with pytest.raises(TypeError, match=r"swiglu.backward takes the arrays \(dgate_up, dout, gate_up\), got 2"):
        S.launches("backward", device.zeros((2, 8)), device.zeros((2, 8)), version=1)


def test_sizes_past_int32_are_refused():
    """The largest gate_up the int indices allow (2^31 - 2 elements: 2H is even) builds its launch (not
    run: these arrays claim gigabytes over one float of memory); one row more is refused."""
    for version, H, width in ((1, 2**30 - 1, 2**30 - 1), (2, 2**30 - 4, 2**28 - 1)):   # version 2: H % 4 == 0
        [launch] = S.launches("forward", oversized((1, H)), oversized((1, 2 * H)), version=version)
        assert launch.args[-2:] == (1, width) and launch.grid == (-(-width // S.BLOCK_SIZE),)
    gate_up = oversized((2**30, 2))   # 2^31 elements
    with pytest.raises(ValueError, match=r"swiglu_forward1 indexes with 32-bit ints: gate_up.size = 2,147,483,648"):
        S.launches("forward", oversized((2**30, 1)), gate_up, version=1)
    with pytest.raises(ValueError, match=r"swiglu_backward2 indexes with 32-bit ints: gate_up.size = 2,147,483,648"):
        S.launches("backward", gate_up, oversized((2**30, 1)), gate_up, version=2)


def test_compiles_for_the_gpu_without_spills():
    rows = nvrtc_report.compile_report([CUDA_DIR / "swiglu.cu"], ["sm_80", "sm_90"])
    assert {r.kernel for r in rows} == {"swiglu_forward1", "swiglu_forward2", "swiglu_backward1", "swiglu_backward2"}
    assert not any(r.spills for r in rows)
