"""The residual connection (cuda/residual.cu, helpers/ops/residual.py).

Every kernel version against the NumPy reference bit for bit (one correctly rounded float32
addition per element, on a GPU as in NumPy), at odd shapes; racecheck on every version; the NumPy
backward pass against finite differences in float64; every shape assumption raising its error. The
bf16 version (VERSIONS line "bf16: ...") has its own section at the end.
"""
import ml_dtypes
import numpy as np
import pytest

import helpers
from helpers import device
from helpers.ops import residual as R
from helpers.teaching import gradcheck
from support import BF16, U_BF16, f64, randn

SHAPES = [(3, 37, 48), (2, 7, 20)]  # (B, T, C)
VERSIONS = [v for v, line in R.VERSIONS["forward"].items() if not line.startswith("bf16:")]   # float32


def test_backward_matches_finite_differences(rng):
    a, b, dout = (rng.standard_normal((2, 3, 5)) for _ in range(3))
    da, db = rng.standard_normal(a.shape), rng.standard_normal(b.shape)
    da0, db0 = da.copy(), db.copy()
    R.residual_backward(da, db, dout)
    gradcheck.assert_gradient("residual da", da - da0,
                              gradcheck.numerical_gradient(lambda v: R.residual_forward(v, b), a, dout))
    gradcheck.assert_gradient("residual db", db - db0,
                              gradcheck.numerical_gradient(lambda v: R.residual_forward(a, v), b, dout))


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("B, T, C", SHAPES)
def test_forward_bit_exact(B, T, C, version, rng):
    a, b = randn(rng, B, T, C), randn(rng, B, T, C)
    out = device.empty(a.shape)
    assert R.forward(out, device.asarray(a), device.asarray(b), version=version) is None
    helpers.check(f"residual_forward{version}", out, R.residual_forward(a, b), atol=0, rtol=0)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("B, T, C", SHAPES)
def test_backward_bit_exact(B, T, C, version, rng):
    dout, da, db = (randn(rng, B, T, C) for _ in range(3))
    ref_a, ref_b = da.copy(), db.copy()
    R.residual_backward(ref_a, ref_b, dout)
    da_d, db_d = device.asarray(da.copy()), device.asarray(db.copy())
    R.backward(da_d, db_d, device.asarray(dout), version=version)
    helpers.check(f"residual_backward{version} da", da_d, ref_a, atol=0, rtol=0)
    helpers.check(f"residual_backward{version} db", db_d, ref_b, atol=0, rtol=0)


def test_version1_takes_any_n(rng):
    """n = 1001: not a multiple of 4 nor of the block; only version 1 handles it."""
    a, b, dout = (randn(rng, 1001) for _ in range(3))
    out = device.empty(1001)
    R.forward(out, device.asarray(a), device.asarray(b), version=1)
    helpers.check("residual_forward1 n=1001", out, a + b, atol=0, rtol=0)
    da, db = device.asarray(a.copy()), device.asarray(b.copy())
    R.backward(da, db, device.asarray(dout), version=1)
    helpers.check("residual_backward1 da n=1001", da, a + dout, atol=0, rtol=0)
    helpers.check("residual_backward1 db n=1001", db, b + dout, atol=0, rtol=0)


@pytest.mark.parametrize("version", VERSIONS)
def test_racecheck_every_version(version, rng):
    B, T, C = SHAPES[0]
    a, b, dout = (device.asarray(randn(rng, B * T * C)) for _ in range(3))
    for launch in (R.launches("forward", device.empty(B * T * C), a, b, version=version) +
                   R.launches("backward", a.copy(), b.copy(), dout, version=version)):
        device.racecheck(*launch)


