"""The two backends of the model: the same operations, out-parameter style. `NumpyOps` runs the
NumPy references of helpers.ops (and helpers.model.fast_numpy's in-place versions of the hot ops),
`CudaOps` the kernels of cuda/ on the active device."""
from __future__ import annotations

import numpy as np

from ..ops import adamw as adamw_ops
from ..ops import attention as attention_ops
from ..ops import classifier as classifier_ops
from ..ops import encoder as encoder_ops
from ..ops import gelu as gelu_ops
from ..ops import global_norm as global_norm_ops
from ..ops import gqa as gqa_ops
from ..ops import kv_cache as kv_cache_ops
from ..ops import layernorm as layernorm_ops
from ..ops import matmul as matmul_ops
from ..ops import residual as residual_ops
from ..ops import rmsnorm as rmsnorm_ops
from ..ops import rope as rope_ops
from ..ops import swiglu as swiglu_ops
from ..runtime import device
from . import fast_numpy


class NumpyOps:
    """Every op in NumPy: the references of helpers.ops, and for the ops that dominate a training step
    (the matmuls forward and backward, GELU, the residual, the classifier, AdamW, the gradient norm) the
    same math written in place and over all cores in helpers.model.fast_numpy (tested against the
    references; benchmarks/profile_step.py shows where a step's time goes)."""
    name = "numpy"
    xp = np

    def encoder_forward(self, out, idx, wte, wpe):
        out[...] = encoder_ops.encoder_forward(idx, wte, wpe)

    def encoder_backward(self, dwte, dwpe, dout, idx, idx_host=None):
        encoder_ops.encoder_backward(dwte, dwpe, dout, idx)

    def layernorm_forward(self, out, mean, rstd, x, w, b):
        fast_numpy.layernorm_forward(out, mean, rstd, x, w, b)

    def layernorm_backward(self, dx, dw, db, dout, x, w, mean, rstd):
        fast_numpy.layernorm_backward(dx, dw, db, dout, x, w, mean, rstd)

    def matmul_forward(self, out, x, w, b):
        fast_numpy.matmul_forward(out, x, w, b)

    def matmul_backward(self, dx, dw, db, dout, x, w):
        fast_numpy.matmul_backward(dx, dw, db, dout, x, w)

    def attention_forward(self, out, qkv, n_head, att=None, lse=None):
        fast_numpy.attention_forward(out, att, qkv, n_head)

    def attention_backward(self, dqkv, dout, qkv, out, n_head, att=None, lse=None):
        fast_numpy.attention_backward(dqkv, dout, qkv, att, n_head)

    def gelu_forward(self, out, x):
        fast_numpy.gelu_forward(out, x)

    def gelu_backward(self, dx, dout, x):
        fast_numpy.gelu_backward(dx, dout, x)

    def residual_forward(self, out, a, b):
        fast_numpy.residual_forward(out, a, b)

    def residual_backward(self, da, db, dout):
        residual_ops.residual_backward(da, db, dout)

    def classifier(self, losses, dlogits, logits, targets, V, dloss):
        fast_numpy.classifier(losses, dlogits, logits, targets, V, dloss)

    def adamw(self, p, g, m, v, t, lr, beta1, beta2, eps, wd, grad_scale):
        fast_numpy.adamw(p, g, m, v, t, lr, beta1, beta2, eps, wd, grad_scale)

    def norm_squared(self, flat):
        return fast_numpy.norm_squared(flat)

    def zero(self, flat):
        fast_numpy.zero(flat)

    def kv_cache_forward(self, out, k_cache, v_cache, qkv, pos):
        out[...] = kv_cache_ops.kv_cache_forward(k_cache, v_cache, qkv, pos).reshape(out.shape)

    # -- Llama's ops (notebook 11) -------------------------------------------------------------------
    def rmsnorm_forward(self, out, rstd, x, w, eps):
        o, r = rmsnorm_ops.rmsnorm_forward(x, w, eps)
        out[...], rstd[...] = o, r

    def rmsnorm_backward(self, dx, dw, dout, x, w, rstd):
        rmsnorm_ops.rmsnorm_backward(dx, dw, dout, x, w, rstd)

    def rope_forward(self, out, qkv, cos, sin, n_head, n_kv_head, pos0=0):
        out[...] = rope_ops.rope_forward(qkv, cos, sin, n_head, n_kv_head, pos0=pos0)

    def rope_backward(self, dqkv, dout, cos, sin, n_head, n_kv_head, pos0=0):
        rope_ops.rope_backward(dqkv, dout, cos, sin, n_head, n_kv_head, pos0=pos0)

    def gqa_forward(self, out, qkv, n_head, n_kv_head, att=None, lse=None):
        o, probs = gqa_ops.gqa_forward(qkv, n_head, n_kv_head)
        out[...], att[...] = o, probs

    def gqa_backward(self, dqkv, dout, qkv, out, n_head, n_kv_head, att=None, lse=None):
        gqa_ops.gqa_backward(dqkv, dout, qkv, out, n_head, n_kv_head, att=att)

    def gqa_decode(self, out, k_cache, v_cache, qkv, pos, n_head):
        out[...] = gqa_ops.gqa_decode(k_cache, v_cache, qkv, pos, n_head).reshape(out.shape)

    def swiglu_forward(self, out, gate_up):
        out[...] = swiglu_ops.swiglu_forward(gate_up)

    def swiglu_backward(self, dgate_up, dout, gate_up):
        swiglu_ops.swiglu_backward(dgate_up, dout, gate_up)


