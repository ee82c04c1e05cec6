"""AdamW (cuda/adamw.cu) against the NumPy reference in helpers/ops/adamw.py, and the reference
against PyTorch.

AdamW has no backward pass (it uses the gradients, nobody differentiates it), so there is no
finite-difference check here; the reference is checked against torch.optim.AdamW instead.

Tolerances: after several steps, |ref - out| <= 1e-5 * (the array's scale) + 1e-5 * |ref|
for param, m and v, against a float64 reference that gets the same float32-rounded hyperparameters
as the kernel (0.999 is not a float32: 1 - 0.999f differs from 0.001 by 1.3e-5 relative, which would
show in v).

The bf16 version (adamw3, mixed precision): its float32 master, m and v are version 2's float32
params, m and v bit for bit (the same adamw_element on the same float32 inputs in the same order; on a
real GPU, where the compiler fuses multiply-adds per kernel, within 1e-6 as version 1 and 2 agree), so
they meet the float32 tolerance above. Its bf16 param is the master rounded STOCHASTICALLY, which is
not the nearest bf16 but one of the two that bracket it: |param - master| < one bf16 spacing at
master, <= 2^-7 |master| (twice the unit roundoff u_bf16 = 2^-8 of round-to-nearest), so against
the float64 reference |param - ref| <= 2^-7 |master| + the float32 bound. The exact claims are
tested bit for bit: param == stochastic_round(master, seed) (NumPy, helpers/ops/adamw.py), param is
one of master's two bf16 neighbours, and the mean over many seeds approaches master (Hoeffding).
"""
import ml_dtypes
import numpy as np
import pytest

from helpers import check, device
from helpers.model import hf
from helpers.ops import adamw as op

F32 = lambda x: float(np.float32(x))  # noqa: E731  (what the kernel's float parameters hold)
HYPER = dict(lr=F32(1e-2), beta1=F32(0.9), beta2=F32(0.999), eps=F32(1e-8), weight_decay=F32(0.1))
STEPS = 5
FLOAT32_VERSIONS = [v for v, line in op.VERSIONS["update"].items() if not line.startswith("bf16:")]
BF16_VERSION = 3
# the CPU backend, directly or under the CuPy stand-in: the kernels' float32 operations exactly as written
CPU_SEMANTICS = device.name == "cpu" or getattr(device.xp, "__standin__", False)
assert op.VERSIONS["update"][BF16_VERSION].startswith("bf16:")


def run_adamw(n, version, seed=0, steps=STEPS, grad_scales=(1.0, 0.5, 1.0, 0.25, 1.0), hyper=HYPER):
    """`steps` steps of the kernel (float32) and of the reference (float64) from the same start."""
    rng = np.random.default_rng(seed)
    p = rng.standard_normal(n).astype(np.float32)
    m, v = np.zeros(n, np.float32), np.zeros(n, np.float32)
    ref = [a.astype(np.float64) for a in (p, m, v)]
    p_d, m_d, v_d = device.asarray(p), device.asarray(m), device.asarray(v)
    for t in range(1, steps + 1):
        g = rng.standard_normal(n).astype(np.float32)
        op.update(p_d, device.asarray(g), m_d, v_d, t, hyper["lr"], hyper["beta1"], hyper["beta2"], hyper["eps"],
                 hyper["weight_decay"], grad_scales[t - 1], version=version)
        op.adamw_update(*ref[:1], g.astype(np.float64), *ref[1:], t, grad_scale=grad_scales[t - 1], **hyper)
    return (p_d, m_d, v_d), ref


def check_adamw(name, outs, refs):
    errs = []
    for what, out, ref in zip(("param", "m", "v"), outs, refs):
        scale = float(np.abs(ref).max())
        errs.append(check(f"{name} {what}", out, ref, atol=1e-5 * scale, rtol=1e-5))
    return errs


