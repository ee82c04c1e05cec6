"""The NumPy backend's fast ops compute what the readable references compute."""
import math

import numpy as np
import pytest

from helpers.model import fast_numpy
from helpers.ops import adamw as adamw_ops, attention as attention_ops, classifier as classifier_ops, gelu as gelu_ops
from helpers.ops import layernorm as layernorm_ops, matmul as matmul_ops

rng = np.random.default_rng(0)


@pytest.fixture(params=[1, 2, 3], ids=lambda n: f"{n} threads")
def threads(request, monkeypatch):
    from concurrent.futures import ThreadPoolExecutor
    monkeypatch.setattr(fast_numpy, "THREADS", request.param)
    monkeypatch.setattr(fast_numpy, "_pool", ThreadPoolExecutor(request.param) if request.param > 1 else None)
    monkeypatch.setattr(fast_numpy, "MIN_PARALLEL", 1)
    monkeypatch.setattr(fast_numpy, "MIN_SPLIT", 1)     # (the products too are split however small)


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


@pytest.mark.parametrize("grad_scale,weight_decay", [(0.5, 0.1), (1.0, 0.0)])
def test_adamw(threads, grad_scale, weight_decay):
    p = rng.standard_normal(1001).astype(np.float32)
    g = rng.standard_normal(1001).astype(np.float32)
    m, v = np.zeros_like(p), np.zeros_like(p)
    ref = [a.astype(np.float64) for a in (p, m, v)]
    for t in (1, 2, 3):
        fast_numpy.adamw(p, g, m, v, t, 1e-2, 0.9, 0.95, 1e-8, weight_decay, grad_scale)
        adamw_ops.adamw_update(ref[0], g.astype(np.float64), ref[1], ref[2], t, 1e-2, 0.9, 0.95, 1e-8,
                               weight_decay, grad_scale)
    for got, want in zip((p, m, v), ref):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_numpy_wheel_blas_accumulates_in_place():
    """PyPI's NumPy (what pip install -e . installs) bundles OpenBLAS; its cblas_sgemm must be found, or
    matmul_backward silently takes the slower path."""
    assert fast_numpy._SGEMM is not None and fast_numpy._BLAS


@pytest.mark.parametrize("path", ["sgemm", "scratch blocks of 3 rows", "scratch blocks of 4096 rows"])
def test_matmul_backward_accumulates_what_the_reference_does(threads, path, monkeypatch):
    """dx, dweight: each element a dot product over the rows (or channels) plus what was there, within twice
    the matmul's rounding bound of the reference's (both are within it of the exact sum; cblas_sgemm adds the
    products to what was there in its own order, a block of rows may be summed otherwise). dbias: the
    reference's own sum, bit for bit. The scratch path (for a BLAS other than OpenBLAS) adds the same
    product as the reference: dx bit for bit."""
    if path == "sgemm":
        assert fast_numpy._SGEMM is not None
    else:
        monkeypatch.setattr(fast_numpy, "_SGEMM", None)
        monkeypatch.setattr(fast_numpy, "DW_BLOCK_ROWS", int(path.split()[-2]))
    x, w, dout = (rng.standard_normal(s).astype(np.float32) for s in [(3, 37, 48), (20, 48), (3, 37, 20)])
    start = [rng.standard_normal(s).astype(np.float32) for s in [(3, 37, 48), (20, 48), (20,)]]
    got, ref = [a.copy() for a in start], [a.copy() for a in start]
    fast_numpy.matmul_backward(*got, dout, x, w)
    matmul_ops.matmul_backward(*ref, dout, x, w)
    assert np.array_equal(got[2], ref[2])
    dx_terms = np.abs(dout) @ np.abs(w) + np.abs(start[0])
    dw_terms = np.abs(dout.reshape(-1, 20)).T @ np.abs(x.reshape(-1, 48)) + np.abs(start[1])
    assert np.abs(got[0] - ref[0]).max() <= 2 * matmul_ops.rounding_bound(dx_terms, 20 + 1)
    assert np.abs(got[1] - ref[1]).max() <= 2 * matmul_ops.rounding_bound(dw_terms, 3 * 37 + 1)
    if path != "sgemm":
        assert np.array_equal(got[0], ref[0])


