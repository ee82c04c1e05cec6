"""The linear layer (matmul): out = x @ weight^T + bias, its backward pass, and the launch wrappers
of the kernel versions in cuda/matmul.cu.

Shapes (PyTorch's nn.Linear layout): x (..., C), weight (OC, C), bias (OC,) or None,
out (..., OC). The kernels see x as N = x.size // C rows of C.

Versions 1-3 take float32 arrays. The bf16 versions (4: SIMT, 5: tensor cores through WMMA; their
VERSIONS lines start with "bf16:") take x, weight, bias, out, dout and dx in bf16 (ml_dtypes.bfloat16)
and dweight, dbias in float32; they compute in float32 and round each bf16 output once. Both need
C and OC multiples of 8 and 16-byte aligned arrays; version 5 needs bf16 tensor cores (sm_80 or later,
or the CPU backend's <mma.h>): `wmma_available()` says whether this backend has them.

Besides the references, `forward_atol` and `backward_atols` derive the tolerances of a float32
result from the inputs (the rounding-error bound of a sum of products).

Kernels: cuda/matmul.cu · notebook: notebooks/03_matmul.ipynb · tests: tests/test_op_matmul.py
"""
from __future__ import annotations

import numpy as np

from ..runtime import device
from .common import BF16, Launch, ceil_div, check_16_byte_aligned, check_array, check_float4, check_int32, \
    check_multiple_of, check_multiple_of_4, check_version, run, shape_of

#: Kernel versions in cuda/matmul.cu: matmul_forward<N>; matmul_backward<N>_dx, _dweight, _dbias.
VERSIONS = {
    "forward": {
        1: "naive: one thread per output element, loops over the inner dimension in global memory",
        2: "16x16 shared-memory tiles: each global load serves 16 threads",
        3: "128x128 tiles, 8x8 outputs per thread in registers, float4 loads (C, OC multiples of 4)",
        4: "bf16: version 3's register tiles on bf16 x, weight, bias, out; 16-byte loads (C, OC multiples of 8)",
        5: "bf16: tensor cores (WMMA m16n16k16, float accumulators), 64x64 tiles per 4 warps (C, OC multiples of 8)",
    },
    "backward": {
        1: "naive: dx and dweight one thread per element; dbias one thread per column",
        2: "16x16 shared-memory tiles for dx and dweight; dbias: a warp-wide tree per 32 columns",
        3: "128x128 register tiles with float4 loads for dx and dweight (C, OC multiples of 4); dbias as 2",
        4: "bf16: version 3's register tiles; dx bf16 (+=), dweight, dbias float32 (+=) from bf16 dout, x, weight",
        5: "bf16: tensor cores (WMMA) for dx (bf16) and dweight (float32); dbias as 4",
    },
}

#: The versions that take bf16 arrays (their VERSIONS lines start with "bf16:"), the same for both steps.
BF16_VERSIONS = tuple(v for v, line in VERSIONS["forward"].items() if line.startswith("bf16:"))

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


def _shapes(kernel, x, weight, dtype=np.float32, **arrays):
    """N, C, OC from x (..., C) and weight (OC, C); every array checked (dtype, memory, device): x, weight
    and the others of `dtype` (the version's storage type), but the parameter gradients dweight and
    dbias, float32 in every version."""
    check_array(kernel, "x", x, dtype=dtype)
    check_array(kernel, "weight", weight, 2, dtype=dtype)
    for name, a in arrays.items():
        if a is not None:
            check_array(kernel, name, a, dtype=np.float32 if name in ("dweight", "dbias") else dtype)
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


def _check_bf16(kernel, C, OC, **arrays):
    """What versions 4 and 5 need: 8 bf16 (16 bytes) per load along C and OC, 16-byte aligned arrays."""
    why, fallback = "loads 8 bf16 (16 bytes) at a time", "a float32 version (1 and 2 take any C and OC)"
    check_multiple_of(kernel, "C", C, 8, why, fallback)
    check_multiple_of(kernel, "OC", OC, 8, why, fallback)
    check_16_byte_aligned(kernel, fallback, **arrays)


_wmma_cache: dict = {}


def wmma_available() -> bool:
    """Whether version 5 runs here: a GPU of sm_80 or later (bf16 tensor cores) or the CPU backend, and
    matmul.cu compiled with them (NVRTC with CUDA's crt/mma.h; the CPU backend once it provides <mma.h>).
    The module says so itself, in its global `matmul_wmma_available`, read once."""
    capability = device.compute_capability()
    if capability is not None and capability < (8, 0):
        return False  # (the CuPy stand-in compiles for the CPU, but plays a T4 by default: as a T4 would)
    mod = module()
    if id(mod) not in _wmma_cache:
        _wmma_cache[id(mod)] = bool(int(device.asnumpy(mod.get_global("matmul_wmma_available"))))
    return _wmma_cache[id(mod)]


