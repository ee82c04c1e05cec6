"""The memory of a GPT-2 model: its configuration, the shapes of its parameters and activations
(llm.c's 16 parameter tensors, in its order), and the flat buffers they are carved from."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class GPT2Config:
    vocab_size: int = 50257
    block_size: int = 1024
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768

    def __post_init__(self):
        for k, v in asdict(self).items():
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"GPT2Config.{k} must be a positive int, got {v!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")

    @property
    def padded_vocab_size(self) -> int:
        return -(-self.vocab_size // 128) * 128


def parameter_shapes(cfg: GPT2Config) -> dict[str, tuple]:
    """llm.c's 16 parameter tensors, in its order (the layout of its gpt2_124M.bin)."""
    L, C, Vp, maxT = cfg.n_layer, cfg.n_embd, cfg.padded_vocab_size, cfg.block_size
    return {"wte": (Vp, C), "wpe": (maxT, C), "ln1w": (L, C), "ln1b": (L, C), "qkvw": (L, 3 * C, C),
            "qkvb": (L, 3 * C), "attprojw": (L, C, C), "attprojb": (L, C), "ln2w": (L, C), "ln2b": (L, C),
            "fcw": (L, 4 * C, C), "fcb": (L, 4 * C), "fcprojw": (L, C, 4 * C), "fcprojb": (L, C),
            "lnfw": (C,), "lnfb": (C,)}


def activation_shapes(cfg: GPT2Config, B: int, T: int, attention_version: int) -> dict[str, tuple]:
    """What the forward pass keeps for the backward pass (and the backward's scratch mirrors it)."""
    L, C, NH, Vp = cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.padded_vocab_size
    att = {"att": (L, B, NH, T, T)} if attention_version == 1 else {"lse": (L, B, NH, T)}
    return {"encoded": (B, T, C), "ln1": (L, B, T, C), "ln1_mean": (L, B, T), "ln1_rstd": (L, B, T),
            "qkv": (L, B, T, 3 * C), "atty": (L, B, T, C), **att, "attproj": (L, B, T, C),
            "residual2": (L, B, T, C), "ln2": (L, B, T, C), "ln2_mean": (L, B, T), "ln2_rstd": (L, B, T),
            "fch": (L, B, T, 4 * C), "fch_gelu": (L, B, T, 4 * C), "fcproj": (L, B, T, C),
            "residual3": (L, B, T, C), "lnf": (B, T, C), "lnf_mean": (B, T), "lnf_rstd": (B, T),
            "logits": (B, T, Vp), "dlogits": (B, T, Vp), "losses": (B, T)}


NO_GRADIENT = ("logits", "dlogits", "losses", "lnf_mean", "lnf_rstd", "ln1_mean", "ln1_rstd", "ln2_mean", "ln2_rstd",
               "att", "lse")  # activations the backward pass needs no gradient buffer for


def activation_gradient_shapes(shapes: dict[str, tuple]) -> dict[str, tuple]:
    return {k: s for k, s in shapes.items() if k not in NO_GRADIENT}


class FlatBuffer:
    """One allocation carved into named views (llm.c's malloc_and_point). Each view starts at a multiple
    of 256 bytes, as cudaMalloc's allocations do, so kernels may load it with float4."""
    ALIGN = 64  # floats

    def __init__(self, shapes: dict[str, tuple], xp, fill=0.0):
        self.shapes = shapes
        self.sizes = {k: int(np.prod(s)) for k, s in shapes.items()}
        self.offsets, offset = {}, 0
        for k in shapes:
            self.offsets[k] = offset
            offset += -(-self.sizes[k] // self.ALIGN) * self.ALIGN
        self.numel = offset
        self.memory = xp.full(self.numel, fill, dtype=np.float32)
        self.views = {k: self.memory[o:o + self.sizes[k]].reshape(shapes[k]) for k, o in self.offsets.items()}

    def __getitem__(self, k):
        return self.views[k]

    @property
    def nbytes(self) -> int:
        return self.numel * 4


def _mib(nbytes: int) -> str:
    return f"{nbytes / 2**20:10.1f} MiB"

