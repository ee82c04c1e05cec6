"""What every model here shares, whatever its layers: the backends, the planned memory (parameters,
gradients and activations each in one flat buffer), token checks, gradients and their norm, loading
and saving tensors, generation, and AdamW. A model (GPT-2 in gpt2.py, Llama in llama.py) adds its
configuration, its tensors' shapes, its initialisation, and its forward, backward and decode step.

A model class defines:

    parameter_shapes() -> {name: shape}      activation_shapes(B, T) -> {name: shape}
    NO_GRADIENT: activations the backward needs no gradient buffer for
    DECAYED: the parameters AdamW decays (the 2-D weights)
    PADDED: parameters whose first axis is the vocabulary padded to a multiple of 128
    init_weights(seed), forward(idx, targets), backward()
    kv_cache_shapes(), decode_shapes(), decode_step(cache, token, logits): generation (generate.py)
    save_pretrained(directory), from_pretrained(name_or_path): Hugging Face's layout of the model
"""
from __future__ import annotations

import math
import warnings

import ml_dtypes
import numpy as np

from ..ops import adamw as adamw_ops
from ..runtime import device
from ..runtime.comm import Shards
from .backends import CudaOps, NumpyOps
from .generate import generate
from .layout import FlatBuffer


def _mib(nbytes: int) -> str:
    return f"{nbytes / 2**20:10.1f} MiB"


BF16 = np.dtype(ml_dtypes.bfloat16)


def resolve_dtype(model_name: str, dtype: str, backend: str, bf16_ready: bool) -> str:
    """"fp32" or "bf16" (mixed precision: bf16 storage, fp32 compute and master weights, on the kernels),
    after the checks; a GPU without bf16 support (before sm_80) falls back to fp32 and says so."""
    if dtype not in ("fp32", "bf16"):
        raise ValueError(f"dtype must be 'fp32' or 'bf16', got {dtype!r}")
    if dtype == "fp32":
        return dtype
    if backend != "cuda":
        raise ValueError("dtype='bf16' runs the bf16 kernel versions: it needs backend='cuda' (the numpy backend "
                         "computes in float32)")
    if not bf16_ready:
        raise ValueError(f"{model_name} has no bf16 kernels for all its ops yet: use dtype='fp32'")
    if not device.bf16_arrays():
        warnings.warn(f"CuPy {device.xp.__version__} has no bfloat16 arrays (CuPy 14 added them, through ml_dtypes): "
                      f"the model runs in fp32 (dtype='fp32'); pip install 'cupy-cuda12x>=14' for bf16", stacklevel=3)
        return "fp32"
    capability = device.compute_capability()
    if capability is not None and capability < (8, 0):
        warnings.warn(f"this GPU is sm_{capability[0]}{capability[1]}: bf16 arithmetic and bf16 tensor cores start "
                      f"with sm_80 (A100), so the model runs in fp32 here (dtype='fp32')", stacklevel=3)
        return "fp32"
    return dtype