def _check_wmma(kernel):
    if wmma_available():
        return
    capability = device.compute_capability()
    if capability is None:
        why = ("the CPU backend has no <mma.h> to emulate them with (helpers/runtime/cpu_backend/include/mma.h "
               "is missing)")
    elif capability < (8, 0):
        why = f"this GPU (sm_{capability[0]}{capability[1]}) has none for bf16: they start with sm_80 (A100)"
    else:
        why = ("NVRTC compiled matmul.cu without them: CUDA's <mma.h> needs crt/mma.h, which the CUDA headers "
               "found (helpers.runtime.nvrtc.cuda_include_dirs()) lack")
    raise ValueError(f"{kernel} runs on bf16 tensor cores (WMMA), but {why}; use version 4, the same bf16 "
                     f"arrays without tensor cores")


#: (threads per block, outputs per block along OC and N) of each version's output tiles.
_TILES = {1: ((32, 8), (32, 8)), 2: ((16, 16), (16, 16)), 3: ((16, 16), (128, 128)), 4: ((16, 16), (128, 128)),
          5: ((128,), (64, 64))}


def _grid(version, cols, rows):
    block, (per_col, per_row) = _TILES[version]
    return (ceil_div(cols, per_col), ceil_div(rows, per_row)), block


def launches(step: str, *args, version: int) -> list[Launch]:
    """The checked launches of `forward` or `backward` (same arguments), in the order they run."""
    check_version("matmul", step, version, VERSIONS)
    return (_forward_launches if step == "forward" else _backward_launches)(*args, version=version)


def _forward_launches(out, x, weight, bias, *, version):
    kernel = f"matmul_forward{version}"
    dtype = BF16 if version in BF16_VERSIONS else np.float32
    N, C, OC = _shapes(kernel, x, weight, dtype, out=out, bias=bias)
    _expect(kernel, "out", out, shape_of(x)[:-1] + (OC,))
    _expect(kernel, "bias", bias, (OC,))
    if version == 3:
        _check_version3(kernel, C, OC, out=out, x=x, weight=weight, bias=bias)
    if version in BF16_VERSIONS:
        _check_bf16(kernel, C, OC, out=out, x=x, weight=weight, bias=bias)
    if version == 5:
        _check_wmma(kernel)
    has_bias = bias is not None
    if not has_bias:
        bias = device.zeros(8, dtype)  # never read: has_bias = 0 (8 elements: 16 bytes, as a bf16 load takes)
    grid, block = _grid(version, OC, N)
    return [Launch(module().get_function(kernel), grid, block, (out, x, weight, bias, N, C, OC, int(has_bias)))]


def _backward_launches(dx, dweight, dbias, dout, x, weight, *, version):
    kernel = f"matmul_backward{version}"
    dtype = BF16 if version in BF16_VERSIONS else np.float32
    N, C, OC = _shapes(kernel, x, weight, dtype, dx=dx, dweight=dweight, dbias=dbias, dout=dout)
    _expect(kernel, "dx", dx, shape_of(x))
    _expect(kernel, "dweight", dweight, shape_of(weight))
    _expect(kernel, "dout", dout, shape_of(x)[:-1] + (OC,))
    _expect(kernel, "dbias", dbias, (OC,))
    if version == 3:
        _check_version3(kernel, C, OC, dx=dx, dweight=dweight, dout=dout, x=x, weight=weight)
    if version in BF16_VERSIONS:
        _check_bf16(kernel, C, OC, dx=dx, dweight=dweight, dout=dout, x=x, weight=weight)
    if version == 5:
        _check_wmma(kernel)
    fn = module().get_function
    runs = [Launch(fn(f"{kernel}_dx"), *_grid(version, C, N), (dx, dout, weight, N, C, OC)),
            Launch(fn(f"{kernel}_dweight"), *_grid(version, C, OC), (dweight, dout, x, N, C, OC))]
    if dbias is not None:  # version 1: one thread per column; 2 and 3: a warp-wide tree per 32 columns
        grid, block = ((ceil_div(OC, 256),), (256,)) if version == 1 else ((ceil_div(OC, 32),), (32, 16))
        dbias_version = 4 if version in BF16_VERSIONS else min(version, 2)  # 4 and 5: the tree over bf16 dout
        runs.append(Launch(fn(f"matmul_backward{dbias_version}_dbias"), grid, block, (dbias, dout, N, OC)))
    return runs


def forward(out, x, weight, bias, version: int = 3) -> None:
    """out = x @ weight^T + bias on the device (bias may be None); returns None. Versions 4 and 5: out, x,
    weight and bias bf16."""
    run(launches("forward", out, x, weight, bias, version=version))


def backward(dx, dweight, dbias, dout, x, weight, version: int = 3) -> None:
    """dx += dout @ weight, dweight += dout^T @ x, dbias += column sums of dout (dbias may be None),
    on the device; returns None. Versions 4 and 5: dx, dout, x and weight bf16, dweight and dbias float32."""
    run(launches("backward", dx, dweight, dbias, dout, x, weight, version=version))
