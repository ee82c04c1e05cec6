// intrinsics.h: CUDA's math API and the language's intrinsics on the CPU.
//
// Exact where CUDA defines the result exactly: the integer intrinsics, the conversions (with their
// rounding modes, saturating as the GPU does: NaN gives 0), and the float operations with a rounding
// mode in their name (__fadd_rd, __fdiv_ru, __fsqrt_rz, __fmaf_rd...), computed with the exact
// error terms of the round-to-nearest result. The fast approximations (__expf, __sinf, ...) and the
// elementary functions are the C library's, within CUDA's documented error bounds but not the
// GPU's bits. Cache-hint loads and stores are plain loads and stores; clock() counts nanoseconds.
#pragma once

namespace gpt2cpu {

// round-to-nearest result r of an operation whose exact value is hi + lo (lo much smaller than hi),
// moved one step for a directed mode if it is on the wrong side
static inline float directed(float r, double hi, double lo, int mode) {
    if (!std::isfinite(r) || !std::isfinite(hi)) return r;
    double diff = ((double)r - hi) - lo;  // r - exact, exact enough to compare with 0
    if (diff == 0) return r;
    if (mode == 2 && diff > 0) return nextafterf(r, -INFINITY);                        // down
    if (mode == 3 && diff < 0) return nextafterf(r, INFINITY);                         // up
    if (mode == 1 && ((r > 0 && diff > 0) || (r < 0 && diff < 0))) return nextafterf(r, 0.0f);  // toward zero
    return r;
}
static inline void two_sum(double a, double b, double& s, double& e) {
    s = a + b;
    double bb = s - a;
    e = (a - (s - bb)) + (b - bb);
}
static inline float add_mode(float a, float b, int mode) {
    double s, e;
    two_sum((double)a, (double)b, s, e);  // a + b is exact in double unless the exponents are far apart
    return directed(a + b, s, e, mode);
}
static inline float mul_mode(float a, float b, int mode) { return directed(a * b, (double)a * (double)b, 0.0, mode); }
static inline float div_mode(float a, float b, int mode) {
    float q = a / b;
    if (!std::isfinite(q) || b == 0) return q;
    double residual = fma(-(double)q, (double)b, (double)a);  // a - q b, exact: its sign says where q is
    return directed(q, (double)q + residual / (double)b, 0.0, mode);
}
static inline float sqrt_mode(float x, int mode) {
    float r = sqrtf(x);
    if (!(x > 0) || !std::isfinite(r)) return r;
    double residual = fma(-(double)r, (double)r, (double)x);  // x - r^2, exact
    return directed(r, (double)r + residual / (2.0 * r), 0.0, mode);
}
static inline float fma_mode(float a, float b, float c, int mode) {
    double p = (double)a * (double)b, s, e;  // the product is exact in double
    two_sum(p, (double)c, s, e);
    return directed(fmaf(a, b, c), s, e, mode);
}
static inline float rcp_mode(float x, int mode) { return div_mode(1.0f, x, mode); }

template <class I> static inline I saturate(double v, I lo, I hi) {
    if (v != v) return 0;
    if (v <= (double)lo) return lo;
    if (v >= (double)hi) return hi;
    return (I)v;
}
static inline double round_mode(double v, int mode) {
    switch (mode) { case 1: return trunc(v); case 2: return floor(v); case 3: return ceil(v); default: return nearbyint(v); }
}
}  // namespace gpt2cpu

// ---- float operations with a rounding mode ----------------------------------------------------------
#define GPT2CPU_MODES(OP, BODY0, BODY1, BODY2, BODY3) \
    static inline float OP##_rn BODY0 static inline float OP##_rz BODY1 static inline float OP##_rd BODY2 \
    static inline float OP##_ru BODY3
GPT2CPU_MODES(__fadd, (float a, float b) { return a + b; }, (float a, float b) { return ::gpt2cpu::add_mode(a, b, 1); },
              (float a, float b) { return ::gpt2cpu::add_mode(a, b, 2); }, (float a, float b) { return ::gpt2cpu::add_mode(a, b, 3); })
GPT2CPU_MODES(__fsub, (float a, float b) { return a - b; }, (float a, float b) { return ::gpt2cpu::add_mode(a, -b, 1); },
              (float a, float b) { return ::gpt2cpu::add_mode(a, -b, 2); }, (float a, float b) { return ::gpt2cpu::add_mode(a, -b, 3); })
GPT2CPU_MODES(__fmul, (float a, float b) { return a * b; }, (float a, float b) { return ::gpt2cpu::mul_mode(a, b, 1); },
              (float a, float b) { return ::gpt2cpu::mul_mode(a, b, 2); }, (float a, float b) { return ::gpt2cpu::mul_mode(a, b, 3); })
GPT2CPU_MODES(__fdiv, (float a, float b) { return a / b; }, (float a, float b) { return ::gpt2cpu::div_mode(a, b, 1); },
              (float a, float b) { return ::gpt2cpu::div_mode(a, b, 2); }, (float a, float b) { return ::gpt2cpu::div_mode(a, b, 3); })
GPT2CPU_MODES(__frcp, (float x) { return 1.0f / x; }, (float x) { return ::gpt2cpu::rcp_mode(x, 1); },
              (float x) { return ::gpt2cpu::rcp_mode(x, 2); }, (float x) { return ::gpt2cpu::rcp_mode(x, 3); })
