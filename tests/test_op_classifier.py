"""cuda/classifier.cu and helpers/ops/classifier.py: softmax, cross-entropy and their backward, unfused
(version 1) and fused (versions 2 and 3), against the NumPy reference, in every thread order.

Tolerances are llm.c's for the classifier, |ref - out| <= atol + rtol*|ref| with 1e-4: probabilities
and losses with atol = rtol = 1e-4; dlogits = (probs - onehot) * dloss is scaled by dloss = 1/(B*T),
so its atol is 1e-4 * dloss (the probabilities to 1e-4, on the gradient's own scale). The reference
runs in float64 on the float32 inputs. No kernel uses atomics: racecheck requires identical bits.
The bf16 version (4) has its own tolerances, derived at the end of the file.
"""
import ml_dtypes
import numpy as np
import pytest

from helpers import check
from helpers.ops import classifier
from helpers.runtime import cpu_backend, device
from helpers.runtime.launch_checks import check_config, convert_args
from helpers.teaching import gradcheck
from support import oversized

TOL = 1e-4

# (B, T, V, Vp): odd sizes, padded and unpadded vocabularies, a row shorter than a warp, a vocabulary of
# one token, and rows longer than a block (several columns per thread).
SHAPES = [(3, 37, 101, 103), (3, 37, 101, 104), (2, 5, 1001, 1004), (1, 3, 1, 4), (2, 3, 64, 64)]
FLOAT4_SHAPES = [s for s in SHAPES if s[3] % 4 == 0]


def make_inputs(B, T, V, Vp, seed=0):
    """Logits of a few scales, two rows shifted by +-100 (exp would overflow without the max), padded
    columns holding NaN or 1000 (a kernel that lets them into the softmax, or its max, fails loudly:
    fmaxf ignores a NaN), targets hitting 0 and V-1."""
    rng = np.random.default_rng(seed)
    logits = (rng.standard_normal((B, T, Vp)) * rng.uniform(0.5, 4.0, (B, T, 1))).astype(np.float32)
    logits[0, 0] += 100.0
    logits[-1, -1] -= 100.0
    logits[..., V:] = np.nan
    logits[:, 1::2, V:] = 1000.0
    targets = rng.integers(0, V, (B, T)).astype(np.int32)
    targets.flat[0], targets.flat[-1] = 0, V - 1
    return logits, targets, 1.0 / (B * T)


def reference(logits, targets, V, dloss):
    """float64 probs, losses, dlogits of the float32 inputs."""
    x = logits.astype(np.float64)
    probs = classifier.softmax_forward(x, V)
    losses, dlogits = classifier.classifier_forward(x, targets, V, dloss)
    return probs, losses, dlogits


def check_fused(name, losses, dlogits, ref_losses, ref_dlogits, dloss):
    check(f"{name} losses", losses, ref_losses, atol=TOL, rtol=TOL)
    check(f"{name} dlogits", dlogits, ref_dlogits, atol=TOL * dloss, rtol=TOL)


# ------------------------------------------------------------------------------------------------
# The NumPy reference
# ------------------------------------------------------------------------------------------------
def test_reference_softmax_and_loss():
    logits, targets, _ = make_inputs(2, 3, 7, 9)
    probs = classifier.softmax_forward(logits.astype(np.float64), 7)
    assert np.allclose(probs.sum(-1), 1.0) and (probs[..., 7:] == 0).all() and (probs[..., :7] > 0).all()
    z = logits[1, 2, :7].astype(np.float64)
    assert np.allclose(probs[1, 2, :7], np.exp(z) / np.exp(z).sum())
    losses = classifier.crossentropy_forward(probs, targets)
    assert np.isclose(losses[1, 2], -np.log(probs[1, 2, targets[1, 2]]))
    # all logits equal: the uniform distribution, a loss of log V
    uniform = classifier.crossentropy_forward(classifier.softmax_forward(np.zeros((1, 2, 12)), 10), targets[:1, :2])
    assert np.allclose(uniform, np.log(10))


