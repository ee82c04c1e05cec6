"""The cached attention step of generation: kernels against the NumPy reference, which equals full attention."""
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
        op.append_reference(k_ref, v_ref, row.astype(np.float64), pos)
        np.testing.assert_allclose(op.attention_decode_reference(row, k_ref, v_ref, pos), full[0, pos], atol=1e-6)
        op.append(k_dev, v_dev, device.asarray(row), pos)
        op.attention_decode(out, device.asarray(row), k_dev, v_dev, pos)
        check(f"attention_decode pos {pos}", out, full[0, pos], atol=1e-5, rtol=1e-4)
    np.testing.assert_array_equal(device.asnumpy(k_dev)[:, :T], k_ref[:, :T].astype(np.float32))


def test_racecheck():
    NH, hs, maxT, pos = 3, 16, 200, 150
    k, v = (rng.standard_normal((NH, maxT, hs)).astype(np.float32) for _ in range(2))
    row = rng.standard_normal(3 * NH * hs).astype(np.float32)
    fn = op.module().get_function("attention_decode")
    device.racecheck(fn, (NH,), (op.DECODE_BLOCK,), (np.zeros(NH * hs, np.float32), row, k, v, pos, NH * hs, NH, maxT),
                     shared_mem=4 * maxT)
    device.racecheck(op.module().get_function("kv_cache_append"), (1,), (256,), (k, v, row, 7, NH * hs, NH, maxT))


def test_shape_errors():
    k = device.zeros((2, 8, 4))
    with pytest.raises(ValueError, match="position 8 is outside the cache's 8 rows"):
        op.append(k, k.copy(), device.zeros(24), 8)
    with pytest.raises(ValueError, match="qkv must hold one position's 3C = 24 values, got 12"):
        op.attention_decode(device.zeros(8), device.zeros(12), k, k.copy(), 0)
    with pytest.raises(ValueError, match="at most"):
        big = device.zeros((1, 20000, 4))
        op.attention_decode(device.zeros(4), device.zeros(12), big, big.copy(), 0)