GPT2CPU_MODES(__fsqrt, (float x) { return sqrtf(x); }, (float x) { return ::gpt2cpu::sqrt_mode(x, 1); },
              (float x) { return ::gpt2cpu::sqrt_mode(x, 2); }, (float x) { return ::gpt2cpu::sqrt_mode(x, 3); })
GPT2CPU_MODES(__fmaf, (float a, float b, float c) { return fmaf(a, b, c); },
              (float a, float b, float c) { return ::gpt2cpu::fma_mode(a, b, c, 1); },
              (float a, float b, float c) { return ::gpt2cpu::fma_mode(a, b, c, 2); },
              (float a, float b, float c) { return ::gpt2cpu::fma_mode(a, b, c, 3); })
#undef GPT2CPU_MODES
static inline float __frsqrt_rn(float x) { return (float)(1.0 / sqrt((double)x)); }
static inline double __dadd_rn(double a, double b) { return a + b; }
static inline double __dmul_rn(double a, double b) { return a * b; }
static inline double __ddiv_rn(double a, double b) { return a / b; }
static inline double __dsqrt_rn(double x) { return sqrt(x); }
static inline double __fma_rn(double a, double b, double c) { return fma(a, b, c); }

// ---- fast approximations and the math library -------------------------------------------------------
#define __expf(x) expf(x)
#define __exp10f(x) exp10f(x)
#define __logf(x) logf(x)
#define __log2f(x) log2f(x)
#define __log10f(x) log10f(x)
#define __sinf(x) sinf(x)
#define __cosf(x) cosf(x)
#define __tanf(x) tanf(x)
#define __powf(x, y) powf((x), (y))
#define __fdividef(x, y) ((x) / (y))
static inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
static inline double rsqrt(double x) { return 1.0 / sqrt(x); }
static inline float rcbrtf(float x) { return 1.0f / cbrtf(x); }
static inline double rcbrt(double x) { return 1.0 / cbrt(x); }
#if !defined(__GLIBC__)  // (glibc has these four as extensions)
static inline float exp10f(float x) { return (float)pow(10.0, (double)x); }
static inline void sincosf(float x, float* s, float* c) { *s = sinf(x); *c = cosf(x); }
static inline void sincos(double x, double* s, double* c) { *s = sin(x); *c = cos(x); }
#endif
#define __sincosf(x, s, c) sincosf((x), (s), (c))
static inline float sinpif(float x) { return (float)sin(M_PI * (double)x); }
static inline float cospif(float x) { return (float)cos(M_PI * (double)x); }
static inline void sincospif(float x, float* s, float* c) { *s = sinpif(x); *c = cospif(x); }
static inline double sinpi(double x) { return sin(M_PI * x); }
static inline double cospi(double x) { return cos(M_PI * x); }
static inline void sincospi(double x, double* s, double* c) { *s = sinpi(x); *c = cospi(x); }
static inline float normcdff(float x) { return (float)(0.5 * erfc(-(double)x / M_SQRT2)); }
static inline double normcdf(double x) { return 0.5 * erfc(-x / M_SQRT2); }
static inline double erfinv(double y) {
    // Newton on erf, from a rational first guess; exact to double rounding in a few steps
    if (y <= -1) return y == -1 ? -INFINITY : NAN;
    if (y >= 1) return y == 1 ? INFINITY : NAN;
    double w = -log((1.0 - y) * (1.0 + y)), x;
    if (w < 5) { w -= 2.5; x = 2.81022636e-08; x = 3.43273939e-07 + x * w; x = -3.5233877e-06 + x * w;
        x = -4.39150654e-06 + x * w; x = 0.00021858087 + x * w; x = -0.00125372503 + x * w;
        x = -0.00417768164 + x * w; x = 0.246640727 + x * w; x = 1.50140941 + x * w; }
    else { w = sqrt(w) - 3; x = -0.000200214257; x = 0.000100950558 + x * w; x = 0.00134934322 + x * w;
        x = -0.00367342844 + x * w; x = 0.00573950773 + x * w; x = -0.0076224613 + x * w;
        x = 0.00943887047 + x * w; x = 1.00167406 + x * w; x = 2.83297682 + x * w; }
    x *= y;
    for (int i = 0; i < 3; i++) x -= (erf(x) - y) / (2.0 / sqrt(M_PI) * exp(-x * x));
    return x;
}
static inline float erfinvf(float y) { return (float)erfinv((double)y); }
static inline double erfcinv(double y) { return erfinv(1.0 - y); }
static inline float erfcinvf(float y) { return (float)erfcinv((double)y); }
static inline double normcdfinv(double p) { return -M_SQRT2 * erfcinv(2.0 * p); }
static inline float normcdfinvf(float p) { return (float)normcdfinv((double)p); }
static inline float norm3df(float a, float b, float c) { return (float)sqrt((double)a * a + (double)b * b + (double)c * c); }
static inline float norm4df(float a, float b, float c, float d) {
    return (float)sqrt((double)a * a + (double)b * b + (double)c * c + (double)d * d);
}
static inline float rnorm3df(float a, float b, float c) { return (float)(1.0 / sqrt((double)a * a + (double)b * b + (double)c * c)); }
static inline float rhypotf(float a, float b) { return (float)(1.0 / hypot((double)a, (double)b)); }
static inline float __saturatef(float x) { return x != x ? 0.0f : (x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x)); }
static inline float fdividef(float a, float b) { return a / b; }

