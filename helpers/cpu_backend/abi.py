"""ctypes mirrors of gpt2cpu_abi.h: the report of a launch and its configuration."""
import ctypes


class Report(ctypes.Structure):
    _fields_ = [("status", ctypes.c_int32), ("signo", ctypes.c_int32), ("fault_kind", ctypes.c_int32),
                ("access", ctypes.c_int32), ("addr", ctypes.c_uint64), ("pc", ctypes.c_uint64),
                ("module_base", ctypes.c_uint64), ("has_thread", ctypes.c_int32),
                ("block_idx", ctypes.c_int32 * 3), ("thread_idx", ctypes.c_int32 * 3), ("pad", ctypes.c_int32),
                ("printf_used", ctypes.c_uint64), ("printf_dropped", ctypes.c_uint64),
                ("switches", ctypes.c_uint64), ("arena_base", ctypes.c_uint64), ("message", ctypes.c_char * 2048)]


class LaunchConfig(ctypes.Structure):
    _fields_ = [("entry", ctypes.c_int32), ("schedule", ctypes.c_int32), ("grid", ctypes.c_uint32 * 3),
                ("block", ctypes.c_uint32 * 3), ("shared_mem", ctypes.c_uint64),
                ("args", ctypes.POINTER(ctypes.c_void_p)), ("workers", ctypes.c_int32), ("plain", ctypes.c_int32),
                ("seed", ctypes.c_uint64), ("report", ctypes.c_void_p), ("printf_buf", ctypes.c_void_p),
                ("printf_cap", ctypes.c_uint64), ("pool", ctypes.c_void_p), ("pool_regions", ctypes.c_uint64)]
