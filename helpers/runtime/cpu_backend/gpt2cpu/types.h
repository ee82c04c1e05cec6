// types.h: CUDA's built-in vector types (char1 ... double4, with make_*) and dim3.
//
// On a GPU a vector load or store (a float4 is one 16-byte access) needs an address that is a
// multiple of the vector's alignment, or the kernel stops with "misaligned address". Here the types
// have only their component's alignment (so the C++ compiler never assumes more and the CPU never
// faults by itself), and every copy from or to memory goes through a check that measures the
// address from the start of its allocation, as cudaMalloc's 256-byte alignment makes a GPU do:
// a misaligned float4 is a KernelError naming the argument and the element.
#pragma once

namespace gpt2cpu {
// Defined in memory.h: raise a misaligned-access error if `p` is not `align`-aligned within its
// allocation (argument arrays and shared memory; other memory, such as the stack, is not checked).
static inline void check_vector_access(const void* p, size_t align, const char* type, int write);
}  // namespace gpt2cpu

// 1- and 3-component types need no more than their component's alignment: plain aggregates.
#define GPT2CPU_VEC1(T, N) struct N { T x; }; static inline N make_##N(T x) { return N{x}; }
#define GPT2CPU_VEC3(T, N) struct N { T x, y, z; }; \
    static inline N make_##N(T x, T y, T z) { return N{x, y, z}; }
// 2- and 4-component types: alignment 2 or 4 times the component's (at most 16).
#define GPT2CPU_VEC_CHECKED(T, N, ALIGN, FIELDS, PARAMS, INITS)                                        \
    struct N {                                                                                      \
        T FIELDS;                                                                                   \
        N() = default;                                                                              \
        constexpr N(PARAMS) : INITS {}                                                              \
        N(const N& o) { ::gpt2cpu::check_vector_access(&o, ALIGN, #N, 0); memcpy((void*)this, (const void*)&o, sizeof(N)); } \
        N& operator=(const N& o) {                                                                  \
            ::gpt2cpu::check_vector_access(&o, ALIGN, #N, 0);                                       \
            ::gpt2cpu::check_vector_access(this, ALIGN, #N, 1);                                     \
            memcpy((void*)this, (const void*)&o, sizeof(N));                                        \
            return *this;                                                                           \
        }                                                                                           \
    };
#define GPT2CPU_COMMA ,
#define GPT2CPU_VEC2(T, N) GPT2CPU_VEC_CHECKED(T, N, (2 * sizeof(T) < 16 ? 2 * sizeof(T) : 16), x GPT2CPU_COMMA y, \
    T x_ GPT2CPU_COMMA T y_ = T(), x(x_) GPT2CPU_COMMA y(y_))                                             \
    static inline N make_##N(T x, T y) { return N(x, y); }
#define GPT2CPU_VEC4(T, N) GPT2CPU_VEC_CHECKED(T, N, (4 * sizeof(T) < 16 ? 4 * sizeof(T) : 16),                 \
    x GPT2CPU_COMMA y GPT2CPU_COMMA z GPT2CPU_COMMA w,                                                   \
    T x_ GPT2CPU_COMMA T y_ = T() GPT2CPU_COMMA T z_ = T() GPT2CPU_COMMA T w_ = T(),                     \
    x(x_) GPT2CPU_COMMA y(y_) GPT2CPU_COMMA z(z_) GPT2CPU_COMMA w(w_))                                   \
    static inline N make_##N(T x, T y, T z, T w) { return N(x, y, z, w); }
// (the component type through a one-word name: `signed char()` is not an expression)
#define GPT2CPU_VECTORS(T, P)                                                                        \
    typedef T gpt2cpu_##P##_t;                                                                       \
    GPT2CPU_VEC1(gpt2cpu_##P##_t, P##1) GPT2CPU_VEC2(gpt2cpu_##P##_t, P##2)                           \
    GPT2CPU_VEC3(gpt2cpu_##P##_t, P##3) GPT2CPU_VEC4(gpt2cpu_##P##_t, P##4)

GPT2CPU_VECTORS(signed char, char)
GPT2CPU_VECTORS(unsigned char, uchar)
GPT2CPU_VECTORS(short, short)
GPT2CPU_VECTORS(unsigned short, ushort)
GPT2CPU_VECTORS(int, int)
GPT2CPU_VECTORS(unsigned int, uint)
GPT2CPU_VECTORS(long, long)
GPT2CPU_VECTORS(unsigned long, ulong)
GPT2CPU_VECTORS(long long, longlong)
GPT2CPU_VECTORS(unsigned long long, ulonglong)
GPT2CPU_VECTORS(float, float)
GPT2CPU_VECTORS(double, double)
#undef GPT2CPU_VECTORS

struct dim3 {
    unsigned int x, y, z;
    constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
    constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
    constexpr operator uint3() const { return uint3{x, y, z}; }
};
