"""Finite differences in float64: the check that a hand-derived backward pass is right."""
from __future__ import annotations

import numpy as np


def numerical_gradient(f, x: np.ndarray, dout: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """d/dx of sum(f(x) * dout) by central differences; x and dout float64, x is restored."""
    if x.dtype != np.float64 or dout.dtype != np.float64:
        raise TypeError("finite differences need float64 inputs (float32 would drown the difference in rounding)")
    grad = np.zeros_like(x)
    flat, g = x.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        plus = np.sum(f(x) * dout)
        flat[i] = old - eps
        minus = np.sum(f(x) * dout)
        flat[i] = old
        g[i] = (plus - minus) / (2 * eps)
    return grad


def assert_gradient(name: str, analytic: np.ndarray, numeric: np.ndarray, rtol: float = 1e-6, atol: float = 1e-8):
    """The analytic gradient must match finite differences to within rtol of the gradient's scale."""
    scale = max(float(np.abs(numeric).max()), 1e-12)
    err = float(np.abs(analytic - numeric).max())
    if not err <= atol + rtol * scale:
        worst = np.unravel_index(int(np.argmax(np.abs(analytic - numeric))), numeric.shape)
        raise AssertionError(f"{name}: backward differs from finite differences by {err:.3g} (scale {scale:.3g}) "
                             f"at {tuple(int(i) for i in worst)}: analytic {analytic[worst]:.8g}, numeric {numeric[worst]:.8g}")