def test_checks(rng):
    x = device.asarray(randn(rng, 1001))
    with pytest.raises(ValueError, match=r"residual_forward2 loads float4: n must be a multiple of 4, got n=1001"):
        R.forward(device.empty(1001), x, x)
    with pytest.raises(ValueError, match=r"residual_backward2 loads float4: n must be a multiple of 4"):
        R.backward(x.copy(), x.copy(), x, version=2)
    view = device.asarray(randn(rng, 1028))[1:1025]
    with pytest.raises(ValueError, match=r"residual_backward2 loads float4: `dout` must start at a 16-byte aligned"):
        R.backward(device.zeros(1024), device.zeros(1024), view, version=2)
    d = lambda *shape: device.asarray(randn(rng, *shape))  # noqa: E731
    with pytest.raises(ValueError, match=r"residual_forward2 works elementwise: .*`b` \(8,\)"):
        R.forward(device.empty(12), d(12), d(8))
    with pytest.raises(ValueError, match=r"residual_backward1 works elementwise: .*`db` \(8,\)"):
        R.backward(device.zeros(12), device.zeros(8), d(12), version=1)
    with pytest.raises(ValueError, match=r"residual.backward: no version 0; the versions are \[1, 2, 3\]"):
        R.backward(d(8), d(8), d(8), version=0)
    for v in VERSIONS:
        R.forward(device.empty(0), device.empty(0), device.empty(0), version=v)  # nothing to do


# ------------------------------------------------------------------------------------------------
# bf16 storage (mixed precision): version 3
# ------------------------------------------------------------------------------------------------
U32 = 2.0**-24     # float32's
BF16_SHAPES = [(3, 37, 48), (2, 7, 20), (1, 1, 8)]   # n = B*T*C: multiples of 8


def bf16_randn(rng, *shape):
    return rng.standard_normal(shape).astype(BF16)


def bits(a):
    return device.asnumpy(a).view(np.uint16)


def rounded_sum(a, b):
    """What version 3 stores: NumPy's float32 sum of the two bf16 values (the kernel's one IEEE float32
    addition), rounded by ml_dtypes to nearest even as to_bf16 does."""
    return (a.astype(np.float32) + b.astype(np.float32)).astype(BF16)


def check_bf16_sum(name, got, a, b):
    """Against the float64 sum: the float32 addition is within U32*|ref|, its rounding to bf16 within
    U_BF16*|y32| <= U_BF16*(1 + U32)*|ref|: |out - ref| <= (U_BF16 + (1 + U_BF16)*U32)*|ref|."""
    helpers.check(name, got, f64(a) + f64(b), atol=0, rtol=U_BF16 + (1 + U_BF16) * U32)


def test_bf16_version_is_3_in_both_steps():
    for step in ("forward", "backward"):
        assert [v for v, line in R.VERSIONS[step].items() if line.startswith("bf16:")] == [3]


@pytest.mark.parametrize("B, T, C", BF16_SHAPES)
def test_bf16_forward_bit_exact(B, T, C, rng):
    a, b = bf16_randn(rng, B, T, C), bf16_randn(rng, B, T, C)
    out = device.empty(a.shape, BF16)
    R.forward(out, device.asarray(a), device.asarray(b), version=3)
    assert out.dtype == BF16
    assert np.array_equal(bits(out), rounded_sum(a, b).view(np.uint16))
    check_bf16_sum(f"residual_forward3 {(B, T, C)}", out, a, b)


@pytest.mark.parametrize("B, T, C", BF16_SHAPES)
def test_bf16_backward_bit_exact(B, T, C, rng):
    """da += dout in bf16: the bf16 da loaded, dout added in float32, rounded once (the same for db)."""
    dout, da, db = (bf16_randn(rng, B, T, C) for _ in range(3))
    da_d, db_d = device.asarray(da.copy()), device.asarray(db.copy())
    R.backward(da_d, db_d, device.asarray(dout), version=3)
    assert np.array_equal(bits(da_d), rounded_sum(da, dout).view(np.uint16))
    assert np.array_equal(bits(db_d), rounded_sum(db, dout).view(np.uint16))
    check_bf16_sum(f"residual_backward3 da {(B, T, C)}", da_d, da, dout)
    check_bf16_sum(f"residual_backward3 db {(B, T, C)}", db_d, db, dout)


