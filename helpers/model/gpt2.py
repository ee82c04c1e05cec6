"""GPT-2, assembled from the ops of notebooks 01-07.

    model = GPT2(GPT2Config(n_layer=2, n_head=3, n_embd=48, vocab_size=101, block_size=16), backend="numpy")
    logits, loss = model.forward(idx, targets)
    model.zero_grad(); model.backward()
    AdamW(model, lr=3e-4).step()

Two backends run the same model: ``"numpy"`` runs every op through the NumPy references of
``helpers.ops``, ``"cuda"`` through the kernels of ``cuda/`` on the active device (CuPy on a GPU,
the CPU backend elsewhere). As in llm.c, the memory is planned up front: parameters, gradients,
the optimizer's two moments and the activations each live in one flat buffer, carved into views
(``model.memory_plan()`` prints it). Parameters use llm.c's 16 tensors with PyTorch's (out, in)
weight layout; the token embedding doubles as the output layer (weight tying) and its vocabulary
is padded to a multiple of 128 for the kernels (llm.c: 50257 -> 50304), the padded rows staying zero.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from . import checkpoints
from .base import AdamW, LanguageModel
from .layout import (NO_GRADIENT, FlatBuffer, GPT2Config, activation_gradient_shapes, activation_shapes,
                     parameter_shapes)

__all__ = ["GPT2", "GPT2Config", "AdamW", "FlatBuffer", "parameter_shapes", "activation_shapes",
           "activation_gradient_shapes"]


# ------------------------------------------------------------------------------------------------
# The model
# ------------------------------------------------------------------------------------------------
class GPT2(LanguageModel):
    NO_GRADIENT = NO_GRADIENT
    DECAYED = ("wte", "wpe", "qkvw", "attprojw", "fcw", "fcprojw")
    PADDED = ("wte",)
    STATISTICS = ("ln1_mean", "ln1_rstd", "ln2_mean", "ln2_rstd", "lnf_mean", "lnf_rstd", "lse", "att", "losses",
                  "mean", "rstd")   # (the last two: the decode step's)
    BF16_READY = True          # (the bf16 kernel versions: notebook 13)

    def __init__(self, config: GPT2Config | None = None, backend: str = "numpy", seed: int | None = 0,
                 cuda_versions: dict | None = None, dtype: str = "fp32"):
        """dtype "bf16": mixed precision on the cuda backend, as llm.c trains (notebook 13): weights and
        activations stored in bf16, float32 master weights, gradients and optimizer state, every sum in
        float32."""
        super().__init__(config or GPT2Config(), backend, seed, cuda_versions, dtype)

    def parameter_shapes(self) -> dict[str, tuple]:
        return parameter_shapes(self.config)

    def activation_shapes(self, B: int, T: int) -> dict[str, tuple]:
        return activation_shapes(self.config, B, T, self.attention_version)

    # -- weights -------------------------------------------------------------------------------------
    def init_weights(self, seed: int = 0):
        """GPT-2's initialisation: N(0, 0.02), residual projections N(0, 0.02/sqrt(2L)), biases 0,
        layernorm weights 1; the padded vocabulary rows stay zero."""
        cfg, rng = self.config, np.random.default_rng(seed)
        host = {k: np.zeros(s, np.float32) for k, s in parameter_shapes(cfg).items()}
        for k in ("wte", "wpe", "qkvw", "attprojw", "fcw", "fcprojw"):
            std = 0.02 / math.sqrt(2 * cfg.n_layer) if k in ("attprojw", "fcprojw") else 0.02
            host[k][...] = rng.normal(0.0, std, host[k].shape)
        host["wte"][cfg.vocab_size:] = 0.0
        for k in ("ln1w", "ln2w", "lnfw"):
            host[k][...] = 1.0
        self.load_state(host)

    # -- forward ---------------------------------------------------------------------------------------
    def forward(self, idx, targets=None):
        """Logits (B, T, V) on the backend's device and the mean cross-entropy loss (a float, or None)."""
        cfg, ops = self.config, self.ops
        idx, targets = self._start_forward(idx, targets)
        A, P = self.acts, self.params
        NH, L = cfg.n_head, cfg.n_layer
        ops.encoder_forward(A["encoded"], self._idx, P["wte"], P["wpe"])
        residual = A["encoded"]
        for l in range(L):
            ops.layernorm_forward(A["ln1"][l], A["ln1_mean"][l], A["ln1_rstd"][l], residual, P["ln1w"][l], P["ln1b"][l])
            ops.matmul_forward(A["qkv"][l], A["ln1"][l], P["qkvw"][l], P["qkvb"][l])
            ops.attention_forward(A["atty"][l], A["qkv"][l], NH, **self._att(A, l))
            ops.matmul_forward(A["attproj"][l], A["atty"][l], P["attprojw"][l], P["attprojb"][l])
            ops.residual_forward(A["residual2"][l], residual, A["attproj"][l])
            ops.layernorm_forward(A["ln2"][l], A["ln2_mean"][l], A["ln2_rstd"][l], A["residual2"][l],
                                  P["ln2w"][l], P["ln2b"][l])
            ops.matmul_forward(A["fch"][l], A["ln2"][l], P["fcw"][l], P["fcb"][l])
            ops.gelu_forward(A["fch_gelu"][l], A["fch"][l])
            ops.matmul_forward(A["fcproj"][l], A["fch_gelu"][l], P["fcprojw"][l], P["fcprojb"][l])
            ops.residual_forward(A["residual3"][l], A["residual2"][l], A["fcproj"][l])
            residual = A["residual3"][l]
        ops.layernorm_forward(A["lnf"], A["lnf_mean"], A["lnf_rstd"], residual, P["lnfw"], P["lnfb"])
        ops.matmul_forward(A["logits"], A["lnf"], P["wte"], None)
        loss = self._loss(targets)
        return A["logits"][..., :cfg.vocab_size], loss

    #: activations whose gradients the backward needs for one layer at a time
    LAYER_GRADIENTS = ("ln1", "qkv", "atty", "attproj", "residual2", "ln2", "fch", "fch_gelu", "fcproj")

    def activation_gradient_shapes(self, shapes: dict[str, tuple]) -> dict[str, tuple]:
        """One layer's worth (as llm.c's trainer): the backward goes layer by layer, and a layer's activation
        gradients are needed only while it runs, so every layer reuses the same buffers. The residual
        stream's gradient passes from layer to layer through two buffers, "residual3" [0] and [1], in turn
        (layer l reads [l % 2] and writes [(l - 1) % 2]); layer 0 writes "encoded"'s."""
        one = {k: shapes[k][1:] for k in self.LAYER_GRADIENTS}
        return {"encoded": shapes["encoded"], **one, "residual3": (2,) + shapes["residual3"][1:], "lnf": shapes["lnf"]}

    def _att(self, buf, l):
        return {"att": buf["att"][l]} if "att" in buf.views else {"lse": buf["lse"][l]}

    # -- backward --------------------------------------------------------------------------------------
    def backward(self):
        """Gradients of the mean loss of the last forward, accumulated into model.grads."""
        G, D = self._start_backward()
        cfg, ops, A, P = self.config, self.ops, self.acts, self.params
        NH, L = cfg.n_head, cfg.n_layer
        ops.matmul_backward(D["lnf"], G["wte"], None, A["dlogits"], A["lnf"], P["wte"])
        dres = D["residual3"]   # the residual stream's gradient, two buffers in turn (activation_gradient_shapes)
        ops.layernorm_backward(dres[(L - 1) % 2], G["lnfw"], G["lnfb"], D["lnf"], A["residual3"][L - 1], P["lnfw"],
                               A["lnf_mean"], A["lnf_rstd"])
        for l in reversed(range(L)):
            residual = A["encoded"] if l == 0 else A["residual3"][l - 1]
            dresidual = D["encoded"] if l == 0 else dres[(l - 1) % 2]
            if l < L - 1:   # the buffers the layer above used: zero again, as every op accumulates into them
                for k in self.LAYER_GRADIENTS:
                    D[k][...] = 0
                dresidual[...] = 0
            ops.residual_backward(D["residual2"], D["fcproj"], dres[l % 2])
            ops.matmul_backward(D["fch_gelu"], G["fcprojw"][l], G["fcprojb"][l], D["fcproj"], A["fch_gelu"][l],
                                P["fcprojw"][l])
            ops.gelu_backward(D["fch"], D["fch_gelu"], A["fch"][l])
            ops.matmul_backward(D["ln2"], G["fcw"][l], G["fcb"][l], D["fch"], A["ln2"][l], P["fcw"][l])
            ops.layernorm_backward(D["residual2"], G["ln2w"][l], G["ln2b"][l], D["ln2"], A["residual2"][l],
                                   P["ln2w"][l], A["ln2_mean"][l], A["ln2_rstd"][l])
            ops.residual_backward(dresidual, D["attproj"], D["residual2"])
            ops.matmul_backward(D["atty"], G["attprojw"][l], G["attprojb"][l], D["attproj"], A["atty"][l],
                                P["attprojw"][l])
            ops.attention_backward(D["qkv"], D["atty"], A["qkv"][l], A["atty"][l], NH, **self._att(A, l))
            ops.matmul_backward(D["ln1"], G["qkvw"][l], G["qkvb"][l], D["qkv"], A["ln1"][l], P["qkvw"][l])
            ops.layernorm_backward(dresidual, G["ln1w"][l], G["ln1b"][l], D["ln1"], residual, P["ln1w"][l],
                                   A["ln1_mean"][l], A["ln1_rstd"][l])
        ops.encoder_backward(G["wte"], G["wpe"], D["encoded"], self._idx, self._idx_host)

    # -- generation: one position at a time, with the key/value cache (generate.KVCache) --------------
    def kv_cache_shapes(self) -> dict[str, tuple]:
        """Per layer, the keys and the values of every position seen so far, (NH, maxT, hs) each."""
        cfg = self.config
        return {f"{kv}{l}": (cfg.n_head, cfg.block_size, cfg.n_embd // cfg.n_head) for l in range(cfg.n_layer)
                for kv in "kv"}

    def decode_shapes(self) -> dict[str, tuple]:
        """The one-row activations of a decode step."""
        C, one = self.config.n_embd, (1, 1)
        return {"x": one + (C,), "ln": one + (C,), "mean": one, "rstd": one, "qkv": one + (3 * C,),
                "atty": one + (C,), "attproj": one + (C,), "res2": one + (C,), "fch": one + (4 * C,),
                "fch_gelu": one + (4 * C,), "fcproj": one + (C,), "res3": one + (C,),
                "logits": one + (self.config.padded_vocab_size,)}

    def decode_step(self, cache, idx, logits: bool = True):
        """Feed the token idx (a (1, 1) int32 array) at position cache.pos through every layer; the logits
        row (1, 1, Vp) for the token after it, or None (logits=False)."""
        cfg, ops, P, A, pos = self.config, self.ops, self.params, cache.acts, cache.pos
        ops.encoder_forward(A["x"], idx, P["wte"], P["wpe"][pos:pos + 1])
        x = A["x"]
        for l in range(cfg.n_layer):
            ops.layernorm_forward(A["ln"], A["mean"], A["rstd"], x, P["ln1w"][l], P["ln1b"][l])
            ops.matmul_forward(A["qkv"], A["ln"], P["qkvw"][l], P["qkvb"][l])
            ops.kv_cache_forward(A["atty"], cache.cache[f"k{l}"], cache.cache[f"v{l}"], A["qkv"], pos)
            ops.matmul_forward(A["attproj"], A["atty"], P["attprojw"][l], P["attprojb"][l])
            ops.residual_forward(A["res2"], x, A["attproj"])
            ops.layernorm_forward(A["ln"], A["mean"], A["rstd"], A["res2"], P["ln2w"][l], P["ln2b"][l])
            ops.matmul_forward(A["fch"], A["ln"], P["fcw"][l], P["fcb"][l])
            ops.gelu_forward(A["fch_gelu"], A["fch"])
            ops.matmul_forward(A["fcproj"], A["fch_gelu"], P["fcprojw"][l], P["fcprojb"][l])
            ops.residual_forward(A["res3"], A["res2"], A["fcproj"])
            x = A["res3"]  # the next layer reads it before its own last residual overwrites it
        if not logits:
            return None
        ops.layernorm_forward(A["ln"], A["mean"], A["rstd"], x, P["lnfw"], P["lnfb"])
        ops.matmul_forward(A["logits"], A["ln"], P["wte"], None)
        return A["logits"]

    # -- saving and loading ----------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, name_or_path, backend: str = "numpy") -> "GPT2":
        return cls.from_tensors(*checkpoints.load_hf(name_or_path), backend=backend)

    def save_pretrained(self, directory, max_shard_size: int | None = None) -> Path:
        """config.json and model.safetensors that transformers.GPT2LMHeadModel.from_pretrained loads (with
        max_shard_size, in bytes: shards of at most that size and their index)."""
        return checkpoints.save_hf(self, directory, max_shard_size)

    @classmethod
    def from_llmc(cls, path, backend: str = "numpy") -> "GPT2":
        """A model from llm.c's gpt2_124M.bin format."""
        return cls.from_tensors(*checkpoints.read_llmc(path), backend=backend)

    def save_llmc(self, path) -> Path:
        return checkpoints.write_llmc(self, path)
