"""Talking between training processes: MPI (through mpi4py) starts them and exchanges host buffers,
NCCL (CuPy's `cupy.cuda.nccl`) exchanges GPU buffers, as llm.c's multi-GPU training does.

    mpirun -np 2 python -m helpers.train ...      # each process: comm.world() is a 2-rank MPIComm

`world()` is the communicator of this process: `SingleProcess` when it was not started by an MPI
launcher (every collective is then the identity, and mpi4py is not needed), else an `MPIComm` over
MPI's COMM_WORLD whose device-array collectives go through NCCL on a GPU. The collectives work in
place on flat arrays (the model's FlatBuffer memories):

    allreduce_sum(buf)                    every rank: the sum of every rank's buf
    reduce_scatter_sum(buf, shard)        rank r: buf[shard(r)] = that part of the sum (ZeRO-1)
    allgather(buf, shard)                 every rank: buf[shard(q)] from rank q, for all q
    allgather_object(x)                   every rank: [x of rank 0, x of rank 1, ...] (small Python values)

A rank that dies shows up in the others as `RankFailure` at their next collective, when the MPI library
reports failed processes (Open MPI 5: `mpirun --with-ft ulfm`); without that, mpirun stops every rank.
"""
from __future__ import annotations

import os

import numpy as np

from . import device
from .errors import MPIUnavailableError, RankFailure

#: Environment variables an MPI launcher sets in each process it starts (Open MPI, MPICH/Hydra, PMIx, Slurm)
LAUNCHER_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS")


def launched_by_mpi() -> bool:
    return any(k in os.environ for k in LAUNCHER_VARIABLES)


