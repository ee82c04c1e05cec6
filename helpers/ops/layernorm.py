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

The bf16 versions (mixed precision, asked for by number): forward version 4 takes out, x, weight, bias
bf16 and mean, rstd float32; backward version 3 takes dx, dout, x, weight bf16 and dweight, dbias,
mean, rstd float32 (parameter gradients and statistics stay float32). Both compute in float32 and
round each bf16 output once; C % 8 == 0, 16-byte aligned.

Kernels: cuda/layernorm.cu (reductions from cuda/common.cuh) · notebook: notebooks/02_layernorm.ipynb ·
tests: tests/test_op_layernorm.py
"""
from __future__ import annotations

import numpy as np

from ..runtime import device
from .common import BF16, SCRATCH_BYTES, SHARED_MEMORY_LIMIT, ceil_div, check_16_byte_aligned, check_array, \
    check_block, check_float4, check_multiple_of, check_multiple_of_4, check_version, Launch, \
    rows_and_channels, run, shape_of

EPS = 1e-5

#: Kernel versions in cuda/layernorm.cu: layernorm_forward<N>, layernorm_backward<N>.
VERSIONS = {
    "forward": {
        1: "one thread per row, plain loops (mean pass, variance pass, output pass); any C",
        2: "one warp per row, __shfl_xor_sync reductions, coalesced loads; any C, block a multiple of 32",
        3: "one block per row, block reduction (warp shuffles, then shared memory), float4 loads; C % 4 == 0",
        4: "bf16: bf16 x, weight, bias, out (float32 mean, rstd and math); one warp per row, 16-byte bf16x8 "
           "loads; C % 8 == 0, 16-byte aligned, block a multiple of 32",
    },
    "backward": {
        1: "one thread per row; dweight/dbias by float atomicAdd (nondeterministic last bits); any C",
        2: "one block per row, block reductions; dweight/dbias deterministic: per-block partial sums in a "
           "scratch buffer, reduced in block order by a second kernel; C <= 6128 (shared memory)",
        3: "bf16: bf16 dx (+=), dout, x, weight; float32 dweight, dbias, mean, rstd; version 2's deterministic "
           "partial sums, 16-byte bf16x8 loads; C % 8 == 0, C <= 6128, 16-byte aligned",
    },
}

#: The largest C layernorm_backward2 handles: its 2*C floats of partial sums plus the scratch in 48 KiB.
BACKWARD2_MAX_C = (SHARED_MEMORY_LIMIT - SCRATCH_BYTES) // (2 * 4)
#: Blocks of layernorm_backward2 (at most; fewer when there are fewer rows). Fixed, not chosen from
#: the GPU, so that the order of the dweight/dbias sums (and so their bits) is the same everywhere.
BACKWARD2_BLOCKS = 256
#: The bf16 versions, by step (their VERSIONS lines start with "bf16:").
BF16_FORWARD, BF16_BACKWARD = 4, 3


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
def module():
    """cuda/layernorm.cu, compiled for the active backend (device.load_module caches it)."""
    return device.load_module("layernorm.cu")


def launches(step: str, *args, version: int, **options) -> list[Launch]:
    """The checked launches of `forward` or `backward` (same arguments), in the order they run."""
    check_version("layernorm", step, version, VERSIONS)
    return (_forward_launches if step == "forward" else _backward_launches)(*args, version=version, **options)


def _check_bf16x8(kernel, C, **arrays):
    """The bf16 versions move 8 channels (16 bytes) at a time: C % 8 == 0, arrays 16-byte aligned (then
    every row's groups of 8 are too)."""
    check_multiple_of(kernel, "C", C, 8, "loads 8 bf16 at a time (16 bytes)",
                      "float32 arrays and a version that takes any C")
    check_16_byte_aligned(kernel, "float32 arrays and a float32 version", **arrays)


def _forward_launches(out, mean, rstd, x, weight, bias, *, version, eps=EPS, block_size=None):
    kernel = f"layernorm_forward{version}"
    bf16 = BF16 if version == BF16_FORWARD else np.float32   # out, x, weight, bias; mean and rstd stay float32
    N, C = rows_and_channels(kernel, x, bf16)
    rows = shape_of(x)[:-1]
    for name, a, shape, dtype in (("out", out, shape_of(x), bf16), ("mean", mean, rows, np.float32),
                                  ("rstd", rstd, rows, np.float32), ("weight", weight, (C,), bf16),
                                  ("bias", bias, (C,), bf16)):
        check_array(kernel, name, a, shape=shape, dtype=dtype)
    block_size = block_size or (128 if version == 3 else 256)
    check_block(kernel, block_size, whole_warps=version > 1)
    args = (out, mean, rstd, x, weight, bias, N, C, float(eps))
    if version == 1:
        grid = ceil_div(N, block_size)
    elif version == 2:
        grid = ceil_div(N, block_size // 32)   # a warp per row
    elif version == BF16_FORWARD:
        _check_bf16x8(kernel, C, out=out, x=x, weight=weight, bias=bias)
        grid = ceil_div(N, block_size // 32)   # a warp per row
    else:
        check_multiple_of_4(kernel, "C", C, "version 1 or 2, which take any C")
        check_float4(kernel, "version 1 or 2", out=out, x=x, weight=weight, bias=bias)
        grid = N                               # a block per row
    return [Launch(module().get_function(kernel), (grid,), (block_size,), args)]


def _backward_launches(dx, dweight, dbias, dout, x, weight, mean, rstd, *, version, block_size=None,
                       num_blocks=None):
    kernel = f"layernorm_backward{version}"
    bf16 = BF16 if version == BF16_BACKWARD else np.float32   # dx, dout, x, weight; the rest stays float32
    N, C = rows_and_channels(kernel, x, bf16)
    rows = shape_of(x)[:-1]
    for name, a, shape, dtype in (("dx", dx, shape_of(x), bf16), ("dout", dout, shape_of(x), bf16),
                                  ("dweight", dweight, (C,), np.float32), ("dbias", dbias, (C,), np.float32),
                                  ("weight", weight, (C,), bf16), ("mean", mean, rows, np.float32),
                                  ("rstd", rstd, rows, np.float32)):
        check_array(kernel, name, a, shape=shape, dtype=dtype)
    block_size = block_size or (128 if version == BF16_BACKWARD else 256)   # bf16: C/8 threads busy (96 for GPT-2)
    check_block(kernel, block_size, whole_warps=version > 1)
    fn = module().get_function
    if version == 1:
        return [Launch(fn(kernel), (ceil_div(N, block_size),), (block_size,),
                       (dx, dweight, dbias, dout, x, weight, mean, rstd, N, C))]
    if C > BACKWARD2_MAX_C:
        raise ValueError(f"{kernel} keeps each block's dbias and dweight partial sums in shared memory "
                         f"(2*C floats, plus {SCRATCH_BYTES} bytes, within {SHARED_MEMORY_LIMIT // 1024} KiB): "
                         f"C must be at most {BACKWARD2_MAX_C}, got C={C} (use version 1"
                         f"{' on float32 arrays' if version == BF16_BACKWARD else ''})")
    if version == BF16_BACKWARD:
        _check_bf16x8(kernel, C, dx=dx, dout=dout, x=x, weight=weight)
    num_blocks = int(num_blocks or min(N, BACKWARD2_BLOCKS))
    if num_blocks < 1:
        raise ValueError(f"{kernel}: num_blocks must be at least 1, got {num_blocks}")
    scratch = device.zeros((num_blocks, 2, C), np.float32)   # [block][dbias, dweight][c]
    # version 3 writes the same (num_blocks, 2, C) partial sums as version 2: the same second kernel
    return [Launch(fn(kernel), (num_blocks,), (block_size,), (dx, scratch, dout, x, weight, mean, rstd, N, C),
                   2 * C * 4),
            Launch(fn("layernorm_backward2_reduce"), (ceil_div(C, 256),), (256,), (dweight, dbias, scratch, num_blocks, C))]


def forward(out, mean, rstd, x, weight, bias, version=3, *, eps=EPS, block_size=None) -> None:
    """Layernorm of x (..., C) into out, saving mean and rstd (x.shape[:-1]), with kernel `version`.

    block_size (threads per block) defaults to 256 for versions 1, 2 and 4 and 128 for version 3.
    Version 4 (bf16): out, x, weight, bias bf16; mean, rstd float32."""
    run(launches("forward", out, mean, rstd, x, weight, bias, version=version, eps=eps, block_size=block_size))


def backward(dx, dweight, dbias, dout, x, weight, mean, rstd, version=2, *, block_size=None,
             num_blocks=None) -> None:
    """Accumulate (+=) the layernorm gradients into dx (..., C), dweight and dbias (C,), kernel `version`.

    Version 2 allocates its scratch buffer itself: num_blocks (default min(N, 256)) x 2 x C floats
    with device.zeros, for the per-block partial sums of dbias and dweight. Version 3 (bf16: dx, dout,
    x, weight bf16; dweight, dbias, mean, rstd float32) does the same, with 128 threads per block by
    default."""
    run(launches("backward", dx, dweight, dbias, dout, x, weight, mean, rstd, version=version,
                 block_size=block_size, num_blocks=num_blocks))
