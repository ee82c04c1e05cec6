"""GPT-2's classifier: softmax over the vocabulary, cross-entropy loss, and their backward pass,
in one step.

logits (B, T, Vp) float32, of which only the first V columns are real tokens (llm.c pads V=50257 to
Vp=50304); targets (B, T) int32 in [0, V), the token that comes next; dloss the gradient of the
mean loss with respect to each position's loss, 1/(B*T):

    probs[b, t, v]   = exp(logits[b, t, v]) / sum_{u < V} exp(logits[b, t, u])   for v < V, 0 for v >= V
    losses[b, t]     = -log probs[b, t, targets[b, t]]                           mean loss = losses.mean()
    dlogits[b, t, v] = (probs[b, t, v] - [v == targets[b, t]]) * dloss            (0 for v >= V)

The op has one step, "forward", which computes the losses AND dlogits (llm.c's fused classifier:
the logits feed nothing but the loss, so their gradient can be made right away). Reference
`classifier_forward(logits, targets, V, dloss) -> (losses, dlogits)`, built from the pieces
`softmax_forward`, `crossentropy_forward` and `crossentropy_softmax_backward`; wrapper
`forward(losses, dlogits, logits, targets, V, dloss, version=3)`. Unlike the other backward
kernels, these WRITE dlogits instead of accumulating into it: dlogits may be the logits array itself
(in place, saving (B, T, Vp) floats), and there is no other term to add.

Version 4 is the mixed-precision one (notebook 13): forward(losses float32 (B, T), dlogits bf16 (B, T, Vp),
logits bf16 (B, T, Vp), targets int32 (B, T), V, dloss, version=4): bf16 (ml_dtypes.bfloat16, BF16) logits
and dlogits, the softmax and the losses in float32, each gradient rounded once to bf16; dlogits written
(it may be the logits array), zeros in the padded columns. Vp a multiple of 8, both arrays 16-byte aligned.

Kernels: cuda/classifier.cu (block reductions from cuda/common.cuh) ·
notebook: notebooks/06_classifier.ipynb · tests: tests/test_op_classifier.py
"""
from __future__ import annotations

import numpy as np

from ..runtime import device
from .common import BF16, Launch, ceil_div, check_16_byte_aligned, check_array, check_block, check_float4, \
    check_int32, check_multiple_of, check_multiple_of_4, check_version, run, shape_of

#: Kernel versions in cuda/classifier.cu.
VERSIONS = {
    "forward": {
        1: "unfused: softmax_forward1 and crossentropy_forward1 (a thread per row), crossentropy_softmax_backward1 "
           "(a thread per element); stores the (B, T, Vp) probabilities in `probs`",
        2: "fused_classifier2: a block per row, online softmax (max and sum in one read), then dlogits; "
           "no probabilities stored",
        3: "fused_classifier3: version 2 with float4 loads and stores; Vp must be a multiple of 4",
        4: "bf16: fused_classifier4: version 3 on bf16 logits and dlogits (16-byte bf16x8 loads and stores), "
           "softmax and float32 losses computed in float32; Vp must be a multiple of 8, 16-byte aligned",
    },
}

ROW_BLOCK_SIZE = 128   # version 1's thread-per-row kernels: threads per block
BLOCK_SIZE = 256       # version 1's elementwise kernel: threads per block
FUSED_BLOCK_SIZE = 512  # fused kernels: threads per block, i.e. per row
BF16_VERSION = 4       # bf16 logits and dlogits


# ------------------------------------------------------------------------------------------------
# NumPy reference (dtype-generic: float32 in use, float64 for finite differences)
# ------------------------------------------------------------------------------------------------
def softmax_forward(logits, V):
    """probs (B, T, Vp): the softmax of each row over its first V columns, zeros in columns V..Vp-1."""
    z = logits[..., :V]
    e = np.exp(z - z.max(axis=-1, keepdims=True))  # subtracting the max changes nothing but overflow
    probs = np.zeros_like(logits)
    probs[..., :V] = e / e.sum(axis=-1, keepdims=True)
    return probs


def crossentropy_forward(probs, targets):
    """losses (B, T): -log of the probability given to the right next token."""
    b, t = np.indices(targets.shape)
    return -np.log(probs[b, t, targets])


def crossentropy_softmax_backward(dlogits, probs, targets, dloss) -> None:
    """dlogits += (probs - onehot(targets)) * dloss, in place (accumulates, like every backward
    reference here; from zeros it is what the kernels write). The padded columns get += 0: probs is
    0 there and no target points there."""
    b, t = np.indices(targets.shape)
    dlogits += probs * dloss
    dlogits[b, t, targets] -= dloss   # each (b, t) once: plain fancy indexing is safe here


def classifier_forward(logits, targets, V, dloss):
    """(losses (B, T), dlogits (B, T, Vp)): what the kernels compute."""
    probs = softmax_forward(logits, V)
    losses = crossentropy_forward(probs, targets)
    dlogits = np.zeros_like(logits)
    crossentropy_softmax_backward(dlogits, probs, targets, dloss)
    return losses, dlogits


