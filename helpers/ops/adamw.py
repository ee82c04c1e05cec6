"""AdamW, the optimizer step of GPT-2: one step of PyTorch's torch.optim.AdamW, in place.

The op has one step, "update" (AdamW USES the gradients; nothing differentiates it, so there is no
finite-difference check: the reference is checked against torch.optim.AdamW instead):

- reference `adamw_update(param, grad, m, v, t, lr, ...)` (dtype-generic: the arithmetic happens in
  the arrays' dtype);
- wrapper `update(param, grad, m, v, t, lr, beta1, beta2, eps, weight_decay, grad_scale=1.0,
  version=2)`, on device arrays of any shape with the same number of elements (the model keeps all
  its parameters in one flat buffer, so one launch updates them all). grad_scale is the clip
  coefficient of helpers.ops.global_norm.

Mixed precision (version 3, "bf16: ..."; notebook 13): param is bf16, grad, m, v float32, and two
keyword-only arguments: `master`, the float32 master copy of param (same number of elements), which
the step updates as version 2 updates a float32 param, and `seed`, an int in [0, 2^32) that chooses
the stochastic rounding of the new master into param, and `offset` (default 0), the index of param's
first element in its tensor when a piece of a tensor is updated (ZeRO-1's shards): the piece then rounds
as it does in a launch over the whole tensor. `update(p_bf16, g, m, v, t, lr, ..., version=3,
master=p_f32, seed=s)`. The NumPy side, bit-exact with the kernel: `random_bits(index, seed)`,
`to_bf16_stochastic(x, bits)`, `stochastic_round(master, seed, offset)`, and the reference's keywords
`adamw_update(..., master=, seed=, offset=)`.

Kernels: cuda/adamw.cu · notebook: notebooks/07_adamw.ipynb · tests: tests/test_op_adamw.py
"""
from __future__ import annotations

import numbers

import ml_dtypes
import numpy as np

from ..runtime import device
from .common import (BF16, Launch, ceil_div, check_16_byte_aligned, check_array, check_float4, check_int32,
                     check_multiple_of, check_multiple_of_4, check_version, run)

#: Kernel versions in cuda/adamw.cu: adamw<N>.
VERSIONS = {
    "update": {
        1: "one thread per parameter, bias corrections 1 - beta^t with powf in every thread",
        2: "bias corrections computed once on the host, four parameters per thread with float4",
        3: "bf16: bf16 params stochastically rounded from float32 master weights updated as version 2 does; "
           "eight per thread (float4, 16-byte bf16 stores); n % 8 == 0, 16-byte aligned",
    },
}

BLOCK_SIZE = 512   # threads per block (elementwise: any multiple of 32 is fine)


# ------------------------------------------------------------------------------------------------
# NumPy reference
# ------------------------------------------------------------------------------------------------
def adamw_update(param, grad, m, v, t, lr, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, grad_scale=1.0, *,
                 master=None, seed=None, offset=0):
    """One AdamW step (PyTorch's torch.optim.AdamW, as llm.c), in place on param, m and v.

    t counts the steps from 1; m and v start at zero. grad_scale multiplies the gradient first
    (the clip coefficient; 1.0: no clipping). Weight decay is "decoupled": it shrinks the parameter
    directly instead of being added to the gradient, so Adam's per-parameter scaling does not touch it.

    With `master` (version 3's mixed precision): the step updates master (in its dtype) instead of
    param, then writes param = stochastic_round(master, seed, offset), as adamw3 does; param (bf16) is
    only written. The rounding is bit-exact with the kernel given the same float32 master values.
    """
    if t < 1:
        raise ValueError(f"t counts optimizer steps from 1 (the bias corrections divide by 1 - beta^t), got t={t}")
    if master is not None and seed is None:
        raise ValueError("adamw_update: `master` given without `seed` (the stochastic rounding needs one)")
    p = param if master is None else master
    g = grad_scale * grad
    m[...] = beta1 * m + (1 - beta1) * g          # running mean of the gradient
    v[...] = beta2 * v + (1 - beta2) * g * g      # running mean of its square
    m_hat = m / (1 - beta1**t)                    # bias corrections: m and v started at 0
    v_hat = v / (1 - beta2**t)
    p -= lr * (m_hat / (np.sqrt(v_hat) + eps) + weight_decay * p)
    if master is not None:
        param[...] = stochastic_round(master, seed, offset).reshape(np.shape(param))


def mix32(x):
    """bf16.cuh's mix32 (the "lowbias32" integer hash) on uint32 arrays: NumPy's uint32 arithmetic wraps
    modulo 2^32 as the GPU's unsigned int does."""
    shape = np.shape(x)
    x = np.asarray(x, dtype=np.uint32).reshape(-1)   # (arrays wrap silently; NumPy scalars would warn)
    x = x ^ (x >> np.uint32(16))
    x = x * np.uint32(0x7FEB352D)
    x = x ^ (x >> np.uint32(15))
    x = x * np.uint32(0x846CA68B)
    return (x ^ (x >> np.uint32(16))).reshape(shape)


def random_bits(index, seed: int):
    """bf16.cuh's random_bits(index, seed) for an array of indices (uint32), bit for bit."""
    seed_mix = np.uint32((int(seed) * 0x9E3779B9) & 0xFFFFFFFF)   # seed * 0x9e3779b9u, modulo 2^32
    return mix32(mix32(index) ^ seed_mix)


