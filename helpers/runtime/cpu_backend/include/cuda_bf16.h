// cuda_bf16.h for the CPU backend: CUDA's __nv_bfloat16 and __nv_bfloat162, with the GPU's rounding.
//
// A bfloat16 is the top 16 bits of a float: 8 exponent bits, 7 fraction bits. Conversions from float
// round as CUDA says (_rn: to nearest, ties to even, which the plain conversions use; _rz, _rd, _ru),
// bit for bit (NaN becomes CUDA's 0x7fff); arithmetic is exact in float and rounded once, as sm_80+
// does it. ml_dtypes.bfloat16 arrays (what CuPy uses) pass to __nv_bfloat16* parameters.
#pragma once
#include "gpt2cpu_float16.h"

struct __nv_bfloat16 {
    uint16_t __x;
    __nv_bfloat16() = default;
    __nv_bfloat16(float f) : __x(gpt2cpu::float_to_bf16_bits(f, gpt2cpu::ROUND_NEAREST)) {}
    __nv_bfloat16(double d) : __x(gpt2cpu::double_to_bf16_bits(d)) {}
    __nv_bfloat16(int i) : __nv_bfloat16((double)i) {}
    operator float() const { return gpt2cpu::bf16_bits_to_float(__x); }
};
struct __nv_bfloat162 {
    __nv_bfloat16 x, y;
    __nv_bfloat162() = default;
    __nv_bfloat162(__nv_bfloat16 a, __nv_bfloat16 b) : x(a), y(b) {}
};
typedef __nv_bfloat16 nv_bfloat16;
typedef __nv_bfloat162 nv_bfloat162;

namespace gpt2cpu {
static inline __nv_bfloat16 bf16_from_bits(uint16_t b) { __nv_bfloat16 h; h.__x = b; return h; }
static inline __nv_bfloat16 bf16_round(double d) { return bf16_from_bits(double_to_bf16_bits(d)); }
template <> struct type_name<__nv_bfloat16> { static const char* get() { return "__nv_bfloat16"; } };
template <> struct type_name<__nv_bfloat162> { static const char* get() { return "__nv_bfloat162"; } };
}  // namespace gpt2cpu

static inline __nv_bfloat16 __float2bfloat16(float f) { return gpt2cpu::bf16_from_bits(gpt2cpu::float_to_bf16_bits(f, gpt2cpu::ROUND_NEAREST)); }
static inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __float2bfloat16(f); }
static inline __nv_bfloat16 __float2bfloat16_rz(float f) { return gpt2cpu::bf16_from_bits(gpt2cpu::float_to_bf16_bits(f, gpt2cpu::ROUND_ZERO)); }
static inline __nv_bfloat16 __float2bfloat16_rd(float f) { return gpt2cpu::bf16_from_bits(gpt2cpu::float_to_bf16_bits(f, gpt2cpu::ROUND_DOWN)); }
static inline __nv_bfloat16 __float2bfloat16_ru(float f) { return gpt2cpu::bf16_from_bits(gpt2cpu::float_to_bf16_bits(f, gpt2cpu::ROUND_UP)); }
static inline float __bfloat162float(__nv_bfloat16 b) { return gpt2cpu::bf16_bits_to_float(b.__x); }
static inline __nv_bfloat16 __double2bfloat16(double d) { return gpt2cpu::bf16_round(d); }
static inline __nv_bfloat16 __int2bfloat16_rn(int i) { return gpt2cpu::bf16_round((double)i); }
static inline int __bfloat162int_rz(__nv_bfloat16 b) { return (int)__bfloat162float(b); }
static inline short __bfloat16_as_short(__nv_bfloat16 b) { return (short)b.__x; }
static inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 b) { return b.__x; }
static inline __nv_bfloat16 __short_as_bfloat16(short s) { return gpt2cpu::bf16_from_bits((uint16_t)s); }
static inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short s) { return gpt2cpu::bf16_from_bits(s); }
static inline __nv_bfloat162 __floats2bfloat162_rn(float a, float b) { return __nv_bfloat162(__float2bfloat16(a), __float2bfloat16(b)); }
static inline __nv_bfloat162 __float2bfloat162_rn(float a) { return __floats2bfloat162_rn(a, a); }
static inline __nv_bfloat162 __halves2bfloat162(__nv_bfloat16 a, __nv_bfloat16 b) { return __nv_bfloat162(a, b); }
static inline __nv_bfloat162 __bfloat162bfloat162(__nv_bfloat16 a) { return __nv_bfloat162(a, a); }
static inline float2 __bfloat1622float2(__nv_bfloat162 h) { return make_float2(__bfloat162float(h.x), __bfloat162float(h.y)); }
static inline __nv_bfloat162 __float22bfloat162_rn(float2 f) { return __floats2bfloat162_rn(f.x, f.y); }
static inline __nv_bfloat16 __low2bfloat16(__nv_bfloat162 h) { return h.x; }
static inline __nv_bfloat16 __high2bfloat16(__nv_bfloat162 h) { return h.y; }
static inline float __low2float(__nv_bfloat162 h) { return __bfloat162float(h.x); }
static inline float __high2float(__nv_bfloat162 h) { return __bfloat162float(h.y); }

#define GPT2CPU_B_BINARY(NAME, EXPR) \
    static inline __nv_bfloat16 NAME(__nv_bfloat16 a, __nv_bfloat16 b) { double x = __bfloat162float(a), y = __bfloat162float(b); return gpt2cpu::bf16_round(EXPR); } \
    static inline __nv_bfloat162 NAME##2(__nv_bfloat162 a, __nv_bfloat162 b) { return __nv_bfloat162(NAME(a.x, b.x), NAME(a.y, b.y)); }
