"""The linear layer (matmul): out = x @ weight^T + bias, its backward pass, and the launch wrappers
of the kernel versions in cuda/matmul.cu.

Shapes (PyTorch's nn.Linear layout): x (..., C), weight (OC, C), bias (OC,) or None,
out (..., OC). The kernels see x as N = x.size // C rows of C.

Besides the references, `forward_atol` and `backward_atols` derive the tolerances of a float32
result from the inputs (the rounding-error bound of a sum of products).

Kernels: cuda/matmul.cu · notebook: notebooks/03_matmul.ipynb · tests: tests/test_op_matmul.py
"""
from __future__ import annotations

import numpy as np

from ..runtime import device
from .common import Launch, ceil_div, check_array, check_float4, check_int32, check_multiple_of_4, check_version, \
    run, shape_of

#: Kernel versions in cuda/matmul.cu: matmul_forward<N>; matmul_backward<N>_dx, _dweight, _dbias.
VERSIONS = {
    "forward": {
        1: "naive: one thread per output element, loops over the inner dimension in global memory",
        2: "16x16 shared-memory tiles: each global load serves 16 threads",
        3: "128x128 tiles, 8x8 outputs per thread in registers, float4 loads (C, OC multiples of 4)",
    },
    "backward": {
        1: "naive: dx and dweight one thread per element; dbias one thread per column",
        2: "16x16 shared-memory tiles for dx and dweight; dbias: a warp-wide tree per 32 columns",
        3: "128x128 register tiles with float4 loads for dx and dweight (C, OC multiples of 4); dbias as 2",
    },
}

UNIT_ROUNDOFF = 2.0 ** -24  # float32: a single rounding errs by at most this, relatively

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
# Kernel wrappers
# ------------------------------------------------------------------------------------------------
def module():
    """cuda/matmul.cu, compiled for the active backend (device.load_module caches it)."""
    return device.load_module("matmul.cu")


def _shapes(kernel, x, weight, **arrays):
    """N, C, OC from x (..., C) and weight (OC, C); every array checked (dtype, memory, device)."""
    check_array(kernel, "x", x)
    check_array(kernel, "weight", weight, 2)
    for name, a in arrays.items():
        if a is not None:
            check_array(kernel, name, a)
    OC, C = shape_of(weight)
    if x.ndim < 1 or shape_of(x)[-1] != C:
        raise ValueError(f"{kernel}: `x` must have shape (..., C) with C={C} (weight is {shape_of(weight)}), "
                         f"got {shape_of(x)}")
    N = int(x.size) // C if C else 0
    if N == 0 or C == 0 or OC == 0:
        raise ValueError(f"{kernel}: empty shapes are not supported, got N={N}, C={C}, OC={OC}")
    check_int32(kernel, **{"N*C": N * C, "OC*C": OC * C, "N*OC": N * OC})
    return N, C, OC


def _expect(kernel, name, a, shape):
    if a is not None and shape_of(a) != tuple(shape):
        raise ValueError(f"{kernel}: `{name}` must have shape {tuple(shape)}, got {shape_of(a)}")


def _check_version3(kernel, C, OC, **arrays):
    """What version 3 needs: float4 loads and stores along C and OC, from 16-byte aligned memory."""
    check_multiple_of_4(kernel, "C", C, "version 1 or 2")
    check_multiple_of_4(kernel, "OC", OC, "version 1 or 2")
    check_float4(kernel, "version 1 or 2", **arrays)


#: (threads per block, outputs per block along OC and N) of each version's output tiles.
_TILES = {1: ((32, 8), (32, 8)), 2: ((16, 16), (16, 16)), 3: ((16, 16), (128, 128))}


def _grid(version, cols, rows):
    block, (per_col, per_row) = _TILES[version]
    return (ceil_div(cols, per_col), ceil_div(rows, per_row)), block


def launches(step: str, *args, version: int) -> list[Launch]:
    """The checked launches of `forward` or `backward` (same arguments), in the order they run."""
    check_version("matmul", step, version, VERSIONS)
    return (_forward_launches if step == "forward" else _backward_launches)(*args, version=version)


def _forward_launches(out, x, weight, bias, *, version):
    kernel = f"matmul_forward{version}"
    N, C, OC = _shapes(kernel, x, weight, out=out, bias=bias)
    _expect(kernel, "out", out, shape_of(x)[:-1] + (OC,))
    _expect(kernel, "bias", bias, (OC,))
    if version == 3:
        _check_version3(kernel, C, OC, out=out, x=x, weight=weight, bias=bias)
    has_bias = bias is not None
    if not has_bias:
        bias = device.zeros(1)  # never read: has_bias = 0
    grid, block = _grid(version, OC, N)
    return [Launch(module().get_function(kernel), grid, block, (out, x, weight, bias, N, C, OC, int(has_bias)))]


def _backward_launches(dx, dweight, dbias, dout, x, weight, *, version):
    kernel = f"matmul_backward{version}"
    N, C, OC = _shapes(kernel, x, weight, dx=dx, dweight=dweight, dbias=dbias, dout=dout)
    _expect(kernel, "dx", dx, shape_of(x))
    _expect(kernel, "dweight", dweight, shape_of(weight))
    _expect(kernel, "dout", dout, shape_of(x)[:-1] + (OC,))
    _expect(kernel, "dbias", dbias, (OC,))
    if version == 3:
        _check_version3(kernel, C, OC, dx=dx, dweight=dweight, dout=dout, x=x, weight=weight)
    fn = module().get_function
    runs = [Launch(fn(f"{kernel}_dx"), *_grid(version, C, N), (dx, dout, weight, N, C, OC)),
            Launch(fn(f"{kernel}_dweight"), *_grid(version, C, OC), (dweight, dout, x, N, C, OC))]
    if dbias is not None:  # version 1: one thread per column; 2 and 3: a warp-wide tree per 32 columns
        grid, block = ((ceil_div(OC, 256),), (256,)) if version == 1 else ((ceil_div(OC, 32),), (32, 16))
        runs.append(Launch(fn(f"matmul_backward{min(version, 2)}_dbias"), grid, block, (dbias, dout, N, OC)))
    return runs


def forward(out, x, weight, bias, version: int = 3) -> None:
    """out = x @ weight^T + bias on the device (bias may be None); returns None."""
    run(launches("forward", out, x, weight, bias, version=version))


def backward(dx, dweight, dbias, dout, x, weight, version: int = 3) -> None:
    """dx += dout @ weight, dweight += dout^T @ x, dbias += column sums of dout (dbias may be None),
    on the device; returns None."""
    run(launches("backward", dx, dweight, dbias, dout, x, weight, version=version))
