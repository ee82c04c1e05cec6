"""The memory a CPU-backend launch runs on: one shared "arena" file that this process and the launch
process both map. Its header (gpt2cpu/abi.h) holds the launch's report, the tables of its arguments,
windows and globals, and its printf records; then every array argument's pages.

The arena is a memfd (Linux) or an unlinked POSIX shared-memory object (macOS and other systems).
Each array sits against the end of its last page; the launch process maps those pages into the middle
of a window of inaccessible address space of the argument's own (gpt2cpu/memory.h), so a kernel that
runs in it writes results that Python reads back here at once, and every stray access faults there.
"""
from __future__ import annotations

import ctypes
import mmap
import os
import secrets
import sys
from dataclasses import dataclass, field

import numpy as np

from . import abi

PAGE = mmap.PAGESIZE
PROT_NONE, PROT_READ, PROT_WRITE = 0, 1, 2
LINUX = sys.platform.startswith("linux")
MAP_SHARED, MAP_ANONYMOUS, MAP_NORESERVE = 0x01, (0x20 if LINUX else 0x1000), (0x4000 if LINUX else 0x40)
MADV_REMOVE = 9    # Linux: give the pages of a shared mapping back
CANARY = 0xFF      # the bytes in front of an array: NaN as float, checked after the launch

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
    KEEP = 256 << 20           # bytes of data kept mapped between launches; beyond, given back at the next

    def __init__(self):
        self.fd = shared_memory_fd()
        if self.fd is not None:
            os.ftruncate(self.fd, self.SIZE)
            self.base = mmap_or_raise(self.SIZE, MAP_SHARED | MAP_NORESERVE, self.fd)
        else:
            self.base = mmap_or_raise(self.SIZE, MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE)
        self.first = abi.kHeaderBytes
        self.top = self.high_water = self.first
        self.pid = os.getpid()

    def close(self):
        """Unmap and close (idempotent; the arena is unusable after this)."""
        base, self.base = self.base, 0
        if base:
            _libc.munmap(base, self.SIZE)
        fd, self.fd = self.fd, None
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass

    def reset(self):
        """Forget the last launch's arrays (called before a launch, never between a launch and the
        copies back of its results). Memory past KEEP is given back to the system."""
        if self.high_water > self.first + self.KEEP and LINUX and self.fd is not None:
            start = self.first + self.KEEP
            _libc.madvise(self.base + start, self.high_water - start, MADV_REMOVE)
            self.high_water = start
        self.top = self.first

    def alloc(self, nbytes: int) -> int:
        offset = self.top
        self.top += -(-nbytes // PAGE) * PAGE
        if self.top > self.SIZE:
            raise MemoryError(f"a CPU-backend launch needs more than the {self.SIZE >> 30} GiB arena: "
                              f"{self.top >> 20} MiB of arrays")
        self.high_water = max(self.high_water, self.top)
        return offset

    def clear_header(self):
        ctypes.memset(self.base, 0, abi.kPrintfOffset)


@dataclass
class Staged:
    """The memory of one array argument (or of several that overlap, like x and x[1:]) in the arena:
    whole pages, the data against the end of the last one, the bytes in front of it filled with CANARY."""
    lo: int                 # the caller's memory [lo, hi)
    hi: int
    members: list = field(default_factory=list)   # (argument index, Param, array)
    origin: int | None = None   # where its allocation starts (alignment is measured from there), or None
    writable: bool = False
    offset: int = 0         # arena offset of the pages
    body: int = 0           # bytes of pages
    data: int = 0           # arena offset of the data
    mapped_data: int = 0    # the address of the data in the launch process (after the launch)

    @property
    def nbytes(self):
        return self.hi - self.lo

    def place(self, arena: Arena):
        self.body = max(PAGE, -(-self.nbytes // PAGE) * PAGE)
        self.offset = arena.alloc(self.body)
        self.data = self.offset + self.body - self.nbytes
        ctypes.memset(arena.base + self.offset, CANARY, self.data - self.offset)
        if self.nbytes:
            ctypes.memmove(arena.base + self.data, self.lo, self.nbytes)

    def window(self) -> "abi.Window":
        return abi.Window(arena_offset=self.offset, body_bytes=self.body, data_offset=self.data - self.offset,
                          data_bytes=self.nbytes, writable=int(self.writable),
                          align_phase=(self.lo - (self.origin or 0)) % 256)

    def lead_written(self, arena: Arena) -> bool:
        """A write in front of the array (inside its first page, where nothing faults)."""
        lead = ctypes.string_at(arena.base + self.offset, self.data - self.offset)
        return lead.count(CANARY) != len(lead)

    def copy_back(self, arena: Arena):
        if self.writable and self.nbytes:
            ctypes.memmove(self.lo, arena.base + self.data, self.nbytes)


def allocation_start(a: np.ndarray) -> int | None:
    """The start of the NumPy allocation that `a` is (or views): what stands for a cudaMalloc'd block on
    the CPU backend, 256-byte aligned as on a GPU whatever NumPy's own alignment (16 bytes), so that a
    fresh array is aligned for anything and a view is as aligned as its offset. None when the memory is
    not NumPy's own (a ctypes buffer such as the CuPy stand-in's 512-byte aligned pool, an mmap): its
    addresses are taken as they are."""
    base = a
    while isinstance(base.base, np.ndarray):
        base = base.base
    return base.__array_interface__["data"][0] if base.base is None else None


def stage(kernel, values, arena: Arena) -> list[Staged]:
    """Copy the array arguments into the arena, one group per block of memory they share; fills the
    arena's tables of windows and arguments."""
    arrays = [(i, p, a) for i, (p, a) in enumerate(zip(kernel.params, values)) if p.pointer and a is not None]
    spans = sorted(((a.__array_interface__["data"][0], a.__array_interface__["data"][0] + a.nbytes, i, p, a)
                    for i, p, a in arrays), key=lambda t: t[0])
    groups: list[Staged] = []
    for lo, hi, i, p, a in spans:
        g = groups[-1] if groups else None
        if g is not None and lo < g.hi and hi > g.lo and a.nbytes and g.nbytes:
            g.hi = max(g.hi, hi)
            g.members.append((i, p, a))
        else:
            groups.append(Staged(lo, hi, members=[(i, p, a)], origin=allocation_start(a)))
    windows = (abi.Window * abi.kMaxWindows).from_address(arena.base + abi.kWindowsOffset)
    slots = (abi.ArgSlot * abi.kMaxParams).from_address(arena.base + abi.kArgsOffset)
    where = {}
    for w, g in enumerate(groups):
        g.writable = any(not p.const for _, p, _ in g.members)
        g.place(arena)
        windows[w] = g.window()
        for i, p, a in g.members:
            where[i] = (w, a.__array_interface__["data"][0] - g.lo)
    for i, (p, v) in enumerate(zip(kernel.params, values)):
        s = slots[i]
        if p.pointer:
            s.is_pointer = 1
            s.window, s.offset = where.get(i, (-1, 0))   # (a None pointer: -1, null)
        else:
            raw = v.tobytes()
            s.is_pointer, s.window, s.size = 0, -1, len(raw)
            ctypes.memmove(s.bytes, raw, len(raw))
    return groups