@pytest.mark.parametrize("B, T, V, Vp", [(2, 3, 7, 9), (1, 2, 5, 5)])
def test_reference_backward_against_finite_differences(B, T, V, Vp):
    logits, targets, dloss = make_inputs(B, T, V, Vp, seed=1)
    x = np.nan_to_num(logits.astype(np.float64) / 50.0)  # moderate values; pads 0 (they must not matter)
    _, dlogits = classifier.classifier_forward(x, targets, V, dloss)

    def losses_of(z):
        return classifier.crossentropy_forward(classifier.softmax_forward(z, V), targets)

    numeric = gradcheck.numerical_gradient(losses_of, x, np.full((B, T), dloss))  # d(mean loss)/dlogits
    gradcheck.assert_gradient("classifier backward", dlogits, numeric)
    assert (dlogits[..., V:] == 0).all()


def test_reference_backward_accumulates():
    logits, targets, dloss = make_inputs(2, 3, 7, 8)
    probs = classifier.softmax_forward(logits.astype(np.float64), 7)
    start = np.random.default_rng(2).standard_normal(probs.shape)
    dlogits = start.copy()
    assert classifier.crossentropy_softmax_backward(dlogits, probs, targets, dloss) is None
    _, fresh = classifier.classifier_forward(logits.astype(np.float64), targets, 7, dloss)
    assert np.allclose(dlogits, start + fresh)


# ------------------------------------------------------------------------------------------------
# Version 1: three kernels
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("B, T, V, Vp", SHAPES)
def test_version1_against_reference(B, T, V, Vp):
    logits, targets, dloss = make_inputs(B, T, V, Vp)
    ref_probs, ref_losses, ref_dlogits = reference(logits, targets, V, dloss)
    logits, targets = device.asarray(logits), device.asarray(targets)
    probs, losses = device.empty((B, T, Vp)), device.empty((B, T))
    # dlogits holds something: the kernels WRITE it (as the fused versions do), they do not add to it
    dlogits = device.asarray(np.random.default_rng(3).standard_normal((B, T, Vp)).astype(np.float32))
    classifier.forward(losses, dlogits, logits, targets, V, dloss, version=1, probs=probs)
    check("softmax_forward1", probs, ref_probs, atol=TOL, rtol=TOL)
    assert (device.asnumpy(probs)[..., V:] == 0).all(), "padded columns must hold probability 0"
    check("crossentropy_forward1", losses, ref_losses, atol=TOL, rtol=TOL)
    check("crossentropy_softmax_backward1", dlogits, ref_dlogits, atol=TOL * dloss, rtol=TOL)


def test_version1_racecheck():
    B, T, V, Vp = 3, 37, 101, 103
    logits, targets, dloss = make_inputs(B, T, V, Vp)
    logits, targets = device.asarray(logits), device.asarray(targets)
    args = (device.empty((B, T)), device.empty((B, T, Vp)), logits, targets, V, dloss)
    launches = classifier.launches("forward", *args, version=1, probs=device.empty((B, T, Vp)))
    assert [launch.name for launch in launches] == ["softmax_forward1", "crossentropy_forward1",
                                                    "crossentropy_softmax_backward1"]
    for launch in launches:  # each reads what the one before wrote
        device.racecheck(*launch)
        launch()


# ------------------------------------------------------------------------------------------------
# Versions 2 and 3: fused
# ------------------------------------------------------------------------------------------------
VERSIONS = sorted(v for v, line in classifier.VERSIONS["forward"].items() if not line.startswith("bf16:"))  # float32
BF16 = sorted(v for v, line in classifier.VERSIONS["forward"].items() if line.startswith("bf16:"))
FUSED = VERSIONS[1:]   # version 1 is three kernels; the others one block per row
FUSED_CASES = [(v, s) for v in FUSED for s in (FLOAT4_SHAPES if "float4" in classifier.VERSIONS["forward"][v] else SHAPES)]


@pytest.mark.parametrize("version, shape", FUSED_CASES)
def test_fused_against_reference(version, shape):
    B, T, V, Vp = shape
    logits, targets, dloss = make_inputs(B, T, V, Vp)
    _, ref_losses, ref_dlogits = reference(logits, targets, V, dloss)
    logits, targets = device.asarray(logits), device.asarray(targets)
    losses, dlogits = device.empty((B, T)), device.empty((B, T, Vp))
    classifier.forward(losses, dlogits, logits, targets, V, dloss, version=version)
    check_fused(f"fused_classifier{version}", losses, dlogits, ref_losses, ref_dlogits, dloss)
    assert (device.asnumpy(dlogits)[..., V:] == 0).all(), "padded columns must get gradient 0"


