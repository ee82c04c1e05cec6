"""The linear layer (matmul): out = x @ weight^T + bias, its backward pass, and the launch wrappers
of the kernel versions in cuda/matmul.cu.

Shapes (PyTorch's nn.Linear layout): x (..., C), weight (OC, C), bias (OC,) or None,
out (..., OC). The kernels see x as N = x.size // C rows of C.
"""
from __future__ import annotations

import numpy as np

from .. import ceil_div
from ..runtime import device
from . import checks

VERSIONS = {
    1: "naive: one thread per output element, loops over the inner dimension in global memory",
    2: "16x16 shared-memory tiles: each global load serves 16 threads; dbias: block tree reduction",
    3: "128x128 tiles, 8x8 outputs per thread in registers, float4 loads (C, OC multiples of 4)",
}

UNIT_ROUNDOFF = 2.0 ** -24  # float32: a single rounding errs by at most this, relatively

_INT_MAX = 2 ** 31 - 1


# ------------------------------------------------------------------------------------------------
# NumPy reference (dtype-generic: float32 in use, float64 for finite differences)
# ------------------------------------------------------------------------------------------------
def matmul_forward(x, weight, bias=None):
    """out[..., oc] = sum_c x[..., c] * weight[oc, c] + bias[oc]."""
    out = x @ weight.T
    if bias is not None:
        out = out + bias
    return out


def matmul_backward(dx, dweight, dbias, dout, x, weight) -> None:
    """Accumulate the gradients of out = x @ weight^T + bias, given dout = dL/dout:

        dx      += dout @ weight         (..., C)
        dweight += dout^T @ x            (OC, C): summed over all rows n
        dbias   += sum of dout over rows (OC,)     (skipped when dbias is None)
    """
    OC, C = weight.shape
    dout2 = dout.reshape(-1, OC)
    x2 = x.reshape(-1, C)
    dx += (dout2 @ weight).reshape(dx.shape)
    dweight += dout2.T @ x2
    if dbias is not None:
        dbias += dout2.sum(axis=0)


def rounding_bound(terms_abs_sum, n_terms: int) -> float:
    """The largest error float32 can make adding up `n_terms` terms (products, a bias, the old
    value of a gradient), in any order, with or without fused multiply-adds, when the sum of the
    terms' absolute values is `terms_abs_sum`: n_terms * 2^-24 * terms_abs_sum (the classic
    first-order bound, Higham, Accuracy and Stability of Numerical Algorithms, 3.1). Returned for
    the largest element, as one atol for the whole array."""
    return float(n_terms * UNIT_ROUNDOFF * np.max(terms_abs_sum, initial=0.0))


def forward_atol(x, weight, bias=None) -> float:
    """atol for checking a float32 forward against the float64 reference (see rounding_bound)."""
    x, weight = np.abs(np.asarray(x, np.float64)), np.abs(np.asarray(weight, np.float64))
    scale = matmul_forward(x, weight, None if bias is None else np.abs(np.asarray(bias, np.float64)))
    return rounding_bound(scale, weight.shape[1] + 1)


def backward_atols(dout, x, weight, dx0=None, dweight0=None, dbias0=None) -> tuple[float, float, float]:
    """atols for dx, dweight and dbias computed in float32 from float32 inputs, and added to
    gradients that held dx0, dweight0, dbias0 (None: zeros); accumulating adds one term to each sum."""
    OC, C = weight.shape
    dout = np.abs(np.asarray(dout, np.float64)).reshape(-1, OC)
    x = np.abs(np.asarray(x, np.float64)).reshape(-1, C)
    weight = np.abs(np.asarray(weight, np.float64))
    N = dout.shape[0]

    def old(a, shape):
        return 0.0 if a is None else np.abs(np.asarray(a, np.float64)).reshape(shape)

    return (rounding_bound(dout @ weight + old(dx0, (N, C)), OC + 1),
            rounding_bound(dout.T @ x + old(dweight0, (OC, C)), N + 1),
            rounding_bound(dout.sum(axis=0) + old(dbias0, (OC,)), N + 1))


# ------------------------------------------------------------------------------------------------
# Launch wrappers
# ------------------------------------------------------------------------------------------------
def module():
    """cuda/matmul.cu, compiled for the active backend (cached)."""
    return device.load_module("matmul.cu")


def _check_version(version, name):
    if version not in VERSIONS:
        raise ValueError(f"matmul {name}: version must be one of {sorted(VERSIONS)}, got {version!r}")


def _check_float4(kernel: str, C: int, OC: int, arrays: dict) -> None:
    """What version 3 needs: float4 loads and stores along C and OC, from 16-byte aligned memory."""
    if C % 4:
        raise ValueError(f"{kernel} loads float4 along C: C must be a multiple of 4, got C={C} "
                         f"(use version 1 or 2 for this shape)")
    if OC % 4:
        raise ValueError(f"{kernel} loads and stores float4 along OC: OC must be a multiple of 4, got OC={OC} "
                         f"(use version 1 or 2 for this shape)")
    checks.check_float4(kernel, "version 1 or 2", **arrays)


