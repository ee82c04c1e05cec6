"""The squared global norm of the gradients, sum over all tensors of sum(g^2): what gradient clipping
needs before the AdamW step (the host takes the square root and the clip coefficient and passes the
coefficient to `adamw.update` as grad_scale, as llm.c does).

The op has one step, "forward"; nothing differentiates it. `grads` is one array or a list of arrays
(the model keeps its gradients in one flat buffer: one array); `out` is a float32 array of one
element that receives the sum.

Kernels: cuda/global_norm.cu (block_sum from cuda/common.cuh) · notebook: notebooks/07_adamw.ipynb ·
tests: tests/test_op_global_norm.py
"""
from __future__ import annotations

import numpy as np

from ..runtime import device
from .common import Launch, ceil_div, check_array, check_float4, check_int32, check_multiple_of_4, check_version, run

#: Kernel versions in cuda/global_norm.cu: global_norm<N> (versions 2 and 3 then global_norm_sum_partials).
VERSIONS = {
    "forward": {
        1: "block sums added to one float with atomicAdd (NOT deterministic: what not to do)",
        2: "one element per thread, a partial sum per block, then one block sums the partials",
        3: "a fixed number of blocks in a grid-stride loop with float4 loads, then the same final sum",
    },
}

BLOCK_SIZE = 512            # threads per block (whole warps: block_sum shuffles with a full mask)
VERSION3_MAX_BLOCKS = 512   # global_norm3's partials: about 4 blocks of 512 threads for each of an H100's 132 SMs
SUM_PARTIALS_BLOCK = 1024   # the one block of global_norm_sum_partials
CLIP_EPS = 1e-6             # PyTorch's clip_grad_norm_: max_norm / (total_norm + 1e-6)


# ------------------------------------------------------------------------------------------------
# NumPy reference
# ------------------------------------------------------------------------------------------------
def as_list(grads) -> list:
    """One array or a list (tuple) of arrays, as a list."""
    return list(grads) if isinstance(grads, (list, tuple)) else [grads]


def global_norm_forward(grads) -> float:
    """sum over all tensors of sum(g^2), accumulated in float64 (its square root is the 2-norm of all
    the gradients as one long vector)."""
    return float(sum(np.sum(np.square(np.asarray(g, dtype=np.float64))) for g in as_list(grads)))


def clip_coefficient(norm, max_norm) -> float:
    """The factor gradient clipping multiplies every gradient by (torch.nn.utils.clip_grad_norm_):
    max_norm / (norm + 1e-6), clamped to at most 1.0 (gradients are never scaled up). Above max_norm
    the clipped gradients have norm max_norm * norm / (norm + 1e-6), just under max_norm."""
    return min(1.0, float(max_norm) / (float(norm) + CLIP_EPS))


# ------------------------------------------------------------------------------------------------
# Kernel wrappers
# ------------------------------------------------------------------------------------------------
def module():
    """cuda/global_norm.cu, compiled for the active backend (device.load_module caches it)."""
    return device.load_module("global_norm.cu")


def version3_blocks(n: int) -> int:
    """Blocks of global_norm3 for a tensor of n elements: enough for its n / 4 float4s, at most 512."""
    return max(1, min(VERSION3_MAX_BLOCKS, ceil_div(n // 4, BLOCK_SIZE)))


def launches(step: str, *args, version: int) -> list[Launch]:
    """The checked launches of `forward` (same arguments), in the order they run. Version 1 adds
    into out[0] (`forward` zeroes it first); versions 2 and 3 write it."""
    check_version("global_norm", step, version, VERSIONS)
    return _forward_launches(*args, version=version)


def _forward_launches(out, grads, *, version):
    kernel = f"global_norm{version}"
    check_array(kernel, "out", out, shape=(1,))
    listed = isinstance(grads, (list, tuple))
    tensors = []
    for k, g in enumerate(as_list(grads)):
        what = f"grads[{k}]" if listed else "grads"
        check_array(kernel, what, g)
        check_int32(kernel, **{f"{what}.size": int(g.size)})
        if g.size:
            tensors.append((what, g.reshape(-1)))
    if version == 3:
        for what, g in tensors:
            check_multiple_of_4(kernel, f"{what}.size", int(g.size), "version 2")
            check_float4(kernel, "version 2", **{what: g})
    fn = module().get_function
    if not tensors:
        return [Launch(fn("global_norm_sum_partials"), (1,), (SUM_PARTIALS_BLOCK,), (out, out, 0))]  # out[0] = 0
    if version == 1:
        return [Launch(fn(kernel), (ceil_div(g.size, BLOCK_SIZE),), (BLOCK_SIZE,), (g, out, int(g.size)))
                for _, g in tensors]
    runs = []
    if version == 2:
        blocks = [ceil_div(g.size, BLOCK_SIZE) for _, g in tensors]
        partials = device.empty(sum(blocks))
        offset = 0
        for (_, g), b in zip(tensors, blocks):  # tensor after tensor, each into its own slice of partials
            runs.append(Launch(fn(kernel), (b,), (BLOCK_SIZE,), (g, partials[offset:offset + b], int(g.size))))
            offset += b
    else:
        partials = device.zeros(VERSION3_MAX_BLOCKS)  # every launch adds into it
        runs += [Launch(fn(kernel), (version3_blocks(g.size),), (BLOCK_SIZE,), (g, partials, int(g.size)))
                 for _, g in tensors]
    runs.append(Launch(fn("global_norm_sum_partials"), (1,), (SUM_PARTIALS_BLOCK,),
                       (partials, out, int(partials.size))))
    return runs


def forward(out, grads, version=3):
    """out[0] = sum of g^2 over the device array `grads` (or a list of them); returns None."""
    steps = launches("forward", out, grads, version=version)
    if version == 1:
        out[...] = 0  # global_norm1 adds into it
    run(steps)


def squared_norm(grads, version=3) -> float:
    """`forward` into a fresh one-element array, returned to the host as a Python float."""
    out = device.empty(1)
    forward(out, grads, version=version)
    return float(device.asnumpy(out)[0])
