"""The attention step of generation with a key/value cache: append the newest position's key and
value to the caches, then let its query attend over cache positions 0..pos.

Caches are per layer, shaped (NH, maxT, hs): k_cache[h, t2] is the key of position t2 in head h;
qkv holds one position's q, k, v (3C values, any shape); out receives its C outputs. The op has one
step, "forward" (generation needs no gradient). Reference `kv_cache_forward(k_cache, v_cache, qkv,
pos) -> out`, which appends in place as the kernels do; wrapper `forward(out, k_cache, v_cache, qkv,
pos, version=1)`.

Version 2 is the mixed-precision one (notebook 13): forward(out bf16 (C values), k_cache bf16, v_cache bf16
(NH, maxT, hs), qkv bf16 (3C values), pos, version=2), all ml_dtypes.bfloat16 device arrays (BF16): bf16
caches, float32 scores, softmax and sums, each output rounded once to bf16. hs a multiple of 8; qkv and
the caches 16-byte aligned.

Kernels: cuda/kv_cache.cu (block reductions from cuda/common.cuh) · notebook: notebooks/10_sampling.ipynb ·
tests: tests/test_op_kv_cache.py
"""
from __future__ import annotations

import numpy as np

from ..runtime import device
from .common import BF16, SCRATCH_BYTES, SHARED_MEMORY_LIMIT, Launch, ceil_div, check_16_byte_aligned, check_array, \
    check_int32, check_multiple_of, check_version, run, shape_of

#: Kernel versions in cuda/kv_cache.cu: kv_cache_forward<N>_append, kv_cache_forward<N>_decode.
VERSIONS = {
    "forward": {
        1: "append: one thread per channel; decode: one block per head, scores in shared memory, block reductions",
        2: "bf16: version 1 on bf16 caches, qkv and out (16-byte bf16x8 appends and key loads), float32 scores, "
           "softmax and sums; hs % 8 == 0, 16-byte aligned",
    },
}

APPEND_BLOCK = 256
DECODE_BLOCK = 128   # the kernel's __launch_bounds__ (DECODE_BLOCK in kv_cache.cu)
#: The longest cache decode handles: its maxT scores plus the reductions' scratch in 48 KiB of shared memory.
MAX_T = (SHARED_MEMORY_LIMIT - SCRATCH_BYTES) // 4
BF16_VERSION = 2     # bf16 caches, qkv and out; its decode also keeps q (hs floats) in shared memory


# ------------------------------------------------------------------------------------------------
# NumPy reference
# ------------------------------------------------------------------------------------------------
def kv_cache_forward(k_cache, v_cache, qkv, pos):
    """Store the newest position's key and value at row `pos` of each head (in place), and return
    out (C,): its query attending over cache rows 0..pos. No causal mask is needed: the cache holds
    only the past."""
    NH, _, hs = k_cache.shape
    C = NH * hs
    row = qkv.reshape(-1)
    k_cache[:, pos] = row[C:2 * C].reshape(NH, hs)
    v_cache[:, pos] = row[2 * C:].reshape(NH, hs)
    q = row[:C].reshape(NH, 1, hs)
    scores = (q @ k_cache[:, :pos + 1].transpose(0, 2, 1)) / np.sqrt(hs)     # (NH, 1, pos+1)
    p = np.exp(scores - scores.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    return (p @ v_cache[:, :pos + 1]).reshape(C)


# ------------------------------------------------------------------------------------------------
# Kernel wrappers
# ------------------------------------------------------------------------------------------------
def module():
    """cuda/kv_cache.cu, compiled for the active backend (device.load_module caches it)."""
    return device.load_module("kv_cache.cu")


def launches(step: str, *args, version: int) -> list[Launch]:
    """The checked launches of `forward` (same arguments), in the order they run."""
    check_version("kv_cache", step, version, VERSIONS)
    return _forward_launches(*args, version=version)


def _forward_launches(out, k_cache, v_cache, qkv, pos, *, version):
    kernel = f"kv_cache_forward{version}"
    bf16 = version == BF16_VERSION
    dtype = BF16 if bf16 else np.float32
    check_array(kernel, "k_cache", k_cache, 3, dtype=dtype)
    check_array(kernel, "v_cache", v_cache, shape=shape_of(k_cache), dtype=dtype)
    NH, maxT, hs = shape_of(k_cache)
    C = NH * hs
    check_array(kernel, "qkv", qkv, dtype=dtype)
    check_array(kernel, "out", out, dtype=dtype)
    if int(qkv.size) != 3 * C:
        raise ValueError(f"{kernel}: `qkv` must hold one position's 3C = {3 * C} values, got {qkv.size}")
    if int(out.size) != C:
        raise ValueError(f"{kernel}: `out` must hold C = {C} values, got {out.size}")
    if isinstance(pos, bool) or not isinstance(pos, (int, np.integer)) or not 0 <= pos < maxT:
        raise ValueError(f"{kernel}: position {pos!r} is outside the cache's {maxT} rows")
    if maxT > MAX_T - (hs if bf16 else 0):
        also = f" and q's hs={hs} values" if bf16 else ""
        raise ValueError(f"{kernel} keeps maxT={maxT} scores{also} in shared memory: at most "
                         f"{MAX_T - (hs if bf16 else 0)} positions fit in 48 KiB")
    check_int32(kernel, **{"NH*maxT*hs": NH * maxT * hs})
    per_thread = 1
    if bf16:
        fallback = "version 1 on float32 arrays, .astype(np.float32)"
        check_multiple_of(kernel, "hs", hs, 8, "moves a head's rows 8 bf16 (16 bytes) at a time", fallback)
        check_16_byte_aligned(kernel, fallback, k_cache=k_cache, v_cache=v_cache, qkv=qkv)
        per_thread = 8   # the append moves 8 channels per thread
    fn = module().get_function
    return [Launch(fn(f"{kernel}_append"), (ceil_div(C // per_thread, APPEND_BLOCK),), (APPEND_BLOCK,),
                   (k_cache, v_cache, qkv, int(pos), C, NH, maxT)),
            Launch(fn(f"{kernel}_decode"), (NH,), (DECODE_BLOCK,), (out, qkv, k_cache, v_cache, int(pos), C, NH, maxT),
                   4 * (maxT + hs) if bf16 else 4 * maxT)]


def forward(out, k_cache, v_cache, qkv, pos, version=1) -> None:
    """Append qkv's key and value at row `pos` of the caches, and out = its attention over rows
    0..pos, on the device; returns None. Version 2: all four arrays bf16 (hs % 8 == 0, qkv and the caches
    16-byte aligned); out is version 1's float32 result rounded once to bf16."""
    run(launches("forward", out, k_cache, v_cache, qkv, pos, version=version))
