"""Training GPT-2 (or a Llama-family model) on tiny Shakespeare: one function for the notebooks and the
command line.

    python -m helpers.train --steps 400 --out-dir runs/shakespeare
    python -m helpers.train --model llama --steps 400 --out-dir runs/llama
    python -m helpers.train --help

A run: the model (a fresh config, or `--init-from` a Hugging Face directory / hub name / llm.c
.bin), AdamW (0.9, 0.95) with weight decay on the 2-D weights, a learning rate that warms up
linearly and then follows a cosine down to a minimum, gradients clipped to a global norm of 1.0,
optional gradient accumulation, a validation loss every N steps, a sample every N steps and a
checkpoint every N steps. Checkpoints hold the model, the optimizer and the data position, written
atomically; a run started again with the same out_dir resumes from its checkpoint and then produces
exactly (bit for bit) the losses of a run that was never interrupted. A NaN or infinite loss stops the
run with a clear error and leaves the last good checkpoint in place. Every step appends one JSON line
to out_dir/log.jsonl.

Started by mpirun (`mpirun -np N python -m helpers.train ...`, helpers.train.parallel) the run is
data parallel: each of the N processes computes its part of every step's batches, the gradients are
summed over them (MPI, or NCCL on GPUs), and rank 0 alone writes the log and the checkpoints.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from . import data
from ..runtime import comm as comm_module
from ..runtime import device
from ..runtime.errors import MPIUnavailableError, RankFailure
from ..model.checkpoints import atomic_write
from ..model.base import LanguageModel
from ..model.gpt2 import GPT2, AdamW, GPT2Config
from ..model.llama import Llama, LlamaConfig
from ..ops.global_norm import clip_coefficient
from .parallel import DataParallel, ZeroAdamW


class TrainingError(RuntimeError):
    """The run cannot go on (a NaN loss, a checkpoint that does not fit the configuration...)."""


def setting(default, help: str, group: str):
    """A TrainConfig field with its --help text and its section of the help."""
    return dataclasses.field(default=default, metadata={"help": help, "group": group})


MODEL, DATA, OPTIMISATION, OUTPUT = "model", "data", "optimisation", "evaluation, samples and checkpoints"


MODELS = {"gpt2": GPT2, "llama": Llama}


@dataclass
class TrainConfig:
    model: str = setting("gpt2", "gpt2, or llama (RMSNorm, RoPE, SwiGLU, grouped-query attention; notebook 12)", MODEL)
    n_layer: int = setting(4, "transformer blocks (L)", MODEL)
    n_head: int = setting(4, "attention heads per block (n_embd must be a multiple of it)", MODEL)
    n_embd: int = setting(128, "channels (C), the width of the residual stream", MODEL)
    vocab_size: int = setting(50257, "vocabulary size (GPT-2's tokenizer has 50257 tokens)", MODEL)
    n_kv_head: int = setting(2, "llama: key/value heads, shared by groups of n_head / n_kv_head query heads", MODEL)
    intermediate_size: int = setting(0, "llama: the SwiGLU MLP's width (0: the width that gives a block as many "
                                        "parameters as GPT-2's block of the same n_embd)", MODEL)
    rope_theta: float = setting(10000.0, "llama: RoPE's base (Llama 2: 10000, Llama 3: 500000)", MODEL)
    tie_embeddings: bool = setting(True, "llama: the output head is the token embedding, as in GPT-2 "
                                         "(--no-tie-embeddings: an output head of its own, as in Llama)", MODEL)
    init_from: str | None = setting(None, "start from trained weights instead of a fresh model: a Hugging Face "
                                          "directory or hub name (e.g. gpt2), or llm.c's gpt2_124M.bin; the model "
                                          "settings above are then ignored", MODEL)
    backend: str = setting("auto", "numpy (NumPy references, fast on a CPU), cuda (the kernels: on a GPU, or "
                                   "emulated by the CPU backend, slowly) or auto (cuda with a GPU, else numpy)", MODEL)
    dtype: str = setting("fp32", "fp32, or bf16: mixed precision as llm.c trains (bf16 weights and activations, "
                                 "fp32 master weights and sums; the cuda backend, GPT-2; notebook 13)", MODEL)
    data_path: str | None = setting(None, "tiny Shakespeare's input.txt or its directory (unset: "
                                          "$GPT2_DATA_DIR, then the cache, then a download)", DATA)
    train_bin: str | None = setting(None, "train on an llm.c token file instead (with --val-bin), e.g. a shard made "
                                          "by llm.c's dev/data scripts", DATA)
    val_bin: str | None = setting(None, "the llm.c token file of the validation split (with --train-bin)", DATA)
    B: int = setting(12, "sequences per batch", DATA)
    T: int = setting(64, "tokens per sequence (the model's context length, block_size)", DATA)
    grad_accum: int = setting(1, "batches whose gradients add up before each update (a larger effective "
                                 "batch in the same memory)", DATA)
    seed: int = setting(0, "seed of the initial weights and of the order of the batches", DATA)
    steps: int = setting(400, "optimizer updates in the whole run", OPTIMISATION)
    lr: float = setting(2e-3, "peak learning rate, reached after the warmup", OPTIMISATION)
    min_lr: float = setting(2e-4, "learning rate at the last step, where the cosine ends", OPTIMISATION)
    warmup_steps: int = setting(30, "steps of linear warmup from lr/warmup_steps to lr", OPTIMISATION)
    weight_decay: float = setting(0.1, "AdamW's weight decay, on the 2-D weights only", OPTIMISATION)
    grad_clip: float = setting(1.0, "the gradients' global norm is clipped to this", OPTIMISATION)
    zero: bool = setting(False, "with several ranks (mpirun): ZeRO-1, each rank keeps AdamW's state for 1/N of "
                                "the parameters (notebook 14)", OPTIMISATION)
    val_every: int = setting(50, "steps between validation losses (0: only at the end)", OUTPUT)
    val_batches: int = setting(8, "batches of the validation split averaged for each validation loss", OUTPUT)
    sample_every: int = setting(100, "steps between printed samples (0: none)", OUTPUT)
    sample_tokens: int = setting(48, "tokens per sample", OUTPUT)
    checkpoint_every: int = setting(100, "steps between checkpoints (0: only at the end)", OUTPUT)
    out_dir: str = setting("runs/shakespeare", "directory of the run: checkpoint.safetensors and log.jsonl", OUTPUT)
    resume: bool = setting(True, "continue from out_dir's checkpoint when there is one (--no-resume starts "
                                 "over)", OUTPUT)

    def validate(self):
        if self.model not in MODELS:
            raise ValueError(f"model must be one of {', '.join(MODELS)}, got {self.model!r}")
        for k in ("n_layer", "n_head", "n_embd", "vocab_size", "n_kv_head", "B", "T", "grad_accum", "steps",
                  "val_batches"):
            if getattr(self, k) < 1:
                raise ValueError(f"{k} must be at least 1, got {getattr(self, k)}")
        for k in ("intermediate_size", "warmup_steps", "val_every", "sample_every", "checkpoint_every", "sample_tokens"):
            if getattr(self, k) < 0:
                raise ValueError(f"{k} must not be negative, got {getattr(self, k)}")
        if not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"need 0 <= min_lr <= lr, got min_lr={self.min_lr}, lr={self.lr}")
        if self.backend not in ("auto", "numpy", "cuda"):
            raise ValueError(f"backend must be numpy, cuda or auto, got {self.backend!r}")
        if self.dtype not in ("fp32", "bf16"):
            raise ValueError(f"dtype must be fp32 or bf16, got {self.dtype!r}")

    def resolved_backend(self) -> str:
        return ("cuda" if device.name == "cupy" else "numpy") if self.backend == "auto" else self.backend


def learning_rate(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to cfg.lr over warmup_steps, then a cosine from lr down to min_lr at the last step."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, cfg.steps - 1 - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * progress))


# ------------------------------------------------------------------------------------------------
# Checkpoints: safetensors (tensors) + JSON (everything else), one file, written atomically, with a
# checksum of the tensors; everything is checked before a run resumes from it
# ------------------------------------------------------------------------------------------------
FORMAT = "gpt2-cuda-notebooks checkpoint 1"
# settings that change what a run computes: a run resumes only with the same ones
TRAJECTORY = ("model", "dtype", "n_layer", "n_head", "n_embd", "vocab_size", "n_kv_head", "intermediate_size",
              "rope_theta", "tie_embeddings", "init_from", "data_path", "train_bin", "val_bin", "B", "T",
              "seed", "steps", "lr", "min_lr", "warmup_steps", "weight_decay", "grad_clip")
# and the batches averaged per step, ranks x grad_accum (a run may resume on another number of ranks)


def tensor_digest(tensors: dict) -> str:
    """SHA-256 of the tensors' names, dtypes, shapes and bytes (a bit flipped anywhere changes it)."""
    h = hashlib.sha256()
    for k in sorted(tensors):
        t = np.ascontiguousarray(tensors[k])
        h.update(f"{k}:{t.dtype.str}:{t.shape};".encode())
        h.update(memoryview(t).cast("B"))
    return h.hexdigest()


