"""The cached attention step of generation (cuda/kv_cache.cu, helpers/ops/kv_cache.py): the kernels
against the NumPy reference, which equals full attention; racecheck; the checks.

Tolerance: as notebook 04's attention, |ref - out| <= 1e-5 + 1e-4 |ref| against float64."""
import numpy as np
import pytest

from helpers import check, device
from helpers.ops import attention as attention_ops, kv_cache as op

rng = np.random.default_rng(0)


@pytest.mark.parametrize("NH,hs,maxT", [(3, 16, 13), (4, 32, 64), (2, 40, 300)])
def test_decode_steps_equal_full_attention(NH, hs, maxT):
    C, T = NH * hs, min(maxT, 37)
    qkv = rng.standard_normal((1, T, 3 * C)).astype(np.float32)
    full, _ = attention_ops.attention_forward(qkv.astype(np.float64), NH)
    k_ref, v_ref = np.zeros((NH, maxT, hs)), np.zeros((NH, maxT, hs))
    k_dev, v_dev = device.zeros((NH, maxT, hs)), device.zeros((NH, maxT, hs))
    out = device.empty(C)
    for pos in range(T):
        row = qkv[0, pos]
        np.testing.assert_allclose(op.kv_cache_forward(k_ref, v_ref, row.astype(np.float64), pos), full[0, pos],
                                   atol=1e-6)
        op.forward(out, k_dev, v_dev, device.asarray(row), pos)
        check(f"kv_cache_forward1 pos {pos}", out, full[0, pos], atol=1e-5, rtol=1e-4)
    np.testing.assert_array_equal(device.asnumpy(k_dev)[:, :T], k_ref[:, :T].astype(np.float32))


def test_racecheck():
    NH, hs, maxT, pos = 3, 16, 200, 150
    k, v = (device.asarray(rng.standard_normal((NH, maxT, hs)).astype(np.float32)) for _ in range(2))
    row = device.asarray(rng.standard_normal(3 * NH * hs).astype(np.float32))
    launches = op.launches("forward", device.empty(NH * hs), k, v, row, pos, version=1)
    assert [launch.name for launch in launches] == ["kv_cache_forward1_append", "kv_cache_forward1_decode"]
    for launch in launches:
        device.racecheck(*launch)
        launch()


def test_checks():
    k = device.zeros((2, 8, 4))
    with pytest.raises(ValueError, match="kv_cache_forward1: position 8 is outside the cache's 8 rows"):
        op.forward(device.zeros(8), k, k.copy(), device.zeros(24), 8)
    with pytest.raises(ValueError, match="`qkv` must hold one position's 3C = 24 values, got 12"):
        op.forward(device.zeros(8), k, k.copy(), device.zeros(12), 0)
    with pytest.raises(ValueError, match="`out` must hold C = 8 values, got 9"):
        op.forward(device.zeros(9), k, k.copy(), device.zeros(24), 0)
    with pytest.raises(ValueError, match=r"`v_cache` must have shape \(2, 8, 4\), got \(2, 8, 2\)"):
        op.forward(device.zeros(8), k, device.zeros((2, 8, 2)), device.zeros(24), 0)
    with pytest.raises(ValueError, match=f"keeps maxT=20000 scores in shared memory: at most {op.MAX_T}"):
        big = device.zeros((1, 20000, 4))
        op.forward(device.zeros(4), big, big.copy(), device.zeros(12), 0)
    with pytest.raises(ValueError, match=r"kv_cache.forward: no version 2; the versions are \[1\]"):
        op.forward(device.zeros(8), k, k.copy(), device.zeros(24), 0, version=2)
