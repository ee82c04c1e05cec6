// warp.h: warp collectives. Every lane named in the mask arrives (its fiber waits), then all of them
// continue; values travel through double-buffered per-warp slots. A lane that is missing from the
// mask, a mask naming lanes that do not exist, or a lane that never comes is a clear error. The warp
// matrix functions (include/mma.h) are collectives whose last lane to arrive does the work for the
// whole warp, after checking that every lane makes the same call with the same arguments.
#pragma once

namespace gpt2cpu {

// Lanes that meet at one collective: if any of them is at a warp matrix function (a WarpCall), all of
// them must be at the same call (function, source line, template instantiation) with the same
// arguments; else the bug a GPU hides (a hang, or garbage) is an error here.
static void format_call_arg(char* buf, size_t cap, const WarpCall* c, int i) {
    switch (c->arg_kind[i]) {
        case ARG_POINTER: snprintf(buf, cap, "%p", (const void*)c->arg[i]); break;
        case ARG_LAYOUT: snprintf(buf, cap, "%s", c->arg[i] == 0 ? "mem_row_major" : c->arg[i] == 1 ? "mem_col_major"
                                                                     : "an invalid layout_t"); break;
        case ARG_VALUE: { double d; memcpy(&d, &c->arg[i], 8); snprintf(buf, cap, "%.9g", d); break; }
        default: snprintf(buf, cap, "%llu", (unsigned long long)c->arg[i]); break;
    }
}

static inline bool same_call_arg(const WarpCall* a, const WarpCall* b, int i) {
    if (a->arg_kind[i] != ARG_VALUE) return a->arg[i] == b->arg[i];
    double x, y;
    memcpy(&x, &a->arg[i], 8);
    memcpy(&y, &b->arg[i], 8);
    return x == y || (x != x && y != y);
}

static void check_warp_calls(Fiber* f, uint32_t mask) {
    Block* b = f->block;
    int first = -1;
    for (int lane = 0; lane < 32 && first < 0; lane++)
        if (((mask >> lane) & 1) && b->fibers[f->warp * 32 + lane]->call) first = lane;
    if (first < 0) return;
    Fiber* ref = b->fibers[f->warp * 32 + first];
    const WarpCall* c = ref->call;
    for (int lane = 0; lane < 32; lane++) {
        if (!((mask >> lane) & 1)) continue;
        Fiber* g = b->fibers[f->warp * 32 + lane];
        const WarpCall* d = g->call;
        if (!d)
            runtime_error(f,
                "the lanes of warp %d meet at different warp collectives: lane %d (thread %d) calls %s (line %d), "
                "lane %d (thread %d) calls %s. The warp matrix functions are warp collectives: all 32 lanes of the "
                "warp must call each of them together (in conditional code only under a condition that is the same "
                "for the whole warp); on a GPU this hangs or computes garbage.",
                f->warp, first, ref->linear, c->what, c->line, lane, g->linear, g->collective);
        bool same_site = strcmp(d->what, c->what) == 0 && d->line == c->line && strcmp(d->file, c->file) == 0;
        if (!same_site || d->kind != c->kind)
            runtime_error(f,
                "the lanes of warp %d meet at different warp matrix calls: lane %d (thread %d) calls %s at line %d, "
                "lane %d (thread %d) calls %s at line %d%s. All 32 lanes of the warp must make each wmma call "
                "together (in conditional code only under a condition that is the same for the whole warp); on a "
                "GPU this hangs or computes garbage.",
                f->warp, first, ref->linear, c->what, c->line, lane, g->linear, d->what, d->line,
                same_site ? " (another instantiation of the template it is in)" : "");
        for (int i = 0; i < c->nargs; i++) {
            if (same_call_arg(c, d, i)) continue;
            char x[64], y[96];
            format_call_arg(x, sizeof x, c, i);
            format_call_arg(y, sizeof y, d, i);
            if (c->arg_kind[i] == ARG_POINTER)
                snprintf(y + strlen(y), sizeof y - strlen(y), " (%+lld bytes from lane %d's)",
                         (long long)(d->arg[i] - c->arg[i]), first);
            runtime_error(f,
                "%s at line %d: lane %d (thread %d) passes %s %s, lane %d (thread %d) passes %s %s. Every lane of "
                "the warp must pass the same arguments to a warp matrix function (the mapping of the tile's "
                "elements to the lanes is unspecified, so lane-dependent arguments have no defined result).",
                c->what, c->line, first, ref->linear, c->arg_name[i], x, lane, g->linear, c->arg_name[i], y);
        }
    }
}

// A lane arrives at a collective with `value` (and `call`, at a warp matrix function). Returns true
// when it completes the collective (every lane of `mask` is here, and they all make the same call):
// that lane then does any work for the whole warp (no other lane runs meanwhile) and calls
// warp_release. Every lane then calls yield_next.
static inline bool warp_arrive(Fiber* f, uint32_t mask, uint64_t value, const char* what, WarpCall* call) {
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
    f->collective = what;
    f->call = call;
    w.arrived |= 1u << f->lane;
    if ((w.arrived & mask) != mask) return false;
    check_warp_calls(f, mask);
    return true;
}

static inline void warp_release(Fiber* f, uint32_t mask) {
    Block* b = f->block;
    WarpState& w = b->warps[f->warp];
    int first = b->n;
    for (int lane = 0; lane < 32; lane++)
        if ((mask >> lane) & 1) {
            int t = f->warp * 32 + lane;
            b->fibers[t]->state = RUNNABLE;
            b->fibers[t]->call = nullptr;
            if (b->where[t] < first) first = b->where[t];
        }
    w.arrived &= ~mask;
    if (g_launch->schedule & DEPTH_FIRST) b->pos = first - 1;  // this warp runs on next
}

static inline WarpState& warp_collective(Fiber* f, uint32_t mask, uint64_t value, const char* what) {
    if (warp_arrive(f, mask, value, what, nullptr)) warp_release(f, mask);
    yield_next(f);
    return f->block->warps[f->warp];
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
// The lanes executing this call together (scheduler.h): inside `if (lane < 5)`, 0x1f.
#define __activemask() ::gpt2cpu::activemask(__LINE__)
static inline unsigned __lanemask_lt() { return (1u << ::gpt2cpu::self()->lane) - 1; }
// __match_any_sync: the lanes of mask whose value equals this lane's; __match_all_sync: mask if all
// are equal (and *pred = 1), else 0.
template <class T> static inline unsigned __match_any_sync(unsigned mask, T value) {
    ::gpt2cpu::Fiber* f = ::gpt2cpu::self();
    ::gpt2cpu::WarpState& w = ::gpt2cpu::warp_collective(f, mask, ::gpt2cpu::to_bits(value), "__match_any_sync");
    int p = f->parity;
    f->parity ^= 1;
    unsigned r = 0;
    for (int lane = 0; lane < 32; lane++)
        if (((mask >> lane) & 1) && w.slots[p][lane] == w.slots[p][f->lane]) r |= 1u << lane;
    return r;
}
template <class T> static inline unsigned __match_all_sync(unsigned mask, T value, int* pred) {
    unsigned same = __match_any_sync(mask, value);
    *pred = same == mask;
    return same == mask ? mask : 0u;
}
// __reduce_*_sync (sm_80): the lanes of mask combined, every lane gets the result.
namespace gpt2cpu {
template <class T, class Op> static inline T warp_reduce(unsigned mask, T value, Op op, const char* what) {
    Fiber* f = self();
    WarpState& w = warp_collective(f, mask, to_bits(value), what);
    int p = f->parity;
    f->parity ^= 1;
    bool first = true;
    T acc = T();
    for (int lane = 0; lane < 32; lane++) {
        if (!((mask >> lane) & 1)) continue;
        T v = from_bits<T>(w.slots[p][lane]);
        acc = first ? v : op(acc, v);
        first = false;
    }
    return acc;
}
}  // namespace gpt2cpu
static inline unsigned __reduce_add_sync(unsigned mask, unsigned v) { return ::gpt2cpu::warp_reduce(mask, v, [](unsigned a, unsigned b) { return a + b; }, "__reduce_add_sync"); }
static inline int __reduce_add_sync(unsigned mask, int v) { return (int)__reduce_add_sync(mask, (unsigned)v); }
static inline unsigned __reduce_min_sync(unsigned mask, unsigned v) { return ::gpt2cpu::warp_reduce(mask, v, [](unsigned a, unsigned b) { return a < b ? a : b; }, "__reduce_min_sync"); }
static inline int __reduce_min_sync(unsigned mask, int v) { return ::gpt2cpu::warp_reduce(mask, v, [](int a, int b) { return a < b ? a : b; }, "__reduce_min_sync"); }
static inline unsigned __reduce_max_sync(unsigned mask, unsigned v) { return ::gpt2cpu::warp_reduce(mask, v, [](unsigned a, unsigned b) { return a > b ? a : b; }, "__reduce_max_sync"); }
static inline int __reduce_max_sync(unsigned mask, int v) { return ::gpt2cpu::warp_reduce(mask, v, [](int a, int b) { return a > b ? a : b; }, "__reduce_max_sync"); }
static inline unsigned __reduce_and_sync(unsigned mask, unsigned v) { return ::gpt2cpu::warp_reduce(mask, v, [](unsigned a, unsigned b) { return a & b; }, "__reduce_and_sync"); }
static inline unsigned __reduce_or_sync(unsigned mask, unsigned v) { return ::gpt2cpu::warp_reduce(mask, v, [](unsigned a, unsigned b) { return a | b; }, "__reduce_or_sync"); }
static inline unsigned __reduce_xor_sync(unsigned mask, unsigned v) { return ::gpt2cpu::warp_reduce(mask, v, [](unsigned a, unsigned b) { return a ^ b; }, "__reduce_xor_sync"); }
static inline unsigned __lanemask_le() { return (unsigned)((2ull << ::gpt2cpu::self()->lane) - 1); }
static inline unsigned __lanemask_gt() { return ~__lanemask_le(); }
static inline unsigned __lanemask_ge() { return ~__lanemask_lt(); }
static inline unsigned __lanemask_eq() { return 1u << ::gpt2cpu::self()->lane; }