@pytest.mark.parametrize("version", FUSED)
@pytest.mark.parametrize("block_size", [32, 96, 1024])
def test_fused_block_sizes(version, block_size):
    B, T, V, Vp = 2, 3, 1001, 1004  # 32 threads: 32 columns each; 1024: more threads than columns
    logits, targets, dloss = make_inputs(B, T, V, Vp, seed=4)
    _, ref_losses, ref_dlogits = reference(logits, targets, V, dloss)
    logits, targets = device.asarray(logits), device.asarray(targets)
    losses, dlogits = device.empty((B, T)), device.empty((B, T, Vp))
    classifier.forward(losses, dlogits, logits, targets, V, dloss, version=version, block_size=block_size)
    check_fused(f"fused_classifier{version} ({block_size} threads)", losses, dlogits, ref_losses, ref_dlogits, dloss)


@pytest.mark.parametrize("version", FUSED)
def test_fused_racecheck(version):
    B, T, V, Vp = 3, 37, 101, 104
    logits, targets, dloss = make_inputs(B, T, V, Vp)
    logits, targets = device.asarray(logits), device.asarray(targets)
    [launch] = classifier.launches("forward", device.empty((B, T)), device.empty((B, T, Vp)), logits, targets, V,
                                   dloss, version=version, block_size=64)
    device.racecheck(*launch)


def run_in_every_order(launch):
    """Like device.racecheck, but keeping arrays that are passed twice as ONE array (racecheck copies each
    argument separately, so it cannot see an in-place kernel's aliasing); returns the results per order."""
    fn = launch.fn
    grid, block, smem = check_config(fn.kernel, launch.grid, launch.block, launch.shared_mem)
    results = []
    for schedule, seed in device.RACECHECK_SCHEDULES:
        copies = {}
        args = [copies.setdefault(id(a), a.copy()) if isinstance(a, np.ndarray) else a for a in launch.args]
        args = convert_args(fn.kernel, args, "cpu", (np.ndarray,), ())
        cpu_backend.launch(fn.module._library, fn.kernel, fn.name, grid, block, smem, args,
                           schedule=schedule, seed=seed, n_workers=1)
        results.append(list(copies.values()))  # each distinct array once, in argument order
    return results


@pytest.mark.parametrize("version, shape", [(1, (3, 37, 101, 103)), (2, (3, 37, 101, 103)), (3, (3, 37, 101, 104)),
                                            (2, (2, 3, 1001, 1004))])
def test_in_place(version, shape):
    """dlogits written over the logits (llm.c's memory saving): the same bits as out of place, in every order."""
    B, T, V, Vp = shape
    logits, targets, dloss = make_inputs(B, T, V, Vp)
    _, ref_losses, ref_dlogits = reference(logits, targets, V, dloss)
    targets_d = device.asarray(targets)
    out_losses, out_dlogits = device.empty((B, T)), device.empty((B, T, Vp))
    probs = dict(probs=device.empty((B, T, Vp))) if version == 1 else {}
    classifier.forward(out_losses, out_dlogits, device.asarray(logits), targets_d, V, dloss, version=version,
                       block_size=64, **probs)
    out_losses, out_dlogits = device.asnumpy(out_losses), device.asnumpy(out_dlogits)

    buf, losses = device.asarray(logits.copy()), device.empty((B, T))
    classifier.forward(losses, buf, buf, targets_d, V, dloss, version=version, block_size=64, **probs)
    check_fused(f"fused_classifier{version} in place", losses, buf, ref_losses, ref_dlogits, dloss)
    assert np.array_equal(device.asnumpy(buf), out_dlogits) and np.array_equal(device.asnumpy(losses), out_losses)

    if device.name == "cpu" and version > 1:
        [launch] = classifier.launches("forward", device.empty((B, T)), logits, logits, targets, V, dloss,
                                       version=version, block_size=64)
        for got_losses, got_buf, _ in run_in_every_order(launch):
            assert np.array_equal(got_buf, out_dlogits) and np.array_equal(got_losses, out_losses)