@pytest.mark.parametrize("layout", ["plain", "a transposed", "b transposed", "c a block of columns", "strided a"])
def test_gemm_accumulate_reads_every_layout(threads, layout):
    """c += a @ b through cblas_sgemm for the views the model passes (transposed, a block of a wider c) and
    for one it cannot pass as is (copied first); split over the threads (MIN_SPLIT is 1 here)."""
    M, K, N = 33, 70, 45
    a, b = rng.standard_normal((M, K)).astype(np.float32), rng.standard_normal((K, N)).astype(np.float32)
    wide = rng.standard_normal((M, N + 10)).astype(np.float32)
    c = wide[:, 5:5 + N] if layout == "c a block of columns" else wide[:, :N].copy()
    if layout == "a transposed":
        a = np.ascontiguousarray(a.T).T
    if layout == "b transposed":
        b = np.ascontiguousarray(b.T).T
    if layout == "strided a":
        a = np.repeat(a, 2, axis=1)[:, ::2]
    want = c + a @ b
    before = wide.copy()
    fast_numpy.gemm_accumulate(c, a, b)
    bound = 2 * matmul_ops.rounding_bound(np.abs(a) @ np.abs(b) + np.abs(want), K + 1)
    assert np.abs(c - want).max() <= bound
    if layout == "c a block of columns":   # the columns around the block are untouched
        assert np.array_equal(wide[:, :5], before[:, :5]) and np.array_equal(wide[:, 5 + N:], before[:, 5 + N:])


def test_product_splits_over_the_threads_and_restores_the_blas_threads(threads):
    a, b = rng.standard_normal((40, 30)).astype(np.float32), rng.standard_normal((30, 50)).astype(np.float32)
    before = [lib.num_threads for lib in fast_numpy._BLAS]
    for shape_a, shape_b in ((a, b), (b.T.copy(), a.T.copy())):   # rows, then columns, split
        out = np.full((shape_a.shape[0], shape_b.shape[1]), np.nan, np.float32)
        fast_numpy.product(out, shape_a, shape_b)
        assert np.abs(out - shape_a @ shape_b).max() <= 2 * matmul_ops.rounding_bound(
            np.abs(shape_a) @ np.abs(shape_b), 30)
    assert [lib.num_threads for lib in fast_numpy._BLAS] == before


def test_residual_forward():
    a, b = rng.standard_normal((2, 3, 5, 8)).astype(np.float32)
    out = np.full_like(a, np.nan)
    fast_numpy.residual_forward(out, a, b)
    assert np.array_equal(out, a + b)


def test_adamw_blocks_do_not_change_the_bits(threads, monkeypatch):
    start = [rng.standard_normal(1001).astype(np.float32) for _ in range(3)]
    start[2] = np.abs(start[2])
    g = rng.standard_normal(1001).astype(np.float32)
    results = []
    for block in (7, 64, 1 << 16):
        monkeypatch.setattr(fast_numpy, "ADAMW_BLOCK", block)
        p, m, v = (a.copy() for a in start)
        for t in (1, 2):
            fast_numpy.adamw(p, g, m, v, t, 1e-2, 0.9, 0.95, 1e-8, 0.1, 0.5)
        results.append((p, m, v))
    for other in results[1:]:
        assert all(np.array_equal(a, b) for a, b in zip(results[0], other))


def test_attention_one_sequence_at_a_time_is_the_reference(threads):
    """The forward and the backward run the reference on each sequence: the same numbers (each sequence's
    products are BLAS calls on the same matrices), bit for bit on this BLAS; accumulated onto dqkv."""
    B, T, C, NH = 5, 9, 24, 3
    qkv = rng.standard_normal((B, T, 3 * C)).astype(np.float32)
    dout = rng.standard_normal((B, T, C)).astype(np.float32)
    out, att = np.full((B, T, C), np.nan, np.float32), np.full((B, NH, T, T), np.nan, np.float32)
    fast_numpy.attention_forward(out, att, qkv, NH)
    ref_out, ref_att = attention_ops.attention_forward(qkv, NH)
    np.testing.assert_array_equal(out, ref_out)
    np.testing.assert_array_equal(att, ref_att)
    start = rng.standard_normal(qkv.shape).astype(np.float32)
    got, ref = start.copy(), start.copy()
    fast_numpy.attention_backward(got, dout, qkv, att, NH)
    attention_ops.attention_backward(ref, dout, qkv, None, NH, att=ref_att)
    np.testing.assert_array_equal(got, ref)