def save_checkpoint(path: Path, model: LanguageModel, opt: AdamW, loader: data.DataLoader, step: int, cfg: TrainConfig,
                    ranks: int = 1, write: bool = True):
    """Write the run's state to `path` atomically. In a data-parallel run every rank calls it (ZeRO-1 gathers
    AdamW's shards) and only rank 0 writes (write=True)."""
    from safetensors import numpy as safetensors_numpy
    state = opt.state()
    # (the weights: on the writing rank, and on every rank when they are a collective, ZeRO-1's bf16 master)
    weights = model.state() if write or model.master_shard is not None else None
    if not write:
        return
    tensors = {f"param.{k}": v for k, v in weights.items()}
    tensors["adamw.m"], tensors["adamw.v"] = state["m"], state["v"]
    meta = {"step": step, "adamw_t": state["t"], "loader": loader.state(), "model": model_name(model),
            "model_config": asdict(model.config), "ranks": ranks,
            "train_config": asdict(cfg), "format": FORMAT, "tensors_sha256": tensor_digest(tensors)}
    try:
        atomic_write(path, lambda p: safetensors_numpy.save_file(tensors, str(p), metadata={"meta": json.dumps(meta)}))
    except OSError as e:
        raise TrainingError(f"could not write the checkpoint {path}: {e.strerror or e} (is the disk full?). The "
                            f"previous checkpoint, if there is one, is intact: free some space and run again to "
                            f"resume from it") from e