def local_size() -> int:
    """How many ranks of the run share this machine (1 outside MPI): they share its cores and GPUs."""
    for k in ("OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "PMI_LOCAL_SIZE", "SLURM_NTASKS_PER_NODE"):
        if os.environ.get(k, "").isdigit():
            return max(1, int(os.environ[k]))
    return 1


def local_rank() -> int:
    for k in ("OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "PMI_LOCAL_RANK", "SLURM_LOCALID"):
        if os.environ.get(k, "").isdigit():
            return int(os.environ[k])
    return 0


class Shards:
    """The ZeRO-1 partition of a flat buffer of `numel` elements over `size` ranks: equal contiguous
    shards of `length` elements (a multiple of 64, so every shard starts 256-byte aligned, as the float4
    kernels need); the last one may run past numel (`padded` is size * length)."""

    def __init__(self, numel: int, size: int):
        self.numel, self.size = int(numel), int(size)
        self.length = -(-self.numel // (64 * self.size)) * 64
        self.padded = self.length * self.size

    def __call__(self, rank: int) -> slice:
        return slice(rank * self.length, (rank + 1) * self.length)

    def __repr__(self):
        return f"Shards({self.numel:,} elements over {self.size} ranks: {self.length:,} each)"


class SingleProcess:
    """The communicator of a run in one process: rank 0 of 1, every collective the identity."""
    rank, size, transport = 0, 1, "none"

    def allreduce_sum(self, buf):
        return buf

    def reduce_scatter_sum(self, buf, shards: Shards):
        return buf

    def allgather(self, buf, shards: Shards):
        return buf

    def allgather_object(self, value) -> list:
        return [value]

    def barrier(self):
        pass

    def __repr__(self):
        return "SingleProcess()"


class MPIComm(SingleProcess):
    """The ranks of COMM_WORLD. Host (NumPy) arrays go through MPI; device arrays through NCCL when CuPy has
    it, else through host copies and MPI (CuPy builds without NCCL; the stand-in unless
    GPT2_STANDIN_NCCL=1 gives it its NCCL over MPI)."""

    def __init__(self, mpi_comm=None):
        try:
            from mpi4py import MPI
        except ImportError as e:
            raise MPIUnavailableError(
                "this process was started by an MPI launcher, but mpi4py is not installed: pip install -e '.[mpi]' "
                "(mpi4py and Open MPI), then start the run again with that environment's mpirun") from e
        self.MPI = MPI
        self.comm = mpi_comm or MPI.COMM_WORLD
        self.comm.Set_errhandler(MPI.ERRORS_RETURN)   # a failed peer becomes an exception, not an abort
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        if device.name == "cupy":   # the ranks on one machine take its GPUs in turn (before NCCL binds to one)
            count = device.xp.cuda.runtime.getDeviceCount()
            device.xp.cuda.Device(local_rank() % max(1, count)).use()
        self.nccl = self._nccl() if device.name == "cupy" else None
        self.transport = "MPI + NCCL" if self.nccl else "MPI"

    # -- NCCL on a GPU --------------------------------------------------------------------------------
    def _nccl(self):
        try:
            from cupy.cuda import nccl
        except ImportError:
            return None
        if not getattr(nccl, "available", True):
            return None
        uid = self._call("setting up NCCL", self.comm.bcast, nccl.get_unique_id() if self.rank == 0 else None, 0)
        self._nccl_module = nccl
        return nccl.NcclCommunicator(self.size, uid, self.rank)

    def _nccl_type(self, dtype, summed: bool):
        """NCCL's datatype for a buffer of `dtype`, and how many of it one element is: float32 itself; anything
        else, moved but never summed (bf16 weights), as bytes."""
        nccl = self._nccl_module
        if dtype == np.float32:
            return nccl.NCCL_FLOAT32, 1
        if summed:
            raise TypeError(f"the collectives sum float32 buffers only (gradients), got {np.dtype(dtype)}")
        return nccl.NCCL_UINT8, np.dtype(dtype).itemsize

    def _on_device(self, buf) -> bool:
        return not isinstance(buf, np.ndarray)

    # -- errors ---------------------------------------------------------------------------------------
    def _call(self, what: str, fn, *args):
        try:
            return fn(*args)
        except self.MPI.Exception as e:
            raise RankFailure(
                f"rank {self.rank} of {self.size}: {what} failed ({e.Get_error_string()}): another rank of this run "
                f"has died or cannot be reached. This rank stops too; the run's last checkpoint is intact (it is "
                f"written whole or not at all): start the run again to resume from it") from None

    # -- collectives ----------------------------------------------------------------------------------
    def allreduce_sum(self, buf):
        if self.size == 1:
            return buf
        if self._on_device(buf) and self.nccl:
            kind, _ = self._nccl_type(buf.dtype, summed=True)
            self.nccl.allReduce(buf.data.ptr, buf.data.ptr, buf.size, kind, self._nccl_module.NCCL_SUM,
                                device.xp.cuda.get_current_stream().ptr)
            return buf
        host = device.asnumpy(buf) if self._on_device(buf) else buf
        self._call("the gradient all-reduce", self.comm.Allreduce, self.MPI.IN_PLACE, host, self.MPI.SUM)
        if host is not buf:
            buf[...] = device.asarray(host)
        return buf

    def reduce_scatter_sum(self, buf, shards: Shards):
        """buf has shards.padded elements; afterwards this rank's shard of it holds the sum over ranks."""
        if self.size == 1:
            return buf
        _check_padded(buf, shards)
        mine = buf[shards(self.rank)]
        if self._on_device(buf) and self.nccl:
            kind, _ = self._nccl_type(buf.dtype, summed=True)
            out = device.xp.empty_like(mine)
            self.nccl.reduceScatter(buf.data.ptr, out.data.ptr, shards.length, kind, self._nccl_module.NCCL_SUM,
                                    device.xp.cuda.get_current_stream().ptr)
            mine[...] = out
            return buf
        host = device.asnumpy(buf) if self._on_device(buf) else buf
        out = np.empty(shards.length, host.dtype)
        self._call("the gradient reduce-scatter", self.comm.Reduce_scatter_block, host, out, self.MPI.SUM)
        mine[...] = device.asarray(out) if self._on_device(buf) else out
        return buf

    def allgather(self, buf, shards: Shards):
        """Every rank's shard of buf (shards.padded elements) to every rank, in place."""
        if self.size == 1:
            return buf
        _check_padded(buf, shards)
        if self._on_device(buf) and self.nccl:
            kind, per = self._nccl_type(buf.dtype, summed=False)
            mine = buf[shards(self.rank)].copy()
            self.nccl.allGather(mine.data.ptr, buf.data.ptr, shards.length * per, kind,
                                device.xp.cuda.get_current_stream().ptr)
            return buf
        host = device.asnumpy(buf) if self._on_device(buf) else buf
        # moved, never summed: as bytes (MPI has no bfloat16 type)
        self._call("the parameter all-gather", self.comm.Allgather, self.MPI.IN_PLACE, host.view(np.uint8))
        if host is not buf:
            buf[...] = device.asarray(host)
        return buf

    def allgather_object(self, value) -> list:
        return self._call("an exchange of step results", self.comm.allgather, value)

    def barrier(self):
        self._call("a barrier", self.comm.Barrier)

    def __repr__(self):
        return f"MPIComm(rank {self.rank} of {self.size}, {self.transport})"


def _check_padded(buf, shards: Shards):
    if buf.ndim != 1 or buf.size != shards.padded:
        raise ValueError(f"a sharded collective needs a flat buffer of {shards.padded:,} elements ({shards}), got "
                         f"shape {tuple(buf.shape)}")


_world = None


def world():
    """This process's communicator (made once): MPIComm when an MPI launcher started it, else SingleProcess."""
    global _world
    if _world is None:
        _world = MPIComm() if launched_by_mpi() else SingleProcess()
    return _world
