"""The NumPy backend's fast ops compute what the readable references compute."""
import numpy as np
import pytest

from helpers.model import fast_numpy
from helpers.ops import adamw as adamw_ops, classifier as classifier_ops, gelu as gelu_ops, matmul as matmul_ops

rng = np.random.default_rng(0)


@pytest.fixture(params=[1, 2, 3], ids=lambda n: f"{n} threads")
def threads(request, monkeypatch):
    from concurrent.futures import ThreadPoolExecutor
    monkeypatch.setattr(fast_numpy, "THREADS", request.param)
    monkeypatch.setattr(fast_numpy, "_pool", ThreadPoolExecutor(request.param) if request.param > 1 else None)
    monkeypatch.setattr(fast_numpy, "MIN_PARALLEL", 1)


def test_matmul(threads):
    x, w, b = (rng.standard_normal(s).astype(np.float32) for s in [(3, 37, 48), (20, 48), (20,)])
    out = np.empty((3, 37, 20), np.float32)
    fast_numpy.matmul_forward(out, x, w, b)
    np.testing.assert_allclose(out, matmul_ops.matmul_forward(x, w, b), rtol=1e-5, atol=1e-5)


def test_gelu_forward_and_backward(threads):
    x = rng.uniform(-6, 6, (5, 7, 24)).astype(np.float32)
    dout = rng.standard_normal(x.shape).astype(np.float32)
    out = np.empty_like(x)
    fast_numpy.gelu_forward(out, x)
    np.testing.assert_allclose(out, gelu_ops.gelu_forward(x.astype(np.float64)), rtol=1e-5, atol=1e-6)
    dx, ref = np.full_like(x, 0.5), np.full(x.shape, 0.5)
    fast_numpy.gelu_backward(dx, dout, x)
    gelu_ops.gelu_backward(ref, dout.astype(np.float64), x.astype(np.float64))
    np.testing.assert_allclose(dx, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("V,Vp", [(101, 128), (64, 64)])
def test_classifier(threads, V, Vp):
    logits = (3 * rng.standard_normal((3, 7, Vp))).astype(np.float32)
    logits[..., V:] = 5.0  # garbage in the padded columns must not count
    targets = rng.integers(0, V, (3, 7)).astype(np.int32)
    losses, dlogits = np.zeros((3, 7), np.float32), np.full_like(logits, np.nan)
    fast_numpy.classifier(losses, dlogits, logits, targets, V, 1 / 21)
    ref_losses, ref_d = classifier_ops.classifier_forward(logits.astype(np.float64), targets, V, 1 / 21)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dlogits, ref_d, rtol=1e-4, atol=1e-8)
    assert not dlogits[..., V:].any()


def test_adamw(threads):
    p = rng.standard_normal(1001).astype(np.float32)
    g = rng.standard_normal(1001).astype(np.float32)
    m, v = np.zeros_like(p), np.zeros_like(p)
    ref = [a.astype(np.float64) for a in (p, m, v)]
    for t in (1, 2, 3):
        fast_numpy.adamw(p, g, m, v, t, 1e-2, 0.9, 0.95, 1e-8, 0.1, 0.5)
        adamw_ops.adamw_update(ref[0], g.astype(np.float64), ref[1], ref[2], t, 1e-2, 0.9, 0.95, 1e-8, 0.1, 0.5)
    for got, want in zip((p, m, v), ref):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_norm_squared():
    flat = rng.standard_normal(3_000_001).astype(np.float32)
    assert fast_numpy.norm_squared(flat) == pytest.approx(float(np.sum(flat.astype(np.float64) ** 2)), rel=1e-12)


def test_numpy_gives_no_huge_page_advice_unless_asked():
    """helpers.model.fast_numpy turns NumPy's madvise(hugepage) off (the first training step took 2-3x
    longer with it), and leaves NumPy's own NUMPY_MADVISE_HUGEPAGE setting alone."""
    import os
    import subprocess
    import sys
    code = ("import helpers.model.fast_numpy\nfrom numpy._core.multiarray import _set_madvise_hugepage\n"
            "print(_set_madvise_hugepage(False))")
    env = {k: v for k, v in os.environ.items() if k != "NUMPY_MADVISE_HUGEPAGE"}
    plain = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert plain.stdout.strip() == "False"
    asked = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**env, "NUMPY_MADVISE_HUGEPAGE": "1"})
    assert asked.stdout.strip() == "True"
