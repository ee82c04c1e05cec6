"""Generating text: sampling the next token, and a key/value cache so that each new token costs one
position's work instead of a forward pass over the whole context (notebook 10).

`model.generate(idx, max_new_tokens, temperature, top_k, top_p, seed)` yields token ids one at a time.
Both backends run the same decode step: the ops of the model on a single row, plus the cached
attention step (cuda/kv_cache.cu on the `cuda` backend, helpers/ops/kv_cache.py on `numpy`).
"""
from __future__ import annotations

import warnings

import numpy as np

from ..runtime import device
from .layout import FlatBuffer

EOT = 50256  # <|endoftext|>


# ------------------------------------------------------------------------------------------------
# Choosing the next token
# ------------------------------------------------------------------------------------------------
def check_sampling(temperature, top_k, top_p):
    if not (isinstance(temperature, (int, float)) and np.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"temperature must be a number >= 0 (0 = greedy), got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1):
        raise ValueError(f"top_k must be None or an int >= 1, got {top_k!r}")
    if top_p is not None and not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
        raise ValueError(f"top_p must be None or a number in (0, 1], got {top_p!r}")


def probabilities(logits, temperature=1.0, top_k=None, top_p=None) -> np.ndarray:
    """The distribution the next token is drawn from (float64, sums to 1).

    temperature divides the logits (below 1 sharpens, above 1 flattens); top_k keeps the k most likely
    tokens; top_p keeps the smallest set of most likely tokens whose probabilities add up to at least
    top_p (nucleus sampling). temperature 0 puts everything on the most likely token."""
    check_sampling(temperature, top_k, top_p)
    z = np.asarray(logits, dtype=np.float64).reshape(-1)
    if temperature == 0:
        p = np.zeros_like(z)
        p[int(np.argmax(z))] = 1.0
        return p
    z = z / temperature
    if top_k is not None and top_k < z.size:
        kth = np.partition(z, -top_k)[-top_k]
        z = np.where(z < kth, -np.inf, z)
    p = np.exp(z - z.max())
    p /= p.sum()
    if top_p is not None and top_p < 1:
        order = np.argsort(-p, kind="stable")
        keep = np.cumsum(p[order]) - p[order] < top_p   # the tokens needed to reach top_p
        mask = np.zeros(p.size, bool)
        mask[order[keep]] = True
        p = np.where(mask, p, 0.0)
        p /= p.sum()
    return p


def next_token(logits, temperature=1.0, top_k=None, top_p=None, rng=None) -> int:
    if temperature == 0:
        check_sampling(temperature, top_k, top_p)
        return int(np.argmax(np.asarray(logits).reshape(-1)))
    p = probabilities(logits, temperature, top_k, top_p)
    rng = rng if rng is not None else np.random.default_rng()
    return int(rng.choice(p.size, p=p))


# ------------------------------------------------------------------------------------------------
# The key/value cache and the decode step
# ------------------------------------------------------------------------------------------------
class KVCache:
    """Per-layer keys and values of the positions seen so far, plus the one-row activations of a step;
    their shapes come from the model (kv_cache_shapes, decode_shapes), and so does the step
    (decode_step): GPT-2's and Llama's layers differ, the cache's bookkeeping does not."""

    def __init__(self, model):
        self.model, self.pos = model, 0
        self.cache = FlatBuffer(model.kv_cache_shapes(), model.xp, dtype=model.storage)
        shapes = model.decode_shapes()
        self.acts = FlatBuffer(shapes, model.xp, dtypes=model.activation_dtypes(shapes))

    def step(self, token: int, logits: bool = True):
        """Feed one token at the next position; returns the logits (V,) for the token after it
        (or None with logits=False: the prompt's tokens but the last need only their keys and values)."""
        model = self.model
        if self.pos >= model.config.block_size:
            raise ValueError(f"the cache is full ({model.config.block_size} positions)")
        idx = np.array([[token]], np.int32)
        idx = idx if model.ops.name == "numpy" else device.asarray(idx)
        row = model.decode_step(self, idx, logits)
        self.pos += 1
        return None if row is None else device.asnumpy(row)[0, 0, :model.config.vocab_size]

    def prefill(self, tokens) -> np.ndarray:
        """Reset and feed the tokens; returns the logits after the last one."""
        self.pos = 0
        for t in tokens[:-1]:
            self.step(int(t), logits=False)
        return self.step(int(tokens[-1]))


def _prompt(model, idx) -> list[int]:
    ids = np.asarray(device.asnumpy(idx))
    if ids.ndim == 2:
        if ids.shape[0] != 1:
            raise ValueError(f"generate takes one sequence: idx of shape (T,) or (1, T), got {ids.shape}")
        ids = ids[0]
    if ids.ndim != 1:
        raise ValueError(f"idx must have shape (T,) or (1, T), got {ids.shape}")
    if ids.size == 0:
        raise ValueError("the prompt is empty: start from <|endoftext|> (token 50256) for an unconditional sample")
    limit = model.config.block_size
    if len(ids) > limit:
        warnings.warn(f"the prompt has {len(ids)} tokens, more than the model's context of {limit}: "
                      f"only its last {limit} tokens are used", stacklevel=3)
        ids = ids[-limit:]
    model._check_tokens("idx", ids[None, :])
    return [int(t) for t in ids]


def generate(model, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, seed=None, use_cache=True,
             stop_token=EOT):
    """Yield up to max_new_tokens new token ids (see LanguageModel.generate)."""
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    check_sampling(temperature, top_k, top_p)
    context = _prompt(model, idx)
    rng = np.random.default_rng(seed)
    limit = model.config.block_size
    if use_cache:
        cache = KVCache(model)
        logits = cache.prefill(context)
    for _ in range(max_new_tokens):
        if not use_cache:
            window = np.array([context[-limit:]], np.int32)
            logits = device.asnumpy(model.forward(window)[0])[0, -1]
        token = next_token(logits, temperature, top_k, top_p, rng)
        if token == stop_token:
            return
        yield token
        context.append(token)
        if use_cache:
            if cache.pos == limit:  # the context is full: restart the cache from its last half
                logits = cache.prefill(context[-(limit // 2):])
            else:
                logits = cache.step(token)
