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
static inline unsigned atomicInc(unsigned* p, unsigned limit) {
    return ::gpt2cpu::atomic_update(p, [limit](unsigned old) { return old >= limit ? 0u : old + 1; });
}
static inline unsigned atomicDec(unsigned* p, unsigned limit) {
    return ::gpt2cpu::atomic_update(p, [limit](unsigned old) { return (old == 0 || old > limit) ? limit : old - 1; });
}
#define GPT2CPU_ATOMIC_BITS(NAME, BUILTIN)                                                                     \
    static inline int NAME(int* p, int v) { ::gpt2cpu::tracking_atomic(p); return BUILTIN(p, v, __ATOMIC_RELAXED); } \
    static inline unsigned NAME(unsigned* p, unsigned v) { ::gpt2cpu::tracking_atomic(p); return BUILTIN(p, v, __ATOMIC_RELAXED); } \
    static inline unsigned long long NAME(unsigned long long* p, unsigned long long v) {                        \
        ::gpt2cpu::tracking_atomic(p); return BUILTIN(p, v, __ATOMIC_RELAXED); }
GPT2CPU_ATOMIC_BITS(atomicAnd, __atomic_fetch_and)
GPT2CPU_ATOMIC_BITS(atomicOr, __atomic_fetch_or)
GPT2CPU_ATOMIC_BITS(atomicXor, __atomic_fetch_xor)
#undef GPT2CPU_ATOMIC_BITS
static inline long long atomicAdd(long long* p, long long v) { return ::gpt2cpu::atomic_fetch_add(p, v); }
static inline unsigned short atomicCAS(unsigned short* p, unsigned short c, unsigned short v) { return ::gpt2cpu::atomic_cas(p, c, v); }
static inline double atomicExch(double* p, double v) { return ::gpt2cpu::atomic_update(p, [v](double) { return v; }); }
// The scoped variants: on the CPU every atomic is atomic for the whole machine.
#define atomicAdd_block atomicAdd
#define atomicAdd_system atomicAdd
#define atomicSub_block atomicSub
#define atomicSub_system atomicSub
#define atomicExch_block atomicExch
#define atomicExch_system atomicExch
#define atomicMin_block atomicMin
#define atomicMin_system atomicMin
#define atomicMax_block atomicMax
#define atomicMax_system atomicMax
#define atomicInc_block atomicInc
#define atomicInc_system atomicInc
#define atomicDec_block atomicDec
#define atomicDec_system atomicDec
#define atomicCAS_block atomicCAS
#define atomicCAS_system atomicCAS
#define atomicAnd_block atomicAnd
#define atomicAnd_system atomicAnd
#define atomicOr_block atomicOr
#define atomicOr_system atomicOr
#define atomicXor_block atomicXor
#define atomicXor_system atomicXor
