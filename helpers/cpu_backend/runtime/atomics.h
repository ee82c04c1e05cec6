// atomics.h: CUDA's atomic functions. Blocks really run in parallel on different cores, so these
// are real atomics (compare-and-swap loops where the CPU has no such instruction). Under racecheck
// each records its address, so that bytes written by atomics are not called a race between blocks.
#pragma once

namespace gpt2cpu {
template <class T, class F> static inline T atomic_update(T* p, F update) {
    tracking_atomic(p);
    static_assert(sizeof(T) == 4 || sizeof(T) == 8, "atomics on 4- and 8-byte values");
    typedef typename std::conditional<sizeof(T) == 4, uint32_t, uint64_t>::type U;
    U* u = reinterpret_cast<U*>(p);
    U old = __atomic_load_n(u, __ATOMIC_RELAXED);
    for (;;) {
        T v;
        memcpy(&v, &old, sizeof(T));
        T nv = update(v);
        U nu;
        memcpy(&nu, &nv, sizeof(T));
        if (__atomic_compare_exchange_n(u, &old, nu, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) return v;
    }
}
template <class T> static inline T atomic_minmax(T* p, T v, bool is_max) {
    tracking_atomic(p);
    T old = __atomic_load_n(p, __ATOMIC_RELAXED);
    while ((is_max ? v > old : v < old) &&
           !__atomic_compare_exchange_n(p, &old, v, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {}
    return old;
}
template <class T> static inline T atomic_cas(T* p, T compare, T val) {
    tracking_atomic(p);
    __atomic_compare_exchange_n(p, &compare, val, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
    return compare;  // the old value either way
}
template <class T> static inline T atomic_fetch_add(T* p, T v) { tracking_atomic(p); return __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }
template <class T> static inline T atomic_fetch_sub(T* p, T v) { tracking_atomic(p); return __atomic_fetch_sub(p, v, __ATOMIC_RELAXED); }
template <class T> static inline T atomic_exchange(T* p, T v) { tracking_atomic(p); return __atomic_exchange_n(p, v, __ATOMIC_RELAXED); }
}  // namespace gpt2cpu

static inline float atomicAdd(float* p, float v) { return ::gpt2cpu::atomic_update(p, [v](float a) { return a + v; }); }
static inline double atomicAdd(double* p, double v) { return ::gpt2cpu::atomic_update(p, [v](double a) { return a + v; }); }
static inline int atomicAdd(int* p, int v) { return ::gpt2cpu::atomic_fetch_add(p, v); }
static inline unsigned atomicAdd(unsigned* p, unsigned v) { return ::gpt2cpu::atomic_fetch_add(p, v); }
static inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) { return ::gpt2cpu::atomic_fetch_add(p, v); }
static inline int atomicSub(int* p, int v) { return ::gpt2cpu::atomic_fetch_sub(p, v); }
static inline unsigned atomicSub(unsigned* p, unsigned v) { return ::gpt2cpu::atomic_fetch_sub(p, v); }
static inline int atomicMax(int* p, int v) { return ::gpt2cpu::atomic_minmax(p, v, true); }
static inline unsigned atomicMax(unsigned* p, unsigned v) { return ::gpt2cpu::atomic_minmax(p, v, true); }
static inline long long atomicMax(long long* p, long long v) { return ::gpt2cpu::atomic_minmax(p, v, true); }
static inline unsigned long long atomicMax(unsigned long long* p, unsigned long long v) { return ::gpt2cpu::atomic_minmax(p, v, true); }
static inline int atomicMin(int* p, int v) { return ::gpt2cpu::atomic_minmax(p, v, false); }
static inline unsigned atomicMin(unsigned* p, unsigned v) { return ::gpt2cpu::atomic_minmax(p, v, false); }
static inline long long atomicMin(long long* p, long long v) { return ::gpt2cpu::atomic_minmax(p, v, false); }
static inline unsigned long long atomicMin(unsigned long long* p, unsigned long long v) { return ::gpt2cpu::atomic_minmax(p, v, false); }
static inline int atomicCAS(int* p, int c, int v) { return ::gpt2cpu::atomic_cas(p, c, v); }
static inline unsigned atomicCAS(unsigned* p, unsigned c, unsigned v) { return ::gpt2cpu::atomic_cas(p, c, v); }
static inline unsigned long long atomicCAS(unsigned long long* p, unsigned long long c, unsigned long long v) { return ::gpt2cpu::atomic_cas(p, c, v); }
static inline int atomicExch(int* p, int v) { return ::gpt2cpu::atomic_exchange(p, v); }
static inline unsigned atomicExch(unsigned* p, unsigned v) { return ::gpt2cpu::atomic_exchange(p, v); }
static inline unsigned long long atomicExch(unsigned long long* p, unsigned long long v) { return ::gpt2cpu::atomic_exchange(p, v); }
static inline float atomicExch(float* p, float v) { return ::gpt2cpu::atomic_update(p, [v](float) { return v; }); }
static inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
static inline void __threadfence_block() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
