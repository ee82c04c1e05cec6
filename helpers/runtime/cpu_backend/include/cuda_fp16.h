// cuda_fp16.h for the CPU backend: CUDA's __half and __half2, with the GPU's rounding.
//
// A __half is the 16 bits of an IEEE binary16 number. Conversions from float round as CUDA says
// (_rn: to nearest, ties to even, which the plain conversions use; _rz, _rd, _ru: toward zero, down,
// up), subnormals, infinities and NaN included, bit for bit. Arithmetic is done exactly in float (a
// product or sum of two halves is exact there) and rounded once to half, as the GPU's half units do;
// fused multiply-add rounds once from double. NumPy float16 arrays pass to __half* parameters.
#pragma once
#include "gpt2cpu_float16.h"

struct __half {
    uint16_t __x;
    __half() = default;
    __half(float f) : __x(gpt2cpu::float_to_half_bits(f, gpt2cpu::ROUND_NEAREST)) {}
    __half(double d) : __half((float)d) {}
    __half(int i) : __half((float)i) {}
    operator float() const { return gpt2cpu::half_bits_to_float(__x); }
};
struct __half2 {
    __half x, y;
    __half2() = default;
    __half2(__half a, __half b) : x(a), y(b) {}
};
typedef __half half;
typedef __half2 half2;

namespace gpt2cpu {
static inline __half half_from_bits(uint16_t b) { __half h; h.__x = b; return h; }
static inline __half half_round(float f, RoundMode m) { return half_from_bits(float_to_half_bits(f, m)); }
static inline __half half_round_double(double d) { return half_from_bits(double_to_half_bits(d)); }
template <> struct type_name<__half> { static const char* get() { return "__half"; } };   // for signatures
template <> struct type_name<__half2> { static const char* get() { return "__half2"; } };
}  // namespace gpt2cpu

// conversions
static inline __half __float2half(float f) { return gpt2cpu::half_round(f, gpt2cpu::ROUND_NEAREST); }
static inline __half __float2half_rn(float f) { return gpt2cpu::half_round(f, gpt2cpu::ROUND_NEAREST); }
static inline __half __float2half_rz(float f) { return gpt2cpu::half_round(f, gpt2cpu::ROUND_ZERO); }
static inline __half __float2half_rd(float f) { return gpt2cpu::half_round(f, gpt2cpu::ROUND_DOWN); }
static inline __half __float2half_ru(float f) { return gpt2cpu::half_round(f, gpt2cpu::ROUND_UP); }
static inline float __half2float(__half h) { return gpt2cpu::half_bits_to_float(h.__x); }
static inline __half __double2half(double d) { return gpt2cpu::half_round_double(d); }
static inline __half __int2half_rn(int i) { return gpt2cpu::half_round_double((double)i); }
static inline __half __uint2half_rn(unsigned i) { return gpt2cpu::half_round_double((double)i); }
static inline int __half2int_rz(__half h) { return (int)__half2float(h); }
static inline int __half2int_rn(__half h) { return (int)rintf(__half2float(h)); }
static inline short __half_as_short(__half h) { return (short)h.__x; }
static inline unsigned short __half_as_ushort(__half h) { return h.__x; }
static inline __half __short_as_half(short s) { return gpt2cpu::half_from_bits((uint16_t)s); }
static inline __half __ushort_as_half(unsigned short s) { return gpt2cpu::half_from_bits(s); }
static inline __half2 __floats2half2_rn(float a, float b) { return __half2(__float2half_rn(a), __float2half_rn(b)); }
static inline __half2 __float2half2_rn(float a) { return __half2(__float2half_rn(a), __float2half_rn(a)); }
static inline __half2 __halves2half2(__half a, __half b) { return __half2(a, b); }
static inline __half2 __half2half2(__half a) { return __half2(a, a); }
static inline float2 __half22float2(__half2 h) { return make_float2(__half2float(h.x), __half2float(h.y)); }
static inline __half2 __float22half2_rn(float2 f) { return __floats2half2_rn(f.x, f.y); }
static inline __half __low2half(__half2 h) { return h.x; }
static inline __half __high2half(__half2 h) { return h.y; }
static inline float __low2float(__half2 h) { return __half2float(h.x); }
static inline float __high2float(__half2 h) { return __half2float(h.y); }
static inline __half2 __lowhigh2highlow(__half2 h) { return __half2(h.y, h.x); }

