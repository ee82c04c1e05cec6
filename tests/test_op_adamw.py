"""AdamW (cuda/adamw.cu) and the global gradient norm (cuda/global_norm.cu) against the NumPy
reference in helpers/ops/adamw.py, and the reference against PyTorch.

AdamW and the norm have no backward pass (they use the gradients, nobody differentiates them), so
there is no finite-difference check here; the reference is checked against torch.optim.AdamW and
torch.nn.utils.clip_grad_norm_ instead.

Tolerances. AdamW: after several steps, |ref - out| <= 1e-5 * (the array's scale) + 1e-5 * |ref|
for param, m and v, against a float64 reference that gets the same float32-rounded hyperparameters
as the kernel (0.999 is not a float32: 1 - 0.999f differs from 0.001 by 1.3e-5 relative, which would
show in v). Global norm: llm.c's rtol 1e-2; the kernels are in fact within 1e-5 relative (float32
partial sums of positive numbers, in a tree), and a second check holds them to that.
"""
import numpy as np
import pytest

from helpers import check, device
from helpers.model import hf
from helpers.ops import adamw as op

F32 = lambda x: float(np.float32(x))  # noqa: E731  (what the kernel's float parameters hold)
HYPER = dict(lr=F32(1e-2), beta1=F32(0.9), beta2=F32(0.999), eps=F32(1e-8), weight_decay=F32(0.1))
STEPS = 5


@pytest.fixture(scope="module")
def norm_module():
    return device.load_module("global_norm.cu")


def gpt2_grad_shapes(V=101, T=37, C=48, L=2):
    """The shapes of GPT-2's parameter tensors (llm.c's order), with a small odd vocabulary and context."""
    per_layer = [(C,), (C,), (3 * C, C), (3 * C,), (C, C), (C,), (C,), (C,), (4 * C, C), (4 * C,), (C, 4 * C), (C,)]
    return [(V, C), (T, C)] + per_layer * L + [(C,), (C,)]


