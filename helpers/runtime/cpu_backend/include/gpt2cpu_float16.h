// gpt2cpu_float16.h: the bits of 16-bit floats for the CPU backend's cuda_fp16.h and cuda_bf16.h:
// conversions from float and double with each of CUDA's rounding modes, exact to the bit (subnormals,
// infinities and NaN included), and back to float (exact).
#pragma once
#include <cstdint>
#include <cstring>
#include <cmath>

namespace gpt2cpu {

enum RoundMode { ROUND_NEAREST, ROUND_ZERO, ROUND_DOWN, ROUND_UP };

static inline uint32_t float_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline float bits_float(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

// Round a non-negative magnitude `m`, whose lowest `drop` bits are to be dropped, by mode; `negative`
// says the sign (directed modes round magnitudes toward or away from zero by it).
static inline uint64_t round_magnitude(uint64_t m, int drop, RoundMode mode, bool negative) {
    if (drop <= 0) return m << (-drop);
    if (drop >= 64) { uint64_t rest = m; m = 0; if (!rest) return 0;
        bool away = (mode == ROUND_UP && !negative) || (mode == ROUND_DOWN && negative);
        return away ? 1 : 0; }
    uint64_t kept = m >> drop, rest = m & ((1ull << drop) - 1), half = 1ull << (drop - 1);
    switch (mode) {
        case ROUND_NEAREST: if (rest > half || (rest == half && (kept & 1))) kept++; break;
        case ROUND_ZERO: break;
        case ROUND_DOWN: if (rest && negative) kept++; break;
        case ROUND_UP: if (rest && !negative) kept++; break;
    }
    return kept;
}

// A finite double (exact for every float and every product/sum this runtime forms) to a 16-bit
// format with `mant` fraction bits and exponent bias `bias`, maximum exponent field `emax_field`.
static inline uint16_t double_to_small(double d, int mant, int bias, RoundMode mode) {
    uint64_t u; memcpy(&u, &d, 8);
    bool negative = u >> 63;
    uint16_t sign = negative ? (uint16_t)(1u << 15) : 0;
    int exp_bits = 15 - mant;
    uint16_t inf = (uint16_t)(((1u << exp_bits) - 1) << mant);
    uint64_t e = (u >> 52) & 0x7ff, f = u & ((1ull << 52) - 1);
    if (e == 0x7ff) return f ? (uint16_t)0x7fff : (uint16_t)(sign | inf);  // NaN: CUDA's canonical 0x7fff; inf
    if (e == 0 && f == 0) return sign;
    // value = sig * 2^(exp - 52), sig with its leading one (doubles' subnormals are far below our range)
    uint64_t sig = e ? (f | (1ull << 52)) : f;
    int exp = e ? (int)e - 1023 : -1022;
    int target = exp + bias;                          // the exponent field if normal
    int drop = target >= 1 ? 52 - mant : 52 - mant + (1 - target);  // subnormal: more bits go
    uint64_t r = round_magnitude(sig, drop, mode, negative);
    uint64_t field;
    if (target >= 1) {
        field = (uint64_t)target;
        if (r >> (mant + 1)) { r >>= 1; field++; }    // rounding carried into the next binade
        if (field >= (uint64_t)((1u << exp_bits) - 1)) {  // overflow: inf, or the largest finite toward zero
            bool to_inf = mode == ROUND_NEAREST || (mode == ROUND_UP && !negative) || (mode == ROUND_DOWN && negative);
            return to_inf ? (uint16_t)(sign | inf) : (uint16_t)(sign | (inf - 1));
        }
        return (uint16_t)(sign | (field << mant) | (r & ((1u << mant) - 1)));
    }
    // subnormal (r may round up into the smallest normal: the bits then say so by themselves)
    return (uint16_t)(sign | r);
}

static inline uint16_t float_to_half_bits(float f, RoundMode mode) { return double_to_small((double)f, 10, 15, mode); }
static inline uint16_t double_to_half_bits(double d) { return double_to_small(d, 10, 15, ROUND_NEAREST); }
static inline uint16_t float_to_bf16_bits(float f, RoundMode mode) { return double_to_small((double)f, 7, 127, mode); }
static inline uint16_t double_to_bf16_bits(double d) { return double_to_small(d, 7, 127, ROUND_NEAREST); }

static inline float half_bits_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, e = (h >> 10) & 0x1f, f = h & 0x3ff;
    if (e == 0x1f) return bits_float(sign | 0x7f800000u | (f << 13));
    if (e == 0) return f ? (sign ? -1.0f : 1.0f) * ldexpf((float)f, -24) : bits_float(sign);
    return bits_float(sign | ((e + 112) << 23) | (f << 13));
}
static inline float bf16_bits_to_float(uint16_t b) { return bits_float((uint32_t)b << 16); }

}  // namespace gpt2cpu