# ------------------------------------------------------------------------------------------------
# Kernel wrappers
# ------------------------------------------------------------------------------------------------
def module():
    """cuda/classifier.cu, compiled for the active backend (device.load_module caches it)."""
    return device.load_module("classifier.cu")


def _check_targets(kernel, targets, V):
    """Every target in [0, V). A kernel would otherwise read outside the row or never write the
    loss: a silent wrong answer. On a GPU this is two small reductions and a wait for their result;
    a caller that has already checked its batch on the host (the training loop) passes
    check_targets=False."""
    if targets.size == 0:
        return
    lo, hi = int(targets.min()), int(targets.max())
    if lo < 0 or hi >= V:
        raise ValueError(f"{kernel}: targets must be token ids in [0, V={V}), found values in [{lo}, {hi}]")


def launches(step: str, *args, version: int, **options) -> list[Launch]:
    """The checked launches of `forward` (same arguments), in the order they run."""
    check_version("classifier", step, version, VERSIONS)
    return _forward_launches(*args, version=version, **options)


def _forward_launches(losses, dlogits, logits, targets, V, dloss, *, version, probs=None,
                      block_size=FUSED_BLOCK_SIZE, check_targets=True):
    kernel = f"fused_classifier{version}" if version > 1 else "classifier version 1"
    dtype = BF16 if version == BF16_VERSION else np.float32   # of logits and dlogits; losses are float32
    check_array(kernel, "logits", logits, 3, dtype=dtype)
    B, T, Vp = shape_of(logits)
    check_array(kernel, "dlogits", dlogits, shape=(B, T, Vp), dtype=dtype)
    check_array(kernel, "losses", losses, shape=(B, T))
    check_array(kernel, "targets", targets, dtype=np.int32, shape=(B, T))
    if isinstance(V, bool) or not isinstance(V, (int, np.integer)):
        raise ValueError(f"{kernel}: V must be an int, got {type(V).__name__} {V!r}")
    if not 1 <= V <= Vp:
        raise ValueError(f"{kernel}: V (the real vocabulary) must be in [1, Vp={Vp}], Vp being the last dimension "
                         f"of the logits; got V={V}")
    N = B * T
    if N == 0:
        raise ValueError(f"{kernel}: no rows (B*T = 0): there is nothing to launch")
    if check_targets:
        _check_targets(kernel, targets, V)
    fn = module().get_function
    if version == 1:
        check_array(kernel, "probs", probs, shape=(B, T, Vp))
        check_int32(kernel, **{"B*T*Vp": N * Vp})
        return [Launch(fn("softmax_forward1"), (ceil_div(N, ROW_BLOCK_SIZE),), (ROW_BLOCK_SIZE,),
                       (probs, logits, N, int(V), Vp)),
                Launch(fn("crossentropy_forward1"), (ceil_div(N, ROW_BLOCK_SIZE),), (ROW_BLOCK_SIZE,),
                       (losses, probs, targets, N, Vp)),
                Launch(fn("crossentropy_softmax_backward1"), (ceil_div(N * Vp, BLOCK_SIZE),), (BLOCK_SIZE,),
                       (dlogits, probs, targets, float(dloss), N, Vp))]
    check_block(kernel, block_size, whole_warps=True)
    if version == 3:
        check_multiple_of_4(kernel, "Vp (the last dimension of the logits)", Vp,
                            "version 2, or pad the vocabulary as llm.c's Vp=50304")
        check_float4(kernel, "version 2", logits=logits, dlogits=dlogits)
    if version == BF16_VERSION:
        fallback = "version 3 on float32 arrays, .astype(np.float32)"
        check_multiple_of(kernel, "Vp (the last dimension of the logits)", Vp, 8, "loads 8 bf16 (16 bytes) at a time",
                          "a vocabulary padded as llm.c's Vp=50304, or " + fallback)
        check_16_byte_aligned(kernel, fallback, logits=logits, dlogits=dlogits)
    return [Launch(fn(kernel), (N,), (int(block_size),), (losses, dlogits, logits, targets, float(dloss), int(V), Vp))]


def forward(losses, dlogits, logits, targets, V, dloss, version=3, *, probs=None, block_size=FUSED_BLOCK_SIZE,
            check_targets=True) -> None:
    """losses = cross-entropy of softmax(logits[..., :V]) at targets, and dlogits = (probs - onehot) * dloss,
    zeros in the padded columns (device arrays). dlogits is WRITTEN (not accumulated) and may be the
    logits array itself, which is then overwritten with its gradient. Version 1 needs `probs`, a
    (B, T, Vp) float32 scratch, and left holding the probabilities; block_size is the fused
    versions' threads per row. Version 4 takes bf16 logits and dlogits (ml_dtypes.bfloat16 device arrays,
    Vp a multiple of 8, 16-byte aligned) and float32 losses; each gradient is rounded once to bf16."""
    run(launches("forward", losses, dlogits, logits, targets, V, dloss, version=version, probs=probs,
                 block_size=block_size, check_targets=check_targets))
