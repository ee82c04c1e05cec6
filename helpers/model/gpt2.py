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
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..runtime import device
from . import checkpoints
from .backends import CudaOps, NumpyOps
from .generate import generate
from .layout import (NO_GRADIENT, FlatBuffer, GPT2Config, activation_gradient_shapes, activation_shapes,
                     parameter_shapes)

__all__ = ["GPT2", "GPT2Config", "AdamW", "FlatBuffer", "parameter_shapes", "activation_shapes",
           "activation_gradient_shapes"]


def _mib(nbytes: int) -> str:
    return f"{nbytes / 2**20:10.1f} MiB"


# ------------------------------------------------------------------------------------------------
# The model
# ------------------------------------------------------------------------------------------------
class GPT2:
    def __init__(self, config: GPT2Config | None = None, backend: str = "numpy", seed: int | None = 0,
                 cuda_versions: dict | None = None):
        self.config = config = config or GPT2Config()
        if backend == "numpy":
            self.ops = NumpyOps()
        elif backend == "cuda":
            self.ops = CudaOps(config, cuda_versions)
        else:
            raise ValueError(f"backend must be 'numpy' or 'cuda', got {backend!r}")
        self.backend = backend
        self.xp = self.ops.xp
        self.params = FlatBuffer(parameter_shapes(config), self.xp)
        self.grads = None           # allocated at the first backward (zero_grad)
        self.acts = self.grad_acts = None
        self.B = self.T = 0
        self._targets_given = False
        if seed is not None:
            self.init_weights(seed)

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

    def load_state(self, tensors: dict[str, np.ndarray]):
        """Copy llm.c-layout tensors (wte may have V or Vp rows) into the parameter buffer."""
        shapes = parameter_shapes(self.config)
        missing = set(shapes) - set(tensors)
        if missing:
            raise ValueError(f"checkpoint lacks parameters {sorted(missing)}")
        for k, shape in shapes.items():
            t = np.asarray(tensors[k], dtype=np.float32)
            if k == "wte" and t.shape == (self.config.vocab_size, shape[1]):
                t = np.concatenate([t, np.zeros((shape[0] - t.shape[0], shape[1]), np.float32)])
            if t.shape != shape:
                raise ValueError(f"parameter {k} has shape {t.shape}, but the config "
                                 f"{asdict(self.config)} needs {shape}")
            self.params[k][...] = self.xp.asarray(t)

    def state(self) -> dict[str, np.ndarray]:
        """The parameters as host NumPy arrays (llm.c layout, wte with the padded rows)."""
        return {k: device.asnumpy(v).copy() for k, v in self.params.views.items()}

    def num_parameters(self) -> int:
        """Parameters of the real model (the padded vocabulary rows not counted), like PyTorch's count."""
        return sum(self.params.sizes.values()) - (self.config.padded_vocab_size - self.config.vocab_size) * self.config.n_embd

    # -- memory ---------------------------------------------------------------------------------------
    def _plan(self, B: int, T: int):
        if self.acts is not None and (B, T) == (self.B, self.T):
            return
        shapes = activation_shapes(self.config, B, T, getattr(self.ops, "attention_version", 1))
        self.acts = FlatBuffer(shapes, self.xp)
        self.grad_acts = None
        self.B, self.T = B, T

    def memory_plan(self, B: int | None = None, T: int | None = None) -> str:
        """The buffers this model allocates for batches of (B, T), as a table (also printed)."""
        B, T = B or self.B or 1, T or self.T or self.config.block_size
        cfg = self.config
        p = sum(int(np.prod(s)) for s in parameter_shapes(cfg).values()) * 4
        acts = activation_shapes(cfg, B, T, getattr(self.ops, "attention_version", 1))
        a = sum(int(np.prod(s)) for s in acts.values()) * 4
        da = sum(int(np.prod(s)) for s in activation_gradient_shapes(acts).values()) * 4
        rows = [("parameters", p), ("gradients", p), ("AdamW m", p), ("AdamW v", p), (f"activations (B={B}, T={T})", a),
                ("activation gradients", da)]
        lines = [f"memory plan, {self.backend} backend, {self.num_parameters():,} parameters"]
        lines += [f"  {name:<30}{_mib(n)}" for name, n in rows]
        lines.append(f"  {'total':<30}{_mib(sum(n for _, n in rows))}")
        text = "\n".join(lines)
        print(text)
        return text

    # -- forward ---------------------------------------------------------------------------------------
    def _check_tokens(self, name, ids, shape=None):
        a = np.asarray(device.asnumpy(ids))
        if a.dtype.kind not in "iu":
            raise TypeError(f"{name} must hold integer token ids, got dtype {a.dtype}")
        if a.ndim == 1:
            a = a[None, :]
        if a.ndim != 2:
            raise ValueError(f"{name} must have shape (B, T), got {a.shape}")
        if shape is not None and a.shape != shape:
            raise ValueError(f"{name} has shape {a.shape} but idx has {shape}")
        if a.shape[1] > self.config.block_size:
            raise ValueError(f"sequence length T={a.shape[1]} is longer than the model's block_size="
                             f"{self.config.block_size}; crop the input to the last {self.config.block_size} tokens")
        if a.size and (a.min() < 0 or a.max() >= self.config.vocab_size):
            bad = a[(a < 0) | (a >= self.config.vocab_size)][0]
            raise ValueError(f"{name} contains token id {int(bad)}, outside the vocabulary [0, {self.config.vocab_size})")
        return np.ascontiguousarray(a, dtype=np.int32)

    def forward(self, idx, targets=None):
        """Logits (B, T, V) on the backend's device and the mean cross-entropy loss (a float, or None)."""
        cfg, ops = self.config, self.ops
        idx = self._check_tokens("idx", idx)
        B, T = idx.shape
        if targets is not None:
            targets = self._check_tokens("targets", targets, idx.shape)
        self._plan(B, T)
        A, P = self.acts, self.params
        NH, L = cfg.n_head, cfg.n_layer
        self._idx_host = idx
        self._idx = idx if ops.name == "numpy" else device.asarray(idx)
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
        self._targets_given = targets is not None
        loss = None
        if targets is not None:
            self._targets = targets if ops.name == "numpy" else device.asarray(targets)
            ops.classifier(A["losses"], A["dlogits"], A["logits"], self._targets, cfg.vocab_size, 1.0 / (B * T))
            loss = float(device.asnumpy(A["losses"]).astype(np.float64).mean())
        return A["logits"][..., :cfg.vocab_size], loss

    def _att(self, buf, l):
        return {"att": buf["att"][l]} if "att" in buf.views else {"lse": buf["lse"][l]}

    # -- backward --------------------------------------------------------------------------------------
    def zero_grad(self):
        if self.grads is None:
            self.grads = FlatBuffer(parameter_shapes(self.config), self.xp)
        else:
            self.grads.memory[...] = 0

    def backward(self):
        """Gradients of the mean loss of the last forward, accumulated into model.grads."""
        if not self._targets_given:
            raise RuntimeError("backward() needs a forward(idx, targets) with targets first")
        if self.grads is None:
            self.zero_grad()
        cfg, ops, A, P, G = self.config, self.ops, self.acts, self.params, self.grads
        if self.grad_acts is None:
            self.grad_acts = FlatBuffer(activation_gradient_shapes(A.shapes), self.xp)
        D = self.grad_acts
        D.memory[...] = 0
        NH, L = cfg.n_head, cfg.n_layer
        ops.matmul_backward(D["lnf"], G["wte"], None, A["dlogits"], A["lnf"], P["wte"])
        residual, dresidual = A["residual3"][L - 1], D["residual3"][L - 1]
        ops.layernorm_backward(dresidual, G["lnfw"], G["lnfb"], D["lnf"], residual, P["lnfw"], A["lnf_mean"], A["lnf_rstd"])
        for l in reversed(range(L)):
            residual = A["encoded"] if l == 0 else A["residual3"][l - 1]
            dresidual = D["encoded"] if l == 0 else D["residual3"][l - 1]
            ops.residual_backward(D["residual2"][l], D["fcproj"][l], D["residual3"][l])
            ops.matmul_backward(D["fch_gelu"][l], G["fcprojw"][l], G["fcprojb"][l], D["fcproj"][l], A["fch_gelu"][l],
                                P["fcprojw"][l])
            ops.gelu_backward(D["fch"][l], D["fch_gelu"][l], A["fch"][l])
            ops.matmul_backward(D["ln2"][l], G["fcw"][l], G["fcb"][l], D["fch"][l], A["ln2"][l], P["fcw"][l])
            ops.layernorm_backward(D["residual2"][l], G["ln2w"][l], G["ln2b"][l], D["ln2"][l], A["residual2"][l],
                                   P["ln2w"][l], A["ln2_mean"][l], A["ln2_rstd"][l])
            ops.residual_backward(dresidual, D["attproj"][l], D["residual2"][l])
            ops.matmul_backward(D["atty"][l], G["attprojw"][l], G["attprojb"][l], D["attproj"][l], A["atty"][l],
                                P["attprojw"][l])
            ops.attention_backward(D["qkv"][l], D["atty"][l], A["qkv"][l], A["atty"][l], NH, **self._att(A, l))
            ops.matmul_backward(D["ln1"][l], G["qkvw"][l], G["qkvb"][l], D["qkv"][l], A["ln1"][l], P["qkvw"][l])
            ops.layernorm_backward(dresidual, G["ln1w"][l], G["ln1b"][l], D["ln1"][l], residual, P["ln1w"][l],
                                   A["ln1_mean"][l], A["ln1_rstd"][l])
        ops.encoder_backward(G["wte"], G["wpe"], D["encoded"], self._idx, self._idx_host)

    def grad_norm(self) -> float:
        """The global L2 norm of all gradients (deterministic on both backends)."""
        if self.grads is None:
            raise RuntimeError("no gradients yet: call backward() first")
        return math.sqrt(self.ops.norm_squared(self.grads.memory))

    # -- saving and loading ----------------------------------------------------------------------------
    @classmethod
    def from_tensors(cls, config: GPT2Config, tensors: dict, backend: str = "numpy") -> "GPT2":
        """A model of `config` holding llm.c-layout `tensors` (checked against the config)."""
        model = cls(config, backend=backend, seed=None)
        model.load_state(tensors)
        return model

    @classmethod
    def from_pretrained(cls, name_or_path, backend: str = "numpy") -> "GPT2":
        return cls.from_tensors(*checkpoints.load_hf(name_or_path), backend=backend)

    def save_pretrained(self, directory) -> Path:
        return checkpoints.save_hf(self, directory)

    def generate(self, idx, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, seed: int | None = None, use_cache: bool = True,
                 stop_token: int | None = 50256):
        """Yield new token ids one at a time, continuing idx (a (T,) or (1, T) array of token ids).

        temperature 0 is greedy; top_k / top_p restrict the choice to the most likely tokens; a seed
        makes the sample reproducible. Stops at `stop_token` (<|endoftext|>; None: never, the token is
        yielded like any other) or after max_new_tokens. With the key/value
        cache (default) each token costs one position's work; a prompt longer than the context is cropped
        to its last block_size tokens (with a warning), and when the context fills up the cache
        restarts from the last half of it."""
        return generate(self, idx, max_new_tokens, temperature, top_k, top_p, seed, use_cache, stop_token)

    @classmethod
    def from_llmc(cls, path, backend: str = "numpy") -> "GPT2":
        """A model from llm.c's gpt2_124M.bin format."""
        return cls.from_tensors(*checkpoints.read_llmc(path), backend=backend)

    def save_llmc(self, path) -> Path:
        return checkpoints.write_llmc(self, path)


