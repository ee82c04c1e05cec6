"""The token + position encoder, GPT-2's first layer: reference and kernel wrappers.

    out[b, t, :] = wte[idx[b, t], :] + wpe[t, :]

idx (B, T) int32 token ids in [0, V); wte (V, C) token embeddings; wpe (maxT, C) position
embeddings, T <= maxT; out (B, T, C). Backward (accumulating, see helpers.ops):

    dwte[idx[b, t], :] += dout[b, t, :]        dwpe[t, :] += dout[b, t, :]      for every (b, t)

The kernels are in cuda/encoder.cu.
"""
from __future__ import annotations

import numpy as np

from .. import ceil_div
from ..runtime import device
from . import checks
from . import check_array

#: Kernel versions in cuda/encoder.cu (forward and backward share the numbers).
VERSIONS = {
    1: "naive: one thread per (b,t,c); backward with float atomicAdd (order-dependent last bits)",
    2: "forward: float4, one thread per (b,t,4 channels); backward: deterministic, dwpe one thread per (t,c) "
       "looping over b, dwte over token buckets sorted on the host",
}

BLOCK_SIZE = 256
INT_MAX = 2**31 - 1


# ------------------------------------------------------------------------------------------------
# NumPy reference
# ------------------------------------------------------------------------------------------------
def encoder_forward(wte, wpe, idx):
    """out[b, t] = wte[idx[b, t]] + wpe[t]; the dtype of wte and wpe (float32, or float64)."""
    B, T = idx.shape
    return wte[idx] + wpe[:T]  # (B, T, C) + (T, C), broadcast over b


def encoder_backward(dwte, dwpe, dout, idx):
    """dwte[idx[b, t]] += dout[b, t] and dwpe[t] += dout[b, t], in place, adding position after position.

    np.add.at, not `dwte[idx] += dout`: with fancy indexing, a token that occurs twice would be
    written twice and only the last write would count; np.add.at adds every occurrence, in the
    order of the positions (b, t) in memory."""
    B, T, C = dout.shape
    np.add.at(dwte, idx, dout)
    for b in range(B):
        dwpe[:T] += dout[b]


# ------------------------------------------------------------------------------------------------
# Kernel wrappers
# ------------------------------------------------------------------------------------------------
def module():
    """cuda/encoder.cu, compiled for the active backend (device.load_module caches it)."""
    return device.load_module("encoder.cu")


def _shape(a):
    return tuple(int(s) for s in a.shape)




def _check_shapes(fname, names, table, pos_table, activ, idx):
    """Shapes and dtypes shared by forward and backward; returns B, T, C, V, maxT."""
    table_name, pos_name, activ_name = names
    check_array(fname, "idx", idx, 2, np.int32)
    check_array(fname, table_name, table, 2, np.float32)
    check_array(fname, pos_name, pos_table, 2, np.float32)
    check_array(fname, activ_name, activ, 3, np.float32)
    B, T = _shape(idx)
    V, C = _shape(table)
    maxT, Cp = _shape(pos_table)
    if Cp != C:
        raise ValueError(f"{fname}: `{table_name}` {_shape(table)} and `{pos_name}` {_shape(pos_table)} must have "
                         f"the same number of channels C, got {C} and {Cp}")
    if _shape(activ) != (B, T, C):
        raise ValueError(f"{fname}: `{activ_name}` must be (B, T, C) = {(B, T, C)} for idx {_shape(idx)} "
                         f"and C={C}, got {_shape(activ)}")
    if T > maxT:
        raise ValueError(f"{fname}: idx has T={T} positions but `{pos_name}` has only {maxT} rows (maxT): "
                         f"T must be at most maxT")
    if B * T * C > INT_MAX or V * C > INT_MAX:
        raise ValueError(f"{fname}: the kernels index with 32-bit ints: B*T*C and V*C must be below 2**31, "
                         f"got B*T*C={B * T * C}, V*C={V * C}")
    return B, T, C, V, maxT


def _check_version(fname, version):
    if version not in VERSIONS:
        raise ValueError(f"{fname}: no version {version!r}; versions are {sorted(VERSIONS)}")


