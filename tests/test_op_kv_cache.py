"""The cached attention step of generation (cuda/kv_cache.cu, helpers/ops/kv_cache.py): the kernels
against the NumPy reference, which equals full attention; racecheck; the checks.

Tolerance: as notebook 04's attention, |ref - out| <= 1e-5 + 1e-4 |ref| against float64. The bf16
version (2) is checked at the end, its tolerance derived there."""
import ml_dtypes
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
    with pytest.raises(ValueError, match=r"kv_cache.forward: no version 3; the versions are \[1, 2\]"):
        op.forward(device.zeros(8), k, k.copy(), device.zeros(24), 0, version=3)


# ------------------------------------------------------------------------------------------------
# Version 2: bf16 caches, qkv and out; float32 scores, softmax and sums
# ------------------------------------------------------------------------------------------------
BF = ml_dtypes.bfloat16
U_BF16 = 2.0**-8   # unit roundoff of bf16 (8 significant bits), round to nearest: |rnd(x) - x| <= u |x|
ATOL, RTOL = 1e-5, 1e-4


def test_versions():
    assert sorted(op.VERSIONS["forward"]) == [1, 2]
    assert [v for v, line in op.VERSIONS["forward"].items() if line.startswith("bf16:")] == [2]


@pytest.mark.parametrize("NH,hs,maxT", [(3, 16, 13), (4, 32, 64), (2, 40, 300), (1, 128, 41)])
def test_bf16_decode_steps_equal_full_attention(NH, hs, maxT):
    """Against full attention in float64 on the bf16 values upcast (exactly). The decode's float32 result y32
    obeys version 1's bound e32 = 1e-5 + 1e-4 |y| (the same arithmetic on the same values) and is rounded
    once: |rnd(y32) - y| <= u |y32| + e32 <= u |y| + (1 + u) e32. The append is a copy: exact."""
    C, T = NH * hs, min(maxT, 37)
    qkv = np.random.default_rng(1).standard_normal((1, T, 3 * C)).astype(BF)
    full, _ = attention_ops.attention_forward(qkv.astype(np.float64), NH)
    bound = U_BF16 * np.abs(full) + (1 + U_BF16) * (ATOL + RTOL * np.abs(full))
    k_dev, v_dev = device.zeros((NH, maxT, hs), BF), device.zeros((NH, maxT, hs), BF)
    out = device.empty(C, BF)
    worst = 0.0
    for pos in range(T):
        op.forward(out, k_dev, v_dev, device.asarray(qkv[0, pos].copy()), pos, version=2)
        err = np.abs(device.asnumpy(out).astype(np.float64) - full[0, pos])
        assert (err <= bound[0, pos]).all(), f"pos {pos}: {err.max():.3g} past its bound"
        worst = max(worst, float((err / bound[0, pos]).max()))
    print(f"kv_cache_forward2 NH={NH} hs={hs}: errors at most {worst:.2f} of their bound")
    k_want = qkv[0, :, C:2 * C].reshape(T, NH, hs).transpose(1, 0, 2)
    v_want = qkv[0, :, 2 * C:].reshape(T, NH, hs).transpose(1, 0, 2)
    assert np.array_equal(device.asnumpy(k_dev)[:, :T].view(np.uint16), k_want.view(np.uint16))
    assert np.array_equal(device.asnumpy(v_dev)[:, :T].view(np.uint16), v_want.view(np.uint16))
    assert not device.asnumpy(k_dev)[:, T:].view(np.uint16).any(), "rows past the last position are untouched"


def bf16_ulps(a, b):
    """How many bf16 steps apart two bf16 arrays are, elementwise (0: the same bits)."""
    def ordered(x):
        bits = np.ascontiguousarray(x).view(np.uint16).astype(np.int64)
        return np.where(bits & 0x8000, -(bits & 0x7FFF), bits)   # sign-magnitude onto a line (+0 = -0)
    return np.abs(ordered(a) - ordered(b))


