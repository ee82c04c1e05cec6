"""The attention step of generation with a key/value cache (cuda/kv_cache.cu), and its reference.

Caches are per layer, shaped (NH, maxT, hs): k_cache[h, t2] is the key of position t2 in head h.
"""
from __future__ import annotations

import numpy as np

from ..runtime import device

VERSIONS = {1: "attention_decode: one block per head, scores in shared memory, block reductions"}
DECODE_BLOCK = 128
def module():
    """cuda/kv_cache.cu, compiled for the active backend (device.load_module caches it)."""
    return device.load_module("kv_cache.cu")


# ------------------------------------------------------------------------------------------------
# NumPy reference
# ------------------------------------------------------------------------------------------------
def append_reference(k_cache, v_cache, qkv, pos):
    """Store the newest position's key and value (qkv of shape (..., 3C)) at row `pos` of each head."""
    NH, _, hs = k_cache.shape
    C = NH * hs
    row = qkv.reshape(-1)
    k_cache[:, pos] = row[C:2 * C].reshape(NH, hs)
    v_cache[:, pos] = row[2 * C:].reshape(NH, hs)


def attention_decode_reference(qkv, k_cache, v_cache, pos):
    """out (C,): the newest query of each head attending over cache rows 0..pos."""
    NH, _, hs = k_cache.shape
    q = qkv.reshape(-1)[:NH * hs].reshape(NH, 1, hs)
    scores = (q @ k_cache[:, :pos + 1].transpose(0, 2, 1)) / np.sqrt(hs)     # (NH, 1, pos+1)
    p = np.exp(scores - scores.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    return (p @ v_cache[:, :pos + 1]).reshape(NH * hs)


# ------------------------------------------------------------------------------------------------
# Kernels
# ------------------------------------------------------------------------------------------------
def _check(k_cache, v_cache, qkv, pos, what):
    if k_cache.ndim != 3 or k_cache.shape != v_cache.shape:
        raise ValueError(f"{what}: k_cache and v_cache must both be (NH, maxT, hs), got {k_cache.shape} and {v_cache.shape}")
    NH, maxT, hs = (int(s) for s in k_cache.shape)
    if qkv.size != 3 * NH * hs:
        raise ValueError(f"{what}: qkv must hold one position's 3C = {3 * NH * hs} values, got {qkv.size}")
    if not 0 <= pos < maxT:
        raise ValueError(f"{what}: position {pos} is outside the cache's {maxT} rows")
    return NH, maxT, hs


def append(k_cache, v_cache, qkv, pos):
    NH, maxT, hs = _check(k_cache, v_cache, qkv, pos, "kv_cache_append")
    C = NH * hs
    module().get_function("kv_cache_append")((-(-C // 256),), (256,), (k_cache, v_cache, qkv, pos, C, NH, maxT))


def attention_decode(out, qkv, k_cache, v_cache, pos):
    NH, maxT, hs = _check(k_cache, v_cache, qkv, pos, "attention_decode")
    if out.size != NH * hs:
        raise ValueError(f"attention_decode: out must hold C = {NH * hs} values, got {out.size}")
    if 4 * maxT > 48 * 1024 - 128:
        raise ValueError(f"attention_decode keeps maxT={maxT} scores in shared memory: at most {(48 * 1024 - 128) // 4}")
    module().get_function("attention_decode")((NH,), (DECODE_BLOCK,), (out, qkv, k_cache, v_cache, pos, NH * hs, NH, maxT),
                                              shared_mem=4 * maxT)
