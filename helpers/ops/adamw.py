"""AdamW and the global gradient norm: the optimizer step of GPT-2 (notebooks/07_adamw.ipynb).

The NumPy reference (dtype-generic: the arithmetic happens in the arrays' dtype):

- `adamw_update(param, grad, m, v, t, lr, ...)`: one step of PyTorch's torch.optim.AdamW, in place;
- `global_norm(grads)`: sqrt of the sum of g^2 over all gradient tensors, accumulated in float64;
- `clip_coefficient(norm, max_norm)`: PyTorch's clip_grad_norm_ rule,
  min(1, max_norm / (norm + 1e-6)), the factor every gradient is multiplied by.

The kernel wrappers (kernels in cuda/adamw.cu and cuda/global_norm.cu):

- `adamw(param, grad, m, v, t, lr, beta1, beta2, eps, weight_decay, grad_scale=1.0, version=2)`
  updates param, m and v in place (device arrays of any shape, all with the same number of
  elements: the model keeps all its parameters in one flat buffer, so one launch updates it all);
- `global_norm_squared(grads, version=2) -> float`: the sum of squares of one array or of a list
  of arrays, returned to the host (the host takes the square root and the clip coefficient, and
  passes the coefficient to `adamw` as grad_scale, as llm.c does).

AdamW has no backward pass (it is the step that USES the gradients): there is nothing here to
check against finite differences.
"""
from __future__ import annotations

import numbers

import numpy as np

from .. import ceil_div
from ..runtime import device
from . import checks

VERSIONS = {
    1: "adamw1: one thread per parameter, bias corrections 1 - beta^t with powf in every thread",
    2: "adamw2: bias corrections computed once on the host, four parameters per thread with float4",
}
NORM_VERSIONS = {
    0: "global_norm0: block sums added to one float with atomicAdd (NOT deterministic: what not to do)",
    1: "global_norm1: one element per thread, a partial sum per block, then one block sums the partials",
    2: "global_norm2: a fixed number of blocks in a grid-stride loop with float4 loads, then the same final sum",
}

ADAMW_BLOCK = 512        # threads per block of the AdamW kernels (elementwise: any multiple of 32 is fine)
NORM_BLOCK = 512         # threads per block of the norm kernels (whole warps: a multiple of 32)
NORM2_MAX_BLOCKS = 512   # global_norm2's partials: about 4 blocks of 512 threads for each of an H100's 132 SMs
SUM_PARTIALS_BLOCK = 1024  # the one block of the final sum
CLIP_EPS = 1e-6          # PyTorch's clip_grad_norm_: max_norm / (total_norm + 1e-6)
INT_MAX = 2**31 - 1      # the kernels index with int


# ------------------------------------------------------------------------------------------------
# NumPy reference
# ------------------------------------------------------------------------------------------------
def adamw_update(param, grad, m, v, t, lr, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, grad_scale=1.0):
    """One AdamW step (PyTorch's torch.optim.AdamW, as llm.c), in place on param, m and v.

    t counts the steps from 1; m and v start at zero. grad_scale multiplies the gradient first
    (the clip coefficient; 1.0: no clipping). Weight decay is "decoupled": it shrinks the parameter
    directly instead of being added to the gradient, so Adam's per-parameter scaling does not touch it.
    """
    if t < 1:
        raise ValueError(f"t counts optimizer steps from 1 (the bias corrections divide by 1 - beta^t), got t={t}")
    g = grad_scale * grad
    m[...] = beta1 * m + (1 - beta1) * g          # running mean of the gradient
    v[...] = beta2 * v + (1 - beta2) * g * g      # running mean of its square
    m_hat = m / (1 - beta1**t)                    # bias corrections: m and v started at 0
    v_hat = v / (1 - beta2**t)
    param -= lr * (m_hat / (np.sqrt(v_hat) + eps) + weight_decay * param)


def _as_list(grads):
    return list(grads) if isinstance(grads, (list, tuple)) else [grads]


def global_norm(grads) -> float:
    """sqrt(sum over all tensors of sum(g^2)): the 2-norm of all gradients as one long vector.
    `grads` is one array or a list of arrays; the sum is accumulated in float64."""
    total = sum(float(np.sum(np.square(np.asarray(g, dtype=np.float64)))) for g in _as_list(grads))
    return float(np.sqrt(total))


def clip_coefficient(norm, max_norm) -> float:
    """The factor gradient clipping multiplies every gradient by (torch.nn.utils.clip_grad_norm_):
    clip_coef = max_norm / (norm + 1e-6), clamped to at most 1.0 (gradients are never scaled up).
    Above max_norm the clipped gradients have norm max_norm * norm / (norm + 1e-6), just under max_norm."""
    return min(1.0, float(max_norm) / (float(norm) + CLIP_EPS))


def bias_corrections(beta1, beta2, t) -> tuple[float, float]:
    """1 - beta1^t and 1 - beta2^t in float32, computed on the host as llm.c's train_gpt2.cu does
    (`1.0f - powf(beta1, step)`): what adamw2 receives instead of computing them in every thread."""
    b1, b2, tt = np.float32(beta1), np.float32(beta2), np.float32(t)
    return float(np.float32(1) - b1**tt), float(np.float32(1) - b2**tt)