GPT2CPU_B_BINARY(__hadd, x + y)
GPT2CPU_B_BINARY(__hsub, x - y)
GPT2CPU_B_BINARY(__hmul, x * y)
#undef GPT2CPU_B_BINARY
static inline __nv_bfloat16 __hdiv(__nv_bfloat16 a, __nv_bfloat16 b) { return gpt2cpu::bf16_round((double)__bfloat162float(a) / __bfloat162float(b)); }
static inline __nv_bfloat162 __h2div(__nv_bfloat162 a, __nv_bfloat162 b) { return __nv_bfloat162(__hdiv(a.x, b.x), __hdiv(a.y, b.y)); }
static inline __nv_bfloat16 __hfma(__nv_bfloat16 a, __nv_bfloat16 b, __nv_bfloat16 c) {
    return gpt2cpu::bf16_round((double)__bfloat162float(a) * __bfloat162float(b) + __bfloat162float(c));
}
static inline __nv_bfloat162 __hfma2(__nv_bfloat162 a, __nv_bfloat162 b, __nv_bfloat162 c) { return __nv_bfloat162(__hfma(a.x, b.x, c.x), __hfma(a.y, b.y, c.y)); }
static inline __nv_bfloat16 __hneg(__nv_bfloat16 a) { return gpt2cpu::bf16_from_bits(a.__x ^ 0x8000); }
static inline __nv_bfloat16 __habs(__nv_bfloat16 a) { return gpt2cpu::bf16_from_bits(a.__x & 0x7fff); }
static inline bool __hisnan(__nv_bfloat16 a) { return (a.__x & 0x7fff) > 0x7f80; }
#define GPT2CPU_B_CMP(NAME, OP) static inline bool NAME(__nv_bfloat16 a, __nv_bfloat16 b) { return __bfloat162float(a) OP __bfloat162float(b); }
GPT2CPU_B_CMP(__heq, ==) GPT2CPU_B_CMP(__hne, !=) GPT2CPU_B_CMP(__hlt, <) GPT2CPU_B_CMP(__hle, <=)
GPT2CPU_B_CMP(__hgt, >) GPT2CPU_B_CMP(__hge, >=)
#undef GPT2CPU_B_CMP
static inline __nv_bfloat16 __hmax(__nv_bfloat16 a, __nv_bfloat16 b) {
    if (__hisnan(a)) return b;
    if (__hisnan(b)) return a;
    return __bfloat162float(a) >= __bfloat162float(b) ? a : b;
}
static inline __nv_bfloat16 __hmin(__nv_bfloat16 a, __nv_bfloat16 b) {
    if (__hisnan(a)) return b;
    if (__hisnan(b)) return a;
    return __bfloat162float(a) <= __bfloat162float(b) ? a : b;
}
#define GPT2CPU_B_MATH(NAME, FN) \
    static inline __nv_bfloat16 h##NAME(__nv_bfloat16 a) { float x = __bfloat162float(a); return __float2bfloat16(FN); } \
    static inline __nv_bfloat162 h2##NAME(__nv_bfloat162 a) { return __nv_bfloat162(h##NAME(a.x), h##NAME(a.y)); }
GPT2CPU_B_MATH(exp, expf(x)) GPT2CPU_B_MATH(exp2, exp2f(x)) GPT2CPU_B_MATH(log, logf(x)) GPT2CPU_B_MATH(log2, log2f(x))
GPT2CPU_B_MATH(sqrt, sqrtf(x)) GPT2CPU_B_MATH(rsqrt, 1.0f / sqrtf(x)) GPT2CPU_B_MATH(rcp, 1.0f / x)
GPT2CPU_B_MATH(sin, sinf(x)) GPT2CPU_B_MATH(cos, cosf(x)) GPT2CPU_B_MATH(trunc, truncf(x)) GPT2CPU_B_MATH(floor, floorf(x))
GPT2CPU_B_MATH(ceil, ceilf(x)) GPT2CPU_B_MATH(rint, rintf(x))
#undef GPT2CPU_B_MATH
static inline __nv_bfloat16 operator+(__nv_bfloat16 a, __nv_bfloat16 b) { return __hadd(a, b); }
static inline __nv_bfloat16 operator-(__nv_bfloat16 a, __nv_bfloat16 b) { return __hsub(a, b); }
static inline __nv_bfloat16 operator*(__nv_bfloat16 a, __nv_bfloat16 b) { return __hmul(a, b); }
static inline __nv_bfloat16 operator/(__nv_bfloat16 a, __nv_bfloat16 b) { return __hdiv(a, b); }
static inline __nv_bfloat16 operator-(__nv_bfloat16 a) { return __hneg(a); }
static inline __nv_bfloat16& operator+=(__nv_bfloat16& a, __nv_bfloat16 b) { return a = __hadd(a, b); }
static inline __nv_bfloat16& operator*=(__nv_bfloat16& a, __nv_bfloat16 b) { return a = __hmul(a, b); }
static inline bool operator<(__nv_bfloat16 a, __nv_bfloat16 b) { return __hlt(a, b); }
static inline bool operator>(__nv_bfloat16 a, __nv_bfloat16 b) { return __hgt(a, b); }
static inline __nv_bfloat16 atomicAdd(__nv_bfloat16* p, __nv_bfloat16 v) {
    uint16_t* u = reinterpret_cast<uint16_t*>(p);
    ::gpt2cpu::tracking_atomic(p);
    uint16_t old = __atomic_load_n(u, __ATOMIC_RELAXED);
    for (;;) {
        uint16_t nu = __hadd(::gpt2cpu::bf16_from_bits(old), v).__x;
        if (__atomic_compare_exchange_n(u, &old, nu, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED))
            return ::gpt2cpu::bf16_from_bits(old);
    }
}
