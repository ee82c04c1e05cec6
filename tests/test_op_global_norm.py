"""The global gradient norm (cuda/global_norm.cu) against the NumPy reference in
helpers/ops/global_norm.py, and the reference and the clip rule against PyTorch's clip_grad_norm_.

Nothing differentiates the norm, so there is no finite-difference check. Tolerance: llm.c's rtol
1e-2; the kernels are in fact within 1e-5 relative (float32 partial sums of positive numbers, in a
tree: about log2(n) roundings of 6e-8 each), and a second check holds them to that.
"""
import numpy as np
import pytest

from helpers import check, device
from helpers.model import hf
from helpers.ops import adamw
from helpers.ops import global_norm as op

F32 = lambda x: float(np.float32(x))  # noqa: E731
HYPER = dict(lr=F32(1e-2), beta1=F32(0.9), beta2=F32(0.999), eps=F32(1e-8), weight_decay=F32(0.1))


def gpt2_grad_shapes(V=101, T=37, C=48, L=2):
    """The shapes of GPT-2's parameter tensors (llm.c's order), with a small odd vocabulary and context."""
    per_layer = [(C,), (C,), (3 * C, C), (3 * C,), (C, C), (C,), (C,), (C,), (4 * C, C), (4 * C,), (C, 4 * C), (C,)]
    return [(V, C), (T, C)] + per_layer * L + [(C,), (C,)]


def make_inputs(shapes, seed):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(np.float32) for s in shapes]


# ------------------------------------------------------------------------------------------------
# The reference
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("max_norm", [0.5, 1e3])
def test_reference_norm_and_clip_match_torch(max_norm):
    torch, _ = hf.require()  # the reference extra; missing, it fails with how to install it
    rng = np.random.default_rng(2)
    grads = [rng.standard_normal(s) for s in gpt2_grad_shapes(L=1)]
    params = [torch.zeros(g.shape, dtype=torch.float64, requires_grad=True) for g in grads]
    for p, g in zip(params, grads):
        p.grad = torch.tensor(g)
    total = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    norm = np.sqrt(op.global_norm_forward(grads))
    assert norm == pytest.approx(total, rel=1e-12)
    coef = op.clip_coefficient(norm, max_norm)
    for p, g in zip(params, grads):
        np.testing.assert_allclose(g * coef, p.grad.numpy(), rtol=1e-12, atol=0)


def test_clip_coefficient_rule():
    assert op.clip_coefficient(0.0, 1.0) == 1.0
    assert op.clip_coefficient(0.5, 1.0) == 1.0                       # below max_norm: untouched
    assert op.clip_coefficient(4.0, 1.0) == 1.0 / (4.0 + 1e-6)        # torch's rule, exactly
    assert op.clip_coefficient(1.0, 1.0) == pytest.approx(1 - 1e-6)   # at max_norm: just under 1 (the +1e-6)
    assert op.global_norm_forward([np.full(3, 4.0), np.array([[0.0]])]) == 48.0


# ------------------------------------------------------------------------------------------------
# The kernels
# ------------------------------------------------------------------------------------------------
CASES = {
    "odd flat n=1001": [(1001,)],
    "one element": [(1,)],
    "flat B*T*C=3*37*48": [(3 * 37 * 48,)],
    "GPT-2 tensors C=48 V=101 T=37 L=2": gpt2_grad_shapes(),
    "GPT-2 tensors C=20 V=53 T=13 L=1": gpt2_grad_shapes(V=53, T=13, C=20, L=1),
}


@pytest.mark.parametrize("version,case", [  # version 3 needs multiples of 4 (its check is tested below)
    (v, c) for v in sorted(op.VERSIONS["forward"]) for c in CASES
    if not (v == 3 and any(int(np.prod(s)) % 4 for s in CASES[c]))])
def test_kernels_match_reference(version, case):
    shapes = CASES[case]
    grads = make_inputs(shapes, seed=len(shapes) + version)
    ref = op.global_norm_forward(grads)
    arg = device.asarray(grads[0]) if len(grads) == 1 else [device.asarray(g) for g in grads]
    out = device.asarray(np.full(1, 7.0, np.float32))  # whatever was there is overwritten
    op.forward(out, arg, version=version)
    got = float(device.asnumpy(out)[0])
    check(f"global_norm{version} {case}", np.array([got]), np.array([ref]), atol=0, rtol=1e-2)  # llm.c's tolerance
    assert abs(got - ref) <= 1e-5 * ref, f"{got} vs {ref}: expected within 1e-5 relative"  # what we really get


