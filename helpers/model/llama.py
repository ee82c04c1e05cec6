"""A Llama-family model, assembled from the same infrastructure as GPT-2 (helpers.model.base) and the
ops of notebook 11: RMSNorm instead of LayerNorm, rotary position embeddings (RoPE) on the queries and
keys instead of a learned position table, a SwiGLU MLP, grouped-query attention (n_kv_head key/value
heads shared by n_head query heads), no biases anywhere, and an output head of its own (or tied to the
token embedding, as an option).

    model = Llama(LlamaConfig(vocab_size=101, block_size=32, n_layer=2, n_head=6, n_kv_head=2, n_embd=48,
                              intermediate_size=136), backend="numpy")
    logits, loss = model.forward(idx, targets)
    model.zero_grad(); model.backward()
    AdamW(model, lr=3e-4).step()

One block, with x the residual stream (B, T, C):

    h   = x + o_proj(attention(rope(qkv_proj(rmsnorm(x)))))           W = (n_head + 2 n_kv_head) * head_dim
    out = h + down_proj(silu(gate_proj(rmsnorm(h))) * up_proj(rmsnorm(h)))

As in GPT-2, the projections that read the same input are one matmul: q, k and v are the rows of one
`qkvw` (W, C), gate and up the rows of one `fcw` (2I, C) (Hugging Face stores them apart; the
checkpoint code stacks and splits them). The vocabulary tables are padded to a multiple of 128 rows.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..ops import rope as rope_ops
from . import checkpoints
from .base import AdamW, LanguageModel
from .layout import LlamaConfig
from .layout import llama_activation_shapes as activation_shapes
from .layout import llama_parameter_shapes as parameter_shapes

__all__ = ["Llama", "LlamaConfig", "AdamW", "parameter_shapes", "activation_shapes"]




class Llama(LanguageModel):
    NO_GRADIENT = ("logits", "dlogits", "losses", "rms1_rstd", "rms2_rstd", "rmsf_rstd", "att", "lse")
    DECAYED = ("wte", "qkvw", "attprojw", "fcw", "fcprojw", "lm_head")
    PADDED = ("wte", "lm_head")
    STATISTICS = ("rms1_rstd", "rms2_rstd", "rmsf_rstd", "lse", "att", "losses", "rstd")

    def __init__(self, config: LlamaConfig | None = None, backend: str = "numpy", seed: int | None = 0,
                 cuda_versions: dict | None = None, dtype: str = "fp32"):
        config = config or LlamaConfig()
        super().__init__(config, backend, seed, cuda_versions, dtype)
        cos, sin = rope_ops.frequencies(config.head_dim, config.block_size, config.rope_theta)
        self.rope_cos, self.rope_sin = self.xp.asarray(cos), self.xp.asarray(sin)

    def parameter_shapes(self) -> dict[str, tuple]:
        return parameter_shapes(self.config)

    def activation_shapes(self, B: int, T: int) -> dict[str, tuple]:
        return activation_shapes(self.config, B, T, self.attention_version)

    @property
    def attention_version(self) -> int:
        return getattr(self.ops, "gqa_version", 1)

    @property
    def head(self) -> str:
        """The output layer's weight: the token embedding when tied."""
        return "wte" if self.config.tie_embeddings else "lm_head"

    # -- weights -------------------------------------------------------------------------------------
    def init_weights(self, seed: int = 0):
        """N(0, 0.02) for the embedding, the head and the projections, the two projections into the
        residual stream N(0, 0.02/sqrt(2L)) as in GPT-2, RMSNorm weights 1; padded rows zero."""
        cfg, rng = self.config, np.random.default_rng(seed)
        host = {k: np.zeros(s, np.float32) for k, s in self.parameter_shapes().items()}
        for k in host:
            if k.startswith("rms"):
                host[k][...] = 1.0
            else:
                std = 0.02 / math.sqrt(2 * cfg.n_layer) if k in ("attprojw", "fcprojw") else 0.02
                host[k][...] = rng.normal(0.0, std, host[k].shape)
        for k in self.PADDED:
            if k in host:
                host[k][cfg.vocab_size:] = 0.0
        self.load_state(host)

    # -- forward ---------------------------------------------------------------------------------------
    def _att(self, buf, l):
        return {"att": buf["att"][l]} if "att" in buf.views else {"lse": buf["lse"][l]}

    def forward(self, idx, targets=None):
        """Logits (B, T, V) on the backend's device and the mean cross-entropy loss (a float, or None)."""
        cfg, ops = self.config, self.ops
        idx, targets = self._start_forward(idx, targets)
        A, P = self.acts, self.params
        NH, NKV, eps = cfg.n_head, cfg.n_kv_head, cfg.rms_norm_eps
        ops.encoder_forward(A["encoded"], self._idx, P["wte"], None)     # no position table: RoPE
        residual = A["encoded"]
        for l in range(cfg.n_layer):
            ops.rmsnorm_forward(A["rms1"][l], A["rms1_rstd"][l], residual, P["rms1w"][l], eps)
            ops.matmul_forward(A["qkv"][l], A["rms1"][l], P["qkvw"][l], None)
            ops.rope_forward(A["qkvr"][l], A["qkv"][l], self.rope_cos, self.rope_sin, NH, NKV)
            ops.gqa_forward(A["atty"][l], A["qkvr"][l], NH, NKV, **self._att(A, l))
            ops.matmul_forward(A["attproj"][l], A["atty"][l], P["attprojw"][l], None)
            ops.residual_forward(A["residual2"][l], residual, A["attproj"][l])
            ops.rmsnorm_forward(A["rms2"][l], A["rms2_rstd"][l], A["residual2"][l], P["rms2w"][l], eps)
            ops.matmul_forward(A["fch"][l], A["rms2"][l], P["fcw"][l], None)
            ops.swiglu_forward(A["fch_swiglu"][l], A["fch"][l])
            ops.matmul_forward(A["fcproj"][l], A["fch_swiglu"][l], P["fcprojw"][l], None)
            ops.residual_forward(A["residual3"][l], A["residual2"][l], A["fcproj"][l])
            residual = A["residual3"][l]
        ops.rmsnorm_forward(A["rmsf"], A["rmsf_rstd"], residual, P["rmsfw"], eps)
        ops.matmul_forward(A["logits"], A["rmsf"], P[self.head], None)
        loss = self._loss(targets)
        return A["logits"][..., :cfg.vocab_size], loss

    # -- backward --------------------------------------------------------------------------------------
    def backward(self):
        """Gradients of the mean loss of the last forward, accumulated into model.grads."""
        G, D = self._start_backward()
        cfg, ops, A, P = self.config, self.ops, self.acts, self.params
        NH, NKV, L = cfg.n_head, cfg.n_kv_head, cfg.n_layer
        ops.matmul_backward(D["rmsf"], G[self.head], None, A["dlogits"], A["rmsf"], P[self.head])
        ops.rmsnorm_backward(D["residual3"][L - 1], G["rmsfw"], D["rmsf"], A["residual3"][L - 1], P["rmsfw"],
                             A["rmsf_rstd"])
        for l in reversed(range(L)):
            residual = A["encoded"] if l == 0 else A["residual3"][l - 1]
            dresidual = D["encoded"] if l == 0 else D["residual3"][l - 1]
            ops.residual_backward(D["residual2"][l], D["fcproj"][l], D["residual3"][l])
            ops.matmul_backward(D["fch_swiglu"][l], G["fcprojw"][l], None, D["fcproj"][l], A["fch_swiglu"][l],
                                P["fcprojw"][l])
            ops.swiglu_backward(D["fch"][l], D["fch_swiglu"][l], A["fch"][l])
            ops.matmul_backward(D["rms2"][l], G["fcw"][l], None, D["fch"][l], A["rms2"][l], P["fcw"][l])
            ops.rmsnorm_backward(D["residual2"][l], G["rms2w"][l], D["rms2"][l], A["residual2"][l], P["rms2w"][l],
                                 A["rms2_rstd"][l])
            ops.residual_backward(dresidual, D["attproj"][l], D["residual2"][l])
            ops.matmul_backward(D["atty"][l], G["attprojw"][l], None, D["attproj"][l], A["atty"][l],
                                P["attprojw"][l])
            ops.gqa_backward(D["qkvr"][l], D["atty"][l], A["qkvr"][l], A["atty"][l], NH, NKV, **self._att(A, l))
            ops.rope_backward(D["qkv"][l], D["qkvr"][l], self.rope_cos, self.rope_sin, NH, NKV)
            ops.matmul_backward(D["rms1"][l], G["qkvw"][l], None, D["qkv"][l], A["rms1"][l], P["qkvw"][l])
            ops.rmsnorm_backward(dresidual, G["rms1w"][l], D["rms1"][l], residual, P["rms1w"][l], A["rms1_rstd"][l])
        ops.encoder_backward(G["wte"], None, D["encoded"], self._idx, self._idx_host)

    # -- generation: one position at a time, with the key/value cache (generate.KVCache) --------------
    def kv_cache_shapes(self) -> dict[str, tuple]:
        """Per layer, the keys and values of the n_kv_head shared heads, (NKV, maxT, head_dim) each:
        n_head / n_kv_head times smaller than a cache of every query head's."""
        cfg = self.config
        return {f"{kv}{l}": (cfg.n_kv_head, cfg.block_size, cfg.head_dim) for l in range(cfg.n_layer)
                for kv in "kv"}

    def decode_shapes(self) -> dict[str, tuple]:
        cfg, one = self.config, (1, 1)
        C, I = cfg.n_embd, cfg.intermediate_size
        return {"x": one + (C,), "rms": one + (C,), "rstd": one, "qkv": one + (cfg.qkv_width,),
                "qkvr": one + (cfg.qkv_width,), "atty": one + (cfg.n_head * cfg.head_dim,), "attproj": one + (C,),
                "res2": one + (C,), "fch": one + (2 * I,), "fch_swiglu": one + (I,), "fcproj": one + (C,),
                "res3": one + (C,), "logits": one + (cfg.padded_vocab_size,)}

    def decode_step(self, cache, idx, logits: bool = True):
        """Feed the token idx (a (1, 1) int32 array) at position cache.pos; the logits row (1, 1, Vp) for
        the token after it, or None (logits=False)."""
        cfg, ops, P, A, pos = self.config, self.ops, self.params, cache.acts, cache.pos
        NH, NKV, eps = cfg.n_head, cfg.n_kv_head, cfg.rms_norm_eps
        ops.encoder_forward(A["x"], idx, P["wte"], None)
        x = A["x"]
        for l in range(cfg.n_layer):
            ops.rmsnorm_forward(A["rms"], A["rstd"], x, P["rms1w"][l], eps)
            ops.matmul_forward(A["qkv"], A["rms"], P["qkvw"][l], None)
            ops.rope_forward(A["qkvr"], A["qkv"], self.rope_cos, self.rope_sin, NH, NKV, pos0=pos)
            ops.gqa_decode(A["atty"], cache.cache[f"k{l}"], cache.cache[f"v{l}"], A["qkvr"], pos, NH)
            ops.matmul_forward(A["attproj"], A["atty"], P["attprojw"][l], None)
            ops.residual_forward(A["res2"], x, A["attproj"])
            ops.rmsnorm_forward(A["rms"], A["rstd"], A["res2"], P["rms2w"][l], eps)
            ops.matmul_forward(A["fch"], A["rms"], P["fcw"][l], None)
            ops.swiglu_forward(A["fch_swiglu"], A["fch"])
            ops.matmul_forward(A["fcproj"], A["fch_swiglu"], P["fcprojw"][l], None)
            ops.residual_forward(A["res3"], A["res2"], A["fcproj"])
            x = A["res3"]
        if not logits:
            return None
        ops.rmsnorm_forward(A["rms"], A["rstd"], x, P["rmsfw"], eps)
        ops.matmul_forward(A["logits"], A["rms"], P[self.head], None)
        return A["logits"]

    # -- saving and loading (Hugging Face's LlamaForCausalLM layout) ----------------------------------
    @classmethod
    def from_pretrained(cls, name_or_path, backend: str = "numpy") -> "Llama":
        """A model from a Hugging Face Llama directory (config.json and model.safetensors, or shards with
        model.safetensors.index.json) or hub name."""
        return cls.from_tensors(*checkpoints.load_hf_llama(name_or_path), backend=backend)

    def save_pretrained(self, directory, max_shard_size: int | None = None) -> Path:
        """config.json and safetensors that transformers.LlamaForCausalLM.from_pretrained loads; with
        max_shard_size (bytes), shards of at most that size and their index, as Hugging Face writes them."""
        return checkpoints.save_hf_llama(self, directory, max_shard_size)
