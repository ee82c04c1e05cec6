"""RMS normalisation (Llama's, over the last axis): the NumPy reference and the launch wrappers of the
kernels in `cuda/rmsnorm.cu`.

For each row x of C values (a row = one token's activations, N = B*T rows), as Hugging Face's
LlamaRMSNorm computes it (in float32):

    rstd = 1 / sqrt(mean(x^2) + eps)     xhat = x * rstd     out = xhat * weight     (no bias)

and the backward pass, with dxhat = dout * weight:

    dweight += sum over rows of dout * xhat
    dx      += rstd * (dxhat - xhat * mean(dxhat * xhat))

(LayerNorm's backward without its mean(dxhat) term: nothing is centred.) The references work in
whatever float dtype they are given (float32 in use, float64 for finite differences). The wrappers
take device arrays (helpers.device), check shapes and the assumptions of the chosen version with a
ValueError, launch, and return None. Every version is deterministic: no float atomics.

Kernels: cuda/rmsnorm.cu (reductions from cuda/common.cuh) · notebook: notebooks/11_llama_ops.ipynb ·
tests: tests/test_op_rmsnorm.py
"""
from __future__ import annotations

import numpy as np

from ..runtime import device
from .common import SCRATCH_BYTES, SHARED_MEMORY_LIMIT, ceil_div, check_array, check_block, check_float4, \
    check_int32, check_multiple_of_4, check_shared_memory, check_version, Launch, rows_and_channels, run, shape_of

EPS = 1e-6   # Hugging Face LlamaConfig's default rms_norm_eps; the model passes its config's eps

#: Kernel versions in cuda/rmsnorm.cu: rmsnorm_forward<N>, rmsnorm_backward<N>[_part].
VERSIONS = {
    "forward": {
        1: "one thread per row, plain loops (sum-of-squares pass, output pass); any C",
        2: "one warp per row, __shfl_xor_sync reduction, coalesced loads; any C, block a multiple of 32",
        3: "one block per row, block reduction (warp shuffles, then shared memory), float4 loads; C % 4 == 0",
    },
    "backward": {
        1: "one thread per row for dx, then one thread per channel summing dweight over the rows in order "
           "(deterministic, no atomics); any C",
        2: "one block per row, block reduction, float4; dweight deterministic: per-block partial sums in a "
           "scratch buffer, reduced in block order by a second kernel; C % 4 == 0, C <= 12256 (shared memory)",
    },
}

#: The largest C rmsnorm_backward2 handles: its C floats of partial sums plus the block_sum scratch in 48 KiB.
BACKWARD2_MAX_C = (SHARED_MEMORY_LIMIT - SCRATCH_BYTES) // 4
#: Blocks of rmsnorm_backward2 (at most; fewer when there are fewer rows). Fixed, not chosen from the
#: GPU, so that the order of the dweight sums (and so their bits) is the same everywhere.
BACKWARD2_BLOCKS = 256
REDUCE_BLOCK = 256   # threads per block of the one-thread-per-channel kernels


# ------------------------------------------------------------------------------------------------
# NumPy reference
# ------------------------------------------------------------------------------------------------
def rmsnorm_forward(x, weight, eps=EPS):
    """out, rstd of Llama's RMSNorm over the last axis of x (shape (..., C)).

    rstd has shape x.shape[:-1]; it is what the backward pass needs."""
    C = x.shape[-1]
    mean_sq = (x * x).sum(axis=-1) / C
    rstd = 1 / np.sqrt(mean_sq + eps)
    xhat = x * rstd[..., None]
    out = xhat * weight
    return out.astype(x.dtype, copy=False), rstd.astype(x.dtype, copy=False)


def rmsnorm_backward(dx, dweight, dout, x, weight, rstd) -> None:
    """Accumulate (+=) the gradients of RMSNorm into dx and dweight, given dout.

    rstd is the one rmsnorm_forward saved."""
    C = x.shape[-1]
    xhat = x * rstd[..., None]
    rows = tuple(range(x.ndim - 1))               # every axis but the channels
    dweight += (dout * xhat).sum(axis=rows)
    dxhat = dout * weight
    mean_dxhat_xhat = (dxhat * xhat).sum(axis=-1, keepdims=True) / C
    dx += rstd[..., None] * (dxhat - xhat * mean_dxhat_xhat)


# ------------------------------------------------------------------------------------------------
# Kernel wrappers
# ------------------------------------------------------------------------------------------------
def module():
    """cuda/rmsnorm.cu, compiled for the active backend (device.load_module caches it)."""
    return device.load_module("rmsnorm.cu")


