"""GELU and the residual connection (cuda/gelu.cu, cuda/residual.cu, helpers/ops/gelu.py).

Every kernel version against the NumPy reference at odd shapes with llm.c's elementwise tolerance
(|ref - out| <= 1e-5 + FLT_EPSILON |ref|, the reference evaluated in float64 on the same float32
inputs); the residual kernels bit for bit (one correctly rounded float32 addition per element);
racecheck on every version (elementwise kernels, no atomics: identical bits required); the NumPy
backward passes against finite differences in float64; every shape assumption raising its error.
"""
import math

import numpy as np
import pytest

import helpers
from helpers import device
from helpers.ops import gelu as G
from helpers.teaching import gradcheck

SHAPES = [(3, 37, 48), (2, 7, 20)]  # (B, T, C); GELU runs on (B, T, 4C), the residual on (B, T, C)
VERSIONS = sorted(G.VERSIONS)


def randn(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def f64(a):
    return device.asnumpy(a).astype(np.float64)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


# ------------------------------------------------------------------------------------------------
# References
# ------------------------------------------------------------------------------------------------
def test_gelu_reference_known_values():
    x = np.array([0.0, 1.0, -1.0, 3.0, -10.0])
    # 0.5 x (1 + tanh(sqrt(2/pi)(x + 0.044715 x^3))), by hand with math.tanh
    want = [0.5 * v * (1 + math.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v**3))) for v in x]
    np.testing.assert_allclose(G.gelu_forward(x), want, rtol=1e-15, atol=0)
    assert G.gelu_forward(x)[0] == 0.0 and abs(G.gelu_forward(x)[4]) < 1e-30
    assert G.gelu_forward(x.astype(np.float32)).dtype == np.float32  # dtype-generic


def test_gelu_is_the_tanh_form_not_erf():
    """The tanh approximation differs from the exact erf GELU by up to ~5e-4: far above 1e-5."""
    x = np.linspace(-6, 6, 2001)
    diff = np.abs(G.gelu_forward(x) - G.gelu_erf(x)).max()
    assert 3e-4 < diff < 1e-3


def test_gelu_backward_matches_finite_differences(rng):
    x = rng.standard_normal((2, 3, 8)) * 2
    dout = rng.standard_normal(x.shape)
    dx = rng.standard_normal(x.shape)
    dx0 = dx.copy()
    G.gelu_backward(dx, dout, x)
    numeric = gradcheck.numerical_gradient(G.gelu_forward, x, dout)
    gradcheck.assert_gradient("gelu_backward", dx - dx0, numeric)  # accumulates: dx - dx0 is the gradient


def test_residual_backward_matches_finite_differences(rng):
    a, b, dout = (rng.standard_normal((2, 3, 5)) for _ in range(3))
    da, db = rng.standard_normal(a.shape), rng.standard_normal(b.shape)
    da0, db0 = da.copy(), db.copy()
    G.residual_backward(da, db, dout)
    gradcheck.assert_gradient("residual da", da - da0, gradcheck.numerical_gradient(lambda v: G.residual_forward(v, b), a, dout))
    gradcheck.assert_gradient("residual db", db - db0, gradcheck.numerical_gradient(lambda v: G.residual_forward(a, v), b, dout))


# ------------------------------------------------------------------------------------------------
# Kernels against the reference
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("B, T, C", SHAPES)
def test_gelu_forward(B, T, C, version, rng):
    x = randn(rng, B, T, 4 * C) * 2
    out = device.empty(x.shape)
    G.forward(out, device.asarray(x), version=version)
    helpers.check(f"gelu_forward{version}", out, G.gelu_forward(f64(x)), atol=1e-5)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("B, T, C", SHAPES)
def test_gelu_backward(B, T, C, version, rng):
    x, dout, dx = (randn(rng, B, T, 4 * C) for _ in range(3))
    x *= 2
    ref = f64(dx)
    G.gelu_backward(ref, f64(dout), f64(x))
    dx_d = device.asarray(dx.copy())  # on the CPU backend asarray does not copy
    G.backward(dx_d, device.asarray(dout), device.asarray(x), version=version)
    helpers.check(f"gelu_backward{version}", dx_d, ref, atol=1e-5)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("B, T, C", SHAPES)