def test_in_place_order_check_catches_llmc_race(tmp_path):
    """The check above would catch llm.c's old bug: thread 0 reading logits[target] for the loss while the
    other threads already overwrite the row (the fix was a __syncthreads(); our kernels need none)."""
    src = tmp_path / "racy_classifier.cu"
    src.write_text(classifier.module().source.replace(
        "    // pass 2: read the row again", """\
    if (threadIdx.x == 0) {
        float xt = x[target];  // llm.c's first version: no barrier after this read
        losses[n] = logf(s) - (xt - m);
    }
    // pass 2: read the row again""").replace("*loss = logf(s) - (x - m);", ""))
    fn = device.load_module(src, backend="cpu").get_function("fused_classifier2")
    B, T, V, Vp = 1, 4, 200, 200
    logits, targets, dloss = make_inputs(B, T, V, Vp)
    targets[:] = 150  # a column that thread 0 does not own
    # (host arrays: this module runs on the CPU backend whatever the active backend is)
    launch = classifier.Launch(fn, (B * T,), (64,), (np.full((B, T), np.nan, np.float32), logits, logits, targets,
                                                     dloss, V, Vp))
    results = run_in_every_order(launch)
    assert not all(np.array_equal(r[0], results[0][0]) for r in results[1:]), "the race should show in some order"


# ------------------------------------------------------------------------------------------------
# Shape assumptions: clear errors, never a silent wrong answer
# ------------------------------------------------------------------------------------------------
def device_inputs(*shape, seed=0):
    logits, targets, dloss = make_inputs(*shape, seed=seed)
    return device.asarray(logits), device.asarray(targets), dloss


def test_float4_version_needs_vp_multiple_of_4():
    logits, targets, dloss = device_inputs(3, 37, 101, 103)
    with pytest.raises(ValueError, match=r"fused_classifier3 loads float4: Vp .* must be a multiple of 4, got .*=103"):
        classifier.forward(device.empty((3, 37)), device.empty((3, 37, 103)), logits, targets, 101, dloss, version=3)


@pytest.mark.parametrize("block_size", [100, 16, 2048])
def test_fused_needs_whole_warps(block_size):
    logits, targets, dloss = device_inputs(1, 2, 10, 12)
    with pytest.raises(ValueError, match=rf"fused_classifier2.* block_size must be .*got {block_size}"):
        classifier.forward(device.empty((1, 2)), device.empty((1, 2, 12)), logits, targets, 10, dloss, version=2,
                           block_size=block_size)


@pytest.mark.parametrize("version", VERSIONS)
def test_v_must_fit_the_logits(version):
    logits, targets, dloss = device_inputs(1, 2, 10, 12)
    for V in (0, 13):
        with pytest.raises(ValueError, match=rf"V \(the real vocabulary\) must be in \[1, Vp=12\].*got V={V}"):
            classifier.forward(device.empty((1, 2)), device.empty((1, 2, 12)), logits, targets, V, dloss,
                               version=version, probs=device.empty((1, 2, 12)))


@pytest.mark.parametrize("version", VERSIONS)
def test_targets_must_be_real_tokens(version):
    logits, _, dloss = make_inputs(1, 2, 10, 12)
    for bad in (10, -1):  # a padded column; not a token at all
        targets = np.array([[3, bad]], np.int32)
        with pytest.raises(ValueError, match=r"targets must be token ids in \[0, V=10\), found values in "
                                             rf"\[{min(3, bad)}, {max(3, bad)}\]"):
            classifier.forward(device.empty((1, 2)), device.empty((1, 2, 12)), device.asarray(logits),
                               device.asarray(targets), 10, dloss, version=version, probs=device.empty((1, 2, 12)))


def test_shapes_and_dtypes_are_checked():
    logits, targets, dloss = device_inputs(2, 3, 10, 12)
    losses, dlogits = device.empty((2, 3)), device.empty((2, 3, 12))
    with pytest.raises(ValueError, match=r"`losses` must have shape \(2, 3\), got \(3, 2\)"):
        classifier.forward(device.empty((3, 2)), dlogits, logits, targets, 10, dloss)
    with pytest.raises(ValueError, match=r"`dlogits` must have shape \(2, 3, 12\), got \(2, 3, 11\)"):
        classifier.forward(losses, device.empty((2, 3, 11)), logits, targets, 10, dloss)
    with pytest.raises(ValueError, match=r"`targets` must be int32, got int64"):
        classifier.forward(losses, dlogits, logits, targets.astype(np.int64), 10, dloss)
    with pytest.raises(ValueError, match=r"`logits` must be float32, got float64"):
        classifier.forward(losses, dlogits, logits.astype(np.float64), targets, 10, dloss)
    with pytest.raises(ValueError, match=r"`logits` must have 3 dimensions, got shape \(6, 12\)"):
        classifier.forward(losses, dlogits, logits.reshape(6, 12), targets, 10, dloss)
    with pytest.raises(ValueError, match=r"classifier version 1: `probs` is required, a float32 array of shape "
                                         r"\(2, 3, 12\)"):
        classifier.forward(losses, dlogits, logits, targets, 10, dloss, version=1)
    with pytest.raises(ValueError, match=r"classifier.forward: no version 5; the versions are \[1, 2, 3, 4\]"):
        classifier.forward(losses, dlogits, logits, targets, 10, dloss, version=5)


