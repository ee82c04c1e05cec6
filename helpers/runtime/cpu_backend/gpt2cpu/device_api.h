// device_api.h: what a kernel sees: threadIdx and friends, barriers, shared memory declarations
// (as rewritten by helpers/runtime/cpu_backend), printf and assert (the math and the intrinsics: intrinsics.h).
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