@pytest.mark.parametrize("version", [v for v in op.VERSIONS["forward"] if "atomicAdd" not in op.VERSIONS["forward"][v]])
def test_deterministic_versions_pass_racecheck(version):
    # Bit-identical whatever order the threads and blocks run in: racecheck with no tolerance, on
    # every launch of the version (the partial sums, then the final sum).
    grads = [device.asarray(g) for g in make_inputs(gpt2_grad_shapes(), seed=9)]
    for launch in op.launches("forward", device.empty(1), grads[:3], version=version):
        device.racecheck(*launch)
    runs = {op.squared_norm(grads, version=version) for _ in range(3)}
    assert len(runs) == 1, f"global_norm{version} gave different values on repeated runs: {runs}"


def test_version1_atomics_depend_on_the_order():
    # The "what not to do" version: the blocks' atomicAdds into one float happen in a different
    # order in different schedules, so the last bits change; racecheck needs a tolerance to pass it.
    x = device.asarray(make_inputs([(20011,)], seed=0)[0])
    [launch] = op.launches("forward", device.zeros(1), x, version=1)
    with pytest.raises(device.RaceError, match="global_norm1.*`out`"):
        device.racecheck(*launch)
    device.racecheck(*launch, rtol=1e-6)  # 40 float32 additions of positive numbers


def test_version3_over_tensors_equals_over_the_flat_buffer():
    grads = make_inputs(gpt2_grad_shapes(), seed=10)
    per_tensor = op.squared_norm([device.asarray(g) for g in grads], version=3)
    flat = op.squared_norm(device.asarray(np.concatenate([g.ravel() for g in grads])), version=3)
    assert per_tensor == pytest.approx(flat, rel=1e-6)  # different partial sums, same value up to rounding


def test_checks():
    with pytest.raises(ValueError, match=r"global_norm3 loads float4: grads\[1\].size must be a multiple of 4, "
                                         r"got grads\[1\].size=37 \(use version 2\)"):
        op.squared_norm([device.zeros(48), device.zeros(37)], version=3)
    with pytest.raises(ValueError, match=r"global_norm3 loads float4: grads.size must be a multiple of 4, got grads.size=1001"):
        op.squared_norm(device.zeros(1001), version=3)
    with pytest.raises(ValueError, match=r"global_norm.forward: no version 0; the versions are \[1, 2, 3\]"):
        op.squared_norm(device.zeros(8), version=0)
    with pytest.raises(ValueError, match=r"global_norm2: `grads\[0\]` must be float32, got float64"):
        op.squared_norm([device.asarray(np.zeros(8))], version=2)
    with pytest.raises(ValueError, match=r"global_norm3: `out` must have shape \(1,\), got \(2,\)"):
        op.forward(device.zeros(2), device.zeros(8))
    for version in op.VERSIONS["forward"]:  # nothing to add up: 0, whatever out held
        out = device.asarray(np.ones(1, np.float32))
        op.forward(out, [device.zeros(0)], version=version)
        assert float(device.asnumpy(out)[0]) == 0.0 and op.squared_norm([], version=version) == 0.0


def test_clipping_through_grad_scale():
    # llm.c's way: norm on the device, clip coefficient on the host, applied inside the AdamW kernel.
    grads = make_inputs([(4 * 37,)], seed=11)[0] * np.float32(10)
    p = np.linspace(-1, 1, grads.size, dtype=np.float32)
    norm = np.sqrt(op.squared_norm(device.asarray(grads)))
    coef = op.clip_coefficient(norm, max_norm=1.0)
    assert coef < 1
    ref = [p.astype(np.float64), np.zeros(p.size), np.zeros(p.size)]
    p_d, m_d, v_d = device.asarray(p.copy()), device.zeros(p.size), device.zeros(p.size)
    adamw.update(p_d, device.asarray(grads), m_d, v_d, 1, grad_scale=coef, **HYPER)
    clipped = grads.astype(np.float64) * op.clip_coefficient(np.sqrt(op.global_norm_forward(grads)), 1.0)
    adamw.adamw_update(ref[0], clipped, ref[1], ref[2], 1, **HYPER)
    for what, out, r in zip(("param", "m", "v"), (p_d, m_d, v_d), ref):
        check(f"adamw clipped {what}", out, r, atol=1e-5 * float(np.abs(r).max()), rtol=1e-5)


def test_float4_alignment_is_checked_on_both_backends():
    storage = device.zeros(9)
    aligned, misaligned = storage[:8], storage[1:]
    with pytest.raises(ValueError, match=r"global_norm3 loads float4: `grads\[1\]` must start at a 16-byte aligned"):
        op.squared_norm([aligned, misaligned], version=3)
    assert op.squared_norm([aligned, misaligned], version=2) == 0.0  # version 2 reads floats: fine