class LanguageModel:
    NO_GRADIENT: tuple = ()
    DECAYED: tuple = ()
    PADDED: tuple = ()
    STATISTICS: tuple = ()      # activations that stay float32 in bf16 mode (normalisation statistics, lse, losses)
    BF16_READY = False          # every op the model uses has a bf16 kernel version

    def __init__(self, config, backend: str = "numpy", seed: int | None = 0, cuda_versions: dict | None = None,
                 dtype: str = "fp32"):
        self.config = config
        self.dtype = resolve_dtype(type(self).__name__, dtype, backend, self.BF16_READY)
        if backend == "numpy":
            self.ops = NumpyOps()
        elif backend == "cuda":
            self.ops = CudaOps(config, cuda_versions, bf16=self.dtype == "bf16")
        else:
            raise ValueError(f"backend must be 'numpy' or 'cuda', got {backend!r}")
        self.backend = backend
        self.xp = self.ops.xp
        self.storage = BF16 if self.dtype == "bf16" else np.dtype(np.float32)   # activations and weights
        # the weights the kernels read; in bf16 mode a bf16 copy of the float32 master weights
        self.params = FlatBuffer(self.parameter_shapes(), self.xp, dtype=self.storage)
        self.master = FlatBuffer(self.parameter_shapes(), self.xp) if self.dtype == "bf16" else None
        # ZeRO-1 in bf16 (helpers.train.parallel.ZeroAdamW): this rank keeps only its shard of the master
        # weights, master is None, and state() / load_state() go through the shard's gather_master() and
        # load_master()
        self.master_shard = None
        self.buffer_numel = 0       # >0: the parameter and gradient buffers' length (pad_flat_buffers)
        self.grads = None           # allocated at the first backward (zero_grad)
        self.acts = self.grad_acts = None
        self.B = self.T = 0
        self._targets_given = False
        if seed is not None:
            self.init_weights(seed)

    # -- what a model defines --------------------------------------------------------------------------
    def parameter_shapes(self) -> dict[str, tuple]:
        raise NotImplementedError

    def activation_shapes(self, B: int, T: int) -> dict[str, tuple]:
        raise NotImplementedError

    def activation_gradient_shapes(self, shapes: dict[str, tuple]) -> dict[str, tuple]:
        return {k: s for k, s in shapes.items() if k not in self.NO_GRADIENT}

    @property
    def attention_version(self) -> int:
        """Which attention the backend runs: version 1 keeps the (T, T) probabilities, 2 and 3 only lse."""
        return getattr(self.ops, "attention_version", 1)

    # -- weights -------------------------------------------------------------------------------------
    def load_state(self, tensors: dict[str, np.ndarray]):
        """Copy tensors in this project's layout into the parameter buffer (the vocabulary tables, PADDED,
        may have V or the padded Vp rows)."""
        shapes = self.parameter_shapes()
        missing = set(shapes) - set(tensors)
        if missing:
            raise ValueError(f"checkpoint lacks parameters {sorted(missing)}")
        for k, shape in shapes.items():
            t = np.asarray(tensors[k], dtype=np.float32)
            if k in self.PADDED and t.shape == (self.config.vocab_size, shape[1]):
                t = np.concatenate([t, np.zeros((shape[0] - t.shape[0], shape[1]), np.float32)])
            if t.shape != shape:
                raise ValueError(f"parameter {k} has shape {t.shape}, but the config {self.config} needs {shape}")
            if self.master_shard is not None:   # bf16 with ZeRO-1: this rank's piece of the master
                self.master_shard.load_master(k, t)
                t = t.astype(BF16)
            elif self.master is not None:   # bf16: the float32 master, and its copy rounded to nearest
                self.master[k][...] = self.xp.asarray(t)
                t = t.astype(BF16)
            self.params[k][...] = self.xp.asarray(t)

    def state(self) -> dict[str, np.ndarray]:
        """The parameters as float32 host NumPy arrays (the vocabulary tables with their padded rows; in bf16
        mode the master weights; with ZeRO-1 in bf16 they are gathered from the ranks' shards, a collective
        that every rank must call)."""
        if self.master_shard is not None:
            return self.master_shard.gather_master()
        weights = self.master if self.master is not None else self.params
        return {k: device.asnumpy(v).copy() for k, v in weights.views.items()}

    def activation_dtypes(self, shapes: dict) -> dict:
        """The dtype of each activation: the storage type, but float32 for the STATISTICS."""
        return {k: np.float32 if k in self.STATISTICS else self.storage for k in shapes}

    def num_parameters(self) -> int:
        """Parameters of the real model (the padded vocabulary rows not counted), like PyTorch's count."""
        cfg = self.config
        padding = (cfg.padded_vocab_size - cfg.vocab_size) * cfg.n_embd
        return sum(self.params.sizes.values()) - padding * sum(k in self.params.views for k in self.PADDED)

    @classmethod
    def from_tensors(cls, config, tensors: dict, backend: str = "numpy", dtype: str = "fp32"):
        """A model of `config` holding `tensors` in this project's layout (checked against the config)."""
        model = cls(config, backend=backend, seed=None, dtype=dtype)
        model.load_state(tensors)
        return model

    # -- memory ---------------------------------------------------------------------------------------
    def _plan(self, B: int, T: int):
        if self.acts is not None and (B, T) == (self.B, self.T):
            return
        shapes = self.activation_shapes(B, T)
        self.acts = FlatBuffer(shapes, self.xp, dtypes=self.activation_dtypes(shapes))
        self.grad_acts = None
        self.B, self.T = B, T

    def memory_plan(self, B: int | None = None, T: int | None = None, optimizer_shards: int = 1) -> str:
        """The buffers this model allocates for batches of (B, T), as a table (also printed). With
        optimizer_shards = N (ZeRO-1 over N ranks, helpers.train.parallel) a rank keeps 1/N of AdamW's m and v:
        the table is one rank's, and says what the sharding saves."""
        B, T = B or self.B or 1, T or self.T or self.config.block_size
        if optimizer_shards < 1:
            raise ValueError(f"optimizer_shards must be at least 1, got {optimizer_shards}")
        numel = sum(int(np.prod(s)) for s in self.parameter_shapes().values())
        p, w = numel * 4, numel * self.storage.itemsize
        acts = self.activation_shapes(B, T)
        dtypes = self.activation_dtypes(acts)
        a = sum(int(np.prod(s)) * np.dtype(dtypes[k]).itemsize for k, s in acts.items())
        da = sum(int(np.prod(s)) * self.storage.itemsize for s in self.activation_gradient_shapes(acts).values())
        kind = "bf16" if self.dtype == "bf16" else "fp32"
        N = optimizer_shards
        shard = Shards(numel, N).length * 4 if N > 1 else p   # bytes of one rank's m (and of its v, master)
        moment = "" if N == 1 else f" (1/{N}: ZeRO-1)"
        sharded = 3 if self.dtype == "bf16" else 2           # m, v (and the master weights)
        rows = [("parameters", kind, w)] + ([("master weights" + moment, "fp32", shard)] if self.dtype == "bf16"
                                            else []) + [
            ("gradients", "fp32", p), ("AdamW m" + moment, "fp32", shard), ("AdamW v" + moment, "fp32", shard),
            (f"activations (B={B}, T={T})", kind, a), ("activation gradients", kind, da)]
        lines = [f"memory plan, {type(self).__name__}, {self.backend} backend, {self.dtype}, "
                 f"{self.num_parameters():,} parameters" + ("" if N == 1 else f", one rank of {N} with ZeRO-1")]
        lines += [f"  {name:<30}{dt:<6}{_mib(n)}" for name, dt, n in rows]
        total = sum(n for _, _, n in rows)
        lines.append(f"  {'total':<36}{_mib(total)}")
        if N > 1:
            saved = sharded * (p - shard)
            lines.append(f"  {'saved by ZeRO-1':<36}{_mib(saved)} ({100 * saved / (total + saved):.0f}% "
                         f"of the unsharded rank's {(total + saved) / 2**20:.1f} MiB)")
        text = "\n".join(lines)
        print(text)
        return text

    # -- tokens ---------------------------------------------------------------------------------------
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

    def _start_forward(self, idx, targets):
        """The checked token ids, the planned buffers for their (B, T), idx on the device."""
        idx = self._check_tokens("idx", idx)
        if targets is not None:
            targets = self._check_tokens("targets", targets, idx.shape)
        self._plan(*idx.shape)
        self._idx_host = idx
        self._idx = idx if self.ops.name == "numpy" else device.asarray(idx)
        return idx, targets

    def _loss(self, targets):
        """The classifier on the last forward's logits: the mean loss, and dlogits for the backward."""
        cfg, A = self.config, self.acts
        self._targets_given = targets is not None
        if targets is None:
            return None
        self._targets = targets if self.ops.name == "numpy" else device.asarray(targets)
        self.ops.classifier(A["losses"], A["dlogits"], A["logits"], self._targets, cfg.vocab_size,
                            1.0 / (self.B * self.T))
        return float(device.asnumpy(A["losses"]).astype(np.float64).mean())

    # -- gradients ------------------------------------------------------------------------------------
    @property
    def flat_numel(self) -> int:
        """The length of the float32 flat buffers (gradients, AdamW's m and v; master weights in bf16)."""
        return (self.master if self.master is not None else self.params).memory.size

    def pad_flat_buffers(self, numel: int):
        """Make the flat buffers (weights, gradients; master weights in bf16) `numel` elements long, zeros past
        the tensors, so that ZeRO-1 can split them into equal shards (helpers.train.parallel); the weights are
        kept, the gradients dropped. bf16 weights take the float32 buffers' element offsets (every view at a
        multiple of 64 elements), so that a shard holds the same elements of every buffer."""
        if numel < self.flat_numel:
            raise ValueError(f"pad_flat_buffers: {numel:,} elements is shorter than the parameters' {self.flat_numel:,}")
        old, shapes = self.params, self.parameter_shapes()
        self.params = FlatBuffer(shapes, self.xp, dtype=self.storage, min_numel=numel,
                                 align_elements=FlatBuffer.ALIGN_BYTES // 4)
        for k in shapes:
            self.params[k][...] = old[k]
        if self.master is not None:
            old = self.master
            self.master = FlatBuffer(shapes, self.xp, min_numel=numel)
            self.master.memory[:old.memory.size] = old.memory
        self.buffer_numel, self.grads = numel, None

    def zero_grad(self):
        if self.grads is None:
            self.grads = FlatBuffer(self.parameter_shapes(), self.xp, min_numel=self.buffer_numel)
        else:
            self.ops.zero(self.grads.memory)

    def _start_backward(self):
        """The gradient buffers of a backward pass: parameters' (accumulating) and activations' (zeroed)."""
        if not self._targets_given:
            raise RuntimeError("backward() needs a forward(idx, targets) with targets first")
        if self.grads is None:
            self.zero_grad()
        if self.grad_acts is None:
            self.grad_acts = FlatBuffer(self.activation_gradient_shapes(self.acts.shapes), self.xp, dtype=self.storage)
        self.ops.zero(self.grad_acts.memory)
        return self.grads, self.grad_acts

    def grad_norm(self) -> float:
        """The global L2 norm of all gradients (deterministic on both backends)."""
        if self.grads is None:
            raise RuntimeError("no gradients yet: call backward() first")
        return math.sqrt(self.ops.norm_squared(self.grads.memory))

    # -- generation -----------------------------------------------------------------------------------
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


# ------------------------------------------------------------------------------------------------
# Optimizer
# ------------------------------------------------------------------------------------------------
class AdamW:
    """PyTorch's AdamW over the model's flat buffers. Weight decay applies to the model's DECAYED
    tensors only (the embeddings and the matmul weights), not to biases and normalisation weights:
    GPT-2 practice, as in nanoGPT and llm.c. `lr` may be changed before each step (a schedule)."""

    def __init__(self, model: LanguageModel, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, allocate: bool = True):
        if not lr >= 0 or not 0 <= betas[0] < 1 or not 0 <= betas[1] < 1 or not eps > 0 or not weight_decay >= 0:
            raise ValueError(f"invalid AdamW hyperparameters lr={lr}, betas={betas}, eps={eps}, "
                             f"weight_decay={weight_decay}")
        self.model, self.lr, self.betas, self.eps, self.weight_decay = model, lr, tuple(betas), eps, weight_decay
        if allocate:   # (a subclass that keeps only part of the state, helpers.train.parallel.ZeroAdamW: not)
            self.m = FlatBuffer(model.parameter_shapes(), model.xp)
            self.v = FlatBuffer(model.parameter_shapes(), model.xp)
        self.t = 0

    def step(self, grad_scale: float = 1.0):
        """One update with the current gradients (times grad_scale, the clipping coefficient)."""
        model = self.model
        if model.grads is None:
            raise RuntimeError("no gradients: call model.backward() before optimizer.step()")
        self.t += 1
        for i, k in enumerate(model.params.views):
            wd = self.weight_decay if k in model.DECAYED else 0.0
            extra = {} if model.master is None else {"master": model.master[k].reshape(-1),
                                                      "seed": self.rounding_seed(self.t, i)}
            model.ops.adamw(model.params[k].reshape(-1), model.grads[k].reshape(-1), self.m[k].reshape(-1),
                            self.v[k].reshape(-1), self.t, self.lr, self.betas[0], self.betas[1], self.eps, wd,
                            grad_scale, **extra)

    @staticmethod
    def rounding_seed(t: int, tensor: int) -> int:
        """The seed of the stochastic rounding of parameter tensor number `tensor` at step t (bf16 mode): a
        function of both, so a resumed run rounds exactly as the uninterrupted one."""
        return (t * 1_000_003 + tensor * 7_919 + 1) & 0xFFFFFFFF

    def state(self) -> dict:
        return {"t": self.t, "m": device.asnumpy(self.m.memory).copy(), "v": device.asnumpy(self.v.memory).copy()}

    def load_state(self, state: dict):
        """The optimizer's state of a checkpoint. In bf16 mode the model's bf16 weights are then rounded from
        its float32 master weights exactly as step t rounded them (the same seeds): a resumed run goes on
        with the same bits as one that never stopped."""
        model = self.model
        self.t = int(state["t"])
        self.m.memory[...] = model.xp.asarray(state["m"])
        self.v.memory[...] = model.xp.asarray(state["v"])
        if model.master is not None and self.t > 0:
            for i, k in enumerate(model.params.views):
                rounded = adamw_ops.stochastic_round(device.asnumpy(model.master[k]), self.rounding_seed(self.t, i))
                model.params[k][...] = model.xp.asarray(rounded)