def _check_int_indices(name: str, **sizes) -> None:
    for what, size in sizes.items():
        if size > _INT_MAX:
            raise ValueError(f"{name} indexes with int: {what} has {size:,} elements, more than 2^31 - 1")


def _shapes(name, x, weight):
    if weight.ndim != 2:
        raise ValueError(f"{name}: weight must be 2-D (OC, C), got shape {tuple(weight.shape)}")
    OC, C = (int(s) for s in weight.shape)
    if x.ndim < 1 or x.shape[-1] != C:
        raise ValueError(f"{name}: x must have shape (..., C) with C={C} (weight is {tuple(weight.shape)}), "
                         f"got {tuple(x.shape)}")
    N = int(x.size) // C if C else 0
    if N == 0 or C == 0 or OC == 0:
        raise ValueError(f"{name}: empty shapes are not supported, got N={N}, C={C}, OC={OC}")
    return N, C, OC


def _expect(name, what, a, shape):
    if tuple(a.shape) != tuple(shape):
        raise ValueError(f"{name}: {what} must have shape {tuple(shape)}, got {tuple(a.shape)}")


def forward(out, x, weight, bias, version: int = 3) -> None:
    """out = x @ weight^T + bias with kernel `matmul_forward<version>` (bias may be None)."""
    _check_version(version, "forward")
    kernel = f"matmul_forward{version}"
    N, C, OC = _shapes(kernel, x, weight)
    _expect(kernel, "out", out, tuple(x.shape[:-1]) + (OC,))
    if bias is not None:
        _expect(kernel, "bias", bias, (OC,))
    _check_int_indices(kernel, x=N * C, weight=OC * C, out=N * OC)
    has_bias = bias is not None
    if not has_bias:
        bias = device.zeros(1)  # never read: has_bias = 0
    if version == 3:
        _check_float4(kernel, C, OC, dict(out=out, x=x, weight=weight, bias=bias if has_bias else None))
    _, grid, block = launches_forward(version, N, C, OC)
    module().get_function(kernel)(grid, block, (out, x, weight, bias, N, C, OC, int(has_bias)))


def launches_forward(version: int, N: int, C: int, OC: int):
    """(kernel name, grid, block) of a forward version: for racecheck and timing."""
    if version == 1:
        return "matmul_forward1", (ceil_div(OC, 32), ceil_div(N, 8)), (32, 8)
    if version == 2:
        return "matmul_forward2", (ceil_div(OC, 16), ceil_div(N, 16)), (16, 16)
    return "matmul_forward3", (ceil_div(OC, 128), ceil_div(N, 128)), (16, 16)


def launches_backward(version: int, N: int, C: int, OC: int):
    """[(gradient, kernel name, grid, block)] of a backward version, in the order they run."""
    if version == 1:
        return [("dx", "matmul_backward1_dx", (ceil_div(C, 32), ceil_div(N, 8)), (32, 8)),
                ("dweight", "matmul_backward1_dweight", (ceil_div(C, 32), ceil_div(OC, 8)), (32, 8)),
                ("dbias", "matmul_backward1_dbias", (ceil_div(OC, 256),), (256,))]
    dbias = ("dbias", "matmul_backward2_dbias", (ceil_div(OC, 32),), (32, 16))
    if version == 2:
        return [("dx", "matmul_backward2_dx", (ceil_div(C, 16), ceil_div(N, 16)), (16, 16)),
                ("dweight", "matmul_backward2_dweight", (ceil_div(C, 16), ceil_div(OC, 16)), (16, 16)), dbias]
    return [("dx", "matmul_backward3_dx", (ceil_div(C, 128), ceil_div(N, 128)), (16, 16)),
            ("dweight", "matmul_backward3_dweight", (ceil_div(C, 128), ceil_div(OC, 128)), (16, 16)), dbias]


def backward(dx, dweight, dbias, dout, x, weight, version: int = 3) -> None:
    """dx += dout @ weight, dweight += dout^T @ x, dbias += column sums of dout (dbias may be None),
    with the kernels of backward version `version`."""
    _check_version(version, "backward")
    name = f"matmul_backward{version}"
    N, C, OC = _shapes(name, x, weight)
    _expect(name, "dx", dx, x.shape)
    _expect(name, "dweight", dweight, weight.shape)
    _expect(name, "dout", dout, tuple(x.shape[:-1]) + (OC,))
    if dbias is not None:
        _expect(name, "dbias", dbias, (OC,))
    _check_int_indices(name, x=N * C, weight=OC * C, dout=N * OC)
    if version == 3:
        _check_float4(name, C, OC, dict(dx=dx, dweight=dweight, dout=dout, x=x, weight=weight))
    mod = module()
    args = dict(dx=(dx, dout, weight, N, C, OC), dweight=(dweight, dout, x, N, C, OC), dbias=(dbias, dout, N, OC))
    for grad, kernel, grid, block in launches_backward(version, N, C, OC):
        if grad == "dbias" and dbias is None:
            continue
        mod.get_function(kernel)(grid, block, args[grad])
