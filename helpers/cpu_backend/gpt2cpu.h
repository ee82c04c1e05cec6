// gpt2cpu.h: run unchanged CUDA C kernels on the CPU, with CUDA semantics.
//
// Every kernel module of the CPU backend is one translation unit: this header, then the .cu file
// (lightly rewritten by helpers/cpu_backend: `__shared__` declarations become per-block arena
// variables, `extern __shared__` becomes the block's dynamic shared memory), then generated entry
// points. Build: g++ -O2 -fPIC -shared -fvisibility=hidden -include gpt2cpu.h.
//
// The execution model:
// - blocks are spread over worker threads (one OS thread per core), taken from an atomic counter;
// - the threads of a block are fibers on their worker's OS thread, switched cooperatively by a
//   hand-written register switch (x86-64, aarch64) or ucontext elsewhere; each fiber's descriptor
//   lives at the base of its aligned stack region, so `threadIdx` is found from the stack pointer
//   with no thread-local storage;
// - a fiber runs until it reaches a barrier (__syncthreads) or a warp collective (__shfl_sync...),
//   then the next runnable fiber of the block runs; a sweep over the block that runs nobody while
//   some threads are still alive is a deadlock, reported with who waits where;
// - kernels with no barrier and no warp collective run their threads as a plain loop;
// - the launch runs in a forked child process (see gpt2cpu_launch) so that a faulting kernel,
//   a stack overflow or an endless loop never takes the calling Python process down; faults are
//   written to a report in shared memory that the Python side turns into a KernelError.
#pragma once

// The hand-written switch on x86-64 and aarch64 (Linux and macOS); ucontext elsewhere, or when asked
// for with GPT2CPU_USE_UCONTEXT (macOS's ucontext is deprecated and needs _XOPEN_SOURCE set before
// any system header, and _DARWIN_C_SOURCE then keeps the rest of the system's API visible).
#if !defined(GPT2CPU_USE_UCONTEXT) && !defined(__x86_64__) && !defined(__aarch64__)
#define GPT2CPU_USE_UCONTEXT 1
#endif
#if defined(GPT2CPU_USE_UCONTEXT) && defined(__APPLE__)
#ifndef _XOPEN_SOURCE
#define _XOPEN_SOURCE 700
#endif
#ifndef _DARWIN_C_SOURCE
#define _DARWIN_C_SOURCE 1
#endif
#endif

#include <cmath>
#include <cstdarg>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <utility>

#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>
#if defined(__linux__)
#include <sys/prctl.h>
#endif

#if defined(GPT2CPU_USE_UCONTEXT)
#include <ucontext.h>
#endif

#define GPT2CPU_EXPORT extern "C" __attribute__((visibility("default")))

// ---------------------------------------------------------------------------------------------
// CUDA keywords and types
// ---------------------------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __constant__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __restrict__ __restrict
#define __align__(n) alignas(n)
#define __launch_bounds__(...)
#define __CUDA_ARCH__ 900
#define GPT2CPU 1

struct uint3 { unsigned int x, y, z; };
struct dim3 {
    unsigned int x, y, z;
    constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
    constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
};

#define GPT2CPU_VEC2(T, N) struct alignas(2 * sizeof(T)) N { T x, y; }; \
    static inline N make_##N(T x, T y) { return N{x, y}; }
#define GPT2CPU_VEC4(T, N) struct alignas(4 * sizeof(T)) N { T x, y, z, w; }; \
    static inline N make_##N(T x, T y, T z, T w) { return N{x, y, z, w}; }
GPT2CPU_VEC2(float, float2)
GPT2CPU_VEC4(float, float4)
GPT2CPU_VEC2(int, int2)
GPT2CPU_VEC4(int, int4)
GPT2CPU_VEC2(unsigned int, uint2)
GPT2CPU_VEC4(unsigned int, uint4)
GPT2CPU_VEC2(double, double2)
struct float3 { float x, y, z; };
static inline float3 make_float3(float x, float y, float z) { return float3{x, y, z}; }
struct int3 { int x, y, z; };
static inline int3 make_int3(int x, int y, int z) { return int3{x, y, z}; }
static inline uint3 make_uint3(unsigned x, unsigned y, unsigned z) { return uint3{x, y, z}; }

// ---------------------------------------------------------------------------------------------
// Shared layout with the launcher and the Python side
// ---------------------------------------------------------------------------------------------
#include "gpt2cpu_abi.h"

