// warp.h: warp collectives. Every lane named in the mask arrives (its fiber waits), then all of them
// continue; values travel through double-buffered per-warp slots. A lane that is missing from the
// mask, a mask naming lanes that do not exist, or a lane that never comes is a clear error.
#pragma once

namespace gpt2cpu {

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
