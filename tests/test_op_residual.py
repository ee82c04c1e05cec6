"""The residual connection (cuda/residual.cu, helpers/ops/residual.py).

Every kernel version against the NumPy reference bit for bit (one correctly rounded float32
addition per element, on a GPU as in NumPy), at odd shapes; racecheck on every version; the NumPy
backward pass against finite differences in float64; every shape assumption raising its error.
"""
import numpy as np
import pytest

import helpers
from helpers import device
from helpers.ops import residual as R
from helpers.teaching import gradcheck
from support import randn

SHAPES = [(3, 37, 48), (2, 7, 20)]  # (B, T, C)
VERSIONS = sorted(R.VERSIONS["forward"])


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
    with pytest.raises(ValueError, match=r"residual.backward: no version 0; the versions are \[1, 2\]"):
        R.backward(d(8), d(8), d(8), version=0)
    for v in VERSIONS:
        R.forward(device.empty(0), device.empty(0), device.empty(0), version=v)  # nothing to do
