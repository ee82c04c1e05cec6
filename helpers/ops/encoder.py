"""The token + position encoder, GPT-2's first layer: reference and kernel wrappers.

    out[b, t, :] = wte[idx[b, t], :] + wpe[t, :]

idx (B, T) int32 token ids in [0, V); wte (V, C) token embeddings; wpe (maxT, C) position
embeddings, T <= maxT; out (B, T, C). Backward (accumulating, see helpers.ops):

    dwte[idx[b, t], :] += dout[b, t, :]        dwpe[t, :] += dout[b, t, :]      for every (b, t)

A model without learned positions (Llama, whose positions enter through RoPE) passes wpe = None,
and dwpe = None to the backward.

Kernels: cuda/encoder.cu · notebook: notebooks/01_encoder.ipynb · tests: tests/test_op_encoder.py
"""
from __future__ import annotations

import numpy as np

from ..runtime import device
from .common import Launch, ceil_div, check_array, check_float4, check_int32, check_multiple_of_4, check_version, \
    run, shape_of

#: Kernel versions in cuda/encoder.cu: encoder_forward<N>, encoder_backward<N>.
VERSIONS = {
    "forward": {
        1: "naive: one thread per (b, t, c)",
        2: "float4: one thread per (b, t, 4 channels); C % 4 == 0",
    },
    "backward": {
        1: "naive: one thread per (b, t, c), float atomicAdd (order-dependent last bits)",
        2: "deterministic: dwpe one thread per (t, c) looping over b, dwte over token buckets sorted on the host",
    },
}

BLOCK_SIZE = 256


# ------------------------------------------------------------------------------------------------
# NumPy reference
# ------------------------------------------------------------------------------------------------
def encoder_forward(idx, wte, wpe):
    """out[b, t] = wte[idx[b, t]] + wpe[t] (wpe None: no positions); the dtype of wte and wpe."""
    B, T = idx.shape
    return wte[idx] if wpe is None else wte[idx] + wpe[:T]  # (B, T, C) + (T, C), broadcast over b


def encoder_backward(dwte, dwpe, dout, idx):
    """dwte[idx[b, t]] += dout[b, t] and dwpe[t] += dout[b, t], in place, adding position after position.

    np.add.at, not `dwte[idx] += dout`: with fancy indexing, a token that occurs twice would be
    written twice and only the last write would count; np.add.at adds every occurrence, in the
    order of the positions (b, t) in memory."""
    B, T, C = dout.shape
    np.add.at(dwte, idx, dout)
    for b in range(B if dwpe is not None else 0):
        dwpe[:T] += dout[b]


# ------------------------------------------------------------------------------------------------
# Kernel wrappers
# ------------------------------------------------------------------------------------------------
def module():
    """cuda/encoder.cu, compiled for the active backend (device.load_module caches it)."""
    return device.load_module("encoder.cu")


def _check_shapes(kernel, names, table, pos_table, activ, idx):
    """Shapes and dtypes shared by forward and backward; returns B, T, C, V, maxT."""
    table_name, pos_name, activ_name = names
    check_array(kernel, "idx", idx, 2, np.int32)
    check_array(kernel, table_name, table, 2)
    check_array(kernel, activ_name, activ, 3)
    B, T = shape_of(idx)
    V, C = shape_of(table)
    if pos_table is None:  # no learned positions (Llama)
        check_int32(kernel, **{"B*T*C": B * T * C, "V*C": V * C})
        if shape_of(activ) != (B, T, C):
            raise ValueError(f"{kernel}: `{activ_name}` must be (B, T, C) = {(B, T, C)} for idx {shape_of(idx)} "
                             f"and C={C}, got {shape_of(activ)}")
        return B, T, C, V, T
    check_array(kernel, pos_name, pos_table, 2)
    maxT, Cp = shape_of(pos_table)
    if Cp != C:
        raise ValueError(f"{kernel}: `{table_name}` {shape_of(table)} and `{pos_name}` {shape_of(pos_table)} must "
                         f"have the same number of channels C, got {C} and {Cp}")
    if shape_of(activ) != (B, T, C):
        raise ValueError(f"{kernel}: `{activ_name}` must be (B, T, C) = {(B, T, C)} for idx {shape_of(idx)} "
                         f"and C={C}, got {shape_of(activ)}")
    if T > maxT:
        raise ValueError(f"{kernel}: idx has T={T} positions but `{pos_name}` has only {maxT} rows (maxT): "
                         f"T must be at most maxT")
    check_int32(kernel, **{"B*T*C": B * T * C, "V*C": V * C})
    return B, T, C, V, maxT


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