def test_bf16_rounds_to_nearest_even():
    """Sums exactly halfway between two bf16 values go to the even one (1 + 2^-8 -> 1, 1 + 3*2^-8 ->
    1 + 2^-6 ... ); a sum past bf16's largest finite value by half a step or more, to infinity."""
    steps = np.arange(1, 17, 2, dtype=np.float32) * 2.0**-8          # odd multiples of half a bf16 step at 1
    a = np.ones(8, np.float32).astype(BF16)
    b = steps.astype(BF16)
    out = device.empty(8, BF16)
    R.forward(out, device.asarray(a), device.asarray(b), version=3)
    assert np.array_equal(bits(out), rounded_sum(a, b).view(np.uint16))
    big = np.full(8, float(ml_dtypes.finfo(BF16).max), np.float32).astype(BF16)
    R.forward(out, device.asarray(big), device.asarray(big), version=3)
    assert np.isinf(device.asnumpy(out).astype(np.float32)).all()


def test_bf16_racecheck(rng):
    B, T, C = SHAPES[0]
    a, b, dout = (device.asarray(bf16_randn(rng, B * T * C)) for _ in range(3))
    launches = R.launches("forward", device.empty(B * T * C, BF16), a, b, version=3) + \
        R.launches("backward", a.copy(), b.copy(), dout, version=3)
    assert [launch.name for launch in launches] == ["residual_forward3", "residual_backward3"]
    for launch in launches:
        device.racecheck(*launch)


def test_bf16_refusals(rng):
    x = device.asarray(bf16_randn(rng, 1004))   # a multiple of 4, not of 8
    with pytest.raises(ValueError, match=r"residual_forward3 loads 8 bf16 at a time \(16 bytes\): n must be a multiple "
                                         r"of 8, got n=1004 \(use float32 arrays and version 1, which takes any n\)"):
        R.forward(device.empty(1004, BF16), x, x, version=3)
    with pytest.raises(ValueError, match=r"residual_backward3 loads 8 bf16 at a time .* got n=1004"):
        R.backward(x.copy(), x.copy(), x, version=3)
    view = device.asarray(bf16_randn(rng, 1032))[1:1025]   # 1024 values, 2 bytes past an aligned address
    with pytest.raises(ValueError, match=r"residual_backward3 loads 16 bytes at a time: `dout` must start at a 16-byte "
                                         r"aligned address, but it starts 2 bytes past one"):
        R.backward(device.zeros(1024, BF16), device.zeros(1024, BF16), view, version=3)
    with pytest.raises(ValueError, match=r"residual_forward3 works elementwise: .*`b` \(8,\)"):
        R.forward(device.empty(16, BF16), device.zeros(16, BF16), device.zeros(8, BF16), version=3)
    R.forward(device.empty(0, BF16), device.empty(0, BF16), device.empty(0, BF16), version=3)   # nothing to do


def test_bf16_and_float32_versions_refuse_each_others_arrays(rng):
    ab, a32 = device.asarray(bf16_randn(rng, 64)), device.asarray(randn(rng, 64))
    for v in VERSIONS:
        with pytest.raises(ValueError, match=fr"residual_forward{v}: `a` must be float32, got bfloat16 \(a bf16 "
                                             r"array: the bf16 versions take it"):
            R.forward(device.empty(64), ab, a32, version=v)
    with pytest.raises(ValueError, match=r"residual_forward3: `b` must be bfloat16, got float32"):
        R.forward(device.empty(64, BF16), ab, a32, version=3)
    with pytest.raises(ValueError, match=r"residual_backward3: `da` must be bfloat16, got float32"):
        R.backward(device.zeros(64), ab.copy(), ab, version=3)
