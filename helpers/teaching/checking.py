"""Checking kernel outputs against NumPy references, with llm.c's rule |ref - out| <= atol + rtol*|ref|."""
from __future__ import annotations

import numpy as np

from ..runtime.device import asnumpy

FLT_EPSILON = float(np.finfo(np.float32).eps)


def check(name: str, out, ref, atol: float = 1e-5, rtol: float = FLT_EPSILON) -> float:
    """Compare `out` (either backend's array) with `ref`; print one line; raise AssertionError if off.

    Every element must satisfy |ref - out| <= atol + rtol * |ref|; NaN or inf where the reference
    is finite always fails. Returns the largest absolute error."""
    out = np.asarray(asnumpy(out), dtype=np.float64)
    ref = np.asarray(asnumpy(ref), dtype=np.float64)
    if out.shape != ref.shape:
        raise AssertionError(f"{name}: shape {out.shape} does not match the reference's {ref.shape}")
    err = np.abs(out - ref)
    err = np.where(np.isnan(err) & ~(np.isnan(out) & np.isnan(ref)), np.inf, err)
    err = np.where(np.isnan(out) & np.isnan(ref), 0.0, err)
    bound = atol + rtol * np.abs(ref)
    bad = ~(err <= bound)
    max_err = float(err.max()) if err.size else 0.0
    verdict = "FAILED" if bad.any() else "OK"
    print(f"{name}: max abs error {max_err:.2e} (atol {atol:g}, rtol {rtol:.2g}) {verdict}")
    if bad.any():
        excess = np.where(bad, err - bound, -np.inf)
        worst = np.unravel_index(int(np.argmax(excess)), err.shape)
        idx = tuple(int(i) for i in worst)
        raise AssertionError(
            f"{name}: {int(bad.sum())} of {bad.size} elements are outside |ref - out| <= {atol:g} + {rtol:.2g}*|ref|; "
            f"worst at index {idx}: out={float(out[worst])!r}, ref={float(ref[worst])!r}, |error|={float(err[worst]):.3g}")
    return max_err
