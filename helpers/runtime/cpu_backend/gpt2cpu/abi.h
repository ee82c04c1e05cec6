// abi.h: what a kernel module, the launcher process and the Python side share: the constants, the
// launch configuration, the report of a launch and the layout of the arena's header. Defined once,
// here: helpers/runtime/cpu_backend/abi.py reads this file and builds its ctypes mirrors from it, and each
// module reports sizeof() of these structs so that a mismatch is an error, not a wrong result.
//
// Rules that keep this file readable by abi.py: fields are `type name;` or `type name[N];` with the
// types below, one per line; constants are `constexpr type kName = <integer expression>;`; enums
// give every value.
#pragma once
#include <cstdint>

namespace gpt2cpu {

// Limits and sizes.
constexpr int32_t kMaxParams = 1024;              // parameters of a kernel (CUDA: 4 KiB of them)
constexpr int32_t kMaxParamBytes = 4096;          // CUDA's parameter space (before sm_70 + CUDA 12.1)
constexpr int32_t kMaxWindows = 1024;             // array arguments (each gets a window)
constexpr int32_t kMaxGlobals = 256;              // __device__ / __constant__ variables of a module
constexpr int32_t kRegionShift = 18;              // a fiber's stack region: 256 KiB
constexpr int64_t kPrintfCapacity = 1048576;      // bytes of printf records per launch (CUDA's default)
constexpr int64_t kStaticSharedCap = 49152;       // shared memory a block may use without opt-in
constexpr int32_t kMaxSharedSites = 128;          // __shared__ declarations in a module
constexpr int64_t kSharedSlot = 1048576;          // address space of one shared variable and its guard
constexpr int64_t kMinWindowShift = 36;           // an argument's window: at least 64 GiB ...
constexpr int64_t kMaxWindowShift = 40;           // ... at most 1 TiB, the array in its middle
constexpr int64_t kWindowSpace = 35184372088832;  // 32 TiB: the address space all windows share

// The order of threads in a block (and of blocks); DEPTH_FIRST may be or-ed in: after a warp
// collective, the warp that completed it runs on at once, so one warp can get far ahead of the others.
enum Schedule : int32_t { FORWARD = 0, REVERSE = 1, RANDOM = 2, ORDER_MASK = 3, DEPTH_FIRST = 4 };
enum Status : int32_t { OK = 0, SIGNAL = 1, RUNTIME_ERROR = 2, RACE = 3 };
enum FaultKind : int32_t {
    FAULT_MEMORY = 0,            // a bad address: classified by the Python side from `addr`
    FAULT_STACK_OVERFLOW = 1,
    FAULT_SHARED = 2,            // out of bounds of shared memory: `message` says where
    FAULT_GENERAL_PROTECTION = 3,
    FAULT_MISALIGNED = 4         // a vector access at an address not a multiple of its size
};

// One array argument's memory: its pages in the arena file, mapped by the launch process into the
// middle of a window of inaccessible address space of its own.
struct Window {
    uint64_t arena_offset;   // where its pages start in the arena (a page multiple)
    uint64_t body_bytes;     // pages mapped (a page multiple)
    uint64_t data_offset;    // where the array starts in those pages: its end is the last page's end
    uint64_t data_bytes;
    int32_t writable;
    int32_t align_phase;     // the array's offset in its allocation modulo 256: alignment is judged as there
    uint64_t mapped_data;    // written by the launch process: where the array's first byte is mapped
};

// A __device__ / __constant__ variable's bytes travel in the arena between launches.
struct GlobalSlot {
    uint64_t arena_offset;
    uint64_t bytes;
};

// One kernel parameter: a pointer (an offset into an argument's window, or null) or a scalar's bytes.
struct ArgSlot {
    int32_t is_pointer;
    int32_t window;          // for pointers: the window, or -1 for a null pointer
    uint64_t offset;         // for pointers: bytes from the start of the window's array
    uint64_t size;           // for scalars: bytes of the value
    uint8_t bytes[16];
};

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
    int32_t vector_bytes;    // for FAULT_MISALIGNED: the size of the vector type
    uint64_t printf_used;    // bytes of printf records written
    uint64_t printf_dropped; // printf calls that did not fit
    uint64_t switches;       // fiber context switches (statistics)
    uint64_t windows_base;   // where the launch process put the windows (0: no windows)
    uint64_t window_shift;   // log2 of a window's size
    uint64_t race_blocks[2]; // for RACE: the two blocks (linear indices) that wrote the same place
    char detail[64];         // the vector type (FAULT_MISALIGNED)
    char message[2048];      // for RUNTIME_ERROR, RACE and FAULT_SHARED
};

// What a launch needs to know; the tables it refers to are in the arena's header (below).
struct LaunchConfig {
    int32_t entry;           // index into the module's entry table
    int32_t schedule;        // Schedule of threads in a block and of blocks
    uint32_t grid[3];
    uint32_t block[3];
    uint64_t shared_mem;     // dynamic shared memory per block, bytes
    int32_t workers;         // OS threads to spread blocks over
    int32_t plain;           // 1: no barrier or warp collective, run threads as a loop
    uint64_t seed;           // for RANDOM
    char* pool;              // fiber stack regions prepared by the caller (guard pages set), or null
    uint64_t pool_regions;
    int32_t arena_fd;        // the arena file, to map the windows from (-1: use the caller's mapping)
    int32_t nwindows;
    int32_t nargs;
    int32_t nglobals;
    int32_t track_writes;    // racecheck: find places written by two blocks (one worker only)
    int32_t pad;
};

// The launcher's protocol (launcher.cpp): a request per launch, two replies (the child's pid, then
// its wait status), each carrying the request's sequence number.
constexpr int64_t kLauncherMagic = 1735423026;   // "gpt2" (0x67707432)
constexpr int32_t kLibraryPathBytes = 1024;
enum ReplyKind : int32_t { REPLY_PID = 1, REPLY_STATUS = 2 };
struct LauncherRequest {
    uint32_t magic;
    uint32_t quit;
    uint64_t seq;
    char library[kLibraryPathBytes];
    LaunchConfig cfg;        // its pool and arena_fd are filled in by the launcher
    uint64_t pool_regions;   // >0: run on the launcher's unguarded stack pool of this many regions
};
struct LauncherReply {
    uint64_t seq;
    int32_t kind;            // ReplyKind
    int32_t pad;
    int64_t value;           // the pid (or -errno), or the wait status
};

// The arena's header: the report, the windows, globals and arguments tables, the printf records;
// array data follows, from kHeaderBytes on.
constexpr int64_t kWindowsOffset = 4096;
constexpr int64_t kGlobalsOffset = 53248;
constexpr int64_t kArgsOffset = 57344;
constexpr int64_t kPrintfOffset = 98304;
constexpr int64_t kHeaderBytes = 1146880;
static_assert(sizeof(Report) <= kWindowsOffset, "the report overlaps the windows table");
static_assert(kWindowsOffset + kMaxWindows * sizeof(Window) <= kGlobalsOffset, "the windows overlap the globals");
static_assert(kGlobalsOffset + kMaxGlobals * sizeof(GlobalSlot) <= kArgsOffset, "the globals overlap the arguments");
static_assert(kArgsOffset + kMaxParams * sizeof(ArgSlot) <= kPrintfOffset, "the arguments overlap printf");
static_assert(kPrintfOffset + kPrintfCapacity <= kHeaderBytes, "printf overlaps the data");

}  // namespace gpt2cpu