// ---- min and max, with CUDA's overloads (mixed int / unsigned compares as unsigned) -----------------
static inline int min(int a, int b) { return a < b ? a : b; }
static inline int max(int a, int b) { return a > b ? a : b; }
static inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
static inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
static inline unsigned min(int a, unsigned b) { return min((unsigned)a, b); }
static inline unsigned max(int a, unsigned b) { return max((unsigned)a, b); }
static inline unsigned min(unsigned a, int b) { return min(a, (unsigned)b); }
static inline unsigned max(unsigned a, int b) { return max(a, (unsigned)b); }
static inline long long min(long long a, long long b) { return a < b ? a : b; }
static inline long long max(long long a, long long b) { return a > b ? a : b; }
static inline unsigned long long min(unsigned long long a, unsigned long long b) { return a < b ? a : b; }
static inline unsigned long long max(unsigned long long a, unsigned long long b) { return a > b ? a : b; }
static inline unsigned long long min(long long a, unsigned long long b) { return min((unsigned long long)a, b); }
static inline unsigned long long max(long long a, unsigned long long b) { return max((unsigned long long)a, b); }
static inline unsigned long long min(unsigned long long a, long long b) { return min(a, (unsigned long long)b); }
static inline unsigned long long max(unsigned long long a, long long b) { return max(a, (unsigned long long)b); }
static inline long min(long a, long b) { return a < b ? a : b; }
static inline long max(long a, long b) { return a > b ? a : b; }
static inline unsigned long min(unsigned long a, unsigned long b) { return a < b ? a : b; }
static inline unsigned long max(unsigned long a, unsigned long b) { return a > b ? a : b; }
static inline float min(float a, float b) { return fminf(a, b); }
static inline float max(float a, float b) { return fmaxf(a, b); }
static inline double min(double a, double b) { return fmin(a, b); }
static inline double max(double a, double b) { return fmax(a, b); }
static inline double min(float a, double b) { return fmin((double)a, b); }
static inline double max(float a, double b) { return fmax((double)a, b); }
static inline double min(double a, float b) { return fmin(a, (double)b); }
static inline double max(double a, float b) { return fmax(a, (double)b); }

// ---- bits ------------------------------------------------------------------------------------------
static inline float __int_as_float(int i) { float f; memcpy(&f, &i, 4); return f; }
static inline int __float_as_int(float f) { int i; memcpy(&i, &f, 4); return i; }
static inline float __uint_as_float(unsigned i) { float f; memcpy(&f, &i, 4); return f; }
static inline unsigned __float_as_uint(float f) { unsigned i; memcpy(&i, &f, 4); return i; }
static inline double __longlong_as_double(long long i) { double d; memcpy(&d, &i, 8); return d; }
static inline long long __double_as_longlong(double d) { long long i; memcpy(&i, &d, 8); return i; }
static inline int __double2hiint(double d) { return (int)(__double_as_longlong(d) >> 32); }
static inline int __double2loint(double d) { return (int)(__double_as_longlong(d) & 0xffffffff); }
static inline double __hiloint2double(int hi, int lo) { return __longlong_as_double(((long long)hi << 32) | (unsigned)lo); }
static inline int __popc(unsigned x) { return __builtin_popcount(x); }
static inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
static inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz((unsigned)x); }
static inline int __clzll(long long x) { return x == 0 ? 64 : __builtin_clzll((unsigned long long)x); }
static inline int __ffs(int x) { return __builtin_ffs(x); }
static inline int __ffsll(long long x) { return __builtin_ffsll(x); }
static inline unsigned __brev(unsigned x) {
    x = ((x >> 1) & 0x55555555u) | ((x & 0x55555555u) << 1);
    x = ((x >> 2) & 0x33333333u) | ((x & 0x33333333u) << 2);
    x = ((x >> 4) & 0x0f0f0f0fu) | ((x & 0x0f0f0f0fu) << 4);
    return __builtin_bswap32(x);
}
static inline unsigned long long __brevll(unsigned long long x) {
    return ((unsigned long long)__brev((unsigned)x) << 32) | __brev((unsigned)(x >> 32));
}
static inline unsigned __byte_perm(unsigned x, unsigned y, unsigned s) {
    unsigned long long both = ((unsigned long long)y << 32) | x, r = 0;
    for (int i = 0; i < 4; i++) r |= ((both >> (8 * ((s >> (4 * i)) & 7))) & 0xff) << (8 * i);
    return (unsigned)r;
}
static inline unsigned __funnelshift_l(unsigned lo, unsigned hi, unsigned shift) {
    unsigned long long v = ((unsigned long long)hi << 32) | lo;
    return (unsigned)((v << (shift & 31)) >> 32);
}
static inline unsigned __funnelshift_lc(unsigned lo, unsigned hi, unsigned shift) {
    unsigned long long v = ((unsigned long long)hi << 32) | lo;
    return (unsigned)((v << (shift > 32 ? 32 : shift)) >> 32);
}
static inline unsigned __funnelshift_r(unsigned lo, unsigned hi, unsigned shift) {
    unsigned long long v = ((unsigned long long)hi << 32) | lo;
    return (unsigned)(v >> (shift & 31));
}
static inline unsigned __funnelshift_rc(unsigned lo, unsigned hi, unsigned shift) {
    unsigned long long v = ((unsigned long long)hi << 32) | lo;
    return (unsigned)(v >> (shift > 32 ? 32 : shift));
}
static inline int __mul24(int a, int b) {
    long long x = (long long)((a << 8) >> 8), y = (long long)((b << 8) >> 8);   // the low 24 bits, signed
    return (int)(x * y);
}
static inline unsigned __umul24(unsigned a, unsigned b) { return (a & 0xffffff) * (b & 0xffffff); }
static inline int __mulhi(int a, int b) { return (int)(((long long)a * b) >> 32); }
static inline unsigned __umulhi(unsigned a, unsigned b) { return (unsigned)(((unsigned long long)a * b) >> 32); }
static inline long long __mul64hi(long long a, long long b) { return (long long)(((__int128)a * b) >> 64); }
static inline unsigned long long __umul64hi(unsigned long long a, unsigned long long b) {
    return (unsigned long long)(((unsigned __int128)a * b) >> 64);
}
static inline unsigned __sad(int x, int y, unsigned z) { return z + (unsigned)(x > y ? (long long)x - y : (long long)y - x); }
static inline unsigned __usad(unsigned x, unsigned y, unsigned z) { return z + (x > y ? x - y : y - x); }
static inline int __hadd(int a, int b) { return (int)(((long long)a + b) >> 1); }
static inline int __rhadd(int a, int b) { return (int)(((long long)a + b + 1) >> 1); }
static inline unsigned __uhadd(unsigned a, unsigned b) { return (unsigned)(((unsigned long long)a + b) >> 1); }
static inline unsigned __urhadd(unsigned a, unsigned b) { return (unsigned)(((unsigned long long)a + b + 1) >> 1); }