def run_adamw(n, version, seed=0, steps=STEPS, grad_scales=(1.0, 0.5, 1.0, 0.25, 1.0), hyper=HYPER):
    """`steps` steps of the kernel (float32) and of the reference (float64) from the same start."""
    rng = np.random.default_rng(seed)
    p = rng.standard_normal(n).astype(np.float32)
    m, v = np.zeros(n, np.float32), np.zeros(n, np.float32)
    ref = [a.astype(np.float64) for a in (p, m, v)]
    p_d, m_d, v_d = device.asarray(p), device.asarray(m), device.asarray(v)
    for t in range(1, steps + 1):
        g = rng.standard_normal(n).astype(np.float32)
        op.adamw(p_d, device.asarray(g), m_d, v_d, t, hyper["lr"], hyper["beta1"], hyper["beta2"], hyper["eps"],
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


@pytest.mark.parametrize("max_norm", [0.5, 1e3])
def test_reference_norm_and_clip_match_torch(max_norm):
    torch, _ = hf.require()  # the reference extra; missing, it fails with how to install it
    rng = np.random.default_rng(2)
    grads = [rng.standard_normal(s) for s in gpt2_grad_shapes(L=1)]
    params = [torch.zeros(g.shape, dtype=torch.float64, requires_grad=True) for g in grads]
    for p, g in zip(params, grads):
        p.grad = torch.tensor(g)
    total = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    norm = op.global_norm(grads)
    assert norm == pytest.approx(total, rel=1e-12)
    coef = op.clip_coefficient(norm, max_norm)
    for p, g in zip(params, grads):
        np.testing.assert_allclose(g * coef, p.grad.numpy(), rtol=1e-12, atol=0)


def test_clip_coefficient_rule():
    assert op.clip_coefficient(0.0, 1.0) == 1.0
    assert op.clip_coefficient(0.5, 1.0) == 1.0                       # below max_norm: untouched
    assert op.clip_coefficient(4.0, 1.0) == 1.0 / (4.0 + 1e-6)        # torch's rule, exactly
    assert op.clip_coefficient(1.0, 1.0) == pytest.approx(1 - 1e-6)   # at max_norm: just under 1 (the +1e-6)
    assert op.global_norm([np.full(3, 4.0), np.array([[0.0]])]) == pytest.approx(np.sqrt(48.0), rel=1e-15)


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


@pytest.mark.parametrize("version", sorted(op.VERSIONS))
def test_adamw_kernel_on_a_2d_array_updates_in_place(version):
    shape = (101, 48)
    outs, refs = run_adamw(int(np.prod(shape)), version, seed=7, steps=2)
    p = device.asarray(device.asnumpy(outs[0]).reshape(shape))  # any shape: the kernel sees flat memory
    g = np.ones(shape, np.float32)
    m, v = device.asarray(device.asnumpy(outs[1]).reshape(shape)), device.asarray(device.asnumpy(outs[2]).reshape(shape))
    op.adamw(p, device.asarray(g), m, v, 3, version=version, **HYPER)
    op.adamw_update(refs[0], np.ones(refs[0].shape), refs[1], refs[2], 3, **HYPER)
    check_adamw(f"adamw{version} 2-D", (device.asnumpy(a).reshape(-1) for a in (p, m, v)), refs)


@pytest.mark.parametrize("version", sorted(op.VERSIONS))
def test_adamw_grad_scale_is_scaling_the_gradient(version):
    rng = np.random.default_rng(3)
    n = 4 * 37
    p, g = rng.standard_normal(n).astype(np.float32), rng.standard_normal(n).astype(np.float32)
    a = [device.asarray(x.copy()) for x in (p, np.zeros(n, np.float32), np.zeros(n, np.float32))]
    b = [device.asarray(x.copy()) for x in (p, np.zeros(n, np.float32), np.zeros(n, np.float32))]
    op.adamw(a[0], device.asarray(g), a[1], a[2], 1, grad_scale=0.25, version=version, **HYPER)
    op.adamw(b[0], device.asarray(g * np.float32(0.25)), b[1], b[2], 1, version=version, **HYPER)
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


@pytest.mark.parametrize("version", sorted(op.VERSIONS))
def test_adamw_racecheck(version):
    n = 4 * 1001
    rng = np.random.default_rng(4)
    p, g = rng.standard_normal(n).astype(np.float32), rng.standard_normal(n).astype(np.float32)
    m, v = rng.standard_normal(n).astype(np.float32) * 0.1, rng.random(n).astype(np.float32) * 0.01
    fn = device.load_module("adamw.cu").get_function(f"adamw{version}")
    if version == 1:
        args = (p, g, m, v, n, 3, *HYPER.values(), 0.5)
        device.racecheck(fn, (op.ceil_div(n, op.ADAMW_BLOCK),), (op.ADAMW_BLOCK,), args)
    else:
        c1, c2 = op.bias_corrections(HYPER["beta1"], HYPER["beta2"], 3)
        args = (p, g, m, v, n, HYPER["lr"], HYPER["beta1"], HYPER["beta2"], c1, c2, HYPER["eps"],
                HYPER["weight_decay"], 0.5)
        device.racecheck(fn, (op.ceil_div(n // 4, op.ADAMW_BLOCK),), (op.ADAMW_BLOCK,), args)


def test_adamw_shape_assertions():
    z = lambda n: device.zeros(n)  # noqa: E731
    with pytest.raises(ValueError, match=r"adamw2 loads float4: param must have a multiple of 4 elements, got 1001"):
        op.adamw(z(1001), z(1001), z(1001), z(1001), 1, version=2, **HYPER)
    with pytest.raises(ValueError, match=r"adamw: v has 99 elements but param has 100"):
        op.adamw(z(100), z(100), z(100), z(99), 1, version=1, **HYPER)
    with pytest.raises(ValueError, match=r"t counts optimizer steps from 1.*got t=0"):
        op.adamw(z(8), z(8), z(8), z(8), 0, **HYPER)
    with pytest.raises(ValueError, match=r"got t=1.0"):
        op.adamw(z(8), z(8), z(8), z(8), 1.0, **HYPER)
    with pytest.raises(ValueError, match=r"adamw: version must be one of \[1, 2\], got 3"):
        op.adamw(z(8), z(8), z(8), z(8), 1, version=3, **HYPER)
    op.adamw(z(0), z(0), z(0), z(0), 1, **HYPER)  # nothing to do: no launch


# ------------------------------------------------------------------------------------------------
# Global norm kernels
# ------------------------------------------------------------------------------------------------
def _grads(shapes, seed):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(np.float32) for s in shapes]


CASES = {
    "odd flat n=1001": [(1001,)],
    "one element": [(1,)],
    "flat B*T*C=3*37*48": [(3 * 37 * 48,)],
    "GPT-2 tensors C=48 V=101 T=37 L=2": gpt2_grad_shapes(),
    "GPT-2 tensors C=20 V=53 T=13 L=1": gpt2_grad_shapes(V=53, T=13, C=20, L=1),
}


@pytest.mark.parametrize("version,case", [  # global_norm2 needs multiples of 4 (its assertion is tested below)
    (v, c) for v in sorted(op.NORM_VERSIONS) for c in CASES
    if not (v == 2 and any(int(np.prod(s)) % 4 for s in CASES[c]))])
def test_global_norm_kernels_match_reference(version, case):
    shapes = CASES[case]
    grads = _grads(shapes, seed=len(shapes) + version)
    ref = op.global_norm(grads) ** 2
    arg = device.asarray(grads[0]) if len(grads) == 1 else [device.asarray(g) for g in grads]
    got = op.global_norm_squared(arg, version=version)
    check(f"global_norm{version} {case}", np.array([got]), np.array([ref]), atol=0, rtol=1e-2)  # llm.c's tolerance
    assert abs(got - ref) <= 1e-5 * ref, f"{got} vs {ref}: expected within 1e-5 relative"  # what we really get


@pytest.mark.parametrize("version", [1, 2])
def test_global_norm_is_deterministic(norm_module, version):
    # Bit-identical whatever order the threads and blocks run in: racecheck with no tolerance.
    rng = np.random.default_rng(8)
    n = 4 * 5003
    x = rng.standard_normal(n).astype(np.float32)
    if version == 1:
        blocks = op.ceil_div(n, op.NORM_BLOCK)
        device.racecheck(norm_module.get_function("global_norm1"), (blocks,), (op.NORM_BLOCK,), (x, device.empty(blocks), n))
    else:
        partials = rng.random(op.NORM2_MAX_BLOCKS).astype(np.float32)  # += into what is already there
        device.racecheck(norm_module.get_function("global_norm2"), (op.norm2_blocks(n),), (op.NORM_BLOCK,),
                         (x, partials, n))
    device.racecheck(norm_module.get_function("global_norm_sum_partials"), (1,), (op.SUM_PARTIALS_BLOCK,),
                     (x[:3001], np.zeros(1, np.float32), 3001))
    grads = [device.asarray(g) for g in _grads(gpt2_grad_shapes(), seed=9)]
    runs = {op.global_norm_squared(grads, version=version) for _ in range(3)}
    assert len(runs) == 1, f"global_norm{version} gave different values on repeated runs: {runs}"


def test_global_norm0_atomics_depend_on_the_order(norm_module):
    # The "what not to do" version: the blocks' atomicAdds into one float happen in a different
    # order in different schedules, so the last bits change; racecheck needs a tolerance to pass it.
    rng = np.random.default_rng(0)
    n = 20011
    x = rng.standard_normal(n).astype(np.float32)
    fn = norm_module.get_function("global_norm0")
    args = (x, np.zeros(1, np.float32), n)
    grid = (op.ceil_div(n, op.NORM_BLOCK),)
    with pytest.raises(device.RaceError, match="global_norm0.*`out`"):
        device.racecheck(fn, grid, (op.NORM_BLOCK,), args)
    device.racecheck(fn, grid, (op.NORM_BLOCK,), args, rtol=1e-6)  # 40 float32 additions of positive numbers


def test_global_norm2_over_tensors_equals_over_the_flat_buffer():
    grads = _grads(gpt2_grad_shapes(), seed=10)
    per_tensor = op.global_norm_squared([device.asarray(g) for g in grads], version=2)
    flat = op.global_norm_squared(device.asarray(np.concatenate([g.ravel() for g in grads])), version=2)
    assert per_tensor == pytest.approx(flat, rel=1e-6)  # different partial sums, same value up to rounding


def test_global_norm_shape_assertions():
    with pytest.raises(ValueError, match=r"global_norm2 loads float4: tensor 1 must have a multiple of 4 elements, got 37"):
        op.global_norm_squared([device.zeros(48), device.zeros(37)], version=2)
    with pytest.raises(ValueError, match=r"global_norm2 loads float4: the array must have a multiple of 4 elements, got 1001"):
        op.global_norm_squared(device.zeros(1001), version=2)
    with pytest.raises(ValueError, match=r"version must be one of \[0, 1, 2\], got 3"):
        op.global_norm_squared(device.zeros(8), version=3)
    assert op.global_norm_squared([], version=2) == 0.0
    assert op.global_norm_squared([device.zeros(0)], version=1) == 0.0


def test_clipping_through_grad_scale():
    # llm.c's way: norm on the device, clip coefficient on the host, applied inside the AdamW kernel.
    grads = _grads([(4 * 37,)], seed=11)[0] * np.float32(10)
    p = np.linspace(-1, 1, grads.size, dtype=np.float32)
    norm = np.sqrt(op.global_norm_squared(device.asarray(grads)))
    coef = op.clip_coefficient(norm, max_norm=1.0)
    assert coef < 1
    ref = [p.astype(np.float64), np.zeros(p.size), np.zeros(p.size)]
    p_d, m_d, v_d = device.asarray(p.copy()), device.zeros(p.size), device.zeros(p.size)
    op.adamw(p_d, device.asarray(grads), m_d, v_d, 1, grad_scale=coef, **HYPER)
    clipped = grads.astype(np.float64) * op.clip_coefficient(op.global_norm(grads.astype(np.float64)), 1.0)
    op.adamw_update(ref[0], clipped, ref[1], ref[2], 1, **HYPER)
    check_adamw("adamw clipped", (p_d, m_d, v_d), ref)


def test_float4_alignment_is_checked_on_both_backends():
    # A view that starts 1 float into a buffer is 4-byte aligned: on a GPU float4 loads would fault with
    # "misaligned address", so the wrappers refuse it first, on either backend.
    storage = device.zeros(9)
    aligned, misaligned = storage[:8], storage[1:]
    with pytest.raises(ValueError, match=r"adamw2 loads float4: `grad` must start at a 16-byte aligned address.*4 bytes"):
        op.adamw(aligned, misaligned, device.zeros(8), device.zeros(8), 1, version=2, **HYPER)
    with pytest.raises(ValueError, match=r"global_norm2 loads float4: `tensor 1` must start at a 16-byte aligned"):
        op.global_norm_squared([aligned, misaligned], version=2)
