"""GPT-2's classifier: softmax over the vocabulary, cross-entropy loss, and their backward pass.

logits (B, T, Vp) float32, of which only the first V columns are real tokens (llm.c pads V=50257 to
Vp=50304); targets (B, T) int32 in [0, V), the token that comes next; dloss the gradient of the
mean loss with respect to each position's loss, 1/(B*T):

    probs[b, t, v]   = exp(logits[b, t, v]) / sum_{u < V} exp(logits[b, t, u])   for v < V, 0 for v >= V
    losses[b, t]     = -log probs[b, t, targets[b, t]]                           mean loss = losses.mean()
    dlogits[b, t, v] = (probs[b, t, v] - [v == targets[b, t]]) * dloss            (0 for v >= V)

The kernels are in cuda/classifier.cu. Version 1 is three kernels that store the probabilities;
version 2 and 3 fuse everything into one kernel that never stores them and may write dlogits over
the logits (in place). Unlike the other backward kernels, the fused ones WRITE dlogits instead of
accumulating into it: in place there is nothing to accumulate onto, and the logits feed nothing but
the loss, so their gradient has no other term (llm.c does the same).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .. import ceil_div
from ..runtime import device
from . import checks
from . import check_array

#: Kernel versions in cuda/classifier.cu.
VERSIONS = {
    1: "unfused: softmax_forward1 and crossentropy_forward1 (a thread per row), crossentropy_softmax_backward1 "
       "(a thread per element); stores the (B,T,Vp) probabilities",
    2: "fused_classifier2: a block per row, online softmax (max and sum in one read), then dlogits; "
       "no probabilities stored, dlogits may overwrite logits",
    3: "fused_classifier3: version 2 with float4 loads and stores; Vp must be a multiple of 4",
}

ROW_BLOCK_SIZE = 128   # version 1's thread-per-row kernels: threads per block
BLOCK_SIZE = 256       # elementwise kernels: threads per block
FUSED_BLOCK_SIZE = 512  # fused kernels: threads per block, i.e. per row
INT_MAX = 2**31 - 1


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


def crossentropy_softmax_backward(dlogits, probs, targets, dloss, version=None, *, check_targets=True):
    """dlogits += (probs - onehot(targets)) * dloss, in place (accumulates, like every backward here).

    The padded columns get += 0: probs is 0 there and no target points there.

    One name for two things: without `version`, this is the NumPy reference (any float dtype);
    `version=1` launches the kernel crossentropy_softmax_backward1 on device arrays instead."""
    if version is not None:
        crossentropy_softmax_backward_launch(dlogits, probs, targets, dloss, version, check_targets=check_targets)()
        return
    b, t = np.indices(targets.shape)
    dlogits += probs * dloss
    dlogits[b, t, targets] -= dloss   # each (b, t) once: plain fancy indexing is safe here


def classifier_forward_backward(logits, targets, V, dloss):
    """(losses (B, T), dlogits (B, T, Vp)): what the fused kernels compute, from fresh zeros."""
    probs = softmax_forward(logits, V)
    losses = crossentropy_forward(probs, targets)
    dlogits = np.zeros_like(logits)
    crossentropy_softmax_backward(dlogits, probs, targets, dloss)
    return losses, dlogits


# ------------------------------------------------------------------------------------------------
# Kernel launches
# ------------------------------------------------------------------------------------------------
class Launch(NamedTuple):
    """A checked launch, not yet run: `launch()` runs it; `device.racecheck(*launch)` and
    `bench.measure(name, *launch)` take it as it is."""
    fn: object
    grid: tuple
    block: tuple
    args: tuple
    shared_mem: int = 0

    def __call__(self):
        self.fn(self.grid, self.block, self.args, self.shared_mem)


def module():
    """cuda/classifier.cu, compiled for the active backend (device.load_module caches it)."""
    return device.load_module("classifier.cu")


def _shape(a):
    return tuple(int(s) for s in a.shape)




def _check_rows(fname, rows_name, rows, per_row):
    """`rows` (B, T, Vp) float32; each of `per_row` {name: (array, dtype)} must be (B, T)."""
    check_array(fname, rows_name, rows, 3, np.float32)
    B, T, Vp = _shape(rows)
    for name, (a, dtype) in per_row.items():
        check_array(fname, name, a, 2, dtype)
        if _shape(a) != (B, T):
            raise ValueError(f"{fname}: `{name}` must be (B, T) = {(B, T)}, one value per row of `{rows_name}` "
                             f"{_shape(rows)}, got {_shape(a)}")
    return B, T, Vp


def _check_same_shape(fname, name, a, ref_name, ref):
    check_array(fname, name, a, 3, np.float32)
    if _shape(a) != _shape(ref):
        raise ValueError(f"{fname}: `{name}` must have the shape of `{ref_name}`, {_shape(ref)}, got {_shape(a)}")


def _check_V(fname, V, Vp):
    if not isinstance(V, (int, np.integer)) or isinstance(V, bool):
        raise ValueError(f"{fname}: V must be an int, got {type(V).__name__} {V!r}")
    if not 1 <= V <= Vp:
        raise ValueError(f"{fname}: V (the real vocabulary) must be in [1, Vp={Vp}], Vp being the last dimension "
                         f"of the logits; got V={V}")


def _check_targets(fname, targets, limit, what):
    """Every target in [0, limit). A kernel would otherwise read outside the row or never write the
    loss: a silent wrong answer. On a GPU this is two small reductions and a wait for their result;
    a caller that has already checked its batch on the host (the training loop) passes
    check_targets=False to the wrappers."""
    if targets.size == 0:
        return
    lo, hi = int(targets.min()), int(targets.max())
    if lo < 0 or hi >= limit:
        raise ValueError(f"{fname}: targets must be token ids in [0, {what}={limit}), found values in [{lo}, {hi}]")


def _check_version(fname, version, allowed):
    if version not in allowed:
        raise ValueError(f"{fname}: no version {version!r}; this function has versions {sorted(allowed)} "
                         f"(VERSIONS: {sorted(VERSIONS)})")


def _check_block(fname, block_size):
    if not (isinstance(block_size, (int, np.integer)) and 32 <= block_size <= 1024 and block_size % 32 == 0):
        raise ValueError(f"{fname} merges whole warps with full-mask shuffles: block_size must be a multiple of 32 "
                         f"in [32, 1024], got {block_size!r}")


def softmax_launch(probs, logits, V, version=1) -> Launch:
    """The checked launch of `softmax` (see there), not yet run."""
    fname = f"softmax_forward{version}"
    _check_version("classifier.softmax", version, (1,))
    check_array(fname, "logits", logits, 3, np.float32)
    _check_same_shape(fname, "probs", probs, "logits", logits)
    B, T, Vp = _shape(logits)
    _check_V(fname, V, Vp)
    N = B * T
    return Launch(module().get_function(fname), (max(1, ceil_div(N, ROW_BLOCK_SIZE)),), (ROW_BLOCK_SIZE,),
                  (probs, logits, N, int(V), Vp))


def softmax(probs, logits, V, version=1):
    """probs = softmax of logits over the first V columns, zeros in the padded ones (device arrays)."""
    softmax_launch(probs, logits, V, version)()


def crossentropy_launch(losses, probs, targets, version=1, *, check_targets=True) -> Launch:
    """The checked launch of `crossentropy` (see there), not yet run."""
    fname = f"crossentropy_forward{version}"
    _check_version("classifier.crossentropy", version, (1,))
    B, T, Vp = _check_rows(fname, "probs", probs, {"losses": (losses, np.float32), "targets": (targets, np.int32)})
    if check_targets:
        _check_targets(fname, targets, Vp, "Vp")  # the kernel knows only Vp; a padded column gives inf
    N = B * T
    return Launch(module().get_function(fname), (max(1, ceil_div(N, ROW_BLOCK_SIZE)),), (ROW_BLOCK_SIZE,),
                  (losses, probs, targets, N, Vp))


def crossentropy(losses, probs, targets, version=1, *, check_targets=True):
    """losses[b, t] = -log probs[b, t, targets[b, t]] (device arrays)."""
    crossentropy_launch(losses, probs, targets, version, check_targets=check_targets)()


def crossentropy_softmax_backward_launch(dlogits, probs, targets, dloss, version=1, *, check_targets=True) -> Launch:
    """The checked launch of `crossentropy_softmax_backward` (see there), not yet run."""
    fname = f"crossentropy_softmax_backward{version}"
    _check_version("classifier.crossentropy_softmax_backward", version, (1,))
    B, T, Vp = _check_rows(fname, "probs", probs, {"targets": (targets, np.int32)})
    _check_same_shape(fname, "dlogits", dlogits, "probs", probs)
    if check_targets:
        _check_targets(fname, targets, Vp, "Vp")
    N = B * T
    if N * Vp > INT_MAX:
        raise ValueError(f"{fname} numbers the elements with a 32-bit int: B*T*Vp must be below 2**31, "
                         f"got {B}*{T}*{Vp} = {N * Vp}")
    return Launch(module().get_function(fname), (max(1, ceil_div(N * Vp, BLOCK_SIZE)),), (BLOCK_SIZE,),
                  (dlogits, probs, targets, float(dloss), N, Vp))


# crossentropy_softmax_backward(dlogits, probs, targets, dloss, version=1), the kernel's wrapper, is
# the reference function above called with a version.


def fused_classifier_launch(losses, dlogits, logits, targets, V, dloss, version=2, block_size=FUSED_BLOCK_SIZE, *,
                            check_targets=True) -> Launch:
    """The checked launch of `fused_classifier` (see there), not yet run."""
    fname = f"fused_classifier{version}"
    _check_version("classifier.fused_classifier", version, (2, 3))
    B, T, Vp = _check_rows(fname, "logits", logits, {"losses": (losses, np.float32), "targets": (targets, np.int32)})
    _check_same_shape(fname, "dlogits", dlogits, "logits", logits)
    _check_V(fname, V, Vp)
    if check_targets:
        _check_targets(fname, targets, V, "V")
    _check_block(fname, block_size)
    if version == 3:
        if Vp % 4:
            raise ValueError(f"{fname} loads float4: Vp (the last dimension of the logits) must be a multiple of 4, "
                             f"got Vp={Vp} (pad the vocabulary, as llm.c's Vp=50304, or use version 2)")
        checks.check_float4(fname, "version 2", logits=logits, dlogits=dlogits)
    N = B * T
    if N == 0:
        raise ValueError(f"{fname}: no rows (B*T = 0): there is nothing to launch")
    return Launch(module().get_function(fname), (N,), (int(block_size),),
                  (losses, dlogits, logits, targets, float(dloss), int(V), Vp))


def fused_classifier(losses, dlogits, logits, targets, V, dloss, version=2, block_size=FUSED_BLOCK_SIZE, *,
                     check_targets=True):
    """losses = cross-entropy of softmax(logits[..., :V]) at targets, and dlogits = (probs - onehot) * dloss,
    zeros in the padded columns, in one kernel (device arrays). dlogits is WRITTEN (not accumulated) and
    may be the logits array itself, which is then overwritten with its gradient."""
    fused_classifier_launch(losses, dlogits, logits, targets, V, dloss, version, block_size,
                            check_targets=check_targets)()
