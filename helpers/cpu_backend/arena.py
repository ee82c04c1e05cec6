"""The memory a CPU-backend launch runs on: one shared "arena" mapping, in which every array argument
is copied to sit right against inaccessible guard bytes, next to the launch's report and printf buffer.

The arena is a memfd (Linux) or an unlinked POSIX shared-memory object (macOS and other systems)
that this process and the launcher process both map, so a kernel running in the launcher's child
writes results that Python reads back at once, at the same offsets. The guard ranges are protected
in the child only (Python's own mapping stays readable).
"""
from __future__ import annotations

import ctypes
import mmap
import os
import secrets
import sys
from dataclasses import dataclass, field

PAGE = mmap.PAGESIZE
PROT_NONE, PROT_READ, PROT_WRITE = 0, 1, 2
LINUX = sys.platform.startswith("linux")
MAP_SHARED, MAP_ANONYMOUS, MAP_NORESERVE = 0x01, (0x20 if LINUX else 0x1000), (0x4000 if LINUX else 0x40)
MADV_REMOVE = 9
CANARY = 0xFF      # unused bytes around an array: NaN as float, so stray reads show
GUARD = 64 * 1024  # inaccessible bytes on each side of an array (address space only, no memory)

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]


def mmap_or_raise(size: int, flags: int, fd: int = -1) -> int:
    addr = _libc.mmap(None, size, PROT_READ | PROT_WRITE, flags, fd, 0)
    if addr in (None, ctypes.c_void_p(-1).value):
        raise MemoryError(f"could not map {size} bytes for the CPU backend: {os.strerror(ctypes.get_errno())}")
    return addr


def shared_memory_fd() -> int | None:
    """A file descriptor of fresh shared memory that no other process can open by name, or None.
    GPT2_CPU_ARENA=shm takes the POSIX path on Linux too (how macOS runs), for the tests."""
    if hasattr(os, "memfd_create") and os.environ.get("GPT2_CPU_ARENA", "memfd") != "shm":
        return os.memfd_create("gpt2cpu-arena")
    try:
        import _posixshmem
    except ImportError:
        return None
    for _ in range(8):
        name = f"/gpt2cpu-{os.getpid()}-{secrets.token_hex(6)}"
        try:
            fd = _posixshmem.shm_open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL, mode=0o600)
        except FileExistsError:
            continue
        _posixshmem.shm_unlink(name)  # only the descriptor (and what inherits it) reaches it now
        return fd
    return None