def _check_float4(kname, C, arrays):
    """float4 loads need 16-byte aligned rows: C % 4 == 0 and arrays that start on 16 bytes."""
    if C % 4 != 0:
        raise ValueError(f"{kname} loads float4: C must be a multiple of 4, got C={C} (use version 1)")
    checks.check_float4(kname, "version 1", **arrays)


def forward(out, idx, wte, wpe, version=2):
    """out = wte[idx] + wpe[:T] on the device (all arguments device arrays); returns None."""
    _check_version("encoder.forward", version)
    B, T, C, V, maxT = _check_shapes("encoder.forward", ("wte", "wpe", "out"), wte, wpe, out, idx)
    if B * T * C == 0:
        return
    if version == 1:
        n = B * T * C
        fn = module().get_function("encoder_forward1")
    else:
        _check_float4("encoder_forward2", C, {"out": out, "wte": wte, "wpe": wpe})
        n = B * T * C // 4
        fn = module().get_function("encoder_forward2")
    fn((ceil_div(n, BLOCK_SIZE),), (BLOCK_SIZE,), (out, idx, wte, wpe, B, T, C))


def token_buckets(idx_host):
    """The positions grouped by token id, for encoder_backward2_dwte (NumPy arrays, int32).

    A stable sort of the flat token ids lists the positions p = b*T + t token by token, and within
    a token in increasing p. Returns bucket_token (U,), the distinct tokens; bucket_start (U + 1,),
    where each bucket's positions start in bucket_pos, and one past the last; bucket_pos (B*T,)."""
    flat = np.asarray(idx_host).reshape(-1)
    bucket_pos = np.argsort(flat, kind="stable")
    bucket_token, starts = np.unique(flat[bucket_pos], return_index=True)
    bucket_start = np.append(starts, flat.size)
    return bucket_token.astype(np.int32), bucket_start.astype(np.int32), bucket_pos.astype(np.int32)


def backward(dwte, dwpe, dout, idx, version=2, *, idx_host=None):
    """dwte[idx[b,t]] += dout[b,t]; dwpe[t] += dout[b,t] on the device; returns None.

    Version 2 groups the positions by token on the host: it needs idx in host memory. On the CPU
    backend idx is already there. On a GPU, pass `idx_host` (a NumPy copy the caller already has,
    as llm.c's training loop does with the batch it just loaded); otherwise idx is copied back from
    the GPU, which waits for all queued GPU work to finish first."""
    _check_version("encoder.backward", version)
    B, T, C, V, maxT = _check_shapes("encoder.backward", ("dwte", "dwpe", "dout"), dwte, dwpe, dout, idx)
    if idx_host is not None and np.shape(idx_host) != (B, T):
        raise ValueError(f"encoder.backward: `idx_host` must be the host copy of idx, shape {(B, T)}, "
                         f"got {np.shape(idx_host)}")
    if B * T * C == 0:
        return
    mod = module()
    if version == 1:
        n = B * T * C
        mod.get_function("encoder_backward1")((ceil_div(n, BLOCK_SIZE),), (BLOCK_SIZE,),
                                              (dwte, dwpe, dout, idx, B, T, C))
        return
    # dwpe: one thread per (t, c)
    mod.get_function("encoder_backward2_dwpe")((ceil_div(T * C, BLOCK_SIZE),), (BLOCK_SIZE,), (dwpe, dout, B, T, C))
    # dwte: buckets of positions per token, built on the host
    if idx_host is None:
        idx_host = device.asnumpy(idx)  # on a GPU: a copy back to the host, after all queued work
    bucket_token, bucket_start, bucket_pos = (device.asarray(a) for a in token_buckets(idx_host))
    num_buckets = int(bucket_token.shape[0])
    mod.get_function("encoder_backward2_dwte")((ceil_div(num_buckets * C, BLOCK_SIZE),), (BLOCK_SIZE,),
                                               (dwte, dout, bucket_token, bucket_start, bucket_pos, num_buckets, C))