def launches(step: str, *args, version: int, **options) -> list[Launch]:
    """The checked launches of `forward` or `backward` (same arguments), in the order they run."""
    check_version("rmsnorm", step, version, VERSIONS)
    return (_forward_launches if step == "forward" else _backward_launches)(*args, version=version, **options)


def _forward_launches(out, rstd, x, weight, *, version, eps=EPS, block_size=None):
    kernel = f"rmsnorm_forward{version}"
    N, C = rows_and_channels(kernel, x)
    for name, a, shape in (("out", out, shape_of(x)), ("rstd", rstd, shape_of(x)[:-1]), ("weight", weight, (C,))):
        check_array(kernel, name, a, shape=shape)
    block_size = block_size or (128 if version == 3 else 256)
    check_block(kernel, block_size, whole_warps=version > 1)
    args = (out, rstd, x, weight, N, C, float(eps))
    if version == 1:
        grid = ceil_div(N, block_size)
    elif version == 2:
        grid = ceil_div(N, block_size // 32)   # a warp per row
    else:
        check_multiple_of_4(kernel, "C", C, "version 1 or 2, which take any C")
        check_float4(kernel, "version 1 or 2", out=out, x=x, weight=weight)
        grid = N                               # a block per row
    return [Launch(module().get_function(kernel), (grid,), (block_size,), args)]


def _backward_launches(dx, dweight, dout, x, weight, rstd, *, version, block_size=None, num_blocks=None):
    kernel = f"rmsnorm_backward{version}"
    N, C = rows_and_channels(kernel, x)
    for name, a, shape in (("dx", dx, shape_of(x)), ("dweight", dweight, (C,)), ("dout", dout, shape_of(x)),
                           ("weight", weight, (C,)), ("rstd", rstd, shape_of(x)[:-1])):
        check_array(kernel, name, a, shape=shape)
    block_size = block_size or 256
    check_block(kernel, block_size, whole_warps=version > 1)
    fn = module().get_function
    if version == 1:
        return [Launch(fn("rmsnorm_backward1_dx"), (ceil_div(N, block_size),), (block_size,),
                       (dx, dout, x, weight, rstd, N, C)),
                Launch(fn("rmsnorm_backward1_dweight"), (ceil_div(C, block_size),), (block_size,),
                       (dweight, dout, x, rstd, N, C))]
    check_multiple_of_4(kernel, "C", C, "version 1, which takes any C")
    check_float4(kernel, "version 1", dx=dx, dout=dout, x=x, weight=weight)
    shared = C * 4
    check_shared_memory(kernel, shared + SCRATCH_BYTES, f"C={C} (the block's C dweight partial sums)",
                        f"C must be at most {BACKWARD2_MAX_C} (use version 1)")
    num_blocks = min(N, BACKWARD2_BLOCKS) if num_blocks is None else num_blocks
    if isinstance(num_blocks, bool) or not isinstance(num_blocks, (int, np.integer)) or num_blocks < 1:
        raise ValueError(f"{kernel}: num_blocks must be an int of at least 1, got {num_blocks!r}")
    num_blocks = int(num_blocks)
    check_int32(kernel, **{"num_blocks * C": num_blocks * C})
    scratch = device.zeros((num_blocks, C), np.float32)   # [block][c]: each block's dweight partial sums
    return [Launch(fn(kernel), (num_blocks,), (block_size,), (dx, scratch, dout, x, weight, rstd, N, C), shared),
            Launch(fn("rmsnorm_backward2_reduce"), (ceil_div(C, REDUCE_BLOCK),), (REDUCE_BLOCK,),
                   (dweight, scratch, num_blocks, C))]


def forward(out, rstd, x, weight, version=3, *, eps=EPS, block_size=None) -> None:
    """RMSNorm of x (..., C) into out, saving rstd (x.shape[:-1]), with kernel `version`.

    block_size (threads per block) defaults to 256 for versions 1 and 2 and 128 for version 3."""
    run(launches("forward", out, rstd, x, weight, version=version, eps=eps, block_size=block_size))


def backward(dx, dweight, dout, x, weight, rstd, version=2, *, block_size=None, num_blocks=None) -> None:
    """Accumulate (+=) the RMSNorm gradients into dx (..., C) and dweight (C,), with kernel `version`.

    block_size defaults to 256 (version 1: for both of its kernels; version 2: for its per-row
    kernel). Version 2 allocates its scratch buffer itself: num_blocks (default min(N, 256)) x C
    floats with device.zeros, for the per-block partial sums of dweight; version 1 ignores num_blocks."""
    run(launches("backward", dx, dweight, dout, x, weight, rstd, version=version, block_size=block_size,
                 num_blocks=num_blocks))