class Arena:
    SIZE = 64 << 30            # address space only: pages exist once written
    KEEP = 256 << 20           # bytes kept between launches; beyond, memory is given back

    def __init__(self, header_bytes: int):
        self.fd = shared_memory_fd()
        if self.fd is not None:
            os.ftruncate(self.fd, self.SIZE)
            self.base = mmap_or_raise(self.SIZE, MAP_SHARED | MAP_NORESERVE, self.fd)
        else:
            self.base = mmap_or_raise(self.SIZE, MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE)
        self.first = -(-header_bytes // PAGE) * PAGE
        self.top = self.high_water = self.first
        self.protected: list[tuple[int, int]] = []
        self.pid = os.getpid()

    def close(self):
        """Unmap and close (the arena is unusable after this)."""
        if self.base:
            _libc.munmap(self.base, self.SIZE)
            self.base = 0
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def reset(self):
        """Forget the last launch's arrays (and undo protections applied in this process)."""
        for offset, length in self.protected:
            _libc.mprotect(self.base + offset, length, PROT_READ | PROT_WRITE)
        self.protected.clear()
        if self.high_water > self.KEEP:
            _libc.madvise(self.base + self.KEEP, self.high_water - self.KEEP, MADV_REMOVE)
            self.high_water = self.KEEP
        self.top = self.first

    def alloc(self, nbytes: int) -> int:
        offset = self.top
        self.top += -(-nbytes // PAGE) * PAGE
        if self.top > self.SIZE:
            raise MemoryError(f"a CPU-backend launch needs more than the {self.SIZE >> 30} GiB arena")
        self.high_water = max(self.high_water, self.top)
        return offset

    def protect_here(self, protects):
        """Apply protections in this process (the modes without the launcher fork from here)."""
        for offset, length, prot in protects:
            _libc.mprotect(self.base + offset, length, prot)
            self.protected.append((offset, length))


@dataclass
class Staged:
    """The memory of one array argument (or of several that overlap, like x and x[1:]) in the arena:
    [GUARD][lead slack][data][trail slack][GUARD], the data as close to the trailing guard as its
    alignment allows, the slack filled with CANARY bytes."""
    lo: int                 # the caller's memory [lo, hi)
    hi: int
    members: list = field(default_factory=list)   # (argument index, Param, array)
    writable: bool = False
    align: int = 16
    offset: int = 0         # arena offset of the region
    body: int = 0
    data: int = 0           # arena offset of the data

    @property
    def nbytes(self):
        return self.hi - self.lo

    def place(self, arena: Arena):
        data_span = -(-max(self.nbytes, 1) // 16) * 16
        self.body = -(-(data_span + 16) // PAGE) * PAGE
        self.offset = arena.alloc(self.body + 2 * GUARD)
        ctypes.memset(arena.base + self.offset + GUARD, CANARY, self.body)
        end = self.offset + GUARD + self.body
        self.data = (end - self.nbytes) // self.align * self.align
        if self.nbytes:
            ctypes.memmove(arena.base + self.data, self.lo, self.nbytes)

    def protections(self):
        out = [(self.offset, GUARD, PROT_NONE), (self.offset + GUARD + self.body, GUARD, PROT_NONE)]
        if not self.writable:
            out.append((self.offset + GUARD, self.body, PROT_READ))
        return out

    def slack_written(self, arena: Arena) -> bool:
        start, end = arena.base + self.offset + GUARD, arena.base + self.offset + GUARD + self.body
        data = arena.base + self.data
        lead = ctypes.string_at(start, data - start)
        trail = ctypes.string_at(data + self.nbytes, end - data - self.nbytes)
        return any(b != CANARY for b in lead + trail)

    def copy_back(self, arena: Arena):
        if self.writable and self.nbytes:
            ctypes.memmove(self.lo, arena.base + self.data, self.nbytes)


def stage(kernel, values, arena: Arena) -> tuple[list[Staged], dict[int, int]]:
    """Copy the array arguments into the arena; returns the buffers and argument index -> arena offset."""
    arrays = [(i, p, a) for i, (p, a) in enumerate(zip(kernel.params, values)) if p.pointer]
    spans = sorted(((a.__array_interface__["data"][0], a.__array_interface__["data"][0] + a.nbytes, i, p, a)
                    for i, p, a in arrays), key=lambda t: t[0])
    groups: list[Staged] = []
    for lo, hi, i, p, a in spans:
        g = groups[-1] if groups else None
        if g is not None and lo < g.hi and hi > g.lo and a.nbytes and g.nbytes:
            g.hi = max(g.hi, hi)
            g.members.append((i, p, a))
        else:
            groups.append(Staged(lo, hi, members=[(i, p, a)]))
    offsets = {}
    for g in groups:
        g.writable = any(not p.const for _, p, _ in g.members)
        # 16-byte alignment (like cudaMalloc's 256) keeps float4 casts valid; an array whose size is
        # not a multiple of 16 bytes is aligned to its element size instead, so that the first
        # element past its end is the first guard byte and faults exactly.
        if g.nbytes % 16 and not any(p.vector_width > 1 for _, p, _ in g.members):
            g.align = max(a.itemsize for _, _, a in g.members)
        g.place(arena)
        for i, p, a in g.members:
            offsets[i] = g.data + (a.__array_interface__["data"][0] - g.lo)
    return groups, offsets