def load_checkpoint(path: Path, verify: bool = True):
    """(meta, tensors) of a checkpoint written by save_checkpoint; a TrainingError naming the file if it
    cannot be read or (verify) if its tensors do not match their checksum."""
    from safetensors import safe_open
    from safetensors.numpy import load_file
    path = Path(path)
    advice = (f"Move it away (or delete it) to start over, or pass --no-resume (resume=False); an older copy, if you "
              f"kept one, can be put back")
    try:
        with safe_open(str(path), "np") as f:
            meta = json.loads((f.metadata() or {})["meta"])
        tensors = load_file(str(path))
    except Exception as e:  # safetensors' own errors, OSError, a JSON error, a missing key
        raise TrainingError(f"{path} is not a readable checkpoint: it is truncated or corrupt ({type(e).__name__}: "
                            f"{e}). {advice}") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise TrainingError(f"{path} is not a checkpoint of this project's training (format "
                            f"{meta.get('format') if isinstance(meta, dict) else meta!r}). {advice}")
    if verify and meta.get("tensors_sha256") != tensor_digest(tensors):
        raise TrainingError(f"{path}: its tensors do not match their checksum: the file was changed or damaged "
                            f"after it was written (a bit flip, a copy cut short). {advice}")
    return meta, tensors


def _check_resumable(path: Path, meta: dict, tensors: dict, model: LanguageModel, cfg: TrainConfig, loader: data.DataLoader,
                     ranks: int = 1):
    """Refuse a checkpoint that this run cannot continue exactly, saying why."""
    restart = "use another out_dir, or --no-resume (resume=False) to start over"
    saved = meta.get("train_config", {})
    diffs = [f"{k}: {saved.get(k)!r} in the checkpoint, {getattr(cfg, k)!r} now" for k in TRAJECTORY
             if k in saved and saved[k] != getattr(cfg, k)]
    saved_ranks, saved_accum = int(meta.get("ranks", 1)), saved.get("grad_accum", cfg.grad_accum)
    if saved_ranks * saved_accum != ranks * cfg.grad_accum:
        raise TrainingError(
            f"{path} was written by a run that averaged {saved_ranks * saved_accum} batches per step ({saved_ranks} "
            f"rank(s) x grad_accum {saved_accum}); this run averages {ranks * cfg.grad_accum} ({ranks} rank(s) x "
            f"grad_accum {cfg.grad_accum}), so it would not continue that run. Choose ranks and --grad-accum whose "
            f"product is {saved_ranks * saved_accum} (e.g. mpirun -np {saved_ranks} with --grad-accum {saved_accum}), "
            f"or {restart}")
    if diffs:
        raise TrainingError(f"{path} was written by a run with other settings ({'; '.join(diffs)}); resuming would "
                            f"not continue that run. Run again with its settings, or {restart}")
    if meta["model_config"] != asdict(model.config):
        raise TrainingError(f"{path} holds a model {meta['model_config']}, but this run builds "
                            f"{asdict(model.config)}: {restart}")
    needed = [f"param.{k}" for k in model.params.views] + ["adamw.m", "adamw.v"]
    missing = [k for k in needed if k not in tensors]
    if missing:
        raise TrainingError(f"{path} lacks the tensors {', '.join(missing)}: {restart}")
    for k in needed:
        t = tensors[k]
        if not np.isfinite(t).all():
            raise TrainingError(f"{path}: {k} holds values that are not finite (inf or NaN): {restart}")
    if (tensors["adamw.v"] < 0).any():
        raise TrainingError(f"{path}: adamw.v (a running mean of squares) holds negative values: {restart}")
    step = meta.get("step")
    if not isinstance(step, int) or not 0 <= step <= cfg.steps:
        raise TrainingError(f"{path}: step {step!r} is outside this run's {cfg.steps} steps: {restart}")
    if meta.get("adamw_t") != step:
        raise TrainingError(f"{path}: AdamW has taken {meta.get('adamw_t')!r} steps but the run {step}: {restart}")
    state = meta.get("loader", {})
    try:
        epoch, index = int(state["epoch"]), int(state["index"])
    except (KeyError, TypeError, ValueError):
        raise TrainingError(f"{path}: the data loader's position {state!r} is unreadable: {restart}") from None
    if not (0 <= index <= loader.n_chunks and epoch >= 0):
        raise TrainingError(f"{path}: the data loader's position (epoch {epoch}, index {index}) is outside the "
                            f"{loader.n_chunks} batches of an epoch of this data: {restart}")