def test_version1_refuses_sizes_past_32_bit_indices():
    B, T, V, Vp = 1, 2**16, 10, 2**15 + 4   # B*T*Vp = 2,147,745,792 (views over one float: never launched)
    args = (device.empty((B, T)), oversized((B, T, Vp)), oversized((B, T, Vp)), device.zeros((B, T), np.int32))
    with pytest.raises(ValueError, match=r"classifier version 1 indexes with 32-bit ints: B\*T\*Vp = 2,147,745,792"):
        classifier.forward(*args, V, 1.0, version=1, probs=oversized((B, T, Vp)))


def test_versions_are_listed():
    assert sorted(classifier.VERSIONS["forward"]) == [1, 2, 3, 4] and VERSIONS == [1, 2, 3] and BF16 == [4]


# ------------------------------------------------------------------------------------------------
# Version 4: bf16 logits and dlogits, float32 softmax and losses
# ------------------------------------------------------------------------------------------------
BF = ml_dtypes.bfloat16
U_BF16 = 2.0**-8   # unit roundoff of bf16 (8 significant bits), round to nearest: |rnd(x) - x| <= u |x|
# Vp a multiple of 8: a padded last chunk (101 of 104, 1001 of 1008), no padding (64), one token, and
# rows of more 8-column chunks than a block of 512 threads has (5008 = 626 chunks).
BF16_SHAPES = [(3, 37, 101, 104), (2, 5, 1001, 1008), (1, 3, 1, 8), (2, 3, 64, 64), (1, 2, 5000, 5008)]


def bf16_inputs(B, T, V, Vp, seed=0):
    """make_inputs' logits rounded to bf16 (the NaN and 1000 pads stay), on the host."""
    logits, targets, dloss = make_inputs(B, T, V, Vp, seed)
    return logits.astype(BF), targets, dloss


def check_bf16(name, losses, dlogits, logits, targets, V, dloss):
    """Version 4 against the float64 reference of its bf16 logits upcast (exactly).

    The float32 computation obeys the float32 versions' bound e32 (the module docstring: TOL + TOL |loss| for
    the losses, TOL dloss + TOL |d| for the gradients), as version 4 does version 3's float32 arithmetic on
    the same values. The losses stay float32: e32. Each gradient d32 is rounded once to bf16:
    |rnd(d32) - d| <= u |d32| + e32 <= u |d| + (1 + u) e32. (A padded column is 0 exactly.)"""
    _, ref_losses, ref_dlogits = reference(logits.astype(np.float32), targets, V, dloss)
    got = device.asnumpy(dlogits).astype(np.float64)
    bound = U_BF16 * np.abs(ref_dlogits) + (1 + U_BF16) * (TOL * dloss + TOL * np.abs(ref_dlogits))
    err = np.abs(got - ref_dlogits)
    print(f"{name} dlogits: max abs error {err.max():.2e}, at most {(err / bound).max():.2f} of its bound")
    assert (err <= bound).all(), f"{name}: {int((~(err <= bound)).sum())} gradients outside their bound"
    check(f"{name} losses", losses, ref_losses, atol=TOL, rtol=TOL)
    assert device.asnumpy(losses).dtype == np.float32 and device.asnumpy(dlogits).dtype == BF
    assert (device.asnumpy(dlogits)[..., V:].view(np.uint16) == 0).all(), "padded columns must get gradient +0"