// arithmetic: exact in float, rounded once
#define GPT2CPU_H_BINARY(NAME, EXPR) \
    static inline __half NAME(__half a, __half b) { float x = __half2float(a), y = __half2float(b); return __float2half_rn(EXPR); } \
    static inline __half2 NAME##2(__half2 a, __half2 b) { return __half2(NAME(a.x, b.x), NAME(a.y, b.y)); }
GPT2CPU_H_BINARY(__hadd, x + y)
GPT2CPU_H_BINARY(__hsub, x - y)
GPT2CPU_H_BINARY(__hmul, x * y)
#undef GPT2CPU_H_BINARY
static inline __half __hdiv(__half a, __half b) { return gpt2cpu::half_round_double((double)__half2float(a) / __half2float(b)); }
static inline __half2 __h2div(__half2 a, __half2 b) { return __half2(__hdiv(a.x, b.x), __hdiv(a.y, b.y)); }
static inline __half __hfma(__half a, __half b, __half c) {
    return gpt2cpu::half_round_double((double)__half2float(a) * __half2float(b) + __half2float(c));
}
static inline __half2 __hfma2(__half2 a, __half2 b, __half2 c) { return __half2(__hfma(a.x, b.x, c.x), __hfma(a.y, b.y, c.y)); }
static inline __half __hneg(__half a) { return gpt2cpu::half_from_bits(a.__x ^ 0x8000); }
static inline __half2 __hneg2(__half2 a) { return __half2(__hneg(a.x), __hneg(a.y)); }
static inline __half __habs(__half a) { return gpt2cpu::half_from_bits(a.__x & 0x7fff); }
static inline __half2 __habs2(__half2 a) { return __half2(__habs(a.x), __habs(a.y)); }
static inline bool __hisnan(__half a) { return (a.__x & 0x7fff) > 0x7c00; }
static inline int __hisinf(__half a) { return (a.__x & 0x7fff) == 0x7c00 ? ((a.__x & 0x8000) ? -1 : 1) : 0; }
// comparisons (ordered: false with a NaN; the _u... forms would be unordered)
#define GPT2CPU_H_CMP(NAME, OP) static inline bool NAME(__half a, __half b) { return __half2float(a) OP __half2float(b); }
GPT2CPU_H_CMP(__heq, ==) GPT2CPU_H_CMP(__hne, !=) GPT2CPU_H_CMP(__hlt, <) GPT2CPU_H_CMP(__hle, <=)
GPT2CPU_H_CMP(__hgt, >) GPT2CPU_H_CMP(__hge, >=)
#undef GPT2CPU_H_CMP
static inline __half __hmax(__half a, __half b) {
    if (__hisnan(a)) return b;
    if (__hisnan(b)) return a;
    return __half2float(a) >= __half2float(b) ? a : b;
}
static inline __half __hmin(__half a, __half b) {
    if (__hisnan(a)) return b;
    if (__hisnan(b)) return a;
    return __half2float(a) <= __half2float(b) ? a : b;
}
static inline __half2 __hmax2(__half2 a, __half2 b) { return __half2(__hmax(a.x, b.x), __hmax(a.y, b.y)); }
static inline __half2 __hmin2(__half2 a, __half2 b) { return __half2(__hmin(a.x, b.x), __hmin(a.y, b.y)); }
// math: computed in float, rounded to half (CUDA documents these as approximate)
#define GPT2CPU_H_MATH(NAME, FN) \
    static inline __half h##NAME(__half a) { float x = __half2float(a); return __float2half_rn(FN); } \
    static inline __half2 h2##NAME(__half2 a) { return __half2(h##NAME(a.x), h##NAME(a.y)); }