# ------------------------------------------------------------------------------------------------
# Kernel wrappers
# ------------------------------------------------------------------------------------------------
def _check_version(name, version, versions):
    if version not in versions:
        raise ValueError(f"{name}: version must be one of {sorted(versions)}, got {version!r}")


def _check_float4(kernel, what, a, size):
    """float4 accesses need a multiple of 4 elements and 16-byte aligned memory."""
    if size % 4:
        raise ValueError(f"{kernel} loads float4: {what} must have a multiple of 4 elements, got {size} "
                         f"(pad it, or use version=1)")
    checks.check_float4(kernel, "version=1", **{what: a})


def adamw(param, grad, m, v, t, lr, beta1, beta2, eps, weight_decay, grad_scale=1.0, version=2):
    """One AdamW step with kernel version `version`, in place on the device arrays param, m, v."""
    _check_version("adamw", version, VERSIONS)
    n = int(param.size)
    for name, a in (("grad", grad), ("m", m), ("v", v)):
        if int(a.size) != n:
            raise ValueError(f"adamw: {name} has {a.size} elements but param has {n}: param, grad, m and v must "
                             f"have the same number of elements")
    if isinstance(t, (bool, np.bool_)) or not isinstance(t, numbers.Integral) or t < 1:
        raise ValueError(f"adamw: t counts optimizer steps from 1 (the bias corrections divide by 1 - beta^t, "
                         f"which is 0 at t=0), got t={t!r}")
    if n > INT_MAX:
        raise ValueError(f"adamw kernels index with int: at most {INT_MAX} parameters per launch, got {n}")
    if n == 0:
        return
    if version == 2:  # (before anything is compiled: a misaligned view is the caller's to fix)
        for name, a in (("param", param), ("grad", grad), ("m", m), ("v", v)):
            _check_float4("adamw2", name, a, n)
    mod = device.load_module("adamw.cu")
    if version == 1:
        mod.get_function("adamw1")((ceil_div(n, ADAMW_BLOCK),), (ADAMW_BLOCK,),
                                   (param, grad, m, v, n, int(t), lr, beta1, beta2, eps, weight_decay, grad_scale))
    else:
        beta1_correction, beta2_correction = bias_corrections(beta1, beta2, t)
        mod.get_function("adamw2")((ceil_div(n // 4, ADAMW_BLOCK),), (ADAMW_BLOCK,),
                                   (param, grad, m, v, n, lr, beta1, beta2, beta1_correction, beta2_correction,
                                    eps, weight_decay, grad_scale))


def norm2_blocks(n: int) -> int:
    """Blocks of global_norm2 for a tensor of n elements: enough for its n / 4 float4s, at most NORM2_MAX_BLOCKS."""
    return max(1, min(NORM2_MAX_BLOCKS, ceil_div(n // 4, NORM_BLOCK)))


def global_norm_squared(grads, version=2) -> float:
    """The sum of g^2 over one device array or a list of them, computed by kernel version `version`
    (0: atomics, not deterministic; 1 and 2: partial sums, then one block sums them in a fixed order)."""
    _check_version("global_norm_squared", version, NORM_VERSIONS)
    tensors = []
    for k, g in enumerate(_as_list(grads)):
        if int(g.size) > INT_MAX:
            raise ValueError(f"global_norm kernels index with int: tensor {k} has {g.size} elements, at most "
                             f"{INT_MAX} are allowed")
        if g.size:
            tensors.append((k, g.reshape(-1)))
    if not tensors:
        return 0.0
    if version == 2:
        for k, g in tensors:
            _check_float4("global_norm2", f"tensor {k}" if isinstance(grads, (list, tuple)) else "the array",
                          g, int(g.size))
    mod = device.load_module("global_norm.cu")
    out = device.zeros(1)
    if version == 0:
        kernel = mod.get_function("global_norm0")
        for _, g in tensors:
            kernel((ceil_div(g.size, NORM_BLOCK),), (NORM_BLOCK,), (g, out, int(g.size)))
        return float(device.asnumpy(out)[0])
    if version == 1:
        kernel = mod.get_function("global_norm1")
        blocks = [ceil_div(g.size, NORM_BLOCK) for _, g in tensors]
        partials = device.empty(sum(blocks))
        offset = 0
        for (_, g), b in zip(tensors, blocks):  # tensor after tensor, each into its own slice of partials
            kernel((b,), (NORM_BLOCK,), (g, partials[offset:offset + b], int(g.size)))
            offset += b
    else:
        kernel = mod.get_function("global_norm2")
        partials = device.zeros(NORM2_MAX_BLOCKS)  # every launch adds into it
        for _, g in tensors:
            kernel((norm2_blocks(g.size),), (NORM_BLOCK,), (g, partials, int(g.size)))
    mod.get_function("global_norm_sum_partials")((1,), (SUM_PARTIALS_BLOCK,), (partials, out, int(partials.size)))
    return float(device.asnumpy(out)[0])