def bf16_version(op, step: str) -> int:
    """The version of op's step whose VERSIONS line starts with "bf16:" (a clear error if there is none)."""
    found = [v for v, line in op.VERSIONS[step].items() if line.startswith("bf16:")]
    if not found:
        raise ValueError(f"{op.__name__} has no bf16 version of its {step!r} step")
    return max(found)


def bf16_versions() -> dict:
    """The versions dict of CudaOps for mixed precision (GPT-2's ops)."""
    return {"encoder_forward": bf16_version(encoder_ops, "forward"),
            "encoder_backward": bf16_version(encoder_ops, "backward"),
            "layernorm_forward": bf16_version(layernorm_ops, "forward"),
            "layernorm_backward": bf16_version(layernorm_ops, "backward"),
            # tensor cores (WMMA) where there are: sm_80 and later, and the CPU backend's emulation
            "matmul_forward": 5 if matmul_ops.wmma_available() else 4,
            "matmul_backward": 5 if matmul_ops.wmma_available() else 4,
            "attention": bf16_version(attention_ops, "forward"),
            "attention_backward": bf16_version(attention_ops, "backward"),
            "gelu": bf16_version(gelu_ops, "forward"), "residual": bf16_version(residual_ops, "forward"),
            "classifier": bf16_version(classifier_ops, "forward"), "adamw": bf16_version(adamw_ops, "update"),
            "kv_cache": bf16_version(kv_cache_ops, "forward")}


