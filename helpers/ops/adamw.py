"""AdamW, the optimizer step of GPT-2: one step of PyTorch's torch.optim.AdamW, in place.

The op has one step, "update" (AdamW USES the gradients; nothing differentiates it, so there is no
finite-difference check: the reference is checked against torch.optim.AdamW instead):

- reference `adamw_update(param, grad, m, v, t, lr, ...)` (dtype-generic: the arithmetic happens in
  the arrays' dtype);
- wrapper `update(param, grad, m, v, t, lr, beta1, beta2, eps, weight_decay, grad_scale=1.0,
  version=2)`, on device arrays of any shape with the same number of elements (the model keeps all
  its parameters in one flat buffer, so one launch updates them all). grad_scale is the clip
  coefficient of helpers.ops.global_norm.

Kernels: cuda/adamw.cu · notebook: notebooks/07_adamw.ipynb · tests: tests/test_op_adamw.py
"""
from __future__ import annotations

import numbers

import numpy as np

from ..runtime import device
from .common import Launch, ceil_div, check_array, check_float4, check_int32, check_multiple_of_4, check_version, run

#: Kernel versions in cuda/adamw.cu: adamw<N>.
VERSIONS = {
    "update": {
        1: "one thread per parameter, bias corrections 1 - beta^t with powf in every thread",
        2: "bias corrections computed once on the host, four parameters per thread with float4",
    },
}

BLOCK_SIZE = 512   # threads per block (elementwise: any multiple of 32 is fine)


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


def bias_corrections(beta1, beta2, t) -> tuple[float, float]:
    """1 - beta1^t and 1 - beta2^t in float32, computed on the host as llm.c's train_gpt2.cu does
    (`1.0f - powf(beta1, step)`): what adamw2 receives instead of computing them in every thread."""
    b1, b2, tt = np.float32(beta1), np.float32(beta2), np.float32(t)
    return float(np.float32(1) - b1**tt), float(np.float32(1) - b2**tt)


# ------------------------------------------------------------------------------------------------
# Kernel wrappers
# ------------------------------------------------------------------------------------------------
def module():
    """cuda/adamw.cu, compiled for the active backend (device.load_module caches it)."""
    return device.load_module("adamw.cu")


def launches(step: str, param, grad, m, v, t, lr, beta1, beta2, eps, weight_decay, grad_scale=1.0, *,
             version: int) -> list[Launch]:
    """The checked launch of `update` (same arguments)."""
    check_version("adamw", step, version, VERSIONS)
    kernel = f"adamw{version}"
    for name, a in (("param", param), ("grad", grad), ("m", m), ("v", v)):
        check_array(kernel, name, a)
    n = int(param.size)
    for name, a in (("grad", grad), ("m", m), ("v", v)):
        if int(a.size) != n:
            raise ValueError(f"{kernel}: `{name}` has {a.size} elements but `param` has {n}: param, grad, m and v "
                             f"must have the same number of elements")
    if isinstance(t, (bool, np.bool_)) or not isinstance(t, numbers.Integral) or t < 1:
        raise ValueError(f"{kernel}: t counts optimizer steps from 1 (the bias corrections divide by 1 - beta^t, "
                         f"which is 0 at t=0), got t={t!r}")
    check_int32(kernel, **{"param.size": n})
    if n == 0:
        return []
    if version == 1:
        return [Launch(module().get_function(kernel), (ceil_div(n, BLOCK_SIZE),), (BLOCK_SIZE,),
                       (param, grad, m, v, n, int(t), lr, beta1, beta2, eps, weight_decay, grad_scale))]
    check_multiple_of_4(kernel, "param.size", n, "version 1")
    check_float4(kernel, "version 1", param=param, grad=grad, m=m, v=v)
    beta1_correction, beta2_correction = bias_corrections(beta1, beta2, t)
    return [Launch(module().get_function(kernel), (ceil_div(n // 4, BLOCK_SIZE),), (BLOCK_SIZE,),
                   (param, grad, m, v, n, lr, beta1, beta2, beta1_correction, beta2_correction,
                    eps, weight_decay, grad_scale))]


def update(param, grad, m, v, t, lr, beta1, beta2, eps, weight_decay, grad_scale=1.0, version=2):
    """One AdamW step with kernel version `version`, in place on the device arrays param, m, v."""
    run(launches("update", param, grad, m, v, t, lr, beta1, beta2, eps, weight_decay, grad_scale, version=version))