// ---- conversions: saturating, NaN to 0, with the rounding mode in the name --------------------------
#define GPT2CPU_CONVERT(FROM, SUFFIX, MODE)                                                                           \
    static inline int __##FROM##2int_##SUFFIX(FROM v) { return ::gpt2cpu::saturate<int>(::gpt2cpu::round_mode(v, MODE), INT32_MIN, INT32_MAX); } \
    static inline unsigned __##FROM##2uint_##SUFFIX(FROM v) { return ::gpt2cpu::saturate<unsigned>(::gpt2cpu::round_mode(v, MODE), 0u, UINT32_MAX); } \
    static inline long long __##FROM##2ll_##SUFFIX(FROM v) {                                                          \
        double r = ::gpt2cpu::round_mode(v, MODE);                                                                    \
        return r != r ? 0 : (r >= 9.2233720368547758e18 ? INT64_MAX : (r <= -9.2233720368547758e18 ? INT64_MIN : (long long)r)); } \
    static inline unsigned long long __##FROM##2ull_##SUFFIX(FROM v) {                                                \
        double r = ::gpt2cpu::round_mode(v, MODE);                                                                    \
        return r != r || r <= 0 ? 0 : (r >= 1.8446744073709552e19 ? UINT64_MAX : (unsigned long long)r); }
GPT2CPU_CONVERT(float, rn, 0) GPT2CPU_CONVERT(float, rz, 1) GPT2CPU_CONVERT(float, rd, 2) GPT2CPU_CONVERT(float, ru, 3)
GPT2CPU_CONVERT(double, rn, 0) GPT2CPU_CONVERT(double, rz, 1) GPT2CPU_CONVERT(double, rd, 2) GPT2CPU_CONVERT(double, ru, 3)
#undef GPT2CPU_CONVERT
// integers to float: exact in double (int, unsigned) or via the exact residual (64-bit)
#define GPT2CPU_TO_FLOAT(NAME, T)                                                                                     \
    static inline float __##NAME##2float_rn(T v) { return (float)(long double)v; }                                    \
    static inline float __##NAME##2float_rz(T v) { long double x = v; float r = (float)x; return ::gpt2cpu::directed(r, (double)x, (double)(x - (long double)(double)x), 1); } \
    static inline float __##NAME##2float_rd(T v) { long double x = v; float r = (float)x; return ::gpt2cpu::directed(r, (double)x, (double)(x - (long double)(double)x), 2); } \
    static inline float __##NAME##2float_ru(T v) { long double x = v; float r = (float)x; return ::gpt2cpu::directed(r, (double)x, (double)(x - (long double)(double)x), 3); }
