// gpt2cpu_abi.h: the data shared by a kernel module (gpt2cpu.h), the launcher process
// (launcher.cpp) and the Python side (helpers/cpu_backend/__init__.py mirrors it with ctypes).
#pragma once
#include <cstdint>

namespace gpt2cpu {

// The order of threads in a block (and of blocks); DEPTH_FIRST may be or-ed in: after a warp
// collective, the warp that completed it runs on at once, so one warp can get far ahead of the others.
enum Schedule : int32_t { FORWARD = 0, REVERSE = 1, RANDOM = 2, ORDER_MASK = 3, DEPTH_FIRST = 4 };
enum Status : int32_t { OK = 0, SIGNAL = 1, RUNTIME_ERROR = 2 };
enum FaultKind : int32_t { FAULT_MEMORY = 0, FAULT_STACK_OVERFLOW = 1, FAULT_SHARED_OOB = 2, FAULT_GENERAL_PROTECTION = 3 };

struct Report {
    int32_t status;          // Status
    int32_t signo;           // for SIGNAL
    int32_t fault_kind;      // FaultKind, for SIGNAL
    int32_t access;          // -1 unknown, 0 read, 1 write
    uint64_t addr;           // faulting address
    uint64_t pc;             // program counter at the fault
    uint64_t module_base;    // load address of this module (to map pc to a source line)
    int32_t has_thread;      // 1 when block_idx/thread_idx are known
    int32_t block_idx[3];
    int32_t thread_idx[3];
    int32_t pad;
    uint64_t printf_used;    // bytes of printf records written
    uint64_t printf_dropped; // printf calls that did not fit
    uint64_t switches;       // fiber context switches (statistics)
    uint64_t arena_base;     // where the launcher's child mapped the shared arena (0: no launcher)
    char message[2048];      // for RUNTIME_ERROR
};

struct LaunchConfig {
    int32_t entry;           // index into the module's entry table
    int32_t schedule;        // Schedule of threads in a block and of blocks
    uint32_t grid[3];
    uint32_t block[3];
    uint64_t shared_mem;     // dynamic shared memory per block, bytes
    void** args;             // one pointer per kernel parameter, to the parameter's value
    int32_t workers;         // OS threads to spread blocks over
    int32_t plain;           // 1: no barrier or warp collective, run threads as a loop
    uint64_t seed;           // for RANDOM
    Report* report;          // in memory shared with the parent
    char* printf_buf;        // in memory shared with the parent
    uint64_t printf_cap;
    char* pool;              // fiber stack regions prepared by the parent (guard pages set), or null
    uint64_t pool_regions;
};

}  // namespace gpt2cpu
