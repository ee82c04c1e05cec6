// state.h: the state of a launch. Fibers (CUDA threads), blocks, workers (OS threads that run
// blocks), and the launch-wide globals. A module runs one launch at a time: each launch happens in
// a fresh child process, and the Python side serialises launches.
#pragma once

namespace gpt2cpu {

enum FiberState : int32_t { RUNNABLE = 0, AT_BARRIER = 1, AT_WARP = 2, EXITED = 3, AT_ACTIVEMASK = 4 };

// A warp collective whose work is done once for the whole warp (the wmma functions of mma.h): each
// lane waits with a record of its call, and the lane that completes the warp checks that all of them
// make the same call (warp.h) and does the work with all 32 records.
enum WarpCallArg : int32_t { ARG_POINTER, ARG_UNSIGNED, ARG_LAYOUT, ARG_VALUE };
struct WarpCall {
    const char* what;        // "wmma::mma_sync"
    const char* file;        // the call's source file and line
    int32_t line;
    const void* kind;        // one address per template instantiation: the same call compiles to the same kind
    int32_t nargs;           // the arguments every lane must pass alike
    const char* arg_name[3];
    int32_t arg_kind[3];     // WarpCallArg
    uint64_t arg[3];         // pointer, unsigned or layout_t; ARG_VALUE: a double's bits
    void* frag[4];           // this lane's fragments (d, a, b, c for mma_sync)
};

struct Block;
struct Fiber {
    Ctx ctx;
    char* stack_lo;       // base of its region (the guard page)
    uint3 thread_idx;
    Block* block;
    int32_t linear;       // linear thread index in the block
    int32_t state;        // FiberState
    int32_t barrier_line; // source line of the __syncthreads it waits at
    uint32_t warp_mask;   // mask of the warp collective it waits at
    const char* collective;  // and its name ("__shfl_sync", "wmma::mma_sync"...)
    WarpCall* call;       // at a wmma function: its call (else null)
    int32_t lane, warp;
    int32_t parity;       // alternates per warp collective: selects the exchange slots
    int32_t bar_parity;   // alternates per __syncthreads: selects the barrier-count slot
    int32_t site;         // for AT_ACTIVEMASK: the source line of the __activemask() call
    uint32_t active;      // what __activemask() returns to it
};

struct WarpState {
    uint32_t existing;     // lanes that exist (a partial last warp has fewer)
    uint32_t arrived;      // lanes waiting at a collective
    uint64_t slots[2][32]; // values exchanged by shuffles and votes, double-buffered
};

// A worker's shared memory: slot 0 holds the block's dynamic shared memory, slot `id` the static
// `__shared__` variable the rewrite numbered `id`. Each slot is kSharedSlot bytes of address space;
// the variable's pages sit at the slot's start, the variable right against their end, the rest of
// the slot is inaccessible: an index past the end faults, up to a MiB away.
struct SharedMemory {
    char* base;                          // kMaxSharedSites + 1 slots
    char* start[kMaxSharedSites + 1];    // where each variable begins (null: not placed yet)
    size_t bytes[kMaxSharedSites + 1];
    size_t element[kMaxSharedSites + 1]; // bytes of one element (for messages)
    const char* name[kMaxSharedSites + 1];
    uint64_t poisoned_in[kMaxSharedSites + 1];  // block sequence number it was last poisoned for
    size_t static_used;                  // bytes of static shared variables (with their alignment)
};

struct Worker;
struct Block {
    uint3 block_idx;
    uint64_t linear;
    uint64_t seq;          // blocks run so far by this worker, from 1
    Worker* worker;
    int n;                 // threads in the block
    bool plain;
    int exited, at_barrier, pos;
    bool ran;              // some fiber ran during the current sweep
    uint64_t sweep;        // sweep counter (seeds the random order)
    int bar_count[2];      // for __syncthreads_count/and/or
    WarpState warps[kMaxThreads / 32];
    int order[kMaxThreads];
    int where[kMaxThreads];  // a thread's position in `order`
    Fiber* fibers[kMaxThreads];
};

struct Worker {
    int id;
    pthread_t thread;
    Fiber* current;        // the fiber running now (for the fault handler)
    Ctx main;
    Block block;
    SharedMemory shared;
    char* altstack;
    uint64_t switches;
    bool failed;
};

// Launch-wide state.
static LaunchConfig* g_launch;
static void** g_launch_args;     // one pointer per kernel parameter, to its value
static char* g_arena;            // the arena as this process maps it
static Report* g_report;         // its header: the launch's report, then the printf records
static char* g_printf;
static dim3 g_grid, g_block;
static Worker* g_workers[256];
static int g_nworkers;
static volatile int g_failed;
static uint64_t g_next_block;
static uint64_t g_nblocks;
static uint64_t g_perm_a, g_perm_c;
static bool g_isolated;
static char* g_pool;             // all fiber stack regions of the launch
static size_t g_pool_regions;
static bool g_pool_guarded;      // no guard pages to set: the parent's pool, for kernels that
                                 // provably fit their stacks
static Fiber* g_desc;            // their descriptors, in the same order

static inline Fiber* self() { return &g_desc[(stack_pointer() - (uintptr_t)g_pool) >> kRegionShift]; }

}  // namespace gpt2cpu
