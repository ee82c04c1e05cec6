"""Layer normalisation (GPT-2: eps = 1e-5, over the last axis): the NumPy reference and the launch
wrappers of the kernels in `cuda/layernorm.cu`.

For each row x of C values (a row = one token's activations, N = B*T rows):

    mean = sum(x) / C            var = sum((x - mean)^2) / C     rstd = 1 / sqrt(var + eps)
    xhat = (x - mean) * rstd     out = xhat * weight + bias

and the backward pass, with dxhat = dout * weight:

    dbias   += sum over rows of dout
    dweight += sum over rows of dout * xhat
    dx      += rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))

The references work in whatever float dtype they are given (float32 in use, float64 for finite
differences). The wrappers take device arrays (helpers.device), check shapes and the assumptions of
the chosen version with a ValueError, launch, and return None.
"""
from __future__ import annotations

import numpy as np

from .. import ceil_div
from ..runtime import device
from . import checks

EPS = 1e-5

#: Forward kernel versions in cuda/layernorm.cu: layernorm_forward<N>.
VERSIONS = {
    1: "forward1: one thread per row, plain loops (mean pass, variance pass, output pass); any C",
    2: "forward2: one warp per row, __shfl_xor_sync reductions, coalesced loads; any C, block a multiple of 32",
    3: "forward3: one block per row, block reduction (warp shuffles, then shared memory), float4 loads; C % 4 == 0",
}
#: Backward kernel versions: layernorm_backward<N>.
BACKWARD_VERSIONS = {
    1: "backward1: one thread per row; dweight/dbias by float atomicAdd (nondeterministic last bits); any C",
    2: "backward2: one block per row, block reductions; dweight/dbias deterministic: per-block partial sums in a "
       "scratch buffer, reduced in block order by a second kernel; C <= 6128 (shared memory)",
}

SHARED_MEM_LIMIT = 48 * 1024   # bytes of shared memory per block without an opt-in (CUDA's default)
WARP_SUMS_BYTES = 32 * 4       # the static `__shared__ float warp_sums[32]` of the block reductions
#: The largest C layernorm_backward2 handles: its 2*C floats of partial sums plus warp_sums in 48 KiB.
BACKWARD2_MAX_C = (SHARED_MEM_LIMIT - WARP_SUMS_BYTES) // (2 * 4)
#: Blocks of layernorm_backward2 (at most; fewer when there are fewer rows). Fixed, not chosen from
#: the GPU, so that the order of the dweight/dbias sums (and so their bits) is the same everywhere.
BACKWARD2_BLOCKS = 256


# ------------------------------------------------------------------------------------------------
# NumPy reference
# ------------------------------------------------------------------------------------------------
def layernorm_forward(x, weight, bias, eps=EPS):
    """out, mean, rstd of GPT-2's layernorm over the last axis of x (shape (..., C)).

    mean and rstd have shape x.shape[:-1]; they are what the backward pass needs."""
    C = x.shape[-1]
    mean = x.sum(axis=-1) / C
    xc = x - mean[..., None]                      # centred
    var = (xc * xc).sum(axis=-1) / C              # biased variance, as GPT-2 (and torch) use
    rstd = 1 / np.sqrt(var + eps)
    xhat = xc * rstd[..., None]
    out = xhat * weight + bias
    return out.astype(x.dtype, copy=False), mean.astype(x.dtype, copy=False), rstd.astype(x.dtype, copy=False)


def layernorm_backward(dx, dweight, dbias, dout, x, weight, mean, rstd) -> None:
    """Accumulate (+=) the gradients of layernorm into dx, dweight, dbias, given dout.

    mean and rstd are the ones layernorm_forward saved."""
    C = x.shape[-1]
    xhat = (x - mean[..., None]) * rstd[..., None]
    rows = tuple(range(x.ndim - 1))               # every axis but the channels
    dbias += dout.sum(axis=rows)
    dweight += (dout * xhat).sum(axis=rows)
    dxhat = dout * weight
    mean_dxhat = dxhat.sum(axis=-1, keepdims=True) / C
    mean_dxhat_xhat = (dxhat * xhat).sum(axis=-1, keepdims=True) / C
    dx += rstd[..., None] * (dxhat - mean_dxhat - xhat * mean_dxhat_xhat)


# ------------------------------------------------------------------------------------------------
# Kernel wrappers
# ------------------------------------------------------------------------------------------------
def _kernel(name):
    return device.load_module("layernorm.cu").get_function(name)


def _shape(a):
    return tuple(int(n) for n in a.shape)


def _rows_and_channels(x, *, what):
    shape = _shape(x)
    if len(shape) < 1:
        raise ValueError(f"{what}: x must have at least one axis (the C channels), got a scalar")
    C = shape[-1]
    N = int(np.prod(shape[:-1], dtype=np.int64))
    if C < 1 or N < 1:
        raise ValueError(f"{what}: needs at least one row of at least one channel, got x of shape {shape}")
    return N, C