# ------------------------------------------------------------------------------------------------
# Optimizer and clipping
# ------------------------------------------------------------------------------------------------
DECAYED = ("wte", "wpe", "qkvw", "attprojw", "fcw", "fcprojw")


class AdamW:
    """PyTorch's AdamW over the model's flat buffers. Weight decay applies to the 2-D weight tensors
    only (the embeddings and the matmul weights), not to biases and layernorm parameters: GPT-2
    practice, as in nanoGPT and llm.c. `lr` may be changed before each step (a schedule)."""

    def __init__(self, model: GPT2, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0):
        if not lr >= 0 or not 0 <= betas[0] < 1 or not 0 <= betas[1] < 1 or not eps > 0 or not weight_decay >= 0:
            raise ValueError(f"invalid AdamW hyperparameters lr={lr}, betas={betas}, eps={eps}, "
                             f"weight_decay={weight_decay}")
        self.model, self.lr, self.betas, self.eps, self.weight_decay = model, lr, tuple(betas), eps, weight_decay
        self.m = FlatBuffer(parameter_shapes(model.config), model.xp)
        self.v = FlatBuffer(parameter_shapes(model.config), model.xp)
        self.t = 0

    def step(self, grad_scale: float = 1.0):
        """One update with the current gradients (times grad_scale, the clipping coefficient)."""
        model = self.model
        if model.grads is None:
            raise RuntimeError("no gradients: call model.backward() before optimizer.step()")
        self.t += 1
        for k in model.params.views:
            wd = self.weight_decay if k in DECAYED else 0.0
            model.ops.adamw(model.params[k].reshape(-1), model.grads[k].reshape(-1), self.m[k].reshape(-1),
                            self.v[k].reshape(-1), self.t, self.lr, self.betas[0], self.betas[1], self.eps, wd,
                            grad_scale)

    def state(self) -> dict:
        return {"t": self.t, "m": device.asnumpy(self.m.memory).copy(), "v": device.asnumpy(self.v.memory).copy()}

    def load_state(self, state: dict):
        self.t = int(state["t"])
        self.m.memory[...] = self.model.xp.asarray(state["m"])
        self.v.memory[...] = self.model.xp.asarray(state["v"])
