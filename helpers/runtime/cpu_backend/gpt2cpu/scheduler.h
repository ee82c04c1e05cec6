// scheduler.h: running a block's threads. Each thread is a fiber that runs until it waits (a
// barrier, a warp collective, __activemask), then the next runnable fiber of the block runs; a
// sweep over the block that runs nobody while some threads are still alive is a deadlock, reported
// with who waits where. Kernels with no barrier and no collective run their threads as a plain loop.
// Errors the runtime finds (deadlocks, misuse of collectives) are reported, then the block stops.
#pragma once

namespace gpt2cpu {

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------
static void set_thread_info(Report* r, Fiber* f) {
    if (!f) return;
    r->has_thread = 1;
    r->block_idx[0] = f->block->block_idx.x; r->block_idx[1] = f->block->block_idx.y;
    r->block_idx[2] = f->block->block_idx.z;
    r->thread_idx[0] = f->thread_idx.x; r->thread_idx[1] = f->thread_idx.y; r->thread_idx[2] = f->thread_idx.z;
}

static bool claim_report(int32_t status) {
    int32_t expected = OK;
    return __atomic_compare_exchange_n(&g_report->status, &expected, status, false,
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
    if (claim_report(RUNTIME_ERROR)) {
        Report* r = g_report;
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(r->message, sizeof(r->message), fmt, ap);
        va_end(ap);
        set_thread_info(r, f);
    }
    abandon_block(f->block);
}

// The same from a worker's own context (between blocks): report, stop the launch, and return.
__attribute__((format(printf, 2, 3))) static void report_error(Worker* w, const char* fmt, ...) {
    if (claim_report(RUNTIME_ERROR)) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(g_report->message, sizeof(g_report->message), fmt, ap);
        va_end(ap);
    }
    g_failed = 1;
    w->failed = true;
}

// A fault the runtime itself detects at an address (a misaligned vector access): reported as a
// memory fault, which the Python side attributes to an argument and an element.
[[noreturn]] static void address_fault(Fiber* f, FaultKind kind, const void* addr, int write, const char* detail,
                                       int vector_bytes) {
    if (claim_report(SIGNAL)) {
        Report* r = g_report;
        r->signo = SIGBUS;
        r->fault_kind = kind;
        r->addr = (uint64_t)addr;
        r->access = write;
        r->vector_bytes = vector_bytes;
        snprintf(r->detail, sizeof r->detail, "%s", detail);
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
// The order of threads, and switching between them
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
static bool release_activemask(Block* b);

#ifndef GPT2CPU_PREFETCH_AHEAD
#define GPT2CPU_PREFETCH_AHEAD 2
#endif
#ifndef GPT2CPU_PREFETCH_LINES
#define GPT2CPU_PREFETCH_LINES 4
#endif
static constexpr int kPrefetchAhead = GPT2CPU_PREFETCH_AHEAD;  // fibers ahead of the one switched to
static constexpr int kPrefetchLines = GPT2CPU_PREFETCH_LINES;  // cache lines of its stack top

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
        if (!b->ran && !release_activemask(b)) report_deadlock(b, cur);
        b->ran = false;
        b->pos = -1;
        b->sweep++;
        if ((g_launch->schedule & ORDER_MASK) == RANDOM) make_order(b);
    }
}

// ---------------------------------------------------------------------------------------------
// __syncthreads
// ---------------------------------------------------------------------------------------------
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

// ---------------------------------------------------------------------------------------------
// __activemask: the lanes that run this call together. A fiber waits at the call; once nothing in
// the block can run otherwise, the lanes of each warp waiting at the same call are released with
// the mask of that group (lanes that took another branch are waiting elsewhere or have exited).
// ---------------------------------------------------------------------------------------------
static bool release_activemask(Block* b) {
    bool released = false;
    for (int w = 0; w < (b->n + 31) / 32; w++) {
        for (int lane = 0; lane < 32; lane++) {
            int t = w * 32 + lane;
            if (t >= b->n || b->fibers[t]->state != AT_ACTIVEMASK) continue;
            int site = b->fibers[t]->site;
            uint32_t mask = 0;
            for (int l = lane; l < 32 && w * 32 + l < b->n; l++) {
                Fiber* g = b->fibers[w * 32 + l];
                if (g->state == AT_ACTIVEMASK && g->site == site) mask |= 1u << l;
            }
            for (int l = lane; l < 32 && w * 32 + l < b->n; l++) {
                Fiber* g = b->fibers[w * 32 + l];
                if ((mask >> l) & 1) { g->state = RUNNABLE; g->active = mask; }
            }
            released = true;
        }
    }
    return released;
}

static inline unsigned activemask(int site) {
    Fiber* f = self();
    Block* b = f->block;
    if (b->plain) return 1u << f->lane;  // (a kernel that calls it runs as fibers; this is a helper's call)
    f->state = AT_ACTIVEMASK;
    f->site = site;
    yield_next(f);
    return f->active;
}

// ---------------------------------------------------------------------------------------------
// Deadlocks
// ---------------------------------------------------------------------------------------------
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
            if (f->call)
                runtime_error(cur,
                    "deadlock in block (%u,%u,%u): thread %d waits at %s (line %d), but lane %d of its warp "
                    "(thread %d) %s without calling it. The warp matrix functions are warp collectives: all 32 "
                    "lanes of the warp must call each of them together (in conditional code only under a "
                    "condition that is the same for the whole warp); on a GPU this hangs or computes garbage.",
                    b->block_idx.x, b->block_idx.y, b->block_idx.z, f->linear, f->call->what, f->call->line,
                    lane, m->linear, where);
            runtime_error(cur,
                "deadlock in block (%u,%u,%u): thread %d waits at a warp collective (%s) with mask 0x%08x, but "
                "lane %d of its warp (thread %d) %s. Every lane named in the mask must reach the same collective.",
                b->block_idx.x, b->block_idx.y, b->block_idx.z, f->linear,
                f->collective ? f->collective : "__shfl_sync, __syncwarp, __ballot_sync...", f->warp_mask, lane,
                m->linear, where);
        }
    }
    runtime_error(cur, "deadlock in block (%u,%u,%u): no thread can make progress",
                  b->block_idx.x, b->block_idx.y, b->block_idx.z);
}

// ---------------------------------------------------------------------------------------------
// A thread's life, and a block's
// ---------------------------------------------------------------------------------------------
typedef void (*EntryFn)(void** args);
extern EntryFn entry_table[];
extern const char* entry_names[];
extern const int entry_count;

static void fiber_main(Fiber* f) {
    entry_table[g_launch->entry](g_launch_args);
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
        entry_table[g_launch->entry](g_launch_args);
    }
    b->exited = b->n;
    b->worker->switches++;
    ctx_switch(&f->ctx, &b->worker->main);
    __builtin_unreachable();
}

static void run_block(Worker* w, uint64_t linear) {
    Block* b = &w->block;
    b->linear = linear;
    b->seq++;
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
    block_shared_begin(w);
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
        f->collective = nullptr;
        f->call = nullptr;
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
    if (!w->failed) block_shared_end(w);
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
        uint64_t linear = block_permutation(k);
        if (g_launch->track_writes) tracking_block_begin(linear);
        run_block(w, linear);
        if (w->failed) break;
        if (g_launch->track_writes) tracking_block_end(w, linear);
        if (w->failed) break;
    }
    return nullptr;
}

}  // namespace gpt2cpu
