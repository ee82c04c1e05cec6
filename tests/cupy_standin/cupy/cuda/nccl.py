"""cupy.cuda.nccl of the stand-in: NCCL's collectives, carried out by MPI (COMM_WORLD, mpi4py) on the host
memory that the stand-in's device pointers point at, with NCCL's conventions, which are what the calls in
helpers/runtime/comm.py must get right: counts in elements of `datatype`, reduceScatter's count and
allGather's count per rank, in place when the send buffer is (allGather: this rank's slot of) the
receive buffer. So tests/test_parallel.py runs the GPU path of data parallelism on the CPU.

Only with GPT2_STANDIN_NCCL=1: otherwise importing it fails, as it does in a CuPy built without NCCL (the
ranks then move device buffers through host copies and MPI).
"""
from __future__ import annotations

import ctypes
import os

import numpy as np

if os.environ.get("GPT2_STANDIN_NCCL") != "1":
    raise ImportError("the CuPy stand-in has NCCL only with GPT2_STANDIN_NCCL=1")

available = True
# NCCL's enum values (nccl.h: ncclDataType_t, ncclRedOp_t), as CuPy exports them
NCCL_UINT8, NCCL_FLOAT32, NCCL_SUM = 1, 7, 0
_TYPES = {NCCL_UINT8: np.uint8, NCCL_FLOAT32: np.float32}


class NcclError(RuntimeError):
    pass


def get_unique_id() -> tuple:
    return tuple(int(b) for b in os.urandom(128))


def _array(ptr: int, count: int, datatype: int) -> np.ndarray:
    """The `count` elements of `datatype` at device pointer `ptr` (stand-in device memory is host memory)."""
    if datatype not in _TYPES:
        raise NcclError(f"ncclInvalidArgument: the stand-in knows datatypes {sorted(_TYPES)}, got {datatype}")
    dtype = np.dtype(_TYPES[datatype])
    if count == 0:
        return np.empty(0, dtype)
    raw = (ctypes.c_uint8 * (count * dtype.itemsize)).from_address(ptr)
    return np.frombuffer(raw, dtype=dtype)


class NcclCommunicator:
    def __init__(self, ndev: int, commId: tuple, rank: int):
        from mpi4py import MPI
        self.MPI, self.comm = MPI, MPI.COMM_WORLD
        if (ndev, rank) != (self.comm.Get_size(), self.comm.Get_rank()):
            raise NcclError(f"ncclInvalidArgument: rank {rank} of {ndev}, but this is MPI rank "
                            f"{self.comm.Get_rank()} of {self.comm.Get_size()}")
        self.calls = []

    def _check(self, op, stream):
        if op != NCCL_SUM:
            raise NcclError(f"ncclInvalidArgument: the stand-in only sums, got op {op}")
        if not isinstance(stream, int):
            raise NcclError(f"the stream is a pointer (an int), got {stream!r}")

    def allReduce(self, sendbuf, recvbuf, count, datatype, op, stream):
        self._check(op, stream)
        self.calls.append("allReduce")
        recv = _array(recvbuf, count, datatype)
        send = self.MPI.IN_PLACE if sendbuf == recvbuf else _array(sendbuf, count, datatype).copy()
        self.comm.Allreduce(send, recv, self.MPI.SUM)

    def reduceScatter(self, sendbuf, recvbuf, recvcount, datatype, op, stream):
        self._check(op, stream)
        self.calls.append("reduceScatter")
        send = _array(sendbuf, recvcount * self.comm.Get_size(), datatype).copy()
        self.comm.Reduce_scatter_block(send, _array(recvbuf, recvcount, datatype), self.MPI.SUM)

    def allGather(self, sendbuf, recvbuf, count, datatype, stream):
        self._check(NCCL_SUM, stream)
        self.calls.append("allGather")
        recv = _array(recvbuf, count * self.comm.Get_size(), datatype)
        mine = recvbuf + self.comm.Get_rank() * count * recv.itemsize
        send = self.MPI.IN_PLACE if sendbuf == mine else _array(sendbuf, count, datatype).copy()
        self.comm.Allgather(send, recv)