GPT2CPU_TO_FLOAT(int, int) GPT2CPU_TO_FLOAT(uint, unsigned) GPT2CPU_TO_FLOAT(ll, long long) GPT2CPU_TO_FLOAT(ull, unsigned long long)
#undef GPT2CPU_TO_FLOAT
static inline double __int2double_rn(int v) { return (double)v; }
static inline double __uint2double_rn(unsigned v) { return (double)v; }
static inline double __ll2double_rn(long long v) { return (double)v; }
static inline double __ull2double_rn(unsigned long long v) { return (double)v; }
static inline float __double2float_rn(double d) { return (float)d; }
static inline float __double2float_rz(double d) { float r = (float)d; return ::gpt2cpu::directed(r, d, 0.0, 1); }
static inline float __double2float_rd(double d) { float r = (float)d; return ::gpt2cpu::directed(r, d, 0.0, 2); }
static inline float __double2float_ru(double d) { float r = (float)d; return ::gpt2cpu::directed(r, d, 0.0, 3); }

// ---- memory: cache hints are plain accesses; fences; addresses; time -----------------------------------
template <class T> static inline T __ldg(const T* p) { return *p; }
template <class T> static inline T __ldca(const T* p) { return *p; }
template <class T> static inline T __ldcg(const T* p) { return *p; }
template <class T> static inline T __ldcs(const T* p) { return *p; }
template <class T> static inline T __ldlu(const T* p) { return *p; }
template <class T> static inline T __ldcv(const T* p) { return *p; }
template <class T> static inline void __stwb(T* p, T v) { *p = v; }
template <class T> static inline void __stcg(T* p, T v) { *p = v; }
template <class T> static inline void __stcs(T* p, T v) { *p = v; }
template <class T> static inline void __stwt(T* p, T v) { *p = v; }
static inline void __threadfence_system() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
static inline size_t __cvta_generic_to_shared(const void* p) { return (size_t)p; }
static inline void* __cvta_shared_to_generic(size_t a) { return (void*)a; }
static inline size_t __cvta_generic_to_global(const void* p) { return (size_t)p; }
static inline unsigned __isShared(const void* p) {
    ::gpt2cpu::Worker* w = nullptr;
    return ::gpt2cpu::shared_slot_of(p, &w) >= 0;
}
static inline unsigned __isGlobal(const void* p) { return ::gpt2cpu::window_of(p) >= 0; }
static inline long long clock64() {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}
// (a macro: the C library declares a clock() of its own; a kernel's clock() counts nanoseconds here)
#define clock() ((long)clock64())
static inline void __nanosleep(unsigned ns) {
    struct timespec ts = {0, (long)ns};
    nanosleep(&ts, nullptr);
}
#define __trap() __builtin_trap()
#define __brkpt() __builtin_trap()

// ---- SIMD in a word (the Math API's SIMD intrinsics): two 16-bit or four 8-bit parts -------------
// `2` suffix: halfwords, `4`: bytes; `s`/`u`: the parts as signed or unsigned; `ss`/`us`: the result
// saturated to the signed or unsigned range of a part instead of wrapping around.
namespace gpt2cpu {
template <int BITS> static inline long long simd_part(unsigned x, int k, bool is_signed) {
    long long v = (x >> (k * BITS)) & ((1u << BITS) - 1);
    return is_signed && (v >> (BITS - 1)) ? v - (1ll << BITS) : v;
}
template <int BITS> static inline long long simd_sat(long long v, bool is_signed) {
    long long lo = is_signed ? -(1ll << (BITS - 1)) : 0, hi = is_signed ? (1ll << (BITS - 1)) - 1 : (1ll << BITS) - 1;
    return v < lo ? lo : v > hi ? hi : v;
}
template <int BITS, class F> static inline unsigned simd_map(F f) {
    unsigned out = 0;
    for (int k = 0; k < 32 / BITS; k++) out |= ((unsigned)(long long)f(k) & ((1u << BITS) - 1)) << (k * BITS);
    return out;
}
}  // namespace gpt2cpu
#define GPT2CPU_SIMD2(NAME, EXPR)                                                                       \
    static inline unsigned NAME##2(unsigned a, unsigned b) { return GPT2CPU_SIMD_BODY(16, EXPR); }      \
    static inline unsigned NAME##4(unsigned a, unsigned b) { return GPT2CPU_SIMD_BODY(8, EXPR); }
#define GPT2CPU_SIMD1(NAME, EXPR)                                                                       \
    static inline unsigned NAME##2(unsigned a) { const unsigned b = 0; return GPT2CPU_SIMD_BODY(16, EXPR); } \
    static inline unsigned NAME##4(unsigned a) { const unsigned b = 0; return GPT2CPU_SIMD_BODY(8, EXPR); }
#define GPT2CPU_SIMD_BODY(BITS, EXPR) ::gpt2cpu::simd_map<BITS>([&](int k) {                            \
        const long long sa = ::gpt2cpu::simd_part<BITS>(a, k, true), sb = ::gpt2cpu::simd_part<BITS>(b, k, true); \
        const long long ua = ::gpt2cpu::simd_part<BITS>(a, k, false), ub = ::gpt2cpu::simd_part<BITS>(b, k, false); \
        const long long ones = (1ll << BITS) - 1;                                                       \
        auto S = [](long long v) { return ::gpt2cpu::simd_sat<BITS>(v, true); };                        \
        auto U = [](long long v) { return ::gpt2cpu::simd_sat<BITS>(v, false); };                       \
        (void)sa; (void)sb; (void)ua; (void)ub; (void)ones; (void)S; (void)U;                           \
        return (long long)(EXPR); })