def bf16_ulps(a, b):
    """How many bf16 steps apart two bf16 arrays are, elementwise (0: the same bits)."""
    def ordered(x):
        bits = np.ascontiguousarray(x).view(np.uint16).astype(np.int64)
        return np.where(bits & 0x8000, -(bits & 0x7FFF), bits)   # sign-magnitude onto a line (+0 = -0)
    return np.abs(ordered(a) - ordered(b))


@pytest.mark.parametrize("shape", BF16_SHAPES)
def test_bf16_against_reference(shape):
    B, T, V, Vp = shape
    logits, targets, dloss = bf16_inputs(B, T, V, Vp)
    losses, dlogits = device.empty((B, T)), device.empty((B, T, Vp), BF)
    classifier.forward(losses, dlogits, device.asarray(logits), device.asarray(targets), V, dloss, version=4)
    check_bf16(f"fused_classifier4 {shape}", losses, dlogits, logits, targets, V, dloss)


@pytest.mark.parametrize("shape", [(3, 37, 101, 104), (2, 5, 1001, 1008)])
def test_bf16_is_a_float32_result_rounded_once(shape):
    """dlogits is version 3's float32 gradient (on the same values: the bf16 logits as float32) rounded by
    ml_dtypes to bf16, to within one bf16 step: the two kernels add the exponentials up in different orders
    (8 columns per thread instead of 4), so their float32 sums differ in the last bits, and a gradient near
    a rounding boundary may round the other way. The losses agree to float32 rounding."""
    B, T, V, Vp = shape
    logits, targets, dloss = bf16_inputs(B, T, V, Vp, seed=5)
    targets_d = device.asarray(targets)
    losses4, dlogits4 = device.empty((B, T)), device.empty((B, T, Vp), BF)
    classifier.forward(losses4, dlogits4, device.asarray(logits), targets_d, V, dloss, version=4)
    losses3, dlogits3 = device.empty((B, T)), device.empty((B, T, Vp))
    classifier.forward(losses3, dlogits3, device.asarray(logits.astype(np.float32)), targets_d, V, dloss, version=3)
    steps = bf16_ulps(device.asnumpy(dlogits4), device.asnumpy(dlogits3).astype(BF))
    assert steps.max() <= 1 and (steps == 0).mean() > 0.99, (steps.max(), (steps == 0).mean())
    check("fused_classifier4 losses against version 3's", losses4, losses3, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("block_size", [32, 96, 1024])
def test_bf16_block_sizes(block_size):
    B, T, V, Vp = 2, 3, 1001, 1008   # 32 threads: 4 chunks each; 1024: more threads than chunks
    logits, targets, dloss = bf16_inputs(B, T, V, Vp, seed=4)
    losses, dlogits = device.empty((B, T)), device.empty((B, T, Vp), BF)
    classifier.forward(losses, dlogits, device.asarray(logits), device.asarray(targets), V, dloss, version=4,
                       block_size=block_size)
    check_bf16(f"fused_classifier4 ({block_size} threads)", losses, dlogits, logits, targets, V, dloss)


@pytest.mark.parametrize("shape", [(3, 37, 101, 104), (1, 2, 5000, 5008)])
def test_bf16_racecheck(shape):
    B, T, V, Vp = shape
    logits, targets, dloss = bf16_inputs(B, T, V, Vp)
    [launch] = classifier.launches("forward", device.empty((B, T)), device.empty((B, T, Vp), BF),
                                   device.asarray(logits), device.asarray(targets), V, dloss, version=4, block_size=64)
    device.racecheck(*launch)


@pytest.mark.parametrize("shape", [(3, 37, 101, 104), (2, 3, 1001, 1008)])
def test_bf16_in_place(shape):
    """dlogits written over the bf16 logits: the same bits as out of place, in every thread order."""
    B, T, V, Vp = shape
    logits, targets, dloss = bf16_inputs(B, T, V, Vp)
    targets_d = device.asarray(targets)
    out_losses, out_dlogits = device.empty((B, T)), device.empty((B, T, Vp), BF)
    classifier.forward(out_losses, out_dlogits, device.asarray(logits.copy()), targets_d, V, dloss, version=4,
                       block_size=64)
    out_losses, out_dlogits = device.asnumpy(out_losses), device.asnumpy(out_dlogits)
    buf, losses = device.asarray(logits.copy()), device.empty((B, T))
    classifier.forward(losses, buf, buf, targets_d, V, dloss, version=4, block_size=64)
    check_bf16("fused_classifier4 in place", losses, buf, logits, targets, V, dloss)
    assert np.array_equal(device.asnumpy(buf).view(np.uint16), out_dlogits.view(np.uint16))
    assert np.array_equal(device.asnumpy(losses), out_losses)
    if device.name == "cpu":
        [launch] = classifier.launches("forward", device.empty((B, T)), logits, logits, targets, V, dloss,
                                       version=4, block_size=64)
        for got_losses, got_buf, _ in run_in_every_order(launch):
            assert np.array_equal(got_buf.view(np.uint16), out_dlogits.view(np.uint16))
            assert np.array_equal(got_losses, out_losses)


def test_bf16_checks_targets_unless_told_not_to():
    logits, _, dloss = bf16_inputs(1, 2, 10, 16)
    args = (device.empty((1, 2)), device.empty((1, 2, 16), BF), device.asarray(logits),
            device.asarray(np.array([[3, 10]], np.int32)), 10, dloss)
    with pytest.raises(ValueError, match=r"fused_classifier4: targets must be token ids in \[0, V=10\), found values "
                                         r"in \[3, 10\]"):
        classifier.forward(*args, version=4)
    classifier.launches("forward", *args, version=4, check_targets=False)   # (checked by the caller)


def test_bf16_version_needs_vp_multiple_of_8_and_aligned_rows():
    logits, targets, dloss = bf16_inputs(2, 5, 1001, 1004)   # a multiple of 4, not of 8
    with pytest.raises(ValueError, match=r"fused_classifier4 loads 8 bf16 \(16 bytes\) at a time: Vp \(the last "
                                         r"dimension of the logits\) must be a multiple of 8, got .*=1004 \(use a "
                                         r"vocabulary padded as llm.c's Vp=50304, or version 3 on float32 arrays"):
        classifier.forward(device.empty((2, 5)), device.empty((2, 5, 1004), BF), device.asarray(logits),
                           device.asarray(targets), 1001, dloss, version=4)
    B, T, V, Vp = 1, 2, 10, 16
    logits, targets, dloss = bf16_inputs(B, T, V, Vp)
    flat = device.zeros(B * T * Vp + 1, BF)
    view = flat[1:].reshape(B, T, Vp)   # 2 bytes past a 16-byte boundary
    for name in ("logits", "dlogits"):
        arrays = dict(logits=device.asarray(logits), dlogits=device.empty((B, T, Vp), BF))
        arrays[name] = view
        with pytest.raises(ValueError, match=rf"fused_classifier4 loads 16 bytes at a time: `{name}` must start at a "
                                             r"16-byte aligned address, but it starts 2 bytes past one"):
            classifier.forward(device.empty((B, T)), arrays["dlogits"], arrays["logits"], device.asarray(targets), V,
                               dloss, version=4)


def test_bf16_and_float32_arrays_go_to_their_versions():
    B, T, V, Vp = 1, 2, 10, 16
    logits, targets, dloss = bf16_inputs(B, T, V, Vp)
    logits_d, targets_d, losses = device.asarray(logits), device.asarray(targets), device.empty((B, T))
    with pytest.raises(ValueError, match=r"fused_classifier3: `logits` must be float32, got bfloat16 \(a bf16 array: "
                                         r"the bf16 versions take it"):
        classifier.forward(losses, device.empty((B, T, Vp)), logits_d, targets_d, V, dloss, version=3)
    with pytest.raises(ValueError, match=r"fused_classifier4: `logits` must be bfloat16, got float32 \(use a bf16 "
                                         r"version's float32 counterpart, or \.astype\(ml_dtypes\.bfloat16\)\)"):
        classifier.forward(losses, device.empty((B, T, Vp), BF), device.asarray(logits.astype(np.float32)), targets_d,
                           V, dloss, version=4)
    with pytest.raises(ValueError, match=r"fused_classifier4: `dlogits` must be bfloat16, got float32"):
        classifier.forward(losses, device.empty((B, T, Vp)), logits_d, targets_d, V, dloss, version=4)
    with pytest.raises(ValueError, match=r"fused_classifier4: `losses` must be float32, got bfloat16"):
        classifier.forward(device.empty((B, T), BF), device.empty((B, T, Vp), BF), logits_d, targets_d, V, dloss,
                           version=4)
