"""Device memory of the CuPy stand-in: blocks of host memory, 512-byte aligned as CuPy's pool's blocks,
counted against the emulated device's size and the pool's limit."""
from __future__ import annotations

import ctypes
import weakref

import numpy as np

ALIGNMENT = 512   # CuPy's allocation unit


class OutOfMemoryError(MemoryError):
    def __init__(self, size, total, limit):
        super().__init__(f"Out of memory allocating {size:,} bytes (allocated so far: {total:,} bytes"
                         + (f", limit set to: {limit:,} bytes" if limit else "") + ").")


class BaseMemory:
    ptr: int
    size: int
    device_id = 0


class Memory(BaseMemory):
    """A block of the pool (host memory standing in for device memory)."""

    def __init__(self, size: int):
        self.size = int(size)
        self._buffer = np.empty(self.size + ALIGNMENT, np.uint8)
        base = self._buffer.ctypes.data
        self.ptr = base + (-base) % ALIGNMENT


class UnownedMemory(BaseMemory):
    """Memory that belongs to something else (a module's global), kept alive by `owner`."""

    def __init__(self, ptr: int, size: int, owner):
        self.ptr, self.size, self._owner = int(ptr), int(size), owner


class MemoryPointer:
    def __init__(self, mem: BaseMemory, offset: int):
        self.mem, self.offset = mem, int(offset)

    @property
    def ptr(self) -> int:
        return self.mem.ptr + self.offset

    device_id = property(lambda self: 0)

    def __add__(self, n):
        return MemoryPointer(self.mem, self.offset + int(n))

    def __int__(self):
        return self.ptr

    def copy_from_host(self, src, size):
        ctypes.memmove(self.ptr, src, size)

    def copy_to_host(self, dst, size):
        ctypes.memmove(dst, self.ptr, size)


class MemoryPool:
    def __init__(self):
        self._used = 0
        self._limit = 0

    def _device_bytes(self) -> int:
        from . import runtime
        return runtime.getDeviceProperties(0)["totalGlobalMem"]

    def malloc(self, size: int) -> MemoryPointer:
        size = -(-int(size) // ALIGNMENT) * ALIGNMENT
        cap = min(self._limit or self._device_bytes(), self._device_bytes())
        if self._used + size > cap:
            raise OutOfMemoryError(size, self._used, self._limit)
        mem = Memory(size)
        self._used += size
        weakref.finalize(mem, self._release, size)
        return MemoryPointer(mem, 0)

    def _release(self, size):
        self._used -= size

    def used_bytes(self) -> int:
        return self._used

    def total_bytes(self) -> int:
        return self._used   # (no cached free blocks: freed memory returns at once)

    def free_bytes(self) -> int:
        return 0

    def free_all_blocks(self, stream=None):
        pass

    def n_free_blocks(self) -> int:
        return 0

    def set_limit(self, size=None, fraction=None):
        if fraction is not None:
            size = int(fraction * self._device_bytes())
        self._limit = int(size or 0)

    def get_limit(self) -> int:
        return self._limit


POOL = MemoryPool()
PINNED_POOL = MemoryPool()


_allocator = POOL.malloc


def set_allocator(allocator=None):
    """As cupy.cuda.set_allocator: every new array's memory comes from `allocator(size)`."""
    global _allocator
    _allocator = allocator or POOL.malloc


def alloc(size: int) -> MemoryPointer:
    return _allocator(size)