def remove_stale_temporaries(out: Path) -> int:
    """Remove what atomic_write leaves behind when a run dies while it writes (.NAME.XXXX.tmp)."""
    stale = [p for p in out.glob(".*.tmp") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    if stale:
        print(f"removed {len(stale)} unfinished temporary files of an interrupted save in {out}")
    return len(stale)


# ------------------------------------------------------------------------------------------------
# Sampling during training (notebook 10 has the full sampler with a KV cache)
# ------------------------------------------------------------------------------------------------
def sample_text(model: LanguageModel, enc, n_tokens: int, seed: int = 0, temperature: float = 1.0) -> str:
    """n_tokens of text from <|endoftext|> (top-k 40), going on past the end of each speech (shown as a
    blank line, as in the play): a sample that stopped at the first <|endoftext|> would often be a
    speaker's name alone."""
    ids = list(model.generate(np.array([data.EOT]), n_tokens, temperature=temperature, top_k=40, seed=seed,
                              stop_token=None))
    speeches, current = [], []
    for i in ids + [data.EOT]:
        if i == data.EOT:
            speeches.append(enc.decode(current))
            current = []
        else:
            current.append(i)
    return "\n\n".join(s.strip("\n") for s in speeches if s.strip())


# ------------------------------------------------------------------------------------------------
# The run
# ------------------------------------------------------------------------------------------------
def model_name(model: LanguageModel) -> str:
    return next(name for name, cls in MODELS.items() if isinstance(model, cls))


def matching_intermediate_size(n_embd: int, n_head: int, n_kv_head: int) -> int:
    """The SwiGLU width (a multiple of 4) that gives a Llama block about as many parameters as GPT-2's
    block of the same width: 12 C^2 (qkv 3C^2, projection C^2, MLP 8C^2) = C*W + C^2 + 3*C*I."""
    head_dim = n_embd // n_head
    qkv = (n_head + 2 * n_kv_head) * head_dim * n_embd
    return max(4, round((12 * n_embd ** 2 - qkv - n_embd * n_head * head_dim) / (3 * n_embd) / 4) * 4)


def build_model(cfg: TrainConfig, backend: str) -> LanguageModel:
    if cfg.model == "llama":
        if cfg.init_from:
            return Llama.from_pretrained(cfg.init_from, backend=backend)
        hidden = cfg.intermediate_size or matching_intermediate_size(cfg.n_embd, cfg.n_head, cfg.n_kv_head)
        return Llama(LlamaConfig(vocab_size=cfg.vocab_size, block_size=cfg.T, n_layer=cfg.n_layer, n_head=cfg.n_head,
                                 n_kv_head=cfg.n_kv_head, n_embd=cfg.n_embd, intermediate_size=hidden,
                                 rope_theta=cfg.rope_theta, tie_embeddings=cfg.tie_embeddings),
                     backend=backend, seed=cfg.seed, dtype=cfg.dtype)
    if cfg.init_from:
        src = Path(cfg.init_from)
        if src.suffix == ".bin":
            model = GPT2.from_llmc(src, backend=backend)
        else:
            model = GPT2.from_pretrained(cfg.init_from, backend=backend)
        return model if cfg.dtype == "fp32" else GPT2.from_tensors(model.config, model.state(), backend, cfg.dtype)
    return GPT2(GPT2Config(vocab_size=cfg.vocab_size, block_size=cfg.T, n_layer=cfg.n_layer, n_head=cfg.n_head,
                           n_embd=cfg.n_embd), backend=backend, seed=cfg.seed, dtype=cfg.dtype)


def evaluate(model: LanguageModel, val_tokens, cfg: TrainConfig, batches: int | None = None, comm=None) -> float:
    """Mean loss over the first val_batches batches of the validation split (always the same ones). With a
    communicator of several ranks each evaluates every N-th batch and the mean is taken in batch order (the
    same number as one process's)."""
    comm = comm or comm_module.SingleProcess()
    loader = data.DataLoader(val_tokens, cfg.B, cfg.T, shuffle=False)
    count = min(cfg.val_batches if batches is None else batches, loader.n_chunks)
    mine = []
    for i in range(count):
        batch = loader.next_batch()
        if i % comm.size == comm.rank:
            mine.append(model.forward(*batch)[1])
    parts = comm.allgather_object(mine)
    losses = [parts[i % comm.size][i // comm.size] for i in range(count)]
    return float(np.mean(losses))


def train(cfg: TrainConfig, on_step=None, progress: bool = True, tokens=None, comm=None) -> list[dict]:
    """Run (or resume) training; returns the log records. on_step(record, model) is called after each
    step (the notebook plots from it). `tokens` = (train, val) token arrays, else tiny Shakespeare.
    `comm`: the ranks of a data-parallel run (default: helpers.runtime.comm.world(), one process unless
    mpirun started this one); every rank returns the same records."""
    cfg.validate()
    comm = comm or comm_module.world()
    lead = comm.rank == 0          # rank 0 writes the log, the checkpoints and the samples
    backend = cfg.resolved_backend()
    out = Path(cfg.out_dir)
    if lead:
        out.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(out)
    comm.barrier()
    ckpt_path, log_path = out / "checkpoint.safetensors", out / "log.jsonl"
    if tokens is not None:
        train_tokens, val_tokens = tokens
    elif cfg.train_bin or cfg.val_bin:
        if not (cfg.train_bin and cfg.val_bin):
            raise ValueError("give both train_bin and val_bin (llm.c token files), or neither")
        train_tokens, val_tokens = data.read_token_file(cfg.train_bin), data.read_token_file(cfg.val_bin)
    else:
        train_tokens, val_tokens = data.load_tiny_shakespeare(cfg.data_path)
    enc = data.tokenizer() if cfg.sample_every and lead else None
    model = build_model(cfg, backend)
    if cfg.T > model.config.block_size:
        raise ValueError(f"T={cfg.T} is longer than the model's block_size={model.config.block_size}")
    parallel = DataParallel(comm, model, cfg.grad_accum, zero=cfg.zero)
    hyper = dict(lr=cfg.lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=cfg.weight_decay)
    opt = ZeroAdamW(model, comm, parallel.shards, **hyper) if parallel.zero else AdamW(model, **hyper)
    loader = data.DataLoader(train_tokens, cfg.B, cfg.T, seed=cfg.seed)
    start = 0
    resuming = cfg.resume and ckpt_path.is_file()
    if comm.size > 1:
        parallel.check_same_everywhere("settings", (asdict(cfg), resuming, int(train_tokens.size)))
    if resuming:
        meta, tensors = load_checkpoint(ckpt_path)
        _check_resumable(ckpt_path, meta, tensors, model, cfg, loader, comm.size)
        model.load_state(_params(tensors))
        opt.load_state({"t": meta["adamw_t"], "m": tensors["adamw.m"], "v": tensors["adamw.v"]})
        loader.load_state(meta["loader"])
        start = meta["step"]
        if lead:
            _truncate_log(log_path, start)
    elif log_path.exists() and lead:
        log_path.unlink()
    if comm.size > 1:
        parallel.check_same_everywhere("weights", tensor_digest(model.state()))
    records = []
    bar = None
    if progress and lead:
        from tqdm.auto import tqdm
        where = f"{backend} backend" + (f", {comm.size} ranks over {comm.transport}" if comm.size > 1 else "")
        bar = tqdm(total=cfg.steps, initial=start, desc=f"training {cfg.model} ({where})", unit="step")
    n = parallel.batches_per_step
    tokens_per_step = cfg.B * cfg.T * n
    try:
        for step in range(start, cfg.steps):
            t0 = time.perf_counter()
            opt.lr = learning_rate(step, cfg)
            model.zero_grad()
            mine = []
            for i in range(n):    # every rank reads every batch of the step and computes its own
                x, y = loader.next_batch()
                if parallel.mine(i):
                    mine.append(model.forward(x, y)[1])
                    model.backward()
            parallel.sum_gradients()
            loss = 0.0
            for micro in parallel.all_losses(mine):   # in batch order, as one process adds them
                loss += micro / n
            norm = parallel.grad_norm() / n  # the gradients are sums of n means
            if not (math.isfinite(loss) and math.isfinite(norm)):
                good = f"the last good checkpoint is {ckpt_path}" if ckpt_path.is_file() else "no checkpoint was written"
                raise TrainingError(f"the loss became {loss} (gradient norm {norm}) at step {step}: training diverged. "
                                    f"Stopped without saving; {good}. Lower the learning rate (now {opt.lr:.3g}) or "
                                    f"raise warmup_steps, and resume.")
            opt.step(grad_scale=clip_coefficient(norm, cfg.grad_clip) / n)
            device.synchronize()
            seconds = time.perf_counter() - t0
            record = {"step": step, "loss": loss, "val_loss": None, "lr": opt.lr, "grad_norm": norm,
                      "tokens_per_s": tokens_per_step / seconds, "ms_per_step": 1e3 * seconds}
            last = step == cfg.steps - 1
            if cfg.val_every and ((step + 1) % cfg.val_every == 0 or last):
                record["val_loss"] = evaluate(model, val_tokens, cfg, comm=comm)
            if lead and cfg.sample_every and ((step + 1) % cfg.sample_every == 0 or last):
                record["sample"] = sample_text(model, enc, cfg.sample_tokens, seed=step)
            if lead:
                with open(log_path, "a") as f:
                    f.write(json.dumps({k: v for k, v in record.items() if k != "sample"}) + "\n")
            if cfg.checkpoint_every and ((step + 1) % cfg.checkpoint_every == 0 or last):
                # a checkpoint is kept only if its weights still give a finite loss ("the last good one")
                after = (record["val_loss"] if record["val_loss"] is not None
                         else evaluate(model, val_tokens, cfg, 1, comm=comm))
                if not math.isfinite(after):
                    good = f"the last good checkpoint is {ckpt_path}" if ckpt_path.is_file() else "no checkpoint was written"
                    raise TrainingError(f"after step {step} the weights give a loss of {after}: training diverged. "
                                        f"Stopped without saving; {good}. Lower the learning rate (now {opt.lr:.3g}) or "
                                        f"raise warmup_steps, and resume.")
                failure = None
                try:
                    save_checkpoint(ckpt_path, model, opt, loader, step + 1, cfg, comm.size, write=lead)
                except TrainingError as e:
                    failure = str(e)
                failures = comm.allgather_object(failure)   # every rank stops if rank 0 could not save
                if any(failures):
                    raise TrainingError(next(f for f in failures if f))
            records.append(record)
            if bar is not None:
                bar.set_postfix(loss=f"{loss:.3f}", **({"val": f"{record['val_loss']:.3f}"} if record["val_loss"] else {}))
                bar.update(1)
            if on_step is not None:
                on_step(record, model)
    finally:
        if bar is not None:
            bar.close()
    return records


def load_trained(path, backend: str = "numpy", dtype: str = "fp32") -> LanguageModel:
    """The model of a training checkpoint (checkpoint.safetensors, or the run directory holding it); its
    float32 weights (a bf16 run's master weights), in `dtype` on `backend`."""
    path = Path(path)
    path = path / "checkpoint.safetensors" if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(f"no training checkpoint at {path}: train first (notebook 09, or python -m helpers.train)")
    meta, tensors = load_checkpoint(path)
    if meta.get("model", "gpt2") == "llama":
        return Llama.from_tensors(LlamaConfig(**meta["model_config"]), _params(tensors), backend, dtype)
    return GPT2.from_tensors(GPT2Config(**meta["model_config"]), _params(tensors), backend, dtype)


def _params(tensors: dict) -> dict:
    """The model's tensors of a checkpoint (stored as param.<name>)."""
    return {k.removeprefix("param."): v for k, v in tensors.items() if k.startswith("param.")}


def _truncate_log(log_path: Path, step: int):
    """Keep the log lines of the steps before `step` (a resumed run rewrites what came after); a torn
    last line (the disk filled up while it was appended) is dropped, and said so."""
    if log_path.exists():
        records = read_log(log_path, repair=True)
        lines = [json.dumps(r) for r in records if r["step"] < step]
        atomic_write(log_path, lambda p: p.write_text("".join(l + "\n" for l in lines)))


def read_log(path, repair: bool = False) -> list[dict]:
    """The records of a run's log.jsonl. A line that is not JSON is a TrainingError naming the file and
    the line, except (repair=True) an incomplete last line, which is left out with a message."""
    path = Path(path)
    lines = path.read_text().splitlines()
    records = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or "step" not in record:
                raise ValueError("not a step record")
        except ValueError as e:
            if repair and n == len(lines):
                print(f"{path}: dropped an incomplete last line (a write that was cut short): {line[:60]!r}")
                break
            raise TrainingError(f"{path}, line {n}: not a log record ({e}): {line[:80]!r}. Remove the line, or start "
                                f"the run over with --no-resume") from None
        records.append(record)
    return records


# ------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------
def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m helpers.train", description=__doc__.split("\n\n")[0],
                                     epilog="Example: python -m helpers.train --steps 200 --out-dir runs/short",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    groups = {}
    for f in dataclasses.fields(TrainConfig):
        group = groups.get(f.metadata["group"]) or groups.setdefault(f.metadata["group"],
                                                                     parser.add_argument_group(f.metadata["group"]))
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool):
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=f.metadata["help"])
        else:
            kind = {"int": int, "float": float}.get(str(f.type), str)
            metavar = {int: "N", float: "X"}.get(kind, "NAME" if f.name == "backend" else "PATH")
            group.add_argument(flag, type=kind, default=f.default, metavar=metavar, help=f.metadata["help"])
    args = parser.parse_args(argv)
    cfg = TrainConfig(**vars(args))
    comm = None
    try:
        comm = comm_module.world()
        records = train(cfg, comm=comm)
    except (TrainingError, ValueError, FileNotFoundError, RankFailure, MPIUnavailableError) as e:
        where = f" (rank {comm.rank} of {comm.size})" if comm is not None and comm.size > 1 else ""
        print(f"error{where}: {e}", file=sys.stderr, flush=True)
        _stop_other_ranks(comm)
        return 1
    except Exception:
        if comm is None or comm.size == 1:
            raise
        import traceback
        traceback.print_exc()
        print(f"error (rank {comm.rank} of {comm.size}): the traceback above", file=sys.stderr, flush=True)
        _stop_other_ranks(comm)
        return 1
    last = next((r for r in reversed(records) if r["val_loss"] is not None), None)
    if last and comm.rank == 0:
        print(f"step {last['step']}: train loss {last['loss']:.4f}, val loss {last['val_loss']:.4f}")
    return 0


def _stop_other_ranks(comm):
    """A rank that stops with an error leaves at once, without MPI_Finalize (which would wait for ranks
    that wait for it): the others see it fail at their next collective and stop with their own message
    (Open MPI's ULFM, --with-ft ulfm), or mpirun stops them (without it). Exit status 1 either way: with
    ULFM, MPI_Abort after a failure would make mpirun exit 0."""
    if comm is not None and comm.size > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)


if __name__ == "__main__":
    sys.exit(main())