namespace gpt2cpu {

typedef void (*EntryFn)(void** args);
extern EntryFn entry_table[];
extern const char* entry_names[];
extern const int entry_count;

// ---------------------------------------------------------------------------------------------
// Fibers and the context switch
// ---------------------------------------------------------------------------------------------
static constexpr size_t kPage = 4096;
// One fiber's stack region: [guard page][stack ... grows down]. All regions of a launch are one
// mapping, so the running fiber is `(stack pointer - pool) >> kRegionShift`: no thread-local
// storage. The descriptors live apart, packed in one array: scanning them stays in cache (at the
// base of 256 KiB-aligned regions they would all fall into the same cache sets).
static constexpr int kRegionShift = 18;
static constexpr size_t kRegion = size_t(1) << kRegionShift;
static constexpr int kMaxThreads = 1024;
static constexpr size_t kStaticSharedCap = 48 << 10;  // what a block may use without opt-in
static constexpr int kMaxSharedSites = 128;
#ifndef GPT2CPU_PREFETCH_AHEAD
#define GPT2CPU_PREFETCH_AHEAD 2
#endif
#ifndef GPT2CPU_PREFETCH_LINES
#define GPT2CPU_PREFETCH_LINES 4
#endif
static constexpr int kPrefetchAhead = GPT2CPU_PREFETCH_AHEAD;  // fibers ahead of the one switched to
static constexpr int kPrefetchLines = GPT2CPU_PREFETCH_LINES;  // cache lines of its stack top
static constexpr size_t kSharedGuard = 256 << 10;  // inaccessible space after dynamic shared memory

enum FiberState : int32_t { RUNNABLE = 0, AT_BARRIER = 1, AT_WARP = 2, EXITED = 3 };

struct Ctx {
#if defined(GPT2CPU_USE_UCONTEXT)
    ucontext_t uc;
#else
    void* sp;
#endif
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
    int32_t lane, warp;
    int32_t parity;       // alternates per warp collective: selects the exchange slots
    int32_t bar_parity;   // alternates per __syncthreads: selects the barrier-count slot
};

struct WarpState {
    uint32_t existing;     // lanes that exist (a partial last warp has fewer)
    uint32_t arrived;      // lanes waiting at a collective
    uint64_t slots[2][32]; // values exchanged by shuffles and votes, double-buffered
};

struct SharedSite { int id; size_t offset; };

struct Worker;
struct Block {
    uint3 block_idx;
    uint64_t linear;
    Worker* worker;
    int n;                 // threads in the block
    bool plain;
    int exited, at_barrier, pos;
    bool ran;              // some fiber ran during the current sweep
    uint64_t sweep;        // sweep counter (seeds the random order)
    int bar_count[2];      // for __syncthreads_count/and/or
    WarpState warps[kMaxThreads / 32];
    SharedSite sites[kMaxSharedSites];
    int nsites;
    size_t static_used;
    char* arena;           // static shared variables (poisoned per block)
    char* dynamic;         // dynamic shared memory, ends at a guard page
    size_t dynamic_size;
    char* arena_guard;
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
    char* altstack;
    uint64_t switches;
    bool failed;
};

// Launch-wide state. A module runs one launch at a time (the Python side holds a lock).
static LaunchConfig* g_launch;
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

static inline uintptr_t stack_pointer() {
    uintptr_t sp;
#if defined(__x86_64__)
    __asm__("movq %%rsp, %0" : "=r"(sp));
#elif defined(__aarch64__)
    __asm__("mov %0, sp" : "=r"(sp));
#else
    volatile char probe = 0;
    sp = (uintptr_t)&probe;
#endif
    return sp;
}

static inline Fiber* self() { return &g_desc[(stack_pointer() - (uintptr_t)g_pool) >> kRegionShift]; }

#if !defined(GPT2CPU_USE_UCONTEXT)
// The assembler's directives for a hidden global function: ELF (Linux) and Mach-O (macOS, where C
// names get a leading underscore) differ only in these, the instructions are the same.
#if defined(__APPLE__)
#define GPT2CPU_ASM_BEGIN(f) ".globl _" #f "\n.private_extern _" #f "\n.p2align 4\n_" #f ":\n"
#define GPT2CPU_ASM_END(f) "\n"
#else
#define GPT2CPU_ASM_BEGIN(f) ".globl " #f "\n.hidden " #f "\n.type " #f ",%function\n.p2align 4\n" #f ":\n"
#define GPT2CPU_ASM_END(f) "\n.size " #f ",.-" #f "\n"
#endif
extern "C" void gpt2cpu_ctx_switch(void** save_sp, void* load_sp) __attribute__((visibility("hidden")));
extern "C" void gpt2cpu_fiber_trampoline() __attribute__((visibility("hidden")));
#if defined(__x86_64__)
// Save the callee-saved registers on the current stack, store its pointer, load the other stack,
// restore its registers and return into it. 11 ns a switch here against 230 ns for swapcontext,
// which also saves the signal mask with a system call.
__asm__(".text\n" GPT2CPU_ASM_BEGIN(gpt2cpu_ctx_switch) R"(
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
)" GPT2CPU_ASM_END(gpt2cpu_ctx_switch) GPT2CPU_ASM_BEGIN(gpt2cpu_fiber_trampoline) R"(
    movq %rbx, %rdi
    callq *%r12
    ud2
)" GPT2CPU_ASM_END(gpt2cpu_fiber_trampoline));
static inline void* fiber_initial_sp(char* top, void (*fn)(Fiber*), Fiber* arg) {
    // What the switch pops: r15 r14 r13 r12=fn rbx=arg rbp, then `ret` into the trampoline.
    // top is 16-aligned; after `ret` rsp must be 16-aligned so the trampoline's call is ABI-correct.
    uint64_t* sp = (uint64_t*)(top - 16) - 7;
    sp[0] = 0; sp[1] = 0; sp[2] = 0;            // r15 r14 r13
    sp[3] = (uint64_t)fn;                       // r12
    sp[4] = (uint64_t)arg;                      // rbx
    sp[5] = 0;                                  // rbp
    sp[6] = (uint64_t)&gpt2cpu_fiber_trampoline;
    return sp;
}
#elif defined(__aarch64__)
// AAPCS64 callee-saved state: x19-x30 (x30 is the return address), sp, d8-d15. x18 is left alone:
// Apple reserves it for the platform (and Linux does not need it saved), so the same code follows
// both ABIs.
__asm__(".text\n" GPT2CPU_ASM_BEGIN(gpt2cpu_ctx_switch) R"(
    sub sp, sp, #160
    stp x19, x20, [sp, #0]
    stp x21, x22, [sp, #16]
    stp x23, x24, [sp, #32]
    stp x25, x26, [sp, #48]
    stp x27, x28, [sp, #64]
    stp x29, x30, [sp, #80]
    stp d8, d9, [sp, #96]
    stp d10, d11, [sp, #112]
    stp d12, d13, [sp, #128]
    stp d14, d15, [sp, #144]
    mov x9, sp
    str x9, [x0]
    mov sp, x1
    ldp x19, x20, [sp, #0]
    ldp x21, x22, [sp, #16]
    ldp x23, x24, [sp, #32]
    ldp x25, x26, [sp, #48]
    ldp x27, x28, [sp, #64]
    ldp x29, x30, [sp, #80]
    ldp d8, d9, [sp, #96]
    ldp d10, d11, [sp, #112]
    ldp d12, d13, [sp, #128]
    ldp d14, d15, [sp, #144]
    add sp, sp, #160
    ret
)" GPT2CPU_ASM_END(gpt2cpu_ctx_switch) GPT2CPU_ASM_BEGIN(gpt2cpu_fiber_trampoline) R"(
    mov x0, x19
    blr x20
    brk #0
)" GPT2CPU_ASM_END(gpt2cpu_fiber_trampoline));
static inline void* fiber_initial_sp(char* top, void (*fn)(Fiber*), Fiber* arg) {
    uint64_t* sp = (uint64_t*)(top - 160);
    memset(sp, 0, 160);
    sp[0] = (uint64_t)arg;                              // x19
    sp[1] = (uint64_t)fn;                               // x20
    sp[11] = (uint64_t)&gpt2cpu_fiber_trampoline;       // x30
    return sp;
}
#endif
static inline void ctx_switch(Ctx* from, Ctx* to) { gpt2cpu_ctx_switch(&from->sp, to->sp); }
static inline void ctx_init(Ctx* c, char* stack_lo, char* stack_hi, void (*fn)(Fiber*), Fiber* arg) {
    (void)stack_lo;
    c->sp = fiber_initial_sp(stack_hi, fn, arg);
}
#else  // portable fallback
static inline void ctx_switch(Ctx* from, Ctx* to) { swapcontext(&from->uc, &to->uc); }
static void ucontext_entry(unsigned hi, unsigned lo);
static void (*g_uc_fn)(Fiber*);
static inline void ctx_init(Ctx* c, char* stack_lo, char* stack_hi, void (*fn)(Fiber*), Fiber* arg) {
    getcontext(&c->uc);
    c->uc.uc_stack.ss_sp = stack_lo;
    c->uc.uc_stack.ss_size = (size_t)(stack_hi - stack_lo);
    c->uc.uc_link = nullptr;
    g_uc_fn = fn;
    uintptr_t p = (uintptr_t)arg;
    makecontext(&c->uc, (void (*)())ucontext_entry, 2, (unsigned)(p >> 32), (unsigned)(p & 0xffffffffu));
}
static void ucontext_entry(unsigned hi, unsigned lo) {
    g_uc_fn((Fiber*)(((uintptr_t)hi << 32) | lo));
    abort();
}
#endif

// ---------------------------------------------------------------------------------------------
// Errors found by the runtime (deadlocks, misuse of collectives): reported, then the block stops
// ---------------------------------------------------------------------------------------------
static void set_thread_info(Report* r, Fiber* f) {
    if (!f) return;
    r->has_thread = 1;
    r->block_idx[0] = f->block->block_idx.x; r->block_idx[1] = f->block->block_idx.y;
    r->block_idx[2] = f->block->block_idx.z;
    r->thread_idx[0] = f->thread_idx.x; r->thread_idx[1] = f->thread_idx.y; r->thread_idx[2] = f->thread_idx.z;
}

static bool claim_report() {
    int32_t expected = OK;
    return __atomic_compare_exchange_n(&g_launch->report->status, &expected, RUNTIME_ERROR, false,
                                       __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
}

// Stop the current block: back to the worker's own context, which sees `failed` and stops.
[[noreturn]] static void abandon_block(Block* b) {
    g_failed = 1;
    b->worker->failed = true;
    Ctx dead;
    ctx_switch(&dead, &b->worker->main);
    __builtin_unreachable();
}

[[noreturn]] __attribute__((format(printf, 2, 3))) static void runtime_error(Fiber* f, const char* fmt, ...) {
    if (claim_report()) {
        Report* r = g_launch->report;
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(r->message, sizeof(r->message), fmt, ap);
        va_end(ap);
        set_thread_info(r, f);
    }
    abandon_block(f->block);
}

// Append "a, b, c-d" for the set bits of `in` (threads or lanes) to buf.
static void format_ranges(char* buf, size_t cap, const bool* in, int n) {
    size_t len = strlen(buf);
    bool first = true;
    for (int i = 0; i < n && len + 24 < cap; ) {
        if (!in[i]) { i++; continue; }
        int j = i;
        while (j + 1 < n && in[j + 1]) j++;
        len += snprintf(buf + len, cap - len, j > i ? "%s%d-%d" : "%s%d", first ? "" : ", ", i, j);
        first = false;
        i = j + 1;
    }
}

// ---------------------------------------------------------------------------------------------
// The scheduler of a block's fibers
// ---------------------------------------------------------------------------------------------
static inline uint64_t mix64(uint64_t x) {
    x ^= x >> 30; x *= 0xbf58476d1ce4e5b9ULL; x ^= x >> 27; x *= 0x94d049bb133111ebULL; x ^= x >> 31;
    return x;
}

static void make_order(Block* b) {
    int n = b->n;
    int s = g_launch->schedule & ORDER_MASK;
    for (int i = 0; i < n; i++) b->order[i] = (s == REVERSE) ? n - 1 - i : i;
    if (s == RANDOM) {
        uint64_t st = mix64(g_launch->seed ^ mix64(b->linear * 0x9e3779b97f4a7c15ULL + b->sweep));
        for (int i = n - 1; i > 0; i--) {
            st = mix64(st + 0x9e3779b97f4a7c15ULL);
            int j = (int)(st % (uint64_t)(i + 1));
            int t = b->order[i]; b->order[i] = b->order[j]; b->order[j] = t;
        }
    }
    for (int i = 0; i < n; i++) b->where[b->order[i]] = i;
}

[[noreturn]] static void report_deadlock(Block* b, Fiber* cur);

// Run the next runnable fiber of the current sweep; at the end of a sweep start another one.
static void yield_next(Fiber* cur) {
    Block* b = cur->block;
    for (;;) {
        while (++b->pos < b->n) {
            Fiber* f = b->fibers[b->order[b->pos]];
            if (f->state == RUNNABLE) {
                b->ran = true;
                if (f != cur) {
                    b->worker->switches++;
                    b->worker->current = f;
#if !defined(GPT2CPU_USE_UCONTEXT)
                    // Warm the cache and TLB for the fiber after this one: the first load from a
                    // fiber's stack after a switch is where the time goes otherwise.
                    if (b->pos + kPrefetchAhead < b->n) {
                        const char* sp = (const char*)b->fibers[b->order[b->pos + kPrefetchAhead]]->ctx.sp;
                        for (int line = 0; line < kPrefetchLines; line++) __builtin_prefetch(sp + 64 * line);
                    }
#endif
                    ctx_switch(&cur->ctx, &f->ctx);
                }
                return;
            }
        }
        if (b->exited == b->n) {  // block finished: back to the worker
            b->worker->switches++;
            ctx_switch(&cur->ctx, &b->worker->main);
            __builtin_unreachable();
        }
        if (!b->ran) report_deadlock(b, cur);
        b->ran = false;
        b->pos = -1;
        b->sweep++;
        if ((g_launch->schedule & ORDER_MASK) == RANDOM) make_order(b);
    }
}

static void check_barrier_release(Block* b, Fiber* cur) {
    if (b->at_barrier == 0 || b->at_barrier + b->exited != b->n) return;
    if (b->exited > 0) {
        bool exited[kMaxThreads];
        int line = -1;
        for (int i = 0; i < b->n; i++) {
            exited[i] = b->fibers[i]->state == EXITED;
            if (!exited[i]) line = b->fibers[i]->barrier_line;
        }
        char who[1024] = "";
        format_ranges(who, sizeof who, exited, b->n);
        runtime_error(cur,
            "__syncthreads() at line %d was reached by %d of the %d threads of block (%u,%u,%u); "
            "threads %s exited without reaching it. On a GPU this hangs or silently corrupts "
            "results: every thread of a block must reach every __syncthreads() (do not `return` "
            "early before a barrier; guard the work instead).",
            line, b->at_barrier, b->n, b->block_idx.x, b->block_idx.y, b->block_idx.z, who);
    }
    int line0 = b->fibers[0]->barrier_line;
    for (int i = 1; i < b->n; i++) {
        if (b->fibers[i]->barrier_line != line0) {
            runtime_error(cur,
                "threads of block (%u,%u,%u) wait at different __syncthreads() calls: thread %d at "
                "line %d, thread %d at line %d. A barrier inside a branch that not all threads take "
                "is undefined behaviour on a GPU.",
                b->block_idx.x, b->block_idx.y, b->block_idx.z, 0, line0, i, b->fibers[i]->barrier_line);
        }
    }
    for (int i = 0; i < b->n; i++) b->fibers[i]->state = RUNNABLE;
    b->at_barrier = 0;
    // __syncthreads_count: the slot the next barrier uses; all readers of it have left it behind
    b->bar_count[1 - cur->bar_parity] = 0;
}

static void report_deadlock(Block* b, Fiber* cur) {
    // Nobody can run. Find a warp collective that waits for a lane that will never come.
    for (int i = 0; i < b->n; i++) {
        Fiber* f = b->fibers[i];
        if (f->state != AT_WARP) continue;
        WarpState& w = b->warps[f->warp];
        uint32_t missing = f->warp_mask & ~w.arrived;
        for (int lane = 0; lane < 32; lane++) {
            if (!((missing >> lane) & 1)) continue;
            Fiber* m = b->fibers[f->warp * 32 + lane];
            const char* where = m->state == EXITED ? "exited" : "waits at a __syncthreads()";
            runtime_error(cur,
                "deadlock in block (%u,%u,%u): thread %d waits at a warp collective (__shfl_sync, "
                "__syncwarp, __ballot_sync...) with mask 0x%08x, but lane %d of its warp (thread %d) %s. "
                "Every lane named in the mask must reach the same collective.",
                b->block_idx.x, b->block_idx.y, b->block_idx.z, f->linear, f->warp_mask, lane,
                m->linear, where);
        }
    }
    runtime_error(cur, "deadlock in block (%u,%u,%u): no thread can make progress",
                  b->block_idx.x, b->block_idx.y, b->block_idx.z);
}

static void fiber_main(Fiber* f) {
    entry_table[g_launch->entry](g_launch->args);
    Block* b = f->block;
    f->state = EXITED;
    b->exited++;
    check_barrier_release(b, f);
    // lanes waiting at a warp collective for this lane will be reported as a deadlock
    yield_next(f);
    __builtin_unreachable();
}

static inline uint3 thread_index(int linear) {
    uint3 t;
    t.x = linear % g_block.x;
    t.y = (linear / g_block.x) % g_block.y;
    t.z = linear / (g_block.x * g_block.y);
    return t;
}

static void plain_main(Fiber* f) {
    Block* b = f->block;
    for (int k = 0; k < b->n; k++) {
        int i = b->order[k];
        f->linear = i;
        f->thread_idx = thread_index(i);
        entry_table[g_launch->entry](g_launch->args);
    }
    b->exited = b->n;
    b->worker->switches++;
    ctx_switch(&f->ctx, &b->worker->main);
    __builtin_unreachable();
}

// ---------------------------------------------------------------------------------------------
// Memory of a worker: fiber regions with guard pages, the shared-memory arena with a guard page
// ---------------------------------------------------------------------------------------------
static bool worker_init(Worker* w, int nthreads) {
    for (int i = 0; i < nthreads; i++) {
        size_t k = (size_t)w->id * nthreads + i;
        char* base = g_pool + kRegion * k;
        if (!g_pool_guarded) mprotect(base, kPage, PROT_NONE);  // guard page below the stack
        w->block.fibers[i] = &g_desc[k];
        w->block.fibers[i]->stack_lo = base;
    }
    size_t dyn = (g_launch->shared_mem + kPage - 1) / kPage * kPage;
    size_t arena_size = kStaticSharedCap + dyn + kSharedGuard;
    char* arena = (char*)mmap(nullptr, arena_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (arena == MAP_FAILED) return false;
    w->block.arena = arena;
    w->block.arena_guard = arena + kStaticSharedCap + dyn;
    mprotect(w->block.arena_guard, kSharedGuard, PROT_NONE);
    w->block.dynamic_size = g_launch->shared_mem;
    w->block.dynamic = w->block.arena_guard - ((g_launch->shared_mem + 15) / 16 * 16);
    w->block.worker = w;
    return true;
}

static void run_block(Worker* w, uint64_t linear) {
    Block* b = &w->block;
    b->linear = linear;
    b->block_idx.x = (unsigned)(linear % g_grid.x);
    b->block_idx.y = (unsigned)((linear / g_grid.x) % g_grid.y);
    b->block_idx.z = (unsigned)(linear / ((uint64_t)g_grid.x * g_grid.y));
    b->n = (int)(g_block.x * g_block.y * g_block.z);
    b->plain = g_launch->plain != 0;
    b->exited = b->at_barrier = 0;
    b->pos = 0;
    b->ran = true;
    b->sweep = 0;
    b->bar_count[0] = b->bar_count[1] = 0;
    b->nsites = 0;
    b->static_used = 0;
    memset(b->dynamic, 0xff, b->dynamic_size);  // poison: uninitialised reads show up as NaN
    make_order(b);
    int nfibers = b->plain ? 1 : b->n;
    for (int i = 0; i < nfibers; i++) {
        Fiber* f = b->fibers[i];
        f->block = b;
        f->linear = i;
        f->thread_idx = thread_index(i);
        f->state = RUNNABLE;
        f->barrier_line = -1;
        f->warp_mask = 0;
        f->lane = i % 32;
        f->warp = i / 32;
        f->parity = 0;
        f->bar_parity = 0;
        // stack tops staggered by 64 bytes so the registers saved at a switch do not share cache sets
        char* top = f->stack_lo + kRegion - (size_t)(i % 32) * 64;
        ctx_init(&f->ctx, f->stack_lo + kPage, top, b->plain ? plain_main : fiber_main, f);
    }
    if (!b->plain) {
        for (int wi = 0; wi < (b->n + 31) / 32; wi++) {
            int lanes = b->n - wi * 32 < 32 ? b->n - wi * 32 : 32;
            b->warps[wi].existing = lanes == 32 ? 0xffffffffu : ((1u << lanes) - 1);
            b->warps[wi].arrived = 0;
        }
    }
    Fiber* first = b->fibers[b->plain ? 0 : b->order[0]];
    w->switches++;
    w->current = first;
    ctx_switch(&w->main, &first->ctx);
    w->current = nullptr;
}

static inline uint64_t block_permutation(uint64_t k) {
    switch (g_launch->schedule & ORDER_MASK) {
        case REVERSE: return g_nblocks - 1 - k;
        case RANDOM: return (g_perm_a * (k % g_nblocks) + g_perm_c) % g_nblocks;
        default: return k;
    }
}

static void* worker_main(void* arg) {
    Worker* w = (Worker*)arg;
    w->thread = pthread_self();
    if (g_isolated) {
        stack_t ss;
        ss.ss_sp = w->altstack;
        ss.ss_size = 64 << 10;
        ss.ss_flags = 0;
        sigaltstack(&ss, nullptr);
    }
    for (;;) {
        if (g_failed) break;
        uint64_t k = __atomic_fetch_add(&g_next_block, 1, __ATOMIC_RELAXED);
        if (k >= g_nblocks) break;
        run_block(w, block_permutation(k));
        if (w->failed) break;
    }
    return nullptr;
}

static uint64_t gcd64(uint64_t a, uint64_t b) { while (b) { uint64_t t = a % b; a = b; b = t; } return a; }

// ---------------------------------------------------------------------------------------------
// Faults in the forked child: describe them in the report and exit
// ---------------------------------------------------------------------------------------------
static uint64_t g_module_base;

static void fault_handler(int sig, siginfo_t* info, void* uctx) {
    Report* r = g_launch->report;
    int32_t expected = OK;
    if (__atomic_compare_exchange_n(&r->status, &expected, SIGNAL, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {
        r->signo = sig;
        r->addr = (uint64_t)info->si_addr;
        r->access = -1;
        r->module_base = g_module_base;
        uintptr_t sp = 0;
        ucontext_t* uc = (ucontext_t*)uctx;
#if defined(__x86_64__) && defined(__linux__)
        r->pc = (uint64_t)uc->uc_mcontext.gregs[REG_RIP];
        sp = (uintptr_t)uc->uc_mcontext.gregs[REG_RSP];
        if (sig == SIGSEGV) r->access = (uc->uc_mcontext.gregs[REG_ERR] & 2) ? 1 : 0;
#elif defined(__aarch64__) && defined(__linux__)
        r->pc = (uint64_t)uc->uc_mcontext.pc;
        sp = (uintptr_t)uc->uc_mcontext.sp;
#elif defined(__APPLE__) && defined(__x86_64__)
        r->pc = (uint64_t)uc->uc_mcontext->__ss.__rip;
        sp = (uintptr_t)uc->uc_mcontext->__ss.__rsp;
        if (sig == SIGSEGV || sig == SIGBUS) r->access = (uc->uc_mcontext->__es.__err & 2) ? 1 : 0;
#elif defined(__APPLE__) && defined(__aarch64__)
        r->pc = (uint64_t)uc->uc_mcontext->__ss.__pc;
        sp = (uintptr_t)uc->uc_mcontext->__ss.__sp;
        if (sig == SIGSEGV || sig == SIGBUS) r->access = (uc->uc_mcontext->__es.__esr >> 6) & 1;  // ESR's WnR bit
#else
        (void)uc;
#endif
        r->fault_kind = FAULT_MEMORY;
#if defined(SI_KERNEL)
        if (sig == SIGSEGV && info->si_code == SI_KERNEL) r->fault_kind = FAULT_GENERAL_PROTECTION;
#endif
        // Which fiber was running on this OS thread?
        uintptr_t a = (uintptr_t)info->si_addr;
        pthread_t me = pthread_self();
        for (int i = 0; i < g_nworkers; i++) {
            Worker* w = g_workers[i];
            if (!w) continue;
            if (a >= (uintptr_t)w->block.arena_guard && a < (uintptr_t)w->block.arena_guard + kSharedGuard)
                r->fault_kind = FAULT_SHARED_OOB;
            if (!pthread_equal(w->thread, me) || !w->current) continue;
            Fiber* f = w->current;
            set_thread_info(r, f);
            uintptr_t usable_lo = (uintptr_t)f->stack_lo + kPage, hi = (uintptr_t)f->stack_lo + kRegion;
            bool sp_escaped = sp && (sp < usable_lo || sp >= hi);
            bool in_guard = a >= (uintptr_t)f->stack_lo && a < usable_lo;
            if ((sp_escaped || in_guard) && r->fault_kind != FAULT_SHARED_OOB) r->fault_kind = FAULT_STACK_OVERFLOW;
        }
    }
    _exit(3);
}

static void install_fault_handlers() {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = fault_handler;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    int sigs[] = {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP, SIGABRT};
    sigset_t unblock;
    sigemptyset(&unblock);
    for (int s : sigs) { sigaction(s, &sa, nullptr); sigaddset(&unblock, s); }
    pthread_sigmask(SIG_UNBLOCK, &unblock, nullptr);
}

static int run_launch(LaunchConfig* L) {
    g_launch = L;
    g_grid = dim3(L->grid[0], L->grid[1], L->grid[2]);
    g_block = dim3(L->block[0], L->block[1], L->block[2]);
    g_nblocks = (uint64_t)g_grid.x * g_grid.y * g_grid.z;
    g_next_block = 0;
    g_failed = 0;
    g_perm_a = 1; g_perm_c = 0;
    if ((L->schedule & ORDER_MASK) == RANDOM && g_nblocks > 1) {
        uint64_t s = mix64(L->seed + 12345);
        g_perm_a = 2 * (s % g_nblocks) + 1;
        while (gcd64(g_perm_a % g_nblocks, g_nblocks) != 1) g_perm_a += 2;
        g_perm_c = mix64(s) % g_nblocks;
    }
    Dl_info info;
    if (dladdr((void*)&run_launch, &info)) g_module_base = (uint64_t)info.dli_fbase;
    int nthreads = (int)(g_block.x * g_block.y * g_block.z);
    int nworkers = L->workers < 1 ? 1 : L->workers;
    if ((uint64_t)nworkers > g_nblocks) nworkers = (int)g_nblocks;
    if (nworkers > 256) nworkers = 256;
    g_nworkers = nworkers;
    Worker* workers = (Worker*)calloc((size_t)nworkers, sizeof(Worker));
    int nfib = L->plain ? 1 : nthreads;
    g_pool_regions = (size_t)nworkers * nfib;
    // The parent's pool persists across launches: its stacks are already mapped and guarded, which
    // saves a fresh child hundreds of page faults and mprotect calls per launch.
    bool own_pool = !(L->pool && L->pool_regions >= g_pool_regions);
    g_pool = own_pool ? (char*)mmap(nullptr, kRegion * g_pool_regions, PROT_READ | PROT_WRITE,
                                    MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
                      : L->pool;
    g_pool_guarded = !own_pool;
    g_desc = (Fiber*)calloc(g_pool_regions, sizeof(Fiber));
    if (!workers || g_pool == MAP_FAILED || !g_desc) {
        snprintf(L->report->message, sizeof L->report->message, "could not map fiber stacks (out of memory?)");
        L->report->status = RUNTIME_ERROR;
        return 2;
    }
    for (int i = 0; i < nworkers; i++) {
        workers[i].id = i;
        workers[i].altstack = (char*)malloc(64 << 10);
        if (!worker_init(&workers[i], L->plain ? 1 : nthreads)) {
            snprintf(L->report->message, sizeof L->report->message, "could not map fiber stacks (out of memory?)");
            L->report->status = RUNTIME_ERROR;
            return 2;
        }
        g_workers[i] = &workers[i];
    }
    for (int i = 1; i < nworkers; i++) pthread_create(&workers[i].thread, nullptr, worker_main, &workers[i]);
    worker_main(&workers[0]);
    for (int i = 1; i < nworkers; i++) pthread_join(workers[i].thread, nullptr);
    uint64_t sw = 0;
    for (int i = 0; i < nworkers; i++) sw += workers[i].switches;
    L->report->switches = sw;
    int rc = g_failed ? 2 : 0;
    if (own_pool) munmap(g_pool, kRegion * g_pool_regions);
    free(g_desc);
    for (int i = 0; i < nworkers; i++) {
        size_t dyn = (L->shared_mem + kPage - 1) / kPage * kPage;
        munmap(workers[i].block.arena, kStaticSharedCap + dyn + kSharedGuard);
        free(workers[i].altstack);
        g_workers[i] = nullptr;
    }
    free(workers);
    g_nworkers = 0;
    return rc;
}

// ---------------------------------------------------------------------------------------------
// Device-side API used by kernels
// ---------------------------------------------------------------------------------------------
static inline void syncthreads(int line) {
    Fiber* f = self();
    Block* b = f->block;
    if (b->plain) runtime_error(f, "internal: __syncthreads() in a kernel run as a plain loop");
    f->state = AT_BARRIER;
    f->barrier_line = line;
    b->at_barrier++;
    check_barrier_release(b, f);
    yield_next(f);
    f->bar_parity ^= 1;
}

static inline int syncthreads_reduce(int line, int pred, int op) {
    Fiber* f = self();
    Block* b = f->block;
    int p = f->bar_parity;
    b->bar_count[p] += pred ? 1 : 0;
    syncthreads(line);
    int count = b->bar_count[p];
    if (op == 0) return count;
    if (op == 1) return count == b->n;
    return count > 0;
}

// Every lane in mask arrives, then all continue. Values travel through w.slots[parity].
static inline WarpState& warp_collective(Fiber* f, uint32_t mask, uint64_t value, const char* what) {
    Block* b = f->block;
    if (b->plain) runtime_error(f, "internal: %s in a kernel run as a plain loop", what);
    WarpState& w = b->warps[f->warp];
    if (!((mask >> f->lane) & 1))
        runtime_error(f, "%s called by lane %d with mask 0x%08x, which does not include the calling lane",
                      what, f->lane, mask);
    if (mask & ~w.existing)
        runtime_error(f,
            "%s with mask 0x%08x names lanes that do not exist: warp %d of this block has only the lanes "
            "of mask 0x%08x (the block has %d threads, not a multiple of 32). Use a mask of existing lanes.",
            what, mask, f->warp, w.existing, b->n);
    w.slots[f->parity][f->lane] = value;
    f->state = AT_WARP;
    f->warp_mask = mask;
    w.arrived |= 1u << f->lane;
    if ((w.arrived & mask) == mask) {
        int first = b->n;
        for (int lane = 0; lane < 32; lane++)
            if ((mask >> lane) & 1) {
                int t = f->warp * 32 + lane;
                b->fibers[t]->state = RUNNABLE;
                if (b->where[t] < first) first = b->where[t];
            }
        w.arrived &= ~mask;
        if (g_launch->schedule & DEPTH_FIRST) b->pos = first - 1;  // this warp runs on next
    }
    yield_next(f);
    return w;
}

template <class T> static inline uint64_t to_bits(T v) {
    static_assert(sizeof(T) <= 8, "shuffle of a value wider than 8 bytes");
    uint64_t u = 0;
    memcpy(&u, &v, sizeof(T));
    return u;
}
template <class T> static inline T from_bits(uint64_t u) { T v; memcpy(&v, &u, sizeof(T)); return v; }

template <class T> static inline T shfl_from(Fiber* f, uint32_t mask, T var, int src_lane_in_warp, const char* what) {
    WarpState& w = warp_collective(f, mask, to_bits(var), what);
    int p = f->parity;
    f->parity ^= 1;
    if (!((mask >> src_lane_in_warp) & 1))
        runtime_error(f, "%s: lane %d reads lane %d, which is not in the mask 0x%08x (its value is undefined on a GPU)",
                      what, f->lane, src_lane_in_warp, mask);
    return from_bits<T>(w.slots[p][src_lane_in_warp]);
}

static inline void check_width(Fiber* f, int width, const char* what) {
    if (width <= 0 || width > 32 || (width & (width - 1)))
        runtime_error(f, "%s: width %d must be a power of two between 1 and 32", what, width);
}

}  // namespace gpt2cpu

#define threadIdx (::gpt2cpu::self()->thread_idx)
#define blockIdx (::gpt2cpu::self()->block->block_idx)
#define blockDim (::gpt2cpu::g_block)
#define gridDim (::gpt2cpu::g_grid)
#define warpSize 32

#define __syncthreads() ::gpt2cpu::syncthreads(__LINE__)
#define __syncthreads_count(p) ::gpt2cpu::syncthreads_reduce(__LINE__, (p), 0)
#define __syncthreads_and(p) ::gpt2cpu::syncthreads_reduce(__LINE__, (p), 1)
#define __syncthreads_or(p) ::gpt2cpu::syncthreads_reduce(__LINE__, (p), 2)

static inline void __syncwarp(unsigned mask = 0xffffffffu) {
    ::gpt2cpu::Fiber* f = ::gpt2cpu::self();
    ::gpt2cpu::warp_collective(f, mask, 0, "__syncwarp");
    f->parity ^= 1;
}
template <class T> static inline T __shfl_sync(unsigned mask, T var, int src_lane, int width = 32) {
    ::gpt2cpu::Fiber* f = ::gpt2cpu::self();
    ::gpt2cpu::check_width(f, width, "__shfl_sync");
    int base = f->lane & ~(width - 1);
    return ::gpt2cpu::shfl_from(f, mask, var, base + (src_lane & (width - 1)), "__shfl_sync");
}
template <class T> static inline T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = 32) {
    ::gpt2cpu::Fiber* f = ::gpt2cpu::self();
    ::gpt2cpu::check_width(f, width, "__shfl_xor_sync");
    int base = f->lane & ~(width - 1);
    int src = f->lane ^ lane_mask;
    if (src < base || src >= base + width) src = f->lane;  // outside the segment: own value
    return ::gpt2cpu::shfl_from(f, mask, var, src, "__shfl_xor_sync");
}
template <class T> static inline T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = 32) {
    ::gpt2cpu::Fiber* f = ::gpt2cpu::self();
    ::gpt2cpu::check_width(f, width, "__shfl_down_sync");
    int in_segment = (f->lane & (width - 1)) + (int)delta;
    int src = in_segment < width ? f->lane + (int)delta : f->lane;
    return ::gpt2cpu::shfl_from(f, mask, var, src, "__shfl_down_sync");
}
template <class T> static inline T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = 32) {
    ::gpt2cpu::Fiber* f = ::gpt2cpu::self();
    ::gpt2cpu::check_width(f, width, "__shfl_up_sync");
    int in_segment = (f->lane & (width - 1)) - (int)delta;
    int src = in_segment >= 0 ? f->lane - (int)delta : f->lane;
    return ::gpt2cpu::shfl_from(f, mask, var, src, "__shfl_up_sync");
}
static inline unsigned __ballot_sync(unsigned mask, int pred) {
    ::gpt2cpu::Fiber* f = ::gpt2cpu::self();
    ::gpt2cpu::WarpState& w = ::gpt2cpu::warp_collective(f, mask, pred ? 1 : 0, "__ballot_sync");
    int p = f->parity;
    f->parity ^= 1;
    unsigned r = 0;
    for (int lane = 0; lane < 32; lane++)
        if (((mask >> lane) & 1) && w.slots[p][lane]) r |= 1u << lane;
    return r;
}
static inline int __any_sync(unsigned mask, int pred) { return __ballot_sync(mask, pred) != 0; }
static inline int __all_sync(unsigned mask, int pred) { return __ballot_sync(mask, pred) == mask; }
static inline unsigned __activemask() {
    // Lanes of the warp that have not exited. (On a GPU: the lanes converged at this point.)
    ::gpt2cpu::Fiber* f = ::gpt2cpu::self();
    ::gpt2cpu::Block* b = f->block;
    unsigned m = 0;
    if (b->plain) return 1u << f->lane;
    for (int lane = 0; lane < 32; lane++) {
        int t = f->warp * 32 + lane;
        if (t < b->n && b->fibers[t]->state != ::gpt2cpu::EXITED) m |= 1u << lane;
    }
    return m;
}
static inline unsigned __lanemask_lt() { return (1u << ::gpt2cpu::self()->lane) - 1; }

// Shared memory. `__shared__ T name[N];` is rewritten to `auto& name = __gpt2cpu_shared_var<T[N]>(id);`:
// the first thread of a block to reach the declaration takes space in the block's arena and
// poisons it with 0xff bytes (NaN as float, -1 as int); the others find it by id.
template <class T> static inline T& __gpt2cpu_shared_var(int id) {
    ::gpt2cpu::Fiber* f = ::gpt2cpu::self();
    ::gpt2cpu::Block* b = f->block;
    for (int i = 0; i < b->nsites; i++)
        if (b->sites[i].id == id) return *reinterpret_cast<T*>(b->arena + b->sites[i].offset);
    size_t align = alignof(T) < 16 ? 16 : alignof(T);
    size_t off = (b->static_used + align - 1) / align * align;
    if (off + sizeof(T) + b->dynamic_size > ::gpt2cpu::kStaticSharedCap || b->nsites == ::gpt2cpu::kMaxSharedSites)
        ::gpt2cpu::runtime_error(f,
            "block uses more shared memory than the 48 KiB a block may use: %zu bytes of __shared__ "
            "variables plus %zu bytes of dynamic shared memory", off + sizeof(T), b->dynamic_size);
    b->static_used = off + sizeof(T);
    b->sites[b->nsites].id = id;
    b->sites[b->nsites].offset = off;
    b->nsites++;
    memset(b->arena + off, 0xff, sizeof(T));
    return *reinterpret_cast<T*>(b->arena + off);
}
static inline void* __gpt2cpu_dynamic_shared() { return ::gpt2cpu::self()->block->dynamic; }

// Atomics: blocks really run in parallel on different cores, so these are real atomics.
static inline float atomicAdd(float* p, float v) {
    uint32_t* u = reinterpret_cast<uint32_t*>(p);
    uint32_t old = __atomic_load_n(u, __ATOMIC_RELAXED);
    for (;;) {
        float f;
        memcpy(&f, &old, 4);
        f += v;
        uint32_t nu;
        memcpy(&nu, &f, 4);
        if (__atomic_compare_exchange_n(u, &old, nu, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
            memcpy(&f, &old, 4);
            return f;
        }
    }
}
static inline double atomicAdd(double* p, double v) {
    uint64_t* u = reinterpret_cast<uint64_t*>(p);
    uint64_t old = __atomic_load_n(u, __ATOMIC_RELAXED);
    for (;;) {
        double d;
        memcpy(&d, &old, 8);
        d += v;
        uint64_t nu;
        memcpy(&nu, &d, 8);
        if (__atomic_compare_exchange_n(u, &old, nu, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
            memcpy(&d, &old, 8);
            return d;
        }
    }
}
static inline int atomicAdd(int* p, int v) { return __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }
static inline unsigned atomicAdd(unsigned* p, unsigned v) { return __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }
static inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) { return __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }
static inline int atomicSub(int* p, int v) { return __atomic_fetch_sub(p, v, __ATOMIC_RELAXED); }
static inline unsigned atomicSub(unsigned* p, unsigned v) { return __atomic_fetch_sub(p, v, __ATOMIC_RELAXED); }
template <class T> static inline T __gpt2cpu_atomic_minmax(T* p, T v, bool is_max) {
    T old = __atomic_load_n(p, __ATOMIC_RELAXED);
    while ((is_max ? v > old : v < old) && !__atomic_compare_exchange_n(p, &old, v, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {}
    return old;
}
static inline int atomicMax(int* p, int v) { return __gpt2cpu_atomic_minmax(p, v, true); }
static inline unsigned atomicMax(unsigned* p, unsigned v) { return __gpt2cpu_atomic_minmax(p, v, true); }
static inline long long atomicMax(long long* p, long long v) { return __gpt2cpu_atomic_minmax(p, v, true); }
static inline int atomicMin(int* p, int v) { return __gpt2cpu_atomic_minmax(p, v, false); }
static inline unsigned atomicMin(unsigned* p, unsigned v) { return __gpt2cpu_atomic_minmax(p, v, false); }
static inline long long atomicMin(long long* p, long long v) { return __gpt2cpu_atomic_minmax(p, v, false); }
template <class T> static inline T __gpt2cpu_cas(T* p, T compare, T val) {
    __atomic_compare_exchange_n(p, &compare, val, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
    return compare;  // the old value either way
}
static inline int atomicCAS(int* p, int c, int v) { return __gpt2cpu_cas(p, c, v); }
static inline unsigned atomicCAS(unsigned* p, unsigned c, unsigned v) { return __gpt2cpu_cas(p, c, v); }
static inline unsigned long long atomicCAS(unsigned long long* p, unsigned long long c, unsigned long long v) { return __gpt2cpu_cas(p, c, v); }
static inline int atomicExch(int* p, int v) { return __atomic_exchange_n(p, v, __ATOMIC_RELAXED); }
static inline unsigned atomicExch(unsigned* p, unsigned v) { return __atomic_exchange_n(p, v, __ATOMIC_RELAXED); }
static inline float atomicExch(float* p, float v) {
    uint32_t nu; memcpy(&nu, &v, 4);
    uint32_t old = __atomic_exchange_n(reinterpret_cast<uint32_t*>(p), nu, __ATOMIC_RELAXED);
    float r; memcpy(&r, &old, 4);
    return r;
}
static inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
static inline void __threadfence_block() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

// Math: the float functions come from <cmath>; intrinsics map onto them.
#define __expf(x) expf(x)
#define __logf(x) logf(x)
#define __log2f(x) log2f(x)
#define __sinf(x) sinf(x)
#define __cosf(x) cosf(x)
#define __tanf(x) tanf(x)
#define __powf(x, y) powf((x), (y))
#define __exp10f(x) powf(10.0f, (x))
#define __fdividef(x, y) ((x) / (y))
#define __fmaf_rn(x, y, z) fmaf((x), (y), (z))
#define __fadd_rn(x, y) ((x) + (y))
#define __fmul_rn(x, y) ((x) * (y))
#define __frcp_rn(x) (1.0f / (x))
#define __fsqrt_rn(x) sqrtf(x)
static inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
static inline double rsqrt(double x) { return 1.0 / sqrt(x); }
static inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x); }
static inline int min(int a, int b) { return a < b ? a : b; }
static inline int max(int a, int b) { return a > b ? a : b; }
static inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
static inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
static inline long long min(long long a, long long b) { return a < b ? a : b; }
static inline long long max(long long a, long long b) { return a > b ? a : b; }
static inline float min(float a, float b) { return fminf(a, b); }
static inline float max(float a, float b) { return fmaxf(a, b); }
static inline double min(double a, double b) { return fmin(a, b); }
static inline double max(double a, double b) { return fmax(a, b); }
static inline float __int_as_float(int i) { float f; memcpy(&f, &i, 4); return f; }
static inline int __float_as_int(float f) { int i; memcpy(&i, &f, 4); return i; }
static inline float __uint_as_float(unsigned i) { float f; memcpy(&f, &i, 4); return f; }
static inline unsigned __float_as_uint(float f) { unsigned i; memcpy(&i, &f, 4); return i; }
static inline int __popc(unsigned x) { return __builtin_popcount(x); }
static inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
static inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz((unsigned)x); }
static inline int __ffs(int x) { return __builtin_ffs(x); }
static inline float __int2float_rn(int x) { return (float)x; }
static inline int __float2int_rn(float x) { return (int)lrintf(x); }
static inline int __float2int_rz(float x) { return (int)x; }
template <class T> static inline T __ldg(const T* p) { return *p; }
template <class T> static inline T __ldcs(const T* p) { return *p; }
template <class T> static inline void __stcs(T* p, T v) { *p = v; }
#define __trap() __builtin_trap()

// Kernel printf: records go to a buffer shared with the parent, which prints them in block order,
// so the output appears in the notebook cell (GPU printf writes to the process's C stdout instead).
namespace gpt2cpu {
__attribute__((format(printf, 1, 2))) static int device_printf(const char* fmt, ...) {
    char text[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    if (n < 0) return n;
    uint32_t len = n < (int)sizeof text ? (uint32_t)n : (uint32_t)(sizeof text - 1);
    uint64_t need = (16 + len + 7) / 8 * 8;
    Report* r = g_launch->report;
    uint64_t off = __atomic_load_n(&r->printf_used, __ATOMIC_RELAXED);
    do {
        if (off + need > g_launch->printf_cap) { __atomic_fetch_add(&r->printf_dropped, 1, __ATOMIC_RELAXED); return n; }
    } while (!__atomic_compare_exchange_n(&r->printf_used, &off, off + need, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED));
    char* rec = g_launch->printf_buf + off;
    uint64_t block_linear = self()->block->linear;
    memcpy(rec, &block_linear, 8);
    uint32_t thread_linear = (uint32_t)self()->linear;
    memcpy(rec + 8, &thread_linear, 4);
    memcpy(rec + 12, &len, 4);
    memcpy(rec + 16, text, len);
    return n;
}
[[noreturn]] static void assert_fail(const char* expr, const char* file, int line) {
    runtime_error(self(), "assertion `%s` failed at %s:%d", expr, file, line);
}
}  // namespace gpt2cpu
#define printf(...) ::gpt2cpu::device_printf(__VA_ARGS__)
#undef assert
#define assert(e) ((e) ? (void)0 : ::gpt2cpu::assert_fail(#e, __FILE__, __LINE__))

// ---------------------------------------------------------------------------------------------
// Entry points: the generated tail of a module defines one EntryFn per kernel (instantiation).
// ---------------------------------------------------------------------------------------------
namespace gpt2cpu {
template <class T> struct type_name { static const char* get() { return "?"; } };
#define GPT2CPU_TYPE_NAME(T, S) template <> struct type_name<T> { static const char* get() { return S; } };
GPT2CPU_TYPE_NAME(float, "float") GPT2CPU_TYPE_NAME(double, "double") GPT2CPU_TYPE_NAME(int, "int")
GPT2CPU_TYPE_NAME(unsigned int, "unsigned int") GPT2CPU_TYPE_NAME(long, "long")
GPT2CPU_TYPE_NAME(unsigned long, "unsigned long") GPT2CPU_TYPE_NAME(long long, "long long")
GPT2CPU_TYPE_NAME(unsigned long long, "unsigned long long") GPT2CPU_TYPE_NAME(short, "short")
GPT2CPU_TYPE_NAME(unsigned short, "unsigned short") GPT2CPU_TYPE_NAME(char, "char")
GPT2CPU_TYPE_NAME(signed char, "signed char") GPT2CPU_TYPE_NAME(unsigned char, "unsigned char")
GPT2CPU_TYPE_NAME(bool, "bool") GPT2CPU_TYPE_NAME(float2, "float2") GPT2CPU_TYPE_NAME(float4, "float4")
GPT2CPU_TYPE_NAME(int2, "int2") GPT2CPU_TYPE_NAME(int4, "int4") GPT2CPU_TYPE_NAME(void, "void")
#undef GPT2CPU_TYPE_NAME

template <class T> struct describe {
    static void put(char* out, size_t cap) { strncat(out, type_name<T>::get(), cap - strlen(out) - 1); }
};
template <class T> struct describe<T*> {
    static void put(char* out, size_t cap) {
        if (std::is_const<T>::value) strncat(out, "const ", cap - strlen(out) - 1);
        describe<typename std::remove_cv<T>::type>::put(out, cap);
        strncat(out, "*", cap - strlen(out) - 1);
    }
};

template <class... A> static const char* signature_of(void (*)(A...)) {
    static char buf[512];
    buf[0] = 0;
    int i = 0;
    ((i++ ? strncat(buf, ",", sizeof buf - strlen(buf) - 1) : buf, describe<A>::put(buf, sizeof buf)), ...);
    (void)i;
    return buf;
}

template <class... A, size_t... I>
static inline void invoke_impl(void (*fn)(A...), void** args, std::index_sequence<I...>) {
    fn(*static_cast<typename std::remove_cv<A>::type*>(args[I])...);
}
template <class... A> static inline void invoke(void (*fn)(A...), void** args) {
    invoke_impl(fn, args, std::index_sequence_for<A...>{});
}
}  // namespace gpt2cpu

GPT2CPU_EXPORT int gpt2cpu_entry_count() { return gpt2cpu::entry_count; }
GPT2CPU_EXPORT const char* gpt2cpu_entry_name(int i) { return gpt2cpu::entry_names[i]; }
GPT2CPU_EXPORT int gpt2cpu_sizeof_report() { return (int)sizeof(gpt2cpu::Report); }
GPT2CPU_EXPORT int gpt2cpu_sizeof_config() { return (int)sizeof(gpt2cpu::LaunchConfig); }

// Run a launch. isolate=0: here, in the calling thread (returns 0, or 2 on a runtime error; a memory
// fault kills the process, so that mode is for benchmarks of trusted kernels only). isolate=1: in a
// forked child (returns its pid, or -errno; the caller waits for it and reads the report).
// isolate=2: the caller is already a disposable child (the launcher's): run with fault handlers and
// exit with the result.
[[noreturn]] static void gpt2cpu_run_as_child(gpt2cpu::LaunchConfig* L) {
    using namespace gpt2cpu;
#if defined(__linux__)
    prctl(PR_SET_PDEATHSIG, SIGKILL);
#endif
    g_isolated = true;
    g_launch = L;
    install_fault_handlers();
    _exit(run_launch(L));
}

GPT2CPU_EXPORT long gpt2cpu_launch(gpt2cpu::LaunchConfig* L, int isolate) {
    using namespace gpt2cpu;
    if (isolate == 0) {
        g_isolated = false;
        return run_launch(L);
    }
    if (isolate == 2) gpt2cpu_run_as_child(L);
    pid_t pid = fork();
    if (pid < 0) return -errno;
    if (pid == 0) gpt2cpu_run_as_child(L);
    return pid;
}
