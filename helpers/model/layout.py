"""The memory of the models: their configurations, the shapes of their parameters and activations
(GPT-2: llm.c's 16 parameter tensors, in its order; Llama: the same idea for its layers), and the
flat buffers they are carved from."""
from __future__ import annotations

import math
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


# ------------------------------------------------------------------------------------------------
# Llama (helpers/model/llama.py)
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LlamaConfig:
    vocab_size: int = 50257
    block_size: int = 1024             # Hugging Face: max_position_embeddings
    n_layer: int = 12                  # num_hidden_layers
    n_head: int = 12                   # num_attention_heads
    n_kv_head: int = 4                 # num_key_value_heads: each serves n_head / n_kv_head query heads
    n_embd: int = 768                  # hidden_size
    intermediate_size: int = 2048      # the SwiGLU MLP's width
    head_dim: int = 0                  # 0: n_embd // n_head (Hugging Face's default)
    rope_theta: float = 10000.0        # Llama 2; Llama 3 uses 500000
    rms_norm_eps: float = 1e-6         # Hugging Face LlamaConfig's default
    tie_embeddings: bool = False       # the output head is the token embedding (tie_word_embeddings)

    def __post_init__(self):
        for k in ("vocab_size", "block_size", "n_layer", "n_head", "n_kv_head", "n_embd", "intermediate_size"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"LlamaConfig.{k} must be a positive int, got {v!r}")
        if self.n_head % self.n_kv_head:
            raise ValueError(f"n_kv_head ({self.n_kv_head}) must divide n_head ({self.n_head}): each key/value head "
                             f"serves a group of n_head / n_kv_head query heads")
        if self.head_dim == 0:
            if self.n_embd % self.n_head:
                raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head}), or give "
                                 f"head_dim")
            object.__setattr__(self, "head_dim", self.n_embd // self.n_head)
        if isinstance(self.head_dim, bool) or not isinstance(self.head_dim, (int, np.integer)) or self.head_dim < 2 \
                or self.head_dim % 2:
            raise ValueError(f"head_dim must be an even int >= 2 (RoPE rotates pairs of channels), got "
                             f"{self.head_dim!r}")
        if not (self.rope_theta > 1 and math.isfinite(self.rope_theta)):
            raise ValueError(f"rope_theta must be a number > 1, got {self.rope_theta!r}")
        if not (0 < self.rms_norm_eps < 1):
            raise ValueError(f"rms_norm_eps must be in (0, 1), got {self.rms_norm_eps!r}")

    @property
    def padded_vocab_size(self) -> int:
        return -(-self.vocab_size // 128) * 128

    @property
    def qkv_width(self) -> int:
        """The fused projection's output per token: n_head query heads, n_kv_head key and value heads."""
        return (self.n_head + 2 * self.n_kv_head) * self.head_dim


def llama_parameter_shapes(cfg: LlamaConfig) -> dict[str, tuple]:
    """The model's tensors, per layer stacked like GPT-2's (out, in) weights; lm_head unless tied."""
    L, C, Vp, I = cfg.n_layer, cfg.n_embd, cfg.padded_vocab_size, cfg.intermediate_size
    shapes = {"wte": (Vp, C), "rms1w": (L, C), "qkvw": (L, cfg.qkv_width, C), "attprojw": (L, C, cfg.n_head * cfg.head_dim),
              "rms2w": (L, C), "fcw": (L, 2 * I, C), "fcprojw": (L, C, I), "rmsfw": (C,)}
    if not cfg.tie_embeddings:
        shapes["lm_head"] = (Vp, C)
    return shapes


def llama_activation_shapes(cfg: LlamaConfig, B: int, T: int, attention_version: int) -> dict[str, tuple]:
    """What the forward pass keeps for the backward pass (the backward's scratch mirrors it)."""
    L, C, NH, Vp, I = cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.padded_vocab_size, cfg.intermediate_size
    W, Q = cfg.qkv_width, cfg.n_head * cfg.head_dim
    att = {"att": (L, B, NH, T, T)} if attention_version == 1 else {"lse": (L, B, NH, T)}
    return {"encoded": (B, T, C), "rms1": (L, B, T, C), "rms1_rstd": (L, B, T), "qkv": (L, B, T, W),
            "qkvr": (L, B, T, W), "atty": (L, B, T, Q), **att, "attproj": (L, B, T, C), "residual2": (L, B, T, C),
            "rms2": (L, B, T, C), "rms2_rstd": (L, B, T), "fch": (L, B, T, 2 * I), "fch_swiglu": (L, B, T, I),
            "fcproj": (L, B, T, C), "residual3": (L, B, T, C), "rmsf": (B, T, C), "rmsf_rstd": (B, T),
            "logits": (B, T, Vp), "dlogits": (B, T, Vp), "losses": (B, T)}


class FlatBuffer:
    """One allocation carved into named views (llm.c's malloc_and_point). Each view starts at a multiple
    of 256 bytes, as cudaMalloc's allocations do, so kernels may load it 16 bytes at a time.

    All views are `dtype` (float32 by default), or each its own with `dtypes` {name: dtype} (a bf16 model's
    activations are bfloat16, its statistics float32): the memory is then bytes, viewed per tensor."""
    ALIGN_BYTES = 256

    def __init__(self, shapes: dict[str, tuple], xp, fill=0.0, dtype=np.float32, dtypes: dict | None = None,
                 min_numel: int = 0, align_elements: int | None = None):
        """min_numel (one dtype only): at least this many elements in memory, the tail past the views zeros
        (ZeRO-1 splits the memory into equal shards, helpers.runtime.comm.Shards). align_elements (one dtype
        only): each view starts at a multiple of this many elements instead of 256 bytes (ZeRO-1's bf16
        weights take the float32 gradients' offsets, 64 elements, so that a shard is the same elements of
        both; a multiple of 16 bytes still)."""
        if align_elements is not None and dtypes:
            raise ValueError("align_elements needs a FlatBuffer of one dtype")
        align = self.ALIGN_BYTES if align_elements is None else int(align_elements) * np.dtype(dtype).itemsize
        if align % 16:
            raise ValueError(f"align_elements={align_elements} puts views {align} bytes apart: kernels load 16 bytes "
                             f"at a time, so it must be a multiple of 16 bytes")
        self.shapes = shapes
        self.dtypes = {k: np.dtype((dtypes or {}).get(k, dtype)) for k in shapes}
        self.sizes = {k: int(np.prod(s)) for k, s in shapes.items()}
        self.offsets, offset = self.pack({k: self.sizes[k] * self.dtypes[k].itemsize for k in shapes}, align)
        single = len(set(self.dtypes.values())) <= 1
        self.dtype = next(iter(self.dtypes.values()), np.dtype(dtype)) if single else None
        if single:   # one dtype: the memory is an array of it (a flat float32 buffer for the norms, AdamW...)
            itemsize = self.dtype.itemsize
            self.numel = max(offset // itemsize, int(min_numel))
            offset = self.numel * itemsize
            self.memory = xp.full(self.numel, fill, dtype=self.dtype)
            self.views = {k: self.memory[o // itemsize:o // itemsize + self.sizes[k]].reshape(shapes[k])
                          for k, o in self.offsets.items()}
        else:
            if min_numel:
                raise ValueError("min_numel needs a FlatBuffer of one dtype")
            if fill != 0:
                raise ValueError("a FlatBuffer of several dtypes can only be filled with zeros")
            self.numel = None
            self.memory = xp.zeros(offset, dtype=np.uint8)
            self.views = {k: self.memory[o:o + self.sizes[k] * self.dtypes[k].itemsize].view(self.dtypes[k])
                          .reshape(shapes[k]) for k, o in self.offsets.items()}
        self._nbytes = offset

    @staticmethod
    def pack(nbytes: dict[str, int], align: int) -> tuple[dict[str, int], int]:
        """The byte offsets of views of `nbytes` bytes each, one after the other, each at a multiple of
        `align` bytes, and the bytes they take in all."""
        offsets, offset = {}, 0
        for k, n in nbytes.items():
            offsets[k] = offset
            offset += -(-n // align) * align
        return offsets, offset

    def __getitem__(self, k):
        return self.views[k]

    @property
    def nbytes(self) -> int:
        return self._nbytes


def _mib(nbytes: int) -> str:
    return f"{nbytes / 2**20:10.1f} MiB"