def test_residual_forward_bit_exact(B, T, C, version, rng):
    a, b = randn(rng, B, T, C), randn(rng, B, T, C)
    out = device.empty(a.shape)
    assert G.residual_forward(out, device.asarray(a), device.asarray(b), version=version) is None
    helpers.check(f"residual_forward{version}", out, G.residual_forward(a, b), atol=0, rtol=0)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("B, T, C", SHAPES)
def test_residual_backward_bit_exact(B, T, C, version, rng):
    dout, da, db = (randn(rng, B, T, C) for _ in range(3))
    ref_a, ref_b = da.copy(), db.copy()
    G.residual_backward(ref_a, ref_b, dout)
    da_d, db_d = device.asarray(da), device.asarray(db)
    G.residual_backward(da_d, db_d, device.asarray(dout), version=version)
    helpers.check(f"residual_backward{version} da", da_d, ref_a, atol=0, rtol=0)
    helpers.check(f"residual_backward{version} db", db_d, ref_b, atol=0, rtol=0)


def test_version1_takes_any_n(rng):
    """n = 1001: not a multiple of 4 nor of the block; only version 1 handles it."""
    x, dout, dx, b = (randn(rng, 1001) for _ in range(4))
    x_d, dout_d, b_d = device.asarray(x), device.asarray(dout), device.asarray(b)
    out = device.empty(1001)
    G.forward(out, x_d, version=1)
    helpers.check("gelu_forward1 n=1001", out, G.gelu_forward(f64(x)))
    ref = f64(dx)
    G.gelu_backward(ref, f64(dout), f64(x))
    dx_d = device.asarray(dx.copy())  # on the CPU backend asarray does not copy
    G.backward(dx_d, dout_d, x_d, version=1)
    helpers.check("gelu_backward1 n=1001", dx_d, ref)
    G.residual_forward(out, x_d, b_d, version=1)
    helpers.check("residual_forward1 n=1001", out, x + b, atol=0, rtol=0)
    da, db = device.asarray(dx.copy()), device.asarray(b.copy())
    G.residual_backward(da, db, dout_d, version=1)
    helpers.check("residual_backward1 da n=1001", da, dx + dout, atol=0, rtol=0)
    helpers.check("residual_backward1 db n=1001", db, b + dout, atol=0, rtol=0)


def test_empty_input_launches_nothing():
    for v in VERSIONS:
        G.forward(device.empty(0), device.empty(0), version=v)


def test_defaults_are_version_2(rng):
    x = randn(rng, 64)
    out = device.empty(64)
    G.forward(out, device.asarray(x))
    helpers.check("gelu default", out, G.gelu_forward(f64(x)))
    six = device.asarray(randn(rng, 6))
    with pytest.raises(ValueError, match="gelu_forward2 loads float4"):
        G.forward(device.empty(6), six)
    with pytest.raises(ValueError, match="gelu_backward2 loads float4"):
        G.backward(device.zeros(6), six, six)
    with pytest.raises(ValueError, match="residual_forward2 loads float4"):
        G.residual_forward(device.empty(6), six, six)


# ------------------------------------------------------------------------------------------------
# Races
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("version", VERSIONS)
def test_racecheck_every_version(version, rng):
    """No atomics and no shared memory: every thread order must give identical bits."""
    B, T, C = SHAPES[0]
    n = B * T * C
    x, dout, a, b = (randn(rng, n) for _ in range(4))
    k = n // 4 if version == 2 else n
    grid, block = (helpers.ceil_div(k, 256),), (256,)
    gelu_mod, res_mod = device.load_module("gelu.cu"), device.load_module("residual.cu")
    device.racecheck(gelu_mod.get_function(f"gelu_forward{version}"), grid, block, (device.empty(n), x, k))
    device.racecheck(gelu_mod.get_function(f"gelu_backward{version}"), grid, block, (randn(rng, n), dout, x, k))
    device.racecheck(res_mod.get_function(f"residual_forward{version}"), grid, block, (device.empty(n), a, b, k))
    device.racecheck(res_mod.get_function(f"residual_backward{version}"), grid, block, (a.copy(), b.copy(), dout, k))