# ------------------------------------------------------------------------------------------------
# The reference
# ------------------------------------------------------------------------------------------------
def test_reference_matches_torch_adamw():
    torch, _ = hf.require()  # the reference extra; missing, it fails with how to install it
    rng = np.random.default_rng(1)
    p0 = rng.standard_normal((7, 5))
    lr, betas, eps, wd = 3e-2, (0.8, 0.95), 1e-6, 0.2
    p_t = torch.tensor(p0, requires_grad=True)
    opt = torch.optim.AdamW([p_t], lr=lr, betas=betas, eps=eps, weight_decay=wd)
    p, m, v = p0.copy(), np.zeros_like(p0), np.zeros_like(p0)
    for t in range(1, 8):
        g = rng.standard_normal(p0.shape)
        p_t.grad = torch.tensor(g)
        opt.step()
        op.adamw_update(p, g, m, v, t, lr, betas[0], betas[1], eps, wd)
    np.testing.assert_allclose(p, p_t.detach().numpy(), rtol=1e-12, atol=1e-12)
    state = opt.state[p_t]
    np.testing.assert_allclose(m, state["exp_avg"].numpy(), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(v, state["exp_avg_sq"].numpy(), rtol=1e-12, atol=1e-15)


def test_reference_first_step_moves_every_parameter_by_about_lr():
    # t = 1, no weight decay: m_hat = g and v_hat = g^2, so the step is lr * g / (|g| + eps) ~ lr * sign(g),
    # whatever the gradient's scale: what the bias corrections are for.
    g = np.array([1e-3, -5.0, 2e2, -1e-5])
    p, m, v = np.zeros(4), np.zeros(4), np.zeros(4)
    op.adamw_update(p, g, m, v, 1, lr=0.1)
    np.testing.assert_allclose(p, -0.1 * g / (np.abs(g) + 1e-8), rtol=1e-12)
    with pytest.raises(ValueError, match="from 1"):
        op.adamw_update(p, g, m, v, 0, lr=0.1)


def test_host_bias_corrections_are_float32_powf():
    c1, c2 = op.bias_corrections(0.9, 0.999, 1)
    assert c1 == F32(1 - F32(0.9)) and c2 == F32(1 - F32(0.999))
    c1, c2 = op.bias_corrections(0.9, 0.999, 1000)
    assert c1 == pytest.approx(1 - 0.9**1000, rel=1e-6) and c2 == pytest.approx(1 - 0.999**1000, rel=1e-5)


# ------------------------------------------------------------------------------------------------
# AdamW kernels
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("version, n", [(1, 1), (1, 3), (1, 1001), (1, 3 * 37 * 48), (2, 4), (2, 3 * 37 * 48),
                                        (2, 101 * 48), (2, 4 * 1001)])
def test_adamw_kernel_matches_reference(version, n):
    outs, refs = run_adamw(n, version, seed=n)
    errs = check_adamw(f"adamw{version} n={n}", outs, refs)
    assert errs[0] < 1e-6  # in fact ~1e-7: float32 rounding of a handful of operations per step


@pytest.mark.parametrize("version", FLOAT32_VERSIONS)
def test_adamw_kernel_on_a_2d_array_updates_in_place(version):
    shape = (101, 48)
    outs, refs = run_adamw(int(np.prod(shape)), version, seed=7, steps=2)
    p = device.asarray(device.asnumpy(outs[0]).reshape(shape))  # any shape: the kernel sees flat memory
    g = np.ones(shape, np.float32)
    m, v = device.asarray(device.asnumpy(outs[1]).reshape(shape)), device.asarray(device.asnumpy(outs[2]).reshape(shape))
    op.update(p, device.asarray(g), m, v, 3, version=version, **HYPER)
    op.adamw_update(refs[0], np.ones(refs[0].shape), refs[1], refs[2], 3, **HYPER)
    check_adamw(f"adamw{version} 2-D", (device.asnumpy(a).reshape(-1) for a in (p, m, v)), refs)


@pytest.mark.parametrize("version", FLOAT32_VERSIONS)
def test_adamw_grad_scale_is_scaling_the_gradient(version):
    rng = np.random.default_rng(3)
    n = 4 * 37
    p, g = rng.standard_normal(n).astype(np.float32), rng.standard_normal(n).astype(np.float32)
    a = [device.asarray(x.copy()) for x in (p, np.zeros(n, np.float32), np.zeros(n, np.float32))]
    b = [device.asarray(x.copy()) for x in (p, np.zeros(n, np.float32), np.zeros(n, np.float32))]
    op.update(a[0], device.asarray(g), a[1], a[2], 1, grad_scale=0.25, version=version, **HYPER)
    op.update(b[0], device.asarray(g * np.float32(0.25)), b[1], b[2], 1, version=version, **HYPER)
    for x, y in zip(a, b):  # 0.25 is a power of two: scaling before or inside is exact either way
        assert np.array_equal(device.asnumpy(x), device.asnumpy(y))
    assert np.allclose(device.asnumpy(a[1]), 0.25 * (1 - HYPER["beta1"]) * g, rtol=1e-6)  # m saw the scaled g


def test_adamw_versions_agree_closely():
    (p1, m1, v1), _ = run_adamw(4 * 257, 1, seed=5)
    (p2, m2, v2), _ = run_adamw(4 * 257, 2, seed=5)
    check("adamw2 vs adamw1", p2, device.asnumpy(p1), atol=1e-6, rtol=1e-6)
    if device.name == "cpu":  # m and v: the same float32 operations (a GPU compiler may fuse them differently)
        assert np.array_equal(device.asnumpy(m1), device.asnumpy(m2))
        assert np.array_equal(device.asnumpy(v1), device.asnumpy(v2))


@pytest.mark.parametrize("version", FLOAT32_VERSIONS)
def test_adamw_racecheck(version):
    n = 4 * 1001
    rng = np.random.default_rng(4)
    p, g = rng.standard_normal(n).astype(np.float32), rng.standard_normal(n).astype(np.float32)
    m, v = rng.standard_normal(n).astype(np.float32) * 0.1, rng.random(n).astype(np.float32) * 0.01
    arrays = [device.asarray(a) for a in (p, g, m, v)]
    [launch] = op.launches("update", *arrays, 3, *HYPER.values(), 0.5, version=version)
    device.racecheck(*launch)


def test_adamw_shape_assertions():
    z = lambda n: device.zeros(n)  # noqa: E731
    with pytest.raises(ValueError, match=r"adamw2 loads float4: param.size must be a multiple of 4, got param.size=1001"):
        op.update(z(1001), z(1001), z(1001), z(1001), 1, version=2, **HYPER)
    with pytest.raises(ValueError, match=r"adamw1: `v` has 99 elements but `param` has 100"):
        op.update(z(100), z(100), z(100), z(99), 1, version=1, **HYPER)
    with pytest.raises(ValueError, match=r"t counts optimizer steps from 1.*got t=0"):
        op.update(z(8), z(8), z(8), z(8), 0, **HYPER)
    with pytest.raises(ValueError, match=r"got t=1.0"):
        op.update(z(8), z(8), z(8), z(8), 1.0, **HYPER)
    with pytest.raises(ValueError, match=r"adamw.update: no version 4; the versions are \[1, 2, 3\]"):
        op.update(z(8), z(8), z(8), z(8), 1, version=4, **HYPER)
    with pytest.raises(ValueError, match=r"adamw2: `m` must be float32, got float64"):
        op.update(z(8), z(8), device.asarray(np.zeros(8)), z(8), 1, **HYPER)
    op.update(z(0), z(0), z(0), z(0), 1, **HYPER)  # nothing to do: no launch


def test_float4_alignment_is_checked_on_both_backends():
    # A view that starts 1 float into a buffer is 4-byte aligned: on a GPU float4 loads would fault with
    # "misaligned address", so the wrapper refuses it first, on either backend.
    storage = device.zeros(9)
    aligned, misaligned = storage[:8], storage[1:]
    with pytest.raises(ValueError, match=r"adamw2 loads float4: `grad` must start at a 16-byte aligned address.*4 bytes"):
        op.update(aligned, misaligned, device.zeros(8), device.zeros(8), 1, version=2, **HYPER)
    op.update(aligned, misaligned, device.zeros(8), device.zeros(8), 1, version=1, **HYPER)  # version 1: fine


# ------------------------------------------------------------------------------------------------
# Stochastic rounding in NumPy (the reference of bf16.cuh's random_bits and to_bf16_stochastic)
# ------------------------------------------------------------------------------------------------
BF16 = ml_dtypes.bfloat16
U32 = 0xFFFFFFFF


def python_random_bits(index, seed):
    """bf16.cuh's random_bits in Python ints (each product reduced modulo 2^32): an independent check
    that the NumPy version's uint32 arithmetic neither promotes nor loses bits."""
    def mix(x):
        x ^= x >> 16
        x = (x * 0x7FEB352D) & U32
        x ^= x >> 15
        x = (x * 0x846CA68B) & U32
        return x ^ (x >> 16)
    return mix(mix(index) ^ ((seed * 0x9E3779B9) & U32))


def bits16(a):
    return np.asarray(a).view(np.uint16)


def test_numpy_random_bits_are_the_hash_in_uint32():
    index = np.array([0, 1, 2, 7, 8, 1000, 2**31 - 1, 2**32 - 1], np.uint32)
    for seed in (0, 1, 12345, 2**32 - 1):
        got = op.random_bits(index, seed)
        assert got.dtype == np.uint32
        assert [int(x) for x in got] == [python_random_bits(int(i), seed) for i in index]
    assert int(op.random_bits(np.uint32(5), 9)) == python_random_bits(5, 9)   # a 0-d index too


def test_numpy_stochastic_rounding_keeps_infinities_and_nans_and_exact_values():
    x = np.array([np.inf, -np.inf, np.nan, 0.0, -0.0, 1.0, -2.5, 3.3895314e38], np.float32)  # the last: bf16's max
    for bits in (0, 0xFFFF, 0x12345678, U32):
        out = op.to_bf16_stochastic(x, np.full(x.shape, bits, np.uint32))
        assert out.dtype == BF16
        assert np.isnan(out[2]) and np.array_equal(bits16(out[[0, 1, 3, 4, 5, 6, 7]]),
                                                   bits16(x[[0, 1, 3, 4, 5, 6, 7]].astype(BF16)))


def test_numpy_stochastic_rounding_adds_the_random_bits_to_the_dropped_ones():
    # 1 + 0x4000 * 2^-23 (a quarter of a bf16 step above 1): rounds up when (bits & 0xffff) >= 0xc000
    x = np.float32(1 + 0x4000 * 2.0**-23)
    bits = np.array([0, 0xBFFF, 0xC000, 0xFFFF, 0x1234C000, 0xFFFF0000], np.uint32)
    out = op.to_bf16_stochastic(np.full(bits.shape, x), bits).astype(np.float64)
    assert list(out) == [1.0, 1.0, 1 + 2**-7, 1 + 2**-7, 1 + 2**-7, 1.0]
    # negative values round in magnitude: -x goes to -1 or -(1 + 2^-7) with the same bits
    assert list(op.to_bf16_stochastic(np.full(bits.shape, -x), bits).astype(np.float64)) == list(-out)
    # the largest float32 is above bf16's largest finite value: it rounds to it or to infinity
    top = op.to_bf16_stochastic(np.full(2, np.finfo(np.float32).max), np.array([0, 0xFFFF], np.uint32))
    assert top[0] == float(ml_dtypes.finfo(BF16).max) and np.isposinf(top[1])


def test_reference_with_master_rounds_the_updated_master_into_param():
    rng = np.random.default_rng(11)
    n = 40
    master = rng.standard_normal(n).astype(np.float32)
    m, v = np.zeros(n, np.float32), np.zeros(n, np.float32)
    param = master.astype(BF16)
    expected, em, ev = master.copy(), m.copy(), v.copy()
    g = rng.standard_normal(n).astype(np.float32)
    op.adamw_update(param, g, m, v, 1, master=master, seed=77, **HYPER)
    op.adamw_update(expected, g, em, ev, 1, **HYPER)       # the same step on a float32 param
    assert np.array_equal(master, expected) and np.array_equal(m, em) and np.array_equal(v, ev)
    assert np.array_equal(bits16(param), bits16(op.stochastic_round(master, 77)))
    with pytest.raises(ValueError, match="without `seed`"):
        op.adamw_update(param, g, m, v, 2, master=master, **HYPER)


# ------------------------------------------------------------------------------------------------
# The bf16 kernel (version 3): float32 master weights, stochastic rounding
# ------------------------------------------------------------------------------------------------
def bf16_neighbours(x):
    """The bf16 bit patterns just below and just above float32 x in magnitude (truncation toward zero,
    and one bf16 step further from zero), and whether x is a bf16 itself."""
    u = np.asarray(x, np.float32).view(np.uint32)
    low = (u >> 16).astype(np.uint16)
    return low, (low + 1).astype(np.uint16), (u & 0xFFFF) == 0


def start_bf16(n, seed=0):
    """A float32 master with its bf16 param (rounded to nearest, as a model would start), zero m and v."""
    rng = np.random.default_rng(seed)
    master = rng.standard_normal(n).astype(np.float32)
    return master, master.astype(BF16), np.zeros(n, np.float32), np.zeros(n, np.float32)


def run_bf16_and_float32(n, seed=0, steps=STEPS, grad_scales=(1.0, 0.5, 1.0, 0.25, 1.0), shape=None):
    """`steps` steps of adamw3 (bf16 param, float32 master) and of adamw2 (float32 param) from the same
    start, with the same gradients; adamw3 gets seed 1000 + t at step t. Returns the device arrays, and
    the float64 reference's param, m, v (flat)."""
    rng = np.random.default_rng(seed + 1)
    master, param, m, v = start_bf16(n, seed)
    ref = [a.astype(np.float64) for a in (master, m, v)]
    shape = shape or (n,)
    d = lambda a: device.asarray(a.reshape(shape).copy())  # noqa: E731  (a copy: on the CPU asarray shares memory)
    bf, f32 = [d(a) for a in (param, master, m, v)], [d(a) for a in (master, m, v)]
    for t in range(1, steps + 1):
        g = rng.standard_normal(n).astype(np.float32)
        op.update(bf[0], d(g), bf[2], bf[3], t, *HYPER.values(), grad_scales[t - 1], version=BF16_VERSION,
                  master=bf[1], seed=1000 + t)
        op.update(f32[0], d(g), f32[1], f32[2], t, *HYPER.values(), grad_scales[t - 1], version=2)
        op.adamw_update(ref[0], g.astype(np.float64), ref[1], ref[2], t, grad_scale=grad_scales[t - 1], **HYPER)
    return bf, f32, ref


@pytest.mark.parametrize("n", [8, 16, 8 * 37, 8 * 1001, 3 * 37 * 48])
def test_bf16_master_is_version_2_bit_for_bit_and_param_its_stochastic_rounding(n):
    (param, master, m, v), (p2, m2, v2), refs = run_bf16_and_float32(n, seed=n)
    # the same adamw_element on the same float32 numbers: the same bits (the bf16 param is never read). On a
    # GPU the compiler decides where to fuse multiply-adds in each kernel, so there the two are only held
    # to the float32 versions' agreement (test_adamw_versions_agree_closely)
    for what, a, b in (("master", master, p2), ("m", m, m2), ("v", v, v2)):
        if CPU_SEMANTICS:
            assert np.array_equal(device.asnumpy(a).view(np.uint32), device.asnumpy(b).view(np.uint32)), what
        else:
            check(f"adamw3 {what} vs adamw2", a, device.asnumpy(b), atol=1e-6, rtol=1e-6)
    master_h, param_h = device.asnumpy(master), device.asnumpy(param)
    assert param_h.dtype == BF16
    assert np.array_equal(bits16(param_h), bits16(op.stochastic_round(master_h, 1000 + STEPS)))
    low, high, exact = bf16_neighbours(master_h)
    got = bits16(param_h)
    assert np.all((got == low) | ((got == high) & ~exact))
    # against the float64 reference: master, m, v within the float32 bound; the bf16 param within it plus
    # less than one bf16 step (2^-7 relative to master)
    check_adamw(f"adamw3 n={n}", (master_h, device.asnumpy(m), device.asnumpy(v)), refs)
    ref = refs[0]
    err = np.abs(param_h.astype(np.float64) - ref)
    bound = 2.0**-7 * np.abs(master_h) + 1e-5 * np.abs(ref).max() + 1e-5 * np.abs(ref)
    assert np.all(err <= bound), float((err - bound).max())


def test_bf16_kernel_on_a_2d_array():
    (param, master, _, _), (p2, _, _), _ = run_bf16_and_float32(37 * 48, seed=3, shape=(37, 48))
    assert param.shape == (37, 48) and (np.array_equal(device.asnumpy(master), device.asnumpy(p2)) or not CPU_SEMANTICS)
    assert np.array_equal(bits16(device.asnumpy(param)), bits16(op.stochastic_round(device.asnumpy(master), 1005)))


def test_bf16_tensor_updated_in_pieces_rounds_as_one_launch():
    """ZeRO-1 gives each rank a piece of a tensor (helpers/train/parallel.py): pieces launched with their
    `offset` in the tensor draw random_bits(offset + k, seed), so they give the whole launch's bits, on the
    kernels and in NumPy; the same pieces without their offsets draw other bits and round otherwise."""
    n, cuts = 8 * 300, (0, 64 * 13, 64 * 29, 8 * 300)
    rng = np.random.default_rng(11)
    master, param, m, v = start_bf16(n, seed=11)
    g = rng.standard_normal(n).astype(np.float32)
    whole = [device.asarray(a.copy()) for a in (param, master, m, v)]
    op.update(whole[0], device.asarray(g), whole[2], whole[3], 3, *HYPER.values(), version=BF16_VERSION,
              master=whole[1], seed=4242)
    for offsets in (True, False):
        parts = [device.asarray(a.copy()) for a in (param, master, m, v)]
        for lo, hi in zip(cuts, cuts[1:]):
            op.update(*(a[lo:hi] for a in parts[:1]), device.asarray(g[lo:hi]), parts[2][lo:hi], parts[3][lo:hi], 3,
                      *HYPER.values(), version=BF16_VERSION, master=parts[1][lo:hi], seed=4242,
                      offset=lo if offsets else 0)
        for a, b in zip(whole[1:], parts[1:]):   # master, m, v: elementwise, the pieces do not matter
            assert np.array_equal(device.asnumpy(a).view(np.uint32), device.asnumpy(b).view(np.uint32)) \
                or not CPU_SEMANTICS
        same = np.array_equal(bits16(device.asnumpy(whole[0])), bits16(device.asnumpy(parts[0])))
        assert same == offsets
    numpy_parts = np.concatenate([op.stochastic_round(device.asnumpy(whole[1])[lo:hi], 4242, offset=lo)
                                  for lo, hi in zip(cuts, cuts[1:])])
    assert np.array_equal(bits16(numpy_parts), bits16(device.asnumpy(whole[0])))
    ref_param = param.copy()
    ref = [master.copy(), m.copy(), v.copy()]
    for lo, hi in zip(cuts, cuts[1:]):
        piece = ref_param[lo:hi]
        op.adamw_update(piece, g[lo:hi], ref[1][lo:hi], ref[2][lo:hi], 3, grad_scale=1.0, master=ref[0][lo:hi],
                        seed=4242, offset=lo, **HYPER)
    assert np.array_equal(bits16(ref_param), bits16(op.stochastic_round(ref[0], 4242)))


def test_bf16_offset_is_checked():
    param, master, m, v = (device.zeros(8, BF16), device.zeros(8), device.zeros(8), device.zeros(8))
    for bad in (-1, 2**32 - 4, 1.5, True):
        with pytest.raises(ValueError, match=r"adamw3: `offset` is the index of param's first element in its tensor"):
            op.update(param, v, m, v, 1, *HYPER.values(), version=BF16_VERSION, master=master, seed=1, offset=bad)
    with pytest.raises(ValueError, match=r"adamw2 takes no `offset`"):
        op.update(master, v, m, v, 1, *HYPER.values(), version=2, offset=8)


def bf16_round_only(master, seeds):
    """adamw3 with lr = 0 and a zero gradient: the master stays as it is (p - 0 * 0), so each launch only
    rounds it, with each seed in turn. Returns the bf16 params (one row per seed) and the master after."""
    n = master.size
    param, m_d, v_d, g = (device.zeros(n, BF16), device.zeros(n), device.zeros(n), device.zeros(n))
    master_d = device.asarray(master.copy())
    hyper = dict(HYPER, lr=0.0, weight_decay=0.0)
    rows = []
    for s in seeds:
        op.update(param, g, m_d, v_d, 1, version=BF16_VERSION, master=master_d, seed=s, **hyper)
        rows.append(device.asnumpy(param).copy())
    return np.stack(rows), device.asnumpy(master_d)


def test_bf16_rounding_of_special_values_matches_numpy():
    tiny = np.finfo(np.float32).tiny
    x = np.array([0.0, -0.0, 1.0, -1.0, tiny, -tiny, tiny / 3, 1e-40, -1e-45, 3.3895314e38,
                  np.finfo(np.float32).max, -np.finfo(np.float32).max, 1 + 2.0**-23, 65504.0, 1e-30, 7.0],
                 np.float32)
    rows, after = bf16_round_only(x, [0, 1, 2**32 - 1])
    assert np.array_equal(after.view(np.uint32), x.view(np.uint32))
    for row, s in zip(rows, [0, 1, 2**32 - 1]):
        assert np.array_equal(bits16(row), bits16(op.stochastic_round(x, s)))


def test_bf16_mean_over_seeds_approaches_master():
    """Hoeffding. Master values with known dropped bits d in [1, 32767] (a fraction f = d / 2^16 of a bf16
    step, below a half: round-to-nearest would round every one toward zero). Element i rounds away
    from zero (X = 1) iff d + (random_bits & 0xffff) >= 2^16, with probability exactly f_i if the 16
    random bits are uniform: so E[param] = master. Treating the K seeds' bits as independent uniform
    draws (what the hash is for), Hoeffding gives P(|mean_k X - f_i| >= eps) <= 2 exp(-2 K eps^2);
    with a union bound over the n elements at a total failure probability delta = 1e-6,
    eps = sqrt(ln(2n / delta) / (2K)). Over all N = K n draws together, mean(X - f) stays within
    sqrt(ln(2 / delta) / (2N)) of 0, where round-to-nearest would be at -mean(f), about -0.25."""
    n, K, delta = 1024, 200, 1e-6
    rng = np.random.default_rng(21)
    top = rng.integers(0x3C00, 0x4300, n).astype(np.uint32) | (rng.integers(0, 2, n).astype(np.uint32) << 15)
    dropped = rng.integers(1, 2**15, n).astype(np.uint32)
    master = ((top << 16) | dropped).view(np.float32)     # |master| about 2^-7 ... 2^7, both signs
    rows, after = bf16_round_only(master, [7919 * k + 1 for k in range(K)])
    assert np.array_equal(after.view(np.uint32), master.view(np.uint32))
    low, high, _ = bf16_neighbours(master)
    got = bits16(rows)
    assert np.all((got == low) | (got == high))
    away = (got == high).astype(np.float64)                       # X, K x n
    f = dropped / 2.0**16
    eps_each = np.sqrt(np.log(2 * n / delta) / (2 * K))          # ~0.23
    eps_all = np.sqrt(np.log(2 / delta) / (2 * K * n))           # ~0.006
    assert np.abs(away.mean(axis=0) - f).max() <= eps_each
    assert abs((away - f).mean()) <= eps_all
    # the same in values: the mean of the rounded params is within eps_each bf16 steps of master
    step = np.abs(high.view(BF16).astype(np.float64) - low.view(BF16).astype(np.float64))
    mean = rows.astype(np.float64).mean(axis=0)
    assert np.all(np.abs(mean - master.astype(np.float64)) <= eps_each * step)


def test_bf16_same_seed_same_bits_other_seed_other_roundings():
    n = 8 * 1001
    master, param, m, v = start_bf16(n, seed=5)
    g = np.random.default_rng(6).standard_normal(n).astype(np.float32)
    outs = []
    for s in (42, 42, 43):
        arrays = [device.asarray(a.copy()) for a in (param, master, m, v)]
        op.update(arrays[0], device.asarray(g), arrays[2], arrays[3], 1, version=BF16_VERSION, master=arrays[1],
                  seed=s, **HYPER)
        outs.append([device.asnumpy(a) for a in arrays])
    a, b, c = outs
    assert all(np.array_equal(x.view(np.uint8), y.view(np.uint8)) for x, y in zip(a, b))   # same seed: same bits
    assert all(np.array_equal(x, y) for x, y in zip(a[1:], c[1:]))   # the seed changes the rounding only
    # two seeds round element i differently with probability 2 f_i (1 - f_i) (f_i: its dropped fraction);
    # Hoeffding over the n elements (delta = 1e-6) bounds the observed fraction around the expected one
    f = (a[1].view(np.uint32) & 0xFFFF) / 2.0**16
    differ = bits16(a[0]) != bits16(c[0])
    expected = float(np.mean(2 * f * (1 - f)))                     # about 1/3
    assert abs(differ.mean() - expected) <= np.sqrt(np.log(2 / 1e-6) / (2 * n))


def test_bf16_racecheck():
    n = 8 * 1001
    rng = np.random.default_rng(4)
    master = rng.standard_normal(n).astype(np.float32)
    g = rng.standard_normal(n).astype(np.float32)
    m, v = rng.standard_normal(n).astype(np.float32) * 0.1, rng.random(n).astype(np.float32) * 0.01
    param = device.asarray(master.astype(BF16))
    arrays = [device.asarray(a) for a in (g, m, v)]
    [launch] = op.launches("update", param, *arrays, 3, *HYPER.values(), 0.5, version=BF16_VERSION,
                           master=device.asarray(master), seed=9)
    device.racecheck(*launch)


def test_bf16_refusals():
    z = lambda n: device.zeros(n)  # noqa: E731
    b = lambda n: device.zeros(n, BF16)  # noqa: E731
    v3 = dict(version=BF16_VERSION, **HYPER)
    with pytest.raises(ValueError, match=r"adamw3: `master` is required: the float32 master copy"):
        op.update(b(8), z(8), z(8), z(8), 1, seed=1, **v3)
    for seed in (None, -1, 2**32, 1.0, True):
        with pytest.raises(ValueError, match=r"adamw3: `seed` is required, an int in \[0, 2\^32\).*got seed="):
            op.update(b(8), z(8), z(8), z(8), 1, master=z(8), seed=seed, **v3)
    with pytest.raises(ValueError, match=r"adamw3: `param` must be bfloat16, got float32"):
        op.update(z(8), z(8), z(8), z(8), 1, master=z(8), seed=1, **v3)
    with pytest.raises(ValueError, match=r"adamw3: `master` must be float32, got bfloat16"):
        op.update(b(8), z(8), z(8), z(8), 1, master=b(8), seed=1, **v3)
    with pytest.raises(ValueError, match=r"adamw3: `grad` must be float32, got bfloat16"):
        op.update(b(8), b(8), z(8), z(8), 1, master=z(8), seed=1, **v3)
    with pytest.raises(ValueError, match=r"adamw3: `m` must be float32, got float64"):
        op.update(b(8), z(8), device.asarray(np.zeros(8)), z(8), 1, master=z(8), seed=1, **v3)
    with pytest.raises(ValueError, match=r"adamw3: `master` has 16 elements but `param` has 8"):
        op.update(b(8), z(8), z(8), z(8), 1, master=z(16), seed=1, **v3)
    with pytest.raises(ValueError, match=r"adamw3 updates eight parameters per thread \(16-byte bf16 stores\): "
                                         r"param.size must be a multiple of 8, got param.size=1004"):
        op.update(b(1004), z(1004), z(1004), z(1004), 1, master=z(1004), seed=1, **v3)
    with pytest.raises(ValueError, match=r"got t=0"):
        op.update(b(8), z(8), z(8), z(8), 0, master=z(8), seed=1, **v3)
    # the float32 versions: no master, no seed, no bf16 arrays (check_array's message names the bf16 versions)
    for version in FLOAT32_VERSIONS:
        with pytest.raises(ValueError, match=rf"adamw{version} takes no `master` and `seed`: a float32 param is its "
                                             r"own master copy"):
            op.update(z(8), z(8), z(8), z(8), 1, version=version, master=z(8), seed=1, **HYPER)
        with pytest.raises(ValueError, match=rf"adamw{version} takes no `seed`"):
            op.update(z(8), z(8), z(8), z(8), 1, version=version, seed=1, **HYPER)
        with pytest.raises(ValueError, match=rf"adamw{version}: `param` must be float32, got bfloat16 \(a bf16 "
                                             r"array: the bf16 versions take it"):
            op.update(b(8), z(8), z(8), z(8), 1, version=version, **HYPER)
    with pytest.raises(ValueError, match=r"adamw2: `param` must be float32, got bfloat16"):
        op.update(b(8), z(8), z(8), z(8), 1, **HYPER)     # the default version is the float32 one
    op.update(b(0), z(0), z(0), z(0), 1, master=z(0), seed=1, **v3)   # nothing to do: no launch


@pytest.mark.parametrize("which", ["param", "master", "grad", "m", "v"])
def test_bf16_alignment_is_checked_on_both_backends(which):
    # views one element into a buffer: 2 bytes (bf16) or 4 bytes (float32) past a 16-byte boundary, where
    # the kernel's 16-byte accesses would fault on a GPU
    arrays = dict(param=device.zeros(8, BF16), master=device.zeros(8), grad=device.zeros(8), m=device.zeros(8),
                  v=device.zeros(8))
    arrays[which] = device.zeros(9, arrays[which].dtype)[1:]
    off = 2 if which == "param" else 4
    with pytest.raises(ValueError, match=rf"adamw3 loads 16 bytes at a time: `{which}` must start at a 16-byte "
                                         rf"aligned address, but it starts {off} bytes past one.*version 1"):
        op.update(arrays["param"], arrays["grad"], arrays["m"], arrays["v"], 1, version=BF16_VERSION,
                  master=arrays["master"], seed=1, **HYPER)


def test_bf16_param_is_only_written():
    # weight decay and the step use the master value: a param of NaNs (device.empty's 0xff bytes on the CPU)
    # gives the same result as any other
    n = 64
    master, param, m, v = start_bf16(n, seed=8)
    g = device.asarray(np.random.default_rng(9).standard_normal(n).astype(np.float32))
    results = []
    for start in (device.asarray(param.copy()), device.empty(n, BF16)):
        arrays = [device.asarray(a.copy()) for a in (master, m, v)]
        op.update(start, g, arrays[1], arrays[2], 1, version=BF16_VERSION, master=arrays[0], seed=3, **HYPER)
        results.append(bits16(device.asnumpy(start)))
    assert np.array_equal(*results)
