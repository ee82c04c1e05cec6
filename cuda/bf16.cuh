// bf16.cuh: what the bf16 kernel versions share, included with #include "bf16.cuh" (after
// common.cuh where both are needed). Introduced in notebooks/13_precision.ipynb.
//
// Mixed precision as llm.c trains: activations and weights are STORED in bfloat16 (2 bytes: float32's
// sign and 8 exponent bits, 7 of its 23 mantissa bits), every sum and every formula is COMPUTED in
// float32, and the optimizer keeps float32 master weights. A bf16 kernel loads bf16, converts to
// float, works in float, and rounds once when it stores.
//
//   bf16x8                 8 bf16 values in 16 bytes (llm.c's Packed128): one 128-bit load or store
//   load_bf16x8(p)         16-byte load; p must be 16-byte aligned (the wrappers check)
//   store_bf16x8(p, v)     16-byte store; same alignment
//   to_float(b), to_bf16(f)            conversions; to_bf16 rounds to nearest, ties to even (as
//                                      ml_dtypes, PyTorch and __float2bfloat16 do)
//   random_bits(index, seed)           32 well-mixed bits from (index, seed): the same on every run
//   to_bf16_stochastic(f, bits)        rounds up with probability equal to the dropped fraction, so
//                                      that small updates survive on average (AdamW's parameter copy)
//
// The conversions and the arithmetic in float work on every architecture; only bf16 ARITHMETIC
// (__hadd on __nv_bfloat16 and the like) needs sm_80, and these kernels do none, so they compile for
// sm_75 too. What sm_75 lacks is speed (no bf16 tensor cores): helpers.model falls back to fp32 there.

#pragma once
#include <cuda_bf16.h>

struct __align__(16) bf16x8 {
    __nv_bfloat16 v[8];
};

__device__ __forceinline__ bf16x8 load_bf16x8(const __nv_bfloat16* p) {
    return *reinterpret_cast<const bf16x8*>(p);
}

__device__ __forceinline__ void store_bf16x8(__nv_bfloat16* p, bf16x8 x) {
    *reinterpret_cast<bf16x8*>(p) = x;
}

__device__ __forceinline__ float to_float(__nv_bfloat16 b) {
    return __bfloat162float(b);
}

__device__ __forceinline__ __nv_bfloat16 to_bf16(float f) {
    return __float2bfloat16_rn(f);
}

// A 32-bit integer hash of (index, seed): Chris Wellons' "lowbias32" mixing function (public domain),
// applied to the index and then to its mix with the seed. Deterministic: a step's rounding is the same
// on every run, every backend and in every thread order.
__device__ __forceinline__ unsigned int mix32(unsigned int x) {
    x ^= x >> 16;
    x *= 0x7feb352du;
    x ^= x >> 15;
    x *= 0x846ca68bu;
    x ^= x >> 16;
    return x;
}

__device__ __forceinline__ unsigned int random_bits(unsigned int index, unsigned int seed) {
    return mix32(mix32(index) ^ (seed * 0x9e3779b9u));
}

// Stochastic rounding to bf16: add 16 random bits to the 16 bits that bf16 drops, then drop them. The
// result is the bf16 just above with probability (dropped fraction) and the one just below otherwise,
// so its expected value is f. Infinities stay infinite and NaNs stay NaN (their exponent is all ones;
// the carry cannot reach the sign); a finite value within one bf16 step of the largest bf16 may round
// up to infinity, as round-to-nearest would beyond its halfway point.
__device__ __forceinline__ __nv_bfloat16 to_bf16_stochastic(float f, unsigned int bits) {
    unsigned int u = __float_as_uint(f);
    if ((u & 0x7f800000u) == 0x7f800000u) {
        return __float2bfloat16_rn(f);  // inf and NaN: no rounding to do
    }
    u = (u + (bits & 0xffffu)) & 0xffff0000u;
    return __ushort_as_bfloat16((unsigned short)(u >> 16));
}
