// device_api.h: what a kernel sees: threadIdx and friends, barriers, shared memory declarations
// (as rewritten by helpers/cpu_backend), math intrinsics, printf and assert.
#pragma once

#define threadIdx (::gpt2cpu::self()->thread_idx)
#define blockIdx (::gpt2cpu::self()->block->block_idx)
#define blockDim (::gpt2cpu::g_block)
#define gridDim (::gpt2cpu::g_grid)
#define warpSize 32

#define __syncthreads() ::gpt2cpu::syncthreads(__LINE__)
#define __syncthreads_count(p) ::gpt2cpu::syncthreads_reduce(__LINE__, (p), 0)
#define __syncthreads_and(p) ::gpt2cpu::syncthreads_reduce(__LINE__, (p), 1)
#define __syncthreads_or(p) ::gpt2cpu::syncthreads_reduce(__LINE__, (p), 2)

// `__shared__ T name[N];` becomes `auto& name = __gpt2cpu_shared_var<T[N]>(id, "T name[N]");` and
// `extern __shared__ T name[];` becomes a pointer to the block's dynamic shared memory (memory.h).
template <class T> static inline T& __gpt2cpu_shared_var(int id, const char* declaration) {
    return ::gpt2cpu::shared_var<T>(id, declaration);
}
static inline void* __gpt2cpu_dynamic_shared() { return ::gpt2cpu::self()->block->worker->shared.start[0]; }

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
// A record is {block, thread, length, text}; lines of any length fit, up to the buffer's 1 MiB.
namespace gpt2cpu {
__attribute__((format(printf, 1, 2))) static int device_printf(const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(nullptr, 0, fmt, ap);
    va_end(ap);
    if (n < 0) return n;
    uint64_t need = (16 + (uint64_t)n + 1 + 7) / 8 * 8;
    Report* r = g_report;
    uint64_t off = __atomic_load_n(&r->printf_used, __ATOMIC_RELAXED);
    do {
        if (off + need > (uint64_t)kPrintfCapacity) {
            __atomic_fetch_add(&r->printf_dropped, 1, __ATOMIC_RELAXED);
            return n;
        }
    } while (!__atomic_compare_exchange_n(&r->printf_used, &off, off + need, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED));
    char* rec = g_printf + off;
    uint64_t block_linear = self()->block->linear;
    memcpy(rec, &block_linear, 8);
    uint32_t thread_linear = (uint32_t)self()->linear;
    memcpy(rec + 8, &thread_linear, 4);
    uint32_t len = (uint32_t)n;
    memcpy(rec + 12, &len, 4);
    va_start(ap, fmt);
    vsnprintf(rec + 16, (size_t)n + 1, fmt, ap);
    va_end(ap);
    return n;
}
[[noreturn]] static void assert_fail(const char* expr, const char* file, int line) {
    const char* slash = strrchr(file, '/');
    runtime_error(self(), "assertion `%s` failed at %s:%d", expr, slash ? slash + 1 : file, line);
}
}  // namespace gpt2cpu
#define printf(...) ::gpt2cpu::device_printf(__VA_ARGS__)
// assert as CUDA's: the failing expression and its line in the KernelError. (An #include <assert.h>
// later in a kernel file would bring the C library's back; cuda_source refuses system includes.)
#undef assert
#define assert(e) ((e) ? (void)0 : ::gpt2cpu::assert_fail(#e, __FILE__, __LINE__))
