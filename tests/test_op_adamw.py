"""AdamW (cuda/adamw.cu) against the NumPy reference in helpers/ops/adamw.py, and the reference
against PyTorch.

AdamW has no backward pass (it uses the gradients, nobody differentiates it), so there is no
finite-difference check here; the reference is checked against torch.optim.AdamW instead.

Tolerances: after several steps, |ref - out| <= 1e-5 * (the array's scale) + 1e-5 * |ref|
for param, m and v, against a float64 reference that gets the same float32-rounded hyperparameters
as the kernel (0.999 is not a float32: 1 - 0.999f differs from 0.001 by 1.3e-5 relative, which would
show in v).
"""
import numpy as np
import pytest

from helpers import check, device
from helpers.model import hf
from helpers.ops import adamw as op

F32 = lambda x: float(np.float32(x))  # noqa: E731  (what the kernel's float parameters hold)
HYPER = dict(lr=F32(1e-2), beta1=F32(0.9), beta2=F32(0.999), eps=F32(1e-8), weight_decay=F32(0.1))
STEPS = 5


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


@pytest.mark.parametrize("version", sorted(op.VERSIONS["update"]))
def test_adamw_kernel_on_a_2d_array_updates_in_place(version):
    shape = (101, 48)
    outs, refs = run_adamw(int(np.prod(shape)), version, seed=7, steps=2)
    p = device.asarray(device.asnumpy(outs[0]).reshape(shape))  # any shape: the kernel sees flat memory
    g = np.ones(shape, np.float32)
    m, v = device.asarray(device.asnumpy(outs[1]).reshape(shape)), device.asarray(device.asnumpy(outs[2]).reshape(shape))
    op.update(p, device.asarray(g), m, v, 3, version=version, **HYPER)
    op.adamw_update(refs[0], np.ones(refs[0].shape), refs[1], refs[2], 3, **HYPER)
    check_adamw(f"adamw{version} 2-D", (device.asnumpy(a).reshape(-1) for a in (p, m, v)), refs)


@pytest.mark.parametrize("version", sorted(op.VERSIONS["update"]))
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


@pytest.mark.parametrize("version", sorted(op.VERSIONS["update"]))
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
    with pytest.raises(ValueError, match=r"adamw.update: no version 3; the versions are \[1, 2\]"):
        op.update(z(8), z(8), z(8), z(8), 1, version=3, **HYPER)
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