def _expect(name, a, shape, what):
    if _shape(a) != tuple(shape):
        raise ValueError(f"{what}: {name} must have shape {tuple(shape)}, got {_shape(a)}")


def _check_block(block_size, kernel, warp_level):
    if not 1 <= block_size <= 1024:
        raise ValueError(f"{kernel}: block_size must be between 1 and 1024 threads, got {block_size}")
    if warp_level and block_size % 32:
        raise ValueError(f"{kernel} reduces with full-warp shuffles: block_size must be a multiple of 32, "
                         f"got {block_size}")


def forward(out, mean, rstd, x, weight, bias, version=3, *, eps=EPS, block_size=None) -> None:
    """Layernorm of x (..., C) into out, saving mean and rstd (x.shape[:-1]), with kernel `version`.

    block_size (threads per block) defaults to 256 for versions 1 and 2 and 128 for version 3."""
    what = f"layernorm_forward{version}"
    N, C = _rows_and_channels(x, what=what)
    _expect("out", out, _shape(x), what)
    _expect("mean", mean, _shape(x)[:-1], what)
    _expect("rstd", rstd, _shape(x)[:-1], what)
    _expect("weight", weight, (C,), what)
    _expect("bias", bias, (C,), what)
    args = (out, mean, rstd, x, weight, bias, N, C, float(eps))
    if version == 1:
        block_size = block_size or 256
        _check_block(block_size, what, warp_level=False)
        _kernel(what)((ceil_div(N, block_size),), (block_size,), args)
    elif version == 2:
        block_size = block_size or 256
        _check_block(block_size, what, warp_level=True)
        rows_per_block = block_size // 32
        _kernel(what)((ceil_div(N, rows_per_block),), (block_size,), args)
    elif version == 3:
        block_size = block_size or 128
        _check_block(block_size, what, warp_level=True)
        if C % 4:
            raise ValueError(f"{what} loads float4: C must be a multiple of 4, got C={C} "
                             f"(use version 1 or 2, which take any C)")
        checks.check_float4(what, "version 1 or 2", out=out, x=x, weight=weight, bias=bias)
        _kernel(what)((N,), (block_size,), args)
    else:
        raise ValueError(f"layernorm forward: no version {version!r}; the versions are {sorted(VERSIONS)}")


def backward(dx, dweight, dbias, dout, x, weight, mean, rstd, version=2, *, block_size=None,
             num_blocks=None) -> None:
    """Accumulate (+=) the layernorm gradients into dx (..., C), dweight and dbias (C,), kernel `version`.

    Version 2 allocates its scratch buffer itself: num_blocks (default min(N, 256)) x 2 x C floats
    with device.zeros, for the per-block partial sums of dbias and dweight."""
    what = f"layernorm_backward{version}"
    N, C = _rows_and_channels(x, what=what)
    for name, a in (("dx", dx), ("dout", dout)):
        _expect(name, a, _shape(x), what)
    for name, a in (("dweight", dweight), ("dbias", dbias), ("weight", weight)):
        _expect(name, a, (C,), what)
    for name, a in (("mean", mean), ("rstd", rstd)):
        _expect(name, a, _shape(x)[:-1], what)
    if version == 1:
        block_size = block_size or 256
        _check_block(block_size, what, warp_level=False)
        _kernel(what)((ceil_div(N, block_size),), (block_size,),
                      (dx, dweight, dbias, dout, x, weight, mean, rstd, N, C))
    elif version == 2:
        block_size = block_size or 256
        _check_block(block_size, what, warp_level=True)
        if C > BACKWARD2_MAX_C:
            raise ValueError(f"{what} keeps each block's dbias and dweight partial sums in shared memory "
                             f"(2*C floats, plus {WARP_SUMS_BYTES} bytes, within {SHARED_MEM_LIMIT // 1024} KiB): "
                             f"C must be at most {BACKWARD2_MAX_C}, got C={C} (use version 1)")
        num_blocks = int(num_blocks or min(N, BACKWARD2_BLOCKS))
        if num_blocks < 1:
            raise ValueError(f"{what}: num_blocks must be at least 1, got {num_blocks}")
        scratch = device.zeros((num_blocks, 2, C), np.float32)   # [block][dbias, dweight][c]
        _kernel(what)((num_blocks,), (block_size,), (dx, scratch, dout, x, weight, mean, rstd, N, C),
                      shared_mem=2 * C * 4)
        _kernel("layernorm_backward2_reduce")((ceil_div(C, 256),), (256,), (dweight, dbias, scratch, num_blocks, C))
    else:
        raise ValueError(f"layernorm backward: no version {version!r}; the versions are {sorted(BACKWARD_VERSIONS)}")
