"""GELU (cuda/gelu.cu, helpers/ops/gelu.py).

Every kernel version against the NumPy reference at odd shapes with llm.c's elementwise tolerance
(|ref - out| <= 1e-5 + FLT_EPSILON |ref|, the reference evaluated in float64 on the same float32
inputs); racecheck on every version (elementwise kernels, no atomics: identical bits required); the NumPy
backward pass against finite differences in float64; every shape assumption raising its error. The bf16 version (VERSIONS line "bf16: ...") has its own
section at the end.
"""
import math

import numpy as np
import pytest

import helpers
from helpers import device
from helpers.ops import gelu as G
from helpers.teaching import gradcheck
from support import BF16, check_bf16, f64, randn

SHAPES = [(3, 37, 48), (2, 7, 20)]  # (B, T, C); GELU runs on (B, T, 4C)
VERSIONS = [v for v, line in G.VERSIONS["forward"].items() if not line.startswith("bf16:")]   # float32


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


def test_version1_takes_any_n(rng):
    """n = 1001: not a multiple of 4 nor of the block; only version 1 handles it."""
    x, dout, dx = (randn(rng, 1001) for _ in range(3))
    x_d, dout_d = device.asarray(x), device.asarray(dout)
    out = device.empty(1001)
    G.forward(out, x_d, version=1)
    helpers.check("gelu_forward1 n=1001", out, G.gelu_forward(f64(x)))
    ref = f64(dx)
    G.gelu_backward(ref, f64(dout), f64(x))
    dx_d = device.asarray(dx.copy())  # on the CPU backend asarray does not copy
    G.backward(dx_d, dout_d, x_d, version=1)
    helpers.check("gelu_backward1 n=1001", dx_d, ref)


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


# ------------------------------------------------------------------------------------------------
# Races
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("version", VERSIONS)
def test_racecheck_every_version(version, rng):
    """No atomics and no shared memory: every thread order must give identical bits."""
    B, T, C = SHAPES[0]
    x, dout, dx = (device.asarray(randn(rng, B * T * C)) for _ in range(3))
    for launch in (G.launches("forward", device.empty(B * T * C), x, version=version) +
                   G.launches("backward", dx, dout, x, version=version)):
        device.racecheck(*launch)


# ------------------------------------------------------------------------------------------------
# Shape assumptions: clear errors, never a silent wrong answer
# ------------------------------------------------------------------------------------------------
def test_float4_versions_need_n_multiple_of_4(rng):
    x = device.asarray(randn(rng, 1001))
    with pytest.raises(ValueError, match=r"gelu_forward2 loads float4: n must be a multiple of 4, got n=1001 "
                                         r"\(use version 1, which takes any n\)"):
        G.forward(device.empty(1001), x, version=2)
    with pytest.raises(ValueError, match=r"gelu_backward2 loads float4: .* got n=1001"):
        G.backward(x.copy(), x, x, version=2)


def test_float4_versions_need_aligned_arrays(rng):
    base = device.asarray(randn(rng, 1028))
    x = base[1:1025]  # 1024 elements starting 4 bytes past an aligned address
    assert x.size % 4 == 0 and x.flags.c_contiguous
    with pytest.raises(ValueError, match=r"gelu_forward2 loads float4: `x` must start at a 16-byte aligned address"):
        G.forward(device.empty(1024), x, version=2)
    with pytest.raises(ValueError, match=r"gelu_backward2 loads float4: `dout` must start at a 16-byte aligned"):
        G.backward(device.zeros(1024), x, device.zeros(1024), version=2)
    out = device.empty(1024)
    G.forward(out, x, version=1)  # version 1 has no alignment needs
    helpers.check("gelu_forward1 on a view", out, G.gelu_forward(f64(x)))


def test_shapes_must_match(rng):
    d = lambda *shape: device.asarray(randn(rng, *shape))  # noqa: E731
    with pytest.raises(ValueError, match=r"gelu_forward1 works elementwise: .*`out` \(3, 4\), `x` \(4, 3\)"):
        G.forward(device.empty((3, 4)), d(4, 3), version=1)
    with pytest.raises(ValueError, match=r"gelu_backward2 works elementwise: .*`dout` \(8,\)"):
        G.backward(device.zeros(12), d(8), d(12), version=2)


def test_unknown_version_block_size_and_wrong_arity(rng):
    x = device.asarray(randn(rng, 8))
    with pytest.raises(ValueError, match=r"gelu.forward: no version 4; the versions are \[1, 2, 3\]"):
        G.forward(device.empty(8), x, version=4)
    with pytest.raises(ValueError, match=r"gelu_forward1: block_size must be an int between 1 and 1024"):
        G.forward(device.empty(8), x, version=1, block_size=2048)
    with pytest.raises(TypeError, match=r"gelu.backward takes the arrays \(dx, dout, x\), got 2"):
        G.launches("backward", x, x, version=1)


def test_wrong_dtype_is_refused():
    x64 = device.zeros(8, np.float64)
    with pytest.raises(ValueError, match="gelu_forward1: `x` must be float32, got float64"):
        G.forward(device.empty(8), x64, version=1)


# ------------------------------------------------------------------------------------------------
# bf16 storage (mixed precision): version 3
# ------------------------------------------------------------------------------------------------
BF16_VERSIONS = [v for v in G.VERSIONS["forward"] if v not in VERSIONS]
FP32_TOL = dict(atol=1e-5, rtol=float(np.finfo(np.float32).eps))   # llm.c's, as the float32 tests above
BF16_SHAPES = [(3, 37, 48), (2, 7, 20), (1, 1, 2)]   # n = B*T*4C: multiples of 8 (8 is the smallest)


