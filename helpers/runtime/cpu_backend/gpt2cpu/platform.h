// platform.h: the system headers the runtime needs, the choice of context switch, and CUDA's
// keywords mapped onto plain C++ (so that a .cu file compiles as C++ with this runtime in front).
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
#include <time.h>
#include <unistd.h>
#if defined(__linux__)
#include <sys/prctl.h>
#endif
#if defined(GPT2CPU_USE_UCONTEXT)
#include <ucontext.h>
#endif

#define GPT2CPU_EXPORT extern "C" __attribute__((visibility("default")))
#define GPT2CPU 1

// CUDA's keywords. Device code is host code here; __launch_bounds__ only matters to a GPU compiler.
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

#include "abi.h"

namespace gpt2cpu {
static constexpr size_t kPage = 4096;
static constexpr size_t kRegion = size_t(1) << kRegionShift;
static constexpr int kMaxThreads = 1024;
}  // namespace gpt2cpu