def launches(step: str, *args, version: int, **options) -> list[Launch]:
    """The checked launches of `forward` or `backward` (same arguments), in the order they run."""
    check_version("encoder", step, version, VERSIONS)
    return (_forward_launches if step == "forward" else _backward_launches)(*args, version=version, **options)


def _forward_launches(out, idx, wte, wpe, *, version):
    kernel = f"encoder_forward{version}"
    B, T, C, V, maxT = _check_shapes(kernel, ("wte", "wpe", "out"), wte, wpe, out, idx)
    if B * T * C == 0:
        return []
    n = B * T * C
    if version == 2:
        check_multiple_of_4(kernel, "C", C, "version 1")
        check_float4(kernel, "version 1", out=out, wte=wte, wpe=wpe)
        n //= 4
    return [Launch(module().get_function(kernel), (ceil_div(n, BLOCK_SIZE),), (BLOCK_SIZE,), (out, idx, wte, wpe, B, T, C))]


def _backward_launches(dwte, dwpe, dout, idx, *, version, idx_host=None):
    kernel = f"encoder_backward{version}"
    B, T, C, V, maxT = _check_shapes(kernel, ("dwte", "dwpe", "dout"), dwte, dwpe, dout, idx)
    if idx_host is not None and np.shape(idx_host) != (B, T):
        raise ValueError(f"{kernel}: `idx_host` must be the host copy of idx, shape {(B, T)}, "
                         f"got {np.shape(idx_host)}")
    if B * T * C == 0:
        return []
    fn = module().get_function
    if version == 1:
        return [Launch(fn("encoder_backward1"), (ceil_div(B * T * C, BLOCK_SIZE),), (BLOCK_SIZE,),
                       (dwte, dwpe, dout, idx, B, T, C))]
    if idx_host is None:
        idx_host = device.asnumpy(idx)  # on a GPU: a copy back to the host, after all queued work
    bucket_token, bucket_start, bucket_pos = (device.asarray(a) for a in token_buckets(idx_host))
    num_buckets = int(bucket_token.shape[0])
    dwpe_launch = [] if dwpe is None else [
        Launch(fn("encoder_backward2_dwpe"), (ceil_div(T * C, BLOCK_SIZE),), (BLOCK_SIZE,), (dwpe, dout, B, T, C))]
    return dwpe_launch + [Launch(fn("encoder_backward2_dwte"), (ceil_div(num_buckets * C, BLOCK_SIZE),),
                                 (BLOCK_SIZE,), (dwte, dout, bucket_token, bucket_start, bucket_pos, num_buckets, C))]


def forward(out, idx, wte, wpe, version=2):
    """out = wte[idx] + wpe[:T] on the device (all arguments device arrays; wpe None: out = wte[idx]);
    returns None."""
    run(launches("forward", out, idx, wte, wpe, version=version))


def backward(dwte, dwpe, dout, idx, version=2, *, idx_host=None):
    """dwte[idx[b,t]] += dout[b,t]; dwpe[t] += dout[b,t] (unless dwpe is None) on the device; returns None.

    Version 2 groups the positions by token on the host: it needs idx in host memory. On the CPU
    backend idx is already there. On a GPU, pass `idx_host` (a NumPy copy the caller already has,
    as llm.c's training loop does with the batch it just loaded); otherwise idx is copied back from
    the GPU, which waits for all queued GPU work to finish first."""
    run(launches("backward", dwte, dwpe, dout, idx, version=version, idx_host=idx_host))