@pytest.mark.parametrize("NH,hs,maxT,pos", [(3, 16, 200, 150), (2, 64, 50, 49)])
def test_bf16_is_version1_rounded_once(NH, hs, maxT, pos):
    """Version 2 does version 1's float32 arithmetic in the same order: given the same values (the bf16 data as
    float32), its out is version 1's rounded by ml_dtypes to bf16. Bit for bit on the CPU backend; a GPU
    compiler may contract a multiply-add differently in the two kernels, hence at most one bf16 step there."""
    rng = np.random.default_rng(2)
    k, v = (rng.standard_normal((NH, maxT, hs)).astype(BF) for _ in range(2))
    row = rng.standard_normal(3 * NH * hs).astype(BF)
    out2, out1 = device.empty(NH * hs, BF), device.empty(NH * hs)
    op.forward(out2, device.asarray(k.copy()), device.asarray(v.copy()), device.asarray(row), pos, version=2)
    f32 = lambda a: device.asarray(a.astype(np.float32))   # noqa: E731
    op.forward(out1, f32(k), f32(v), f32(row), pos, version=1)
    cpu = device.name == "cpu" or getattr(device.xp, "__standin__", False)
    assert bf16_ulps(device.asnumpy(out2), device.asnumpy(out1).astype(BF)).max() <= (0 if cpu else 1)


def test_bf16_racecheck():
    NH, hs, maxT, pos = 3, 16, 200, 150
    k, v = (device.asarray(rng.standard_normal((NH, maxT, hs)).astype(BF)) for _ in range(2))
    row = device.asarray(rng.standard_normal(3 * NH * hs).astype(BF))
    launches = op.launches("forward", device.empty(NH * hs, BF), k, v, row, pos, version=2)
    assert [launch.name for launch in launches] == ["kv_cache_forward2_append", "kv_cache_forward2_decode"]
    for launch in launches:
        device.racecheck(*launch)
        launch()


def test_bf16_checks():
    k = device.zeros((2, 8, 16), BF)
    row, out = device.zeros(96, BF), device.zeros(32, BF)
    with pytest.raises(ValueError, match=r"kv_cache_forward2 moves a head's rows 8 bf16 \(16 bytes\) at a time: "
                                         r"hs must be a multiple of 8, got hs=4 \(use version 1 on float32 arrays"):
        small = device.zeros((2, 8, 4), BF)
        op.forward(device.zeros(8, BF), small, small.copy(), device.zeros(24, BF), 0, version=2)
    misaligned = lambda n: device.zeros(n + 1, BF)[1:]   # noqa: E731  (2 bytes past a 16-byte boundary)
    message = r"kv_cache_forward2 loads 16 bytes at a time: `%s` must start at a 16-byte aligned address"
    with pytest.raises(ValueError, match=message % "qkv"):
        op.forward(out, k, k.copy(), misaligned(96), 0, version=2)
    with pytest.raises(ValueError, match=message % "v_cache"):
        op.forward(out, k, misaligned(2 * 8 * 16).reshape(2, 8, 16), row, 0, version=2)
    with pytest.raises(ValueError, match=r"kv_cache_forward2: `k_cache` must be bfloat16, got float32 \(use a bf16 "
                                         r"version's float32 counterpart"):
        op.forward(out, device.zeros((2, 8, 16)), k, row, 0, version=2)
    with pytest.raises(ValueError, match=r"kv_cache_forward2: `out` must be bfloat16, got float32"):
        op.forward(device.zeros(32), k, k.copy(), row, 0, version=2)
    with pytest.raises(ValueError, match=r"kv_cache_forward1: `qkv` must be float32, got bfloat16 \(a bf16 array: "
                                         r"the bf16 versions take it"):
        op.forward(device.zeros(32), device.zeros((2, 8, 16)), device.zeros((2, 8, 16)), row, 0, version=1)
    limit = op.MAX_T - 8   # the scores and q's 8 values fill the 48 KiB
    big = device.zeros((1, limit + 1, 8), BF)
    with pytest.raises(ValueError, match=rf"kv_cache_forward2 keeps maxT={limit + 1} scores and q's hs=8 values in "
                                         rf"shared memory: at most {limit} positions fit in 48 KiB"):
        op.forward(device.zeros(8, BF), big, big.copy(), device.zeros(24, BF), 0, version=2)
    big = device.zeros((1, limit, 8), BF)
    op.forward(device.zeros(8, BF), big, big.copy(), device.zeros(24, BF), limit - 1, version=2)   # the largest fits