GPT2CPU_SIMD1(__vabs, sa < 0 ? -sa : sa)                 GPT2CPU_SIMD1(__vabsss, S(sa < 0 ? -sa : sa))
GPT2CPU_SIMD1(__vneg, -sa)                               GPT2CPU_SIMD1(__vnegss, S(-sa))
GPT2CPU_SIMD2(__vabsdiffs, sa > sb ? sa - sb : sb - sa)  GPT2CPU_SIMD2(__vabsdiffu, ua > ub ? ua - ub : ub - ua)
GPT2CPU_SIMD2(__vadd, ua + ub)                           GPT2CPU_SIMD2(__vsub, ua - ub)
GPT2CPU_SIMD2(__vaddss, S(sa + sb))                      GPT2CPU_SIMD2(__vsubss, S(sa - sb))
GPT2CPU_SIMD2(__vaddus, U(ua + ub))                      GPT2CPU_SIMD2(__vsubus, U(ua - ub))
GPT2CPU_SIMD2(__vavgs, (sa + sb + 1) >> 1)               GPT2CPU_SIMD2(__vavgu, (ua + ub + 1) >> 1)
GPT2CPU_SIMD2(__vhaddu, (ua + ub) >> 1)
GPT2CPU_SIMD2(__vmaxs, sa > sb ? sa : sb)                GPT2CPU_SIMD2(__vmaxu, ua > ub ? ua : ub)
GPT2CPU_SIMD2(__vmins, sa < sb ? sa : sb)                GPT2CPU_SIMD2(__vminu, ua < ub ? ua : ub)
GPT2CPU_SIMD2(__vcmpeq, ua == ub ? ones : 0)             GPT2CPU_SIMD2(__vcmpne, ua != ub ? ones : 0)
GPT2CPU_SIMD2(__vcmpges, sa >= sb ? ones : 0)            GPT2CPU_SIMD2(__vcmpgeu, ua >= ub ? ones : 0)
GPT2CPU_SIMD2(__vcmpgts, sa > sb ? ones : 0)             GPT2CPU_SIMD2(__vcmpgtu, ua > ub ? ones : 0)
GPT2CPU_SIMD2(__vcmples, sa <= sb ? ones : 0)            GPT2CPU_SIMD2(__vcmpleu, ua <= ub ? ones : 0)
GPT2CPU_SIMD2(__vcmplts, sa < sb ? ones : 0)             GPT2CPU_SIMD2(__vcmpltu, ua < ub ? ones : 0)
GPT2CPU_SIMD2(__vseteq, ua == ub)                        GPT2CPU_SIMD2(__vsetne, ua != ub)
GPT2CPU_SIMD2(__vsetges, sa >= sb)                       GPT2CPU_SIMD2(__vsetgeu, ua >= ub)
GPT2CPU_SIMD2(__vsetgts, sa > sb)                        GPT2CPU_SIMD2(__vsetgtu, ua > ub)
GPT2CPU_SIMD2(__vsetles, sa <= sb)                       GPT2CPU_SIMD2(__vsetleu, ua <= ub)
GPT2CPU_SIMD2(__vsetlts, sa < sb)                        GPT2CPU_SIMD2(__vsetltu, ua < ub)
#undef GPT2CPU_SIMD1
#undef GPT2CPU_SIMD2
#undef GPT2CPU_SIMD_BODY
// sums of absolute differences of the parts
namespace gpt2cpu {
template <int BITS> static inline unsigned simd_sad(unsigned a, unsigned b, bool is_signed) {
    long long s = 0;
    for (int k = 0; k < 32 / BITS; k++) {
        long long d = simd_part<BITS>(a, k, is_signed) - simd_part<BITS>(b, k, is_signed);
        s += d < 0 ? -d : d;
    }
    return (unsigned)s;
}
}  // namespace gpt2cpu
static inline unsigned __vsads2(unsigned a, unsigned b) { return ::gpt2cpu::simd_sad<16>(a, b, true); }
static inline unsigned __vsads4(unsigned a, unsigned b) { return ::gpt2cpu::simd_sad<8>(a, b, true); }
static inline unsigned __vsadu2(unsigned a, unsigned b) { return ::gpt2cpu::simd_sad<16>(a, b, false); }
static inline unsigned __vsadu4(unsigned a, unsigned b) { return ::gpt2cpu::simd_sad<8>(a, b, false); }

