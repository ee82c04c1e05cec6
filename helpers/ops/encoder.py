"""The token + position encoder, GPT-2's first layer: reference and kernel wrappers.

    out[b, t, :] = wte[idx[b, t], :] + wpe[t, :]

idx (B, T) int32 token ids in [0, V); wte (V, C) token embeddings; wpe (maxT, C) position
embeddings, T <= maxT; out (B, T, C). Backward (accumulating, see helpers.ops):

    dwte[idx[b, t], :] += dout[b, t, :]        dwpe[t, :] += dout[b, t, :]      for every (b, t)

A model without learned positions (Llama, whose positions enter through RoPE) passes wpe = None,
and dwpe = None to the backward.

Version 3 of each step is the bf16 one (mixed precision, asked for by number): forward(out bf16, idx
int32, wte bf16, wpe bf16 or None, version=3), the float32 sum rounded once to bf16;
backward(dwte float32, dwpe float32 or None, dout bf16, idx, version=3), version 2's deterministic
order, accumulating in float32 (parameter gradients stay float32). C % 8 == 0, 16-byte aligned.

Kernels: cuda/encoder.cu · notebook: notebooks/01_encoder.ipynb · tests: tests/test_op_encoder.py
"""
from __future__ import annotations

import numpy as np

from ..runtime import device
from .common import BF16, Launch, ceil_div, check_16_byte_aligned, check_array, check_float4, check_int32, \
    check_multiple_of, check_multiple_of_4, check_version, run, shape_of

#: Kernel versions in cuda/encoder.cu: encoder_forward<N>, encoder_backward<N>.
VERSIONS = {
    "forward": {
        1: "naive: one thread per (b, t, c)",
        2: "float4: one thread per (b, t, 4 channels); C % 4 == 0",
        3: "bf16: bf16 wte, wpe, out; one thread per (b, t, 8 channels), 16-byte bf16x8 loads, float32 sum "
           "rounded once; C % 8 == 0, 16-byte aligned",
    },
    "backward": {
        1: "naive: one thread per (b, t, c), float atomicAdd (order-dependent last bits)",
        2: "deterministic: dwpe one thread per (t, c) looping over b, dwte over token buckets sorted on the host",
        3: "bf16: bf16 dout, float32 dwte and dwpe; version 2's order, 8 channels per thread (bf16x8 loads); "
           "C % 8 == 0, 16-byte aligned",
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


def _check_shapes(kernel, names, table, pos_table, activ, idx, table_dtype=np.float32, activ_dtype=np.float32):
    """Shapes and dtypes shared by forward and backward (the tables' dtype and the activation's);
    returns B, T, C, V, maxT."""
    table_name, pos_name, activ_name = names
    check_array(kernel, "idx", idx, 2, np.int32)
    check_array(kernel, table_name, table, 2, table_dtype)
    check_array(kernel, activ_name, activ, 3, activ_dtype)
    B, T = shape_of(idx)
    V, C = shape_of(table)
    if pos_table is None:  # no learned positions (Llama)
        check_int32(kernel, **{"B*T*C": B * T * C, "V*C": V * C})
        if shape_of(activ) != (B, T, C):
            raise ValueError(f"{kernel}: `{activ_name}` must be (B, T, C) = {(B, T, C)} for idx {shape_of(idx)} "
                             f"and C={C}, got {shape_of(activ)}")
        return B, T, C, V, T
    check_array(kernel, pos_name, pos_table, 2, table_dtype)
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
    dtype = BF16 if version == 3 else np.float32     # version 3: wte, wpe and out all bf16
    B, T, C, V, maxT = _check_shapes(kernel, ("wte", "wpe", "out"), wte, wpe, out, idx, dtype, dtype)
    if version == 3:
        _check_bf16x8(kernel, C, out=out, wte=wte, wpe=wpe)
    if B * T * C == 0:
        return []
    n = B * T * C
    if version == 2:
        check_multiple_of_4(kernel, "C", C, "version 1")
        check_float4(kernel, "version 1", out=out, wte=wte, wpe=wpe)
        n //= 4
    elif version == 3:
        n //= 8   # the kernel counts bf16x8s
    return [Launch(module().get_function(kernel), (ceil_div(n, BLOCK_SIZE),), (BLOCK_SIZE,), (out, idx, wte, wpe, B, T, C))]


def _check_bf16x8(kernel, C, **arrays):
    """Version 3 moves 8 channels (16 bytes of bf16, 32 of float32) at a time: C % 8 == 0, and every
    array starts 16-byte aligned, so that each row's groups of 8 do too."""
    check_multiple_of(kernel, "C", C, 8, "loads 8 bf16 at a time (16 bytes)",
                      "float32 arrays and version 1, which takes any C")
    check_16_byte_aligned(kernel, "float32 arrays and versions 1 and 2", **arrays)


def _backward_launches(dwte, dwpe, dout, idx, *, version, idx_host=None):
    kernel = f"encoder_backward{version}"
    B, T, C, V, maxT = _check_shapes(kernel, ("dwte", "dwpe", "dout"), dwte, dwpe, dout, idx,
                                     activ_dtype=BF16 if version == 3 else np.float32)  # gradients stay float32
    if version == 3:
        _check_bf16x8(kernel, C, dwte=dwte, dwpe=dwpe, dout=dout)
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
    per_thread = 8 if version == 3 else 1            # channels per thread
    dwpe_launch = [] if dwpe is None else [
        Launch(fn(f"encoder_backward{version}_dwpe"), (ceil_div(T * C // per_thread, BLOCK_SIZE),), (BLOCK_SIZE,),
               (dwpe, dout, B, T, C))]
    return dwpe_launch + [Launch(fn(f"encoder_backward{version}_dwte"),
                                 (ceil_div(num_buckets * C // per_thread, BLOCK_SIZE),), (BLOCK_SIZE,),
                                 (dwte, dout, bucket_token, bucket_start, bucket_pos, num_buckets, C))]


def forward(out, idx, wte, wpe, version=2):
    """out = wte[idx] + wpe[:T] on the device (all arguments device arrays; wpe None: out = wte[idx]);
    returns None. Version 3: out, wte and wpe bf16."""
    run(launches("forward", out, idx, wte, wpe, version=version))


def backward(dwte, dwpe, dout, idx, version=2, *, idx_host=None):
    """dwte[idx[b,t]] += dout[b,t]; dwpe[t] += dout[b,t] (unless dwpe is None) on the device; returns None.

    Version 2 groups the positions by token on the host: it needs idx in host memory. On the CPU
    backend idx is already there. On a GPU, pass `idx_host` (a NumPy copy the caller already has,
    as llm.c's training loop does with the batch it just loaded); otherwise idx is copied back from
    the GPU, which waits for all queued GPU work to finish first. Version 3: dout bf16, dwte and dwpe
    float32, with version 2's order."""
    run(launches("backward", dwte, dwpe, dout, idx, version=version, idx_host=idx_host))