def test_bf16_version_is_3_in_both_steps():
    assert BF16_VERSIONS == [3] and [v for v, line in G.VERSIONS["backward"].items() if line.startswith("bf16:")] == [3]


def bf16_randn(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(BF16)


def ulps_apart(a, b):
    """How many bf16 values lie between a and b (bf16 arrays): their bit patterns as ordered integers."""
    def ordered(x):
        u = device.asnumpy(x).view(np.uint16).astype(np.int64)
        return np.where(u & 0x8000, -(u & 0x7FFF), u)
    return np.abs(ordered(a) - ordered(b))


@pytest.mark.parametrize("B, T, C", BF16_SHAPES)
def test_bf16_forward(B, T, C, rng):
    x = bf16_randn(rng, B, T, 4 * C, scale=2)
    out = device.empty(x.shape, BF16)
    G.forward(out, device.asarray(x), version=3)
    assert out.dtype == BF16
    check_bf16(f"gelu_forward3 {(B, T, C)}", out, G.gelu_forward(f64(x)), **FP32_TOL)


def test_bf16_forward_is_the_rounded_float32_gelu(rng):
    """Where the float32 formula is accurate (x >= -3: 1 + tanh u >= 2e-3 there, so float32's
    cancellation costs a relative 1e-4 at most, far below bf16's 2^-8), the output is ml_dtypes'
    rounding of NumPy's float32 GELU, or its neighbour when the two float32 values straddle a
    rounding boundary. Below -3 both are within llm.c's absolute 1e-5 (test_bf16_forward) but may
    round many bf16 steps apart: those values are tiny."""
    x = np.concatenate([np.linspace(-3, 6, 4096), rng.uniform(-3, 3, 4096)]).astype(BF16)
    out = device.empty(x.shape, BF16)
    G.forward(out, device.asarray(x), version=3)
    want = G.gelu_forward(x.astype(np.float32)).astype(BF16)
    assert ulps_apart(out, want).max() <= 1
    assert (ulps_apart(out, want) == 0).mean() > 0.99


@pytest.mark.parametrize("B, T, C", BF16_SHAPES)
def test_bf16_backward(B, T, C, rng):
    """dx += gelu'(x) * dout: the bf16 dx is loaded, the float32 product added, the sum rounded once.
    The float64 reference starts from the same bf16 dx; the float32 bound is the float32 tests'."""
    x, dout, dx = (bf16_randn(rng, B, T, 4 * C) for _ in range(3))
    x = (x.astype(np.float32) * 2).astype(BF16)
    ref = f64(dx)
    G.gelu_backward(ref, f64(dout), f64(x))
    dx_d = device.asarray(dx.copy())
    G.backward(dx_d, device.asarray(dout), device.asarray(x), version=3)
    assert dx_d.dtype == BF16
    check_bf16(f"gelu_backward3 {(B, T, C)}", dx_d, ref, **FP32_TOL)


def test_bf16_racecheck(rng):
    B, T, C = SHAPES[0]
    x, dout, dx = (device.asarray(bf16_randn(rng, B * T * C)) for _ in range(3))
    launches = G.launches("forward", device.empty(B * T * C, BF16), x, version=3) + \
        G.launches("backward", dx, dout, x, version=3)
    assert [launch.name for launch in launches] == ["gelu_forward3", "gelu_backward3"]
    for launch in launches:
        device.racecheck(*launch)


def test_bf16_refusals(rng):
    x = device.asarray(bf16_randn(rng, 1004))   # a multiple of 4, not of 8
    with pytest.raises(ValueError, match=r"gelu_forward3 loads 8 bf16 at a time \(16 bytes\): n must be a multiple of "
                                         r"8, got n=1004 \(use float32 arrays and version 1, which takes any n\)"):
        G.forward(device.empty(1004, BF16), x, version=3)
    with pytest.raises(ValueError, match=r"gelu_backward3 loads 8 bf16 at a time .* got n=1004"):
        G.backward(x.copy(), x, x, version=3)
    view = device.asarray(bf16_randn(rng, 1032))[4:1028]   # 1024 values, 8 bytes past an aligned address
    assert view.size % 8 == 0 and view.flags.c_contiguous
    with pytest.raises(ValueError, match=r"gelu_forward3 loads 16 bytes at a time: `x` must start at a 16-byte aligned "
                                         r"address, but it starts 8 bytes past one"):
        G.forward(device.empty(1024, BF16), view, version=3)
    with pytest.raises(ValueError, match=r"gelu_backward3 loads 16 bytes at a time: `dx` must start"):
        G.backward(view, device.zeros(1024, BF16), device.zeros(1024, BF16), version=3)
    with pytest.raises(ValueError, match=r"gelu_backward3 works elementwise: .*`dout` \(8,\)"):
        G.backward(device.zeros(16, BF16), device.zeros(8, BF16), device.zeros(16, BF16), version=3)
    G.forward(device.empty(0, BF16), device.empty(0, BF16), version=3)   # nothing to do


def test_bf16_and_float32_versions_refuse_each_others_arrays(rng):
    xb, x32 = device.asarray(bf16_randn(rng, 64)), device.asarray(randn(rng, 64))
    for v in VERSIONS:
        with pytest.raises(ValueError, match=fr"gelu_forward{v}: `x` must be float32, got bfloat16 \(a bf16 array: "
                                             r"the bf16 versions take it"):
            G.forward(device.empty(64), xb, version=v)
    with pytest.raises(ValueError, match=r"gelu_forward3: `x` must be bfloat16, got float32"):
        G.forward(device.empty(64, BF16), x32, version=3)
    with pytest.raises(ValueError, match=r"gelu_backward3: `dx` must be bfloat16, got float32"):
        G.backward(device.zeros(64), xb, xb, version=3)