// ---- dot products of packed integers (int8 inference kernels) ---------------------------------------
// __dp4a: c + the four products of a's and b's bytes; __dp2a_lo/_hi: c + a's two halfwords times the
// low or high two bytes of b. Signed for int, unsigned for unsigned.
static inline int __dp4a(int a, int b, int c) {
    long long s = c;
    for (int k = 0; k < 4; k++) s += ::gpt2cpu::simd_part<8>((unsigned)a, k, true) * ::gpt2cpu::simd_part<8>((unsigned)b, k, true);
    return (int)(unsigned)s;
}
static inline unsigned __dp4a(unsigned a, unsigned b, unsigned c) {
    unsigned long long s = c;
    for (int k = 0; k < 4; k++) s += (unsigned long long)(::gpt2cpu::simd_part<8>(a, k, false) * ::gpt2cpu::simd_part<8>(b, k, false));
    return (unsigned)s;
}
static inline int __dp4a(char4 a, char4 b, int c) {
    return c + a.x * b.x + a.y * b.y + a.z * b.z + a.w * b.w;
}
static inline unsigned __dp4a(uchar4 a, uchar4 b, unsigned c) {
    return c + (unsigned)a.x * b.x + (unsigned)a.y * b.y + (unsigned)a.z * b.z + (unsigned)a.w * b.w;
}
#define GPT2CPU_DP2A(NAME, FIRST)                                                                       \
    static inline int NAME(int a, int b, int c) {                                                      \
        long long s = c;                                                                               \
        for (int k = 0; k < 2; k++) s += ::gpt2cpu::simd_part<16>((unsigned)a, k, true) * ::gpt2cpu::simd_part<8>((unsigned)b, FIRST + k, true); \
        return (int)(unsigned)s;                                                                       \
    }                                                                                                  \
    static inline unsigned NAME(unsigned a, unsigned b, unsigned c) {                                  \
        unsigned long long s = c;                                                                      \
        for (int k = 0; k < 2; k++) s += (unsigned long long)(::gpt2cpu::simd_part<16>(a, k, false) * ::gpt2cpu::simd_part<8>(b, FIRST + k, false)); \
        return (unsigned)s;                                                                            \
    }
GPT2CPU_DP2A(__dp2a_lo, 0)
GPT2CPU_DP2A(__dp2a_hi, 2)
#undef GPT2CPU_DP2A

// ---- the rest of the math API's special functions; profiling counters --------------------------------
namespace gpt2cpu {
// The modified Bessel functions I0 and I1 by their power series, whose terms are all positive (no
// cancellation): sum over k of (x/2)^(2k + n) / (k! (k + n)!), until a term no longer counts.
static inline double bessel_i(int n, double x) {
    double half = fabs(x) / 2, term = n ? half : 1.0, sum = term;
    for (int k = 1; k < 1000 && term > sum * 1e-17; k++) {
        term *= half * half / ((double)k * (k + n));
        sum += term;
    }
    return n && x < 0 ? -sum : sum;
}
}  // namespace gpt2cpu
static inline double cyl_bessel_i0(double x) { return ::gpt2cpu::bessel_i(0, x); }
static inline double cyl_bessel_i1(double x) { return ::gpt2cpu::bessel_i(1, x); }
static inline float cyl_bessel_i0f(float x) { return (float)::gpt2cpu::bessel_i(0, x); }
static inline float cyl_bessel_i1f(float x) { return (float)::gpt2cpu::bessel_i(1, x); }
static inline void __prof_trigger(int) {}

// ---- DPX: max and min of two or three values, after an addition, with a ReLU, or telling which won --------
// (CUDA 12's dynamic-programming instructions; native on sm_90, emulated by the compiler before.) `s32`/`u32`:
// one 32-bit value; `s16x2`/`u16x2`: two halfwords, each on its own. Additions wrap around.
namespace gpt2cpu {
template <int BITS, class F> static inline unsigned dpx_map(bool is_signed, unsigned a, unsigned b, unsigned c, F f) {
    if (BITS == 32) {
        long long x = is_signed ? (long long)(int)a : (long long)a, y = is_signed ? (long long)(int)b : (long long)b;
        long long z = is_signed ? (long long)(int)c : (long long)c;
        return (unsigned)f(x, y, z, 32);
    }
    return simd_map<16>([&](int k) {
        return f(simd_part<16>(a, k, is_signed), simd_part<16>(b, k, is_signed), simd_part<16>(c, k, is_signed), 16);
    });
}
static inline long long dpx_wrap(long long v, int bits, bool is_signed) {   // a sum as the part's type holds it
    unsigned long long m = bits == 32 ? 0xffffffffull : 0xffffull;
    long long u = (long long)((unsigned long long)v & m);
    return is_signed && (u >> (bits - 1)) ? u - (long long)(m + 1) : u;
}
}  // namespace gpt2cpu
#define GPT2CPU_DPX(NAME, T, BITS, SIGNED, EXPR)                                                             \
    static inline T NAME(T a, T b, T c) {                                                                 \
        return (T)::gpt2cpu::dpx_map<BITS>(SIGNED, (unsigned)a, (unsigned)b, (unsigned)c,                  \
            [](long long x, long long y, long long z, int bits) { (void)z; (void)bits; return (long long)(EXPR); }); }
#define GPT2CPU_DPX2(NAME, T, BITS, SIGNED, EXPR)                                                            \
    static inline T NAME(T a, T b) {                                                                      \
        return (T)::gpt2cpu::dpx_map<BITS>(SIGNED, (unsigned)a, (unsigned)b, 0u,                           \
            [](long long x, long long y, long long z, int bits) { (void)z; (void)bits; return (long long)(EXPR); }); }