def to_bf16_stochastic(x, bits):
    """bf16.cuh's to_bf16_stochastic(f, bits) on float32 arrays, bit for bit: add the low 16 random bits
    to the 16 bits bf16 drops, keep the top 16 (infinities and NaNs: round to nearest, as the kernel)."""
    x, bits = np.broadcast_arrays(np.asarray(x, dtype=np.float32), np.asarray(bits, dtype=np.uint32))
    shape = x.shape
    x, bits = np.ascontiguousarray(x).reshape(-1), bits.reshape(-1)
    u = x.view(np.uint32)
    special = (u & np.uint32(0x7F800000)) == np.uint32(0x7F800000)
    # (specials zeroed first, so no sum wraps: a finite u + 0xffff stays below 2^32; the largest finite
    # magnitudes may carry into infinity's bits, as on the GPU)
    rounded = ((np.where(special, 0, u) + (bits & np.uint32(0xFFFF))) >> np.uint32(16)).astype(np.uint16)
    nearest = x.astype(ml_dtypes.bfloat16).view(np.uint16)
    return np.where(special, nearest, rounded).view(ml_dtypes.bfloat16).reshape(shape)


def stochastic_round(master, seed: int, offset: int = 0):
    """What adamw3 writes into param: master (as float32) rounded stochastically to bf16 with
    random_bits(offset + k, seed) for element k of the flat array (offset: where master starts in its
    tensor, when it is a piece of one); the shape of master."""
    x = np.ascontiguousarray(master, dtype=np.float32)
    bits = random_bits(np.arange(offset, offset + x.size, dtype=np.uint32), seed)
    return to_bf16_stochastic(x.reshape(-1), bits).reshape(x.shape)


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
             version: int, master=None, seed=None, offset=0) -> list[Launch]:
    """The checked launch of `update` (same arguments)."""
    check_version("adamw", step, version, VERSIONS)
    kernel = f"adamw{version}"
    bf16 = version == 3
    if not bf16 and (master is not None or seed is not None or offset != 0):
        given = " and ".join(f"`{k}`" for k, a in (("master", master), ("seed", seed), ("offset", offset or None))
                             if a is not None)
        raise ValueError(f"{kernel} takes no {given}: a float32 param is its own master copy and is rounded to "
                         f"nearest; master, seed and offset are for version 3 (a bf16 param)")
    check_array(kernel, "param", param, dtype=BF16 if bf16 else np.float32)
    for name, a in (("grad", grad), ("m", m), ("v", v)):
        check_array(kernel, name, a)
    arrays = (("grad", grad), ("m", m), ("v", v))
    if bf16:
        if master is None:
            raise ValueError(f"{kernel}: `master` is required: the float32 master copy of the bf16 param (the step "
                             f"updates it, then rounds it into param), an array of {param.size} elements")
        check_array(kernel, "master", master)
        arrays += (("master", master),)
        if (isinstance(seed, (bool, np.bool_)) or not isinstance(seed, numbers.Integral)
                or not 0 <= int(seed) < 2**32):
            raise ValueError(f"{kernel}: `seed` is required, an int in [0, 2^32) that chooses the stochastic "
                             f"rounding (a new one each step), got seed={seed!r}")
        if (isinstance(offset, (bool, np.bool_)) or not isinstance(offset, numbers.Integral) or offset < 0
                or offset + int(param.size) > 2**32):
            raise ValueError(f"{kernel}: `offset` is the index of param's first element in its tensor, an int >= 0 "
                             f"(offset + param.size <= 2^32: the rounding's element index is 32 bits), "
                             f"got offset={offset!r}")
    n = int(param.size)
    for name, a in arrays:
        if int(a.size) != n:
            names = "param, grad, m, v and master" if bf16 else "param, grad, m and v"
            raise ValueError(f"{kernel}: `{name}` has {a.size} elements but `param` has {n}: {names} "
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
    beta1_correction, beta2_correction = bias_corrections(beta1, beta2, t)
    if version == 3:
        fallback = "float32 parameters and version 1, which takes any size and alignment"
        check_multiple_of(kernel, "param.size", n, 8, "updates eight parameters per thread (16-byte bf16 stores)",
                          fallback)
        check_16_byte_aligned(kernel, fallback, param=param, master=master, grad=grad, m=m, v=v)
        return [Launch(module().get_function(kernel), (ceil_div(n // 8, BLOCK_SIZE),), (BLOCK_SIZE,),
                       (param, master, grad, m, v, n, lr, beta1, beta2, beta1_correction, beta2_correction,
                        eps, weight_decay, grad_scale, int(seed), int(offset)))]
    check_multiple_of_4(kernel, "param.size", n, "version 1")
    check_float4(kernel, "version 1", param=param, grad=grad, m=m, v=v)
    return [Launch(module().get_function(kernel), (ceil_div(n // 4, BLOCK_SIZE),), (BLOCK_SIZE,),
                   (param, grad, m, v, n, lr, beta1, beta2, beta1_correction, beta2_correction,
                    eps, weight_decay, grad_scale))]


def update(param, grad, m, v, t, lr, beta1, beta2, eps, weight_decay, grad_scale=1.0, version=2, *,
           master=None, seed=None, offset=0):
    """One AdamW step with kernel version `version`, in place on the device arrays param, m, v (and, for
    version 3, master: param bf16, the rest float32, seed an int in [0, 2^32), offset param's place in
    its tensor)."""
    run(launches("update", param, grad, m, v, t, lr, beta1, beta2, eps, weight_decay, grad_scale, version=version,
                 master=master, seed=seed, offset=offset))