# ------------------------------------------------------------------------------------------------
# Shape assumptions: clear errors, never a silent wrong answer
# ------------------------------------------------------------------------------------------------
def test_float4_versions_need_n_multiple_of_4(rng):
    x = device.asarray(randn(rng, 1001))
    with pytest.raises(ValueError, match=r"gelu_forward2 loads float4: the number of elements must be a multiple "
                                         r"of 4, got n=1001"):
        G.forward(device.empty(1001), x, version=2)
    with pytest.raises(ValueError, match=r"gelu_backward2 loads float4: .* got n=1001"):
        G.backward(x.copy(), x, x, version=2)
    with pytest.raises(ValueError, match=r"residual_forward2 loads float4: .* got n=1001"):
        G.residual_forward(device.empty(1001), x, x, version=2)
    with pytest.raises(ValueError, match=r"residual_backward2 loads float4: .* got n=1001"):
        G.residual_backward(x.copy(), x.copy(), x, version=2)


def test_float4_versions_need_aligned_arrays(rng):
    base = device.asarray(randn(rng, 1028))
    x = base[1:1025]  # 1024 elements starting 4 bytes past an aligned address
    assert x.size % 4 == 0 and x.flags.c_contiguous
    with pytest.raises(ValueError, match=r"gelu_forward2 loads float4: `x` must start at a 16-byte aligned address"):
        G.forward(device.empty(1024), x, version=2)
    with pytest.raises(ValueError, match=r"residual_backward2 loads float4: `dout` must start at a 16-byte aligned"):
        G.residual_backward(device.zeros(1024), device.zeros(1024), x, version=2)
    out = device.empty(1024)
    G.forward(out, x, version=1)  # version 1 has no alignment needs
    helpers.check("gelu_forward1 on a view", out, G.gelu_forward(f64(x)))


def test_shapes_must_match(rng):
    d = lambda *shape: device.asarray(randn(rng, *shape))  # noqa: E731
    with pytest.raises(ValueError, match=r"gelu_forward1 works elementwise: .*out \(3, 4\), x \(4, 3\)"):
        G.forward(device.empty((3, 4)), d(4, 3), version=1)
    with pytest.raises(ValueError, match=r"gelu_backward2 works elementwise: .*dout \(8,\)"):
        G.backward(device.zeros(12), d(8), d(12), version=2)
    with pytest.raises(ValueError, match=r"residual_forward2 works elementwise: .*b \(8,\)"):
        G.residual_forward(device.empty(12), d(12), d(8))
    with pytest.raises(ValueError, match=r"residual_backward1 works elementwise: .*db \(8,\)"):
        G.residual_backward(device.zeros(12), device.zeros(8), d(12), version=1)


def test_unknown_version_and_wrong_arity(rng):
    x = device.asarray(randn(rng, 8))
    with pytest.raises(ValueError, match=r"unknown version 3: the versions are \[1, 2\]"):
        G.forward(device.empty(8), x, version=3)
    with pytest.raises(ValueError, match="unknown version 0"):
        G.residual_backward(x.copy(), x.copy(), x, version=0)
    with pytest.raises(TypeError, match=r"residual_forward takes \(a, b\) for the reference"):
        G.residual_forward(x, version=2)
    with pytest.raises(TypeError, match=r"got 2 arrays and a version"):
        G.residual_forward(x, x, version=2)


def test_wrong_dtype_is_refused_by_the_launch_check():
    x64 = device.zeros(8, np.float64)
    with pytest.raises(device.LaunchError, match="expects a float32 array, got float64"):
        G.forward(device.empty(8), x64, version=1)
