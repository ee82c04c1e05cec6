"""Hugging Face's GPT-2 and Llama (transformers on PyTorch's CPU build) as the oracle for our models:
code nobody here wrote. Needs the `reference` extra (torch, transformers)."""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from . import checkpoints
from .layout import LlamaConfig


INSTALL = ("pip install torch --index-url https://download.pytorch.org/whl/cpu && pip install -e '.[reference]'"
           "  (the first part is PyTorch's small CPU-only build; Colab already has torch, there run only the second)")


def require():
    """(torch, transformers), or an ImportError that says how to install them."""
    try:
        import torch
        import transformers
    except ImportError as e:
        raise ImportError(f"the Hugging Face reference needs PyTorch and transformers ({e}). Install them with: "
                          f"{INSTALL}") from e
    return torch, transformers


def optional():
    """(torch, transformers) when installed, else None after printing what is skipped and how to install
    them: notebooks compare with Hugging Face when they can and run without it."""
    try:
        return require()
    except ImportError as e:
        print(f"Hugging Face's transformers is not installed here ({e.__cause__}), so the comparisons with it are skipped "
              f"and the two backends are compared with each other only.\nFor the comparison with code nobody here "
              f"wrote, install it, then restart the kernel:\n    {INSTALL}")
        return None


def is_llama(model_or_config) -> bool:
    return isinstance(getattr(model_or_config, "config", model_or_config), LlamaConfig)


def model_like(model, directory=None):
    """Hugging Face's GPT2LMHeadModel or LlamaForCausalLM holding our model's weights, loaded through our
    save_pretrained (so any mistake in the conversion shows), in eval mode with the eager attention."""
    torch, transformers = require()
    directory = Path(directory or tempfile.mkdtemp(prefix="hf-"))
    model.save_pretrained(directory)
    cls = transformers.LlamaForCausalLM if is_llama(model) else transformers.GPT2LMHeadModel
    hf = cls.from_pretrained(directory, attn_implementation="eager", torch_dtype=torch.float32)
    return hf.eval()


def logits_and_loss(hf, idx, targets):
    """Logits and the mean cross-entropy against `targets` (our convention: targets given, not shifted)."""
    torch, _ = require()
    logits = hf(torch.from_numpy(np.asarray(idx, np.int64))).logits
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                             torch.from_numpy(np.asarray(targets, np.int64)).reshape(-1))
    return logits, loss


def gradients(hf, config) -> dict[str, np.ndarray]:
    """HF's gradients in our layout: (GPT-2) Conv1D weights transposed, layers stacked, wte (V, C);
    (Llama) q, k, v and gate, up stacked as our fused weights."""
    if is_llama(config):
        g = {n: p.grad.numpy() for n, p in hf.named_parameters()}
        out = {"wte": g["model.embed_tokens.weight"], "rmsfw": g["model.norm.weight"]}
        for ours, theirs in checkpoints.LLAMA_LAYER_NAMES.items():
            out[ours] = np.stack([np.concatenate([g[f"model.layers.{l}.{n}"] for n in theirs])
                                  for l in range(config.n_layer)])
        if not config.tie_embeddings:
            out["lm_head"] = g["lm_head.weight"]
        return out
    g = {n.removeprefix("transformer."): p.grad.numpy() for n, p in hf.named_parameters()}
    out = {"wte": g["wte.weight"], "wpe": g["wpe.weight"], "lnfw": g["ln_f.weight"], "lnfb": g["ln_f.bias"]}
    for ours, theirs in checkpoints.HF_LAYER_NAMES.items():
        layers = [g[f"h.{l}.{theirs}"] for l in range(config.n_layer)]
        out[ours] = np.stack([t.T if ours in checkpoints.TRANSPOSED else t for t in layers])
    return out


def relative_errors(ours: dict, theirs: dict) -> dict[str, float]:
    """max |ours - theirs| / max |theirs| per tensor (wte, lm_head compared over the real vocabulary)."""
    errors = {}
    for k, ref in theirs.items():
        mine = np.asarray(ours[k])[: ref.shape[0]] if k in ("wte", "lm_head") else np.asarray(ours[k])
        errors[k] = float(np.abs(mine - ref).max() / max(np.abs(ref).max(), 1e-12))
    return errors