GPT2CPU_H_MATH(exp, expf(x)) GPT2CPU_H_MATH(exp2, exp2f(x)) GPT2CPU_H_MATH(exp10, powf(10.0f, x))
GPT2CPU_H_MATH(log, logf(x)) GPT2CPU_H_MATH(log2, log2f(x)) GPT2CPU_H_MATH(log10, log10f(x))
GPT2CPU_H_MATH(sqrt, sqrtf(x)) GPT2CPU_H_MATH(rsqrt, 1.0f / sqrtf(x)) GPT2CPU_H_MATH(rcp, 1.0f / x)
GPT2CPU_H_MATH(sin, sinf(x)) GPT2CPU_H_MATH(cos, cosf(x)) GPT2CPU_H_MATH(trunc, truncf(x))
GPT2CPU_H_MATH(floor, floorf(x)) GPT2CPU_H_MATH(ceil, ceilf(x)) GPT2CPU_H_MATH(rint, rintf(x))
#undef GPT2CPU_H_MATH
// saturating arithmetic: the result clamped to [0.0, 1.0] (NaN to +0), as CUDA's _sat functions
namespace gpt2cpu {
static inline __half half_sat(__half h) {
    float f = __half2float(h);
    return !(f > 0.0f) ? half_from_bits(0) : f > 1.0f ? half_from_bits(0x3c00) : h;
}
}  // namespace gpt2cpu
static inline __half __hadd_sat(__half a, __half b) { return gpt2cpu::half_sat(__hadd(a, b)); }
static inline __half __hsub_sat(__half a, __half b) { return gpt2cpu::half_sat(__hsub(a, b)); }
static inline __half __hmul_sat(__half a, __half b) { return gpt2cpu::half_sat(__hmul(a, b)); }
static inline __half __hfma_sat(__half a, __half b, __half c) { return gpt2cpu::half_sat(__hfma(a, b, c)); }
static inline __half2 __hadd2_sat(__half2 a, __half2 b) { return __half2(__hadd_sat(a.x, b.x), __hadd_sat(a.y, b.y)); }
static inline __half2 __hmul2_sat(__half2 a, __half2 b) { return __half2(__hmul_sat(a.x, b.x), __hmul_sat(a.y, b.y)); }
// operators, as cuda_fp16.hpp defines them for device code
static inline __half operator+(__half a, __half b) { return __hadd(a, b); }
static inline __half operator-(__half a, __half b) { return __hsub(a, b); }
static inline __half operator*(__half a, __half b) { return __hmul(a, b); }
static inline __half operator/(__half a, __half b) { return __hdiv(a, b); }
static inline __half operator-(__half a) { return __hneg(a); }
static inline __half& operator+=(__half& a, __half b) { return a = __hadd(a, b); }
static inline __half& operator-=(__half& a, __half b) { return a = __hsub(a, b); }
static inline __half& operator*=(__half& a, __half b) { return a = __hmul(a, b); }
static inline __half& operator/=(__half& a, __half b) { return a = __hdiv(a, b); }
static inline bool operator==(__half a, __half b) { return __heq(a, b); }
static inline bool operator!=(__half a, __half b) { return __hne(a, b); }
static inline bool operator<(__half a, __half b) { return __hlt(a, b); }
static inline bool operator<=(__half a, __half b) { return __hle(a, b); }
static inline bool operator>(__half a, __half b) { return __hgt(a, b); }
static inline bool operator>=(__half a, __half b) { return __hge(a, b); }
static inline __half2 operator+(__half2 a, __half2 b) { return __hadd2(a, b); }
static inline __half2 operator-(__half2 a, __half2 b) { return __hsub2(a, b); }
static inline __half2 operator*(__half2 a, __half2 b) { return __hmul2(a, b); }
static inline __half2 operator/(__half2 a, __half2 b) { return __h2div(a, b); }
// atomics
static inline __half atomicAdd(__half* p, __half v) {
    uint16_t* u = reinterpret_cast<uint16_t*>(p);
    ::gpt2cpu::tracking_atomic(p);
    uint16_t old = __atomic_load_n(u, __ATOMIC_RELAXED);
    for (;;) {
        uint16_t nu = __hadd(::gpt2cpu::half_from_bits(old), v).__x;
        if (__atomic_compare_exchange_n(u, &old, nu, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED))
            return ::gpt2cpu::half_from_bits(old);
    }
}
static inline __half2 atomicAdd(__half2* p, __half2 v) {  // each half atomically (as CUDA documents)
    __half* h = reinterpret_cast<__half*>(p);
    return __half2(atomicAdd(h, v.x), atomicAdd(h + 1, v.y));
}