class CudaOps:
    """Every op through the kernels of cuda/, on the active device (CuPy or the CPU backend).

    The fastest version of each op whose shape assumptions the config meets: the float4 versions
    need n_embd (and, for Llama, the MLP's width and every projection's) to be a multiple of 4, RoPE's
    version 2 a head size that is a multiple of 8, RMSNorm's backward 2 n_embd <= 12256; attention
    version 3 (tiled, online softmax) never stores the (T, T) matrices, nor does grouped-query
    attention's version 3; every version used here is deterministic (no float atomics)."""
    name = "cuda"

    def __init__(self, config, versions: dict | None = None, bf16: bool = False):
        self.xp = device.xp
        self.bf16 = bf16
        vec = config.n_embd % 4 == 0
        hidden = getattr(config, "intermediate_size", 4 * config.n_embd)   # the MLP's width (GPT-2: 4C)
        head = getattr(config, "head_dim", config.n_embd // config.n_head)
        self.v = {"rmsnorm_forward": 3 if vec else 2,
                  "rmsnorm_backward": 2 if vec and config.n_embd <= rmsnorm_ops.BACKWARD2_MAX_C else 1,
                  "rope": 2 if head % 8 == 0 else 1, "swiglu": 2 if hidden % 4 == 0 else 1,
                  "gqa": 3, "gqa_decode": 2,
                  "encoder_forward": 2 if vec else 1, "encoder_backward": 2, "layernorm_forward": 3 if vec else 2,
                  "layernorm_backward": 2, "matmul_forward": 3 if vec else 2, "matmul_backward": 3 if vec else 2,
                  "attention": 3, "gelu": 2 if vec else 1, "residual": 2 if vec else 1, "classifier": 3,
                  "adamw": 2 if vec else 1, "norm": 3, "kv_cache": 1}
        if bf16:   # mixed precision: the bf16 version of every op (the gradient norm reads float32 gradients)
            self.v.update(bf16_versions())
        self.v.update(versions or {})
        self.attention_version = self.v["attention"]
        self.gqa_version = self.v["gqa"]

    def encoder_forward(self, out, idx, wte, wpe):
        encoder_ops.forward(out, idx, wte, wpe, version=self.v["encoder_forward"])

    def encoder_backward(self, dwte, dwpe, dout, idx, idx_host=None):
        encoder_ops.backward(dwte, dwpe, dout, idx, version=self.v["encoder_backward"], idx_host=idx_host)

    def layernorm_forward(self, out, mean, rstd, x, w, b):
        layernorm_ops.forward(out, mean, rstd, x, w, b, version=self.v["layernorm_forward"])

    def layernorm_backward(self, dx, dw, db, dout, x, w, mean, rstd):
        layernorm_ops.backward(dx, dw, db, dout, x, w, mean, rstd, version=self.v["layernorm_backward"])

    def matmul_forward(self, out, x, w, b):
        # one row (a generation step): the naive kernel, one thread per output; a 128x128 tile would be
        # 127/128 idle
        version = 1 if x.size == x.shape[-1] and not self.bf16 else self._matmul_version("matmul_forward", w)
        matmul_ops.forward(out, x, w, b, version=version)

    def matmul_backward(self, dx, dw, db, dout, x, w):
        matmul_ops.backward(dx, dw, db, dout, x, w, version=self._matmul_version("matmul_backward", w))

    def _matmul_version(self, step, w):
        """The configured version, or version 2 where the float4 tiles of version 3 do not fit (a
        Llama projection whose width, such as intermediate_size, is not a multiple of 4)."""
        version = self.v[step]
        return 2 if version == 3 and any(int(n) % 4 for n in w.shape) else version

    def attention_forward(self, out, qkv, n_head, att=None, lse=None):
        attention_ops.forward(out, qkv, n_head, version=self.attention_version,
                              **({"att": att} if self.attention_version == 1 else {"lse": lse}))

    def attention_backward(self, dqkv, dout, qkv, out, n_head, att=None, lse=None):
        attention_ops.backward(dqkv, dout, qkv, out, n_head, version=self.v.get("attention_backward",
                                                                                 self.attention_version),
                               **({"att": att} if self.attention_version == 1 else {"lse": lse}))

    def gelu_forward(self, out, x):
        gelu_ops.forward(out, x, version=self.v["gelu"])

    def gelu_backward(self, dx, dout, x):
        gelu_ops.backward(dx, dout, x, version=self.v["gelu"])

    def residual_forward(self, out, a, b):
        residual_ops.forward(out, a, b, version=self.v["residual"])

    def residual_backward(self, da, db, dout):
        residual_ops.backward(da, db, dout, version=self.v["residual"])

    def classifier(self, losses, dlogits, logits, targets, V, dloss):
        # (the targets were checked on the host by GPT2._check_tokens)
        classifier_ops.forward(losses, dlogits, logits, targets, V, dloss, version=self.v["classifier"],
                                        check_targets=False)

    def adamw(self, p, g, m, v, t, lr, beta1, beta2, eps, wd, grad_scale, **bf16):
        # bf16: `master` (the float32 weights) and `seed` (of the stochastic rounding of p)
        adamw_ops.update(p, g, m, v, t, lr, beta1, beta2, eps, wd, grad_scale=grad_scale, version=self.v["adamw"],
                         **bf16)

    def norm_squared(self, flat):
        return global_norm_ops.squared_norm(flat, version=self.v["norm"])

    def zero(self, flat):
        flat[...] = 0

    def kv_cache_forward(self, out, k_cache, v_cache, qkv, pos):
        kv_cache_ops.forward(out, k_cache, v_cache, qkv, pos, version=self.v["kv_cache"])

    # -- Llama's ops (notebook 11) -------------------------------------------------------------------
    def rmsnorm_forward(self, out, rstd, x, w, eps):
        rmsnorm_ops.forward(out, rstd, x, w, version=self.v["rmsnorm_forward"], eps=eps)

    def rmsnorm_backward(self, dx, dw, dout, x, w, rstd):
        rmsnorm_ops.backward(dx, dw, dout, x, w, rstd, version=self.v["rmsnorm_backward"])

    def rope_forward(self, out, qkv, cos, sin, n_head, n_kv_head, pos0=0):
        rope_ops.forward(out, qkv, cos, sin, n_head, n_kv_head, version=self.v["rope"], pos0=pos0)

    def rope_backward(self, dqkv, dout, cos, sin, n_head, n_kv_head, pos0=0):
        rope_ops.backward(dqkv, dout, cos, sin, n_head, n_kv_head, version=self.v["rope"], pos0=pos0)

    def gqa_forward(self, out, qkv, n_head, n_kv_head, att=None, lse=None):
        gqa_ops.forward(out, qkv, n_head, n_kv_head, version=self.gqa_version,
                        **({"att": att} if self.gqa_version == 1 else {"lse": lse}))

    def gqa_backward(self, dqkv, dout, qkv, out, n_head, n_kv_head, att=None, lse=None):
        gqa_ops.backward(dqkv, dout, qkv, out, n_head, n_kv_head, version=self.gqa_version,
                         **({"att": att} if self.gqa_version == 1 else {"lse": lse}))

    def gqa_decode(self, out, k_cache, v_cache, qkv, pos, n_head):
        gqa_ops.decode(out, k_cache, v_cache, qkv, pos, n_head, version=self.v["gqa_decode"])

    def swiglu_forward(self, out, gate_up):
        swiglu_ops.forward(out, gate_up, version=self.v["swiglu"])

    def swiglu_backward(self, dgate_up, dout, gate_up):
        swiglu_ops.backward(dgate_up, dout, gate_up, version=self.v["swiglu"])