#define GPT2CPU_DPX_ALL(SUFFIX, T, BITS, SIGNED)                                                             \
    GPT2CPU_DPX2(__vimax_##SUFFIX, T, BITS, SIGNED, x > y ? x : y)                                         \
    GPT2CPU_DPX2(__vimin_##SUFFIX, T, BITS, SIGNED, x < y ? x : y)                                         \
    GPT2CPU_DPX(__vimax3_##SUFFIX, T, BITS, SIGNED, (x > y ? x : y) > z ? (x > y ? x : y) : z)             \
    GPT2CPU_DPX(__vimin3_##SUFFIX, T, BITS, SIGNED, (x < y ? x : y) < z ? (x < y ? x : y) : z)             \
    GPT2CPU_DPX(__viaddmax_##SUFFIX, T, BITS, SIGNED,                                                      \
                ::gpt2cpu::dpx_wrap(x + y, bits, SIGNED) > z ? ::gpt2cpu::dpx_wrap(x + y, bits, SIGNED) : z) \
    GPT2CPU_DPX(__viaddmin_##SUFFIX, T, BITS, SIGNED,                                                      \
                ::gpt2cpu::dpx_wrap(x + y, bits, SIGNED) < z ? ::gpt2cpu::dpx_wrap(x + y, bits, SIGNED) : z)
GPT2CPU_DPX_ALL(s32, int, 32, true)
GPT2CPU_DPX_ALL(u32, unsigned, 32, false)
GPT2CPU_DPX_ALL(s16x2, unsigned, 16, true)
GPT2CPU_DPX_ALL(u16x2, unsigned, 16, false)
#define GPT2CPU_DPX_RELU(SUFFIX, T, BITS)                                                                    \
    GPT2CPU_DPX2(__vimax_##SUFFIX##_relu, T, BITS, true, (x > y ? x : y) > 0 ? (x > y ? x : y) : 0)        \
    GPT2CPU_DPX2(__vimin_##SUFFIX##_relu, T, BITS, true, (x < y ? x : y) > 0 ? (x < y ? x : y) : 0)        \
    GPT2CPU_DPX(__vimax3_##SUFFIX##_relu, T, BITS, true,                                                   \
                ((x > y ? x : y) > z ? (x > y ? x : y) : z) > 0 ? ((x > y ? x : y) > z ? (x > y ? x : y) : z) : 0) \
    GPT2CPU_DPX(__vimin3_##SUFFIX##_relu, T, BITS, true,                                                   \
                ((x < y ? x : y) < z ? (x < y ? x : y) : z) > 0 ? ((x < y ? x : y) < z ? (x < y ? x : y) : z) : 0) \
    GPT2CPU_DPX(__viaddmax_##SUFFIX##_relu, T, BITS, true,                                                 \
                (::gpt2cpu::dpx_wrap(x + y, bits, true) > z ? ::gpt2cpu::dpx_wrap(x + y, bits, true) : z) > 0 ? \
                (::gpt2cpu::dpx_wrap(x + y, bits, true) > z ? ::gpt2cpu::dpx_wrap(x + y, bits, true) : z) : 0) \
    GPT2CPU_DPX(__viaddmin_##SUFFIX##_relu, T, BITS, true,                                                 \
                (::gpt2cpu::dpx_wrap(x + y, bits, true) < z ? ::gpt2cpu::dpx_wrap(x + y, bits, true) : z) > 0 ? \
                (::gpt2cpu::dpx_wrap(x + y, bits, true) < z ? ::gpt2cpu::dpx_wrap(x + y, bits, true) : z) : 0)
GPT2CPU_DPX_RELU(s32, int, 32)
GPT2CPU_DPX_RELU(s16x2, unsigned, 16)
#undef GPT2CPU_DPX_RELU
#undef GPT2CPU_DPX_ALL
#undef GPT2CPU_DPX2
#undef GPT2CPU_DPX
// max / min and which operand won: *pred = (a >= b) for max, (a <= b) for min (per halfword: hi, lo)
static inline int __vibmax_s32(int a, int b, bool* pred) { *pred = a >= b; return a >= b ? a : b; }
static inline unsigned __vibmax_u32(unsigned a, unsigned b, bool* pred) { *pred = a >= b; return a >= b ? a : b; }
static inline int __vibmin_s32(int a, int b, bool* pred) { *pred = a <= b; return a <= b ? a : b; }
static inline unsigned __vibmin_u32(unsigned a, unsigned b, bool* pred) { *pred = a <= b; return a <= b ? a : b; }
#define GPT2CPU_VIB16(NAME, SIGNED, CMP)                                                                     \
    static inline unsigned NAME(unsigned a, unsigned b, bool* pred_hi, bool* pred_lo) {                     \
        long long a0 = ::gpt2cpu::simd_part<16>(a, 0, SIGNED), b0 = ::gpt2cpu::simd_part<16>(b, 0, SIGNED);  \
        long long a1 = ::gpt2cpu::simd_part<16>(a, 1, SIGNED), b1 = ::gpt2cpu::simd_part<16>(b, 1, SIGNED);  \
        *pred_lo = a0 CMP b0;                                                                               \
        *pred_hi = a1 CMP b1;                                                                               \
        return (((unsigned)(*pred_lo ? a0 : b0)) & 0xffffu) | ((((unsigned)(*pred_hi ? a1 : b1)) & 0xffffu) << 16); }
GPT2CPU_VIB16(__vibmax_s16x2, true, >=) GPT2CPU_VIB16(__vibmax_u16x2, false, >=)
GPT2CPU_VIB16(__vibmin_s16x2, true, <=) GPT2CPU_VIB16(__vibmin_u16x2, false, <=)
#undef GPT2CPU_VIB16