def test_layernorm_over_the_cores(threads):
    """Forward: every row as the reference computes it, bit for bit. Backward: dx bit for bit (row by row);
    dweight and dbias sum the rows' terms in shares, within the rounding bound of n = rows + 1 terms."""
    x = rng.standard_normal((4, 7, 40)).astype(np.float32) * 3 + 1
    w, b = (rng.standard_normal(40).astype(np.float32) for _ in range(2))
    out, mean, rstd = np.empty_like(x), np.empty((4, 7), np.float32), np.empty((4, 7), np.float32)
    fast_numpy.layernorm_forward(out, mean, rstd, x, w, b)
    for got, want in zip((out, mean, rstd), layernorm_ops.layernorm_forward(x, w, b)):
        np.testing.assert_array_equal(got, want)
    dout = rng.standard_normal(x.shape).astype(np.float32)
    start = [rng.standard_normal(s).astype(np.float32) for s in (x.shape, (40,), (40,))]
    got, ref = [a.copy() for a in start], [a.copy() for a in start]
    fast_numpy.layernorm_backward(*got, dout, x, w, mean, rstd)
    layernorm_ops.layernorm_backward(*ref, dout, x, w, mean, rstd)
    np.testing.assert_array_equal(got[0], ref[0])
    xhat = np.abs((x - mean[..., None]) * rstd[..., None]).reshape(-1, 40)
    for k, terms in ((1, np.abs(dout).reshape(-1, 40) * xhat), (2, np.abs(dout).reshape(-1, 40))):
        bound = 2 * matmul_ops.rounding_bound(terms.sum(axis=0) + np.abs(start[k]), 28 + 1)
        assert np.abs(got[k] - ref[k]).max() <= bound


def test_norm_squared_within_its_rounding_bound(threads):
    """Each block's float32 dot product of positive terms is within NORM_BLOCK unit roundoffs (plus one for
    each square) of its exact sum, whatever order the BLAS adds in; the blocks' sums are added exactly."""
    flat = rng.standard_normal(3_000_001).astype(np.float32)
    exact = math.fsum((flat.astype(np.float64) ** 2).tolist())   # float64 squares of float32 are exact
    bound = (fast_numpy.NORM_BLOCK + 1) * 2.0 ** -24 * exact
    assert abs(fast_numpy.norm_squared(flat) - exact) <= bound


def test_norm_squared_is_the_same_at_any_address_and_thread_count(monkeypatch):
    """Ranks of a data-parallel run take the norm of the same values in buffers at different addresses:
    the BLAS's dot must not round differently with the alignment, nor the result with the thread split."""
    flat = rng.standard_normal(300_001).astype(np.float32)
    got = set()
    for offset in range(16):
        moved = np.empty(flat.size + 16, np.float32)[offset:offset + flat.size]
        moved[...] = flat
        got.add(fast_numpy.norm_squared(moved))
    monkeypatch.setattr(fast_numpy, "_pool", None)     # one thread
    got.add(fast_numpy.norm_squared(flat))
    assert len(got) == 1, got


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


def test_zero_clears_every_element(threads):
    flat = rng.standard_normal(100_003).astype(np.float32)
    fast_numpy.zero(flat)
    assert not flat.any() and not np.signbit(flat).any()


def test_gelu_blocks_do_not_change_the_bits(threads, monkeypatch):
    x = (3 * rng.standard_normal((5, 11, 24))).astype(np.float32)
    dout = rng.standard_normal(x.shape).astype(np.float32)
    results = []
    for block in (1, 50, 1 << 15):                # a row a block, a few rows, all of them
        monkeypatch.setattr(fast_numpy, "GELU_BLOCK", block)
        out, dx = np.full_like(x, np.nan), np.ones_like(x)
        fast_numpy.gelu_forward(out, x)
        fast_numpy.gelu_backward(dx, dout, x)
        results.append((out, dx))
    for other in results[1:]:
        assert all(np.array_equal(a, b) for a, b in zip(results[0], other))


@pytest.mark.parametrize("n_threads,launches", [(2, [2]), (4, [4]), (3, [3, 3])])
def test_matmul_backward_runs_its_two_products_side_by_side(monkeypatch, n_threads, launches):
    """dx and dweight at once, the threads shared equally (one block each on 2 threads); with threads
    that do not share out evenly, one product after the other, each over all the threads."""
    from concurrent.futures import ThreadPoolExecutor
    monkeypatch.setattr(fast_numpy, "THREADS", n_threads)
    monkeypatch.setattr(fast_numpy, "_pool", ThreadPoolExecutor(n_threads))
    monkeypatch.setattr(fast_numpy, "MIN_SPLIT", 1)
    seen, run = [], fast_numpy._on_the_cores
    monkeypatch.setattr(fast_numpy, "_on_the_cores", lambda calls: (seen.append(len(calls)), run(calls)))
    x, w = rng.standard_normal((2, 9, 16)).astype(np.float32), rng.standard_normal((24, 16)).astype(np.float32)
    dout = rng.standard_normal((2, 9, 24)).astype(np.float32)
    dx, dw, db = np.zeros_like(x), np.zeros_like(w), np.zeros(24, np.float32)
    fast_numpy.matmul_backward(dx, dw, db, dout, x, w)
    assert seen == launches
    bound = 2 * matmul_ops.rounding_bound(np.abs(dout.reshape(18, 24)) @ np.abs(w), 24)
    assert np.abs(dx.reshape(18, 16) - dout.reshape(18, 24) @ w).max() <= bound
