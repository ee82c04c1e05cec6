// CUDA's integer, float, memory, warp, atomic, vector and timing intrinsics, as the CUDA Math API and
// the programming guide define them (tests/test_cuda_features.py checks each against NumPy or exact
// arithmetic, and compiles this file with NVRTC).
#include <cuda_fp16.h>

// Integer intrinsics: out[k * n + i] for the k-th operation.
extern "C" __global__ void integer_ops(const unsigned* a, const unsigned* b, unsigned* out, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    unsigned x = a[i], y = b[i];
    unsigned long long xy = ((unsigned long long)x << 32) | y;
    unsigned r[14] = {(unsigned)__mul24((int)x, (int)y), __umul24(x, y), __umulhi(x, y), __brev(x),
                      __byte_perm(x, y, 0x5140), __funnelshift_l(x, y, y % 37), __funnelshift_r(x, y, y % 37),
                      __sad((int)x, (int)y, 7u), (unsigned)__clzll(xy >> (y % 64)), (unsigned)__ffsll(xy << (x % 64)),
                      min((int)x, y), max((int)x, y), (unsigned)__popcll(xy), (unsigned)__clz(x)};
    for (int k = 0; k < 14; k++) out[k * n + i] = r[k];
}

// Float intrinsics with a rounding mode, and math functions: out[k * n + i].
extern "C" __global__ void float_ops(const float* a, const float* b, float* out, int* ints, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float x = a[i], y = b[i];
    float s, c;
    sincospif(x, &s, &c);
    float r[9] = {__fdiv_rn(x, y), __fsub_rn(x, y), __frsqrt_rn(fabsf(y)), s, c, normcdff(x),
                  erfinvf(x / 10.0f), rcbrtf(y), norm3df(x, y, 1.5f)};
    for (int k = 0; k < 9; k++) out[k * n + i] = r[k];
    ints[2 * i] = __float2int_rd(x * 7.5f);
    ints[2 * i + 1] = __float2int_ru(x * 7.5f);
}

// Cache-hint loads and stores, a generic-to-shared conversion, fences and clocks.
extern "C" __global__ void memory_ops(const float* x, float* y, unsigned long long* info, int n) {
    __shared__ float tile[64];
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    long long t0 = clock64();
    float v = i < n ? __ldcg(x + i) + __ldca(x + i) + __ldlu(x + i) + __ldcs(x + i) + __ldg(x + i) : 0.0f;
    tile[threadIdx.x] = v;
    __threadfence_block();
    __threadfence();
    __threadfence_system();
    __syncthreads();
    if (i < n) __stcg(y + i, tile[threadIdx.x]);
    __nanosleep(100);
    long long t1 = clock64();
    if (i == 0) {
        info[0] = (unsigned long long)(__cvta_generic_to_shared(&tile[1]) - __cvta_generic_to_shared(&tile[0]));
        info[1] = (unsigned long long)(t1 >= t0);
        info[2] = (unsigned long long)(clock() >= 0 || true);
    }
}

// Warp matches and reductions over each warp's values: out[8 * i + k]. (__reduce_*_sync are sm_80's:
// NVRTC compiles this kernel from sm_80 on.)
#if __CUDA_ARCH__ >= 800
extern "C" __global__ void warp_ops(const unsigned* x, unsigned* out) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    unsigned v = x[i];
    int pred;
    out[8 * i + 0] = __match_any_sync(0xffffffffu, v % 5);
    out[8 * i + 1] = __match_all_sync(0xffffffffu, v / 1000000u, &pred);
    out[8 * i + 2] = (unsigned)pred;
    out[8 * i + 3] = __reduce_add_sync(0xffffffffu, v % 1000u);
    out[8 * i + 4] = __reduce_min_sync(0xffffffffu, v);
    out[8 * i + 5] = __reduce_max_sync(0xffffffffu, v);
    out[8 * i + 6] = __reduce_and_sync(0xffffffffu, v) ^ __reduce_or_sync(0xffffffffu, v);
    out[8 * i + 7] = __reduce_xor_sync(0xffffffffu, v) + (unsigned)__reduce_min_sync(0xffffffffu, (int)v - 50);
}
#endif

// Atomics of every family: counters[0..2] wrap with atomicInc/Dec, bit operations, 64-bit min/max,
// block- and system-scoped adds.
extern "C" __global__ void atomic_ops(const unsigned* x, unsigned* counters, unsigned long long* wide,
                                      int* scoped, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    atomicInc(counters + 0, 9u);        // counts 0..9, then wraps to 0
    atomicDec(counters + 1, 9u);        // counts down from 9 (0 wraps to 9)
    atomicAnd(counters + 2, ~(1u << (x[i] % 32)));
    atomicOr(counters + 3, 1u << (x[i] % 32));
    atomicXor(counters + 4, x[i]);
    atomicMin(wide + 0, (unsigned long long)x[i] * 3000000000ull);
    atomicMax(wide + 1, (unsigned long long)x[i] * 3000000000ull);
    atomicAdd_block(scoped + 0, 1);
    atomicAdd_system(scoped + 1, 2);
}

// Vector types of other components: uchar4, short2, longlong2 with their make_* functions.
extern "C" __global__ void vectors(const uchar4* pixels, const short2* pairs, longlong2* out, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    uchar4 p = pixels[i];
    short2 q = pairs[i];
    out[i] = make_longlong2((long long)p.x + p.y + p.z + p.w, (long long)q.x * q.y);
}

// The rest of the atomic families, on 32- and 64-bit integers, float and double, and the barrier
// reductions: results in i[], ull[], ll[], f[], d[].
extern "C" __global__ void more_atomics(int* i, unsigned long long* ull, long long* ll, float* f, double* d,
                                        int* counts, int n) {
    int t = blockIdx.x * blockDim.x + threadIdx.x;
    int third = __syncthreads_count(threadIdx.x % 3 == 0);   // every thread of the block: before the return
    int all_ = __syncthreads_and(threadIdx.x < 100000), any_ = __syncthreads_or(threadIdx.x == 5);
    if (threadIdx.x == 0) counts[blockIdx.x] = third * 100 + all_ * 10 + any_;
    if (t >= n) return;
    atomicAdd(i + 0, 1);
    atomicSub(i + 1, 1);
    atomicExch(i + 2, t);
    atomicMin(i + 3, t);
    atomicMax(i + 4, t);
    int old = i[5], seen;
    while ((seen = atomicCAS(i + 5, old, old + 2)) != old) old = seen;   // a CAS loop adds 2
    atomicAdd(ull + 0, 1ull << 33);
    atomicMin(ll + 0, -(long long)t * 5000000000ll);
    atomicMax(ll + 1, -(long long)t * 5000000000ll);
    atomicAnd(ull + 1, ~(1ull << (t % 64)));
    atomicOr(ull + 2, 1ull << (t % 64));
    atomicAdd(f + 0, 0.5f);
    atomicAdd_block(f + 1, 0.25f);
    atomicAdd(d + 0, 0.5);
    atomicAdd_system(d + 1, 0.125);
}

// The SIMD-in-a-word intrinsics on halfwords (2) and bytes (4): out[k * n + i] for the k-th, in the
// order of tests/test_cuda_features.py's SIMD list.
#define SIMD_BOTH(NAME) NAME##2(x, y), NAME##4(x, y)
#define SIMD_ONE(NAME) NAME##2(x), NAME##4(x)
extern "C" __global__ void simd_ops(const unsigned* a, const unsigned* b, unsigned* out, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    unsigned x = a[i], y = b[i];
    unsigned r[] = {SIMD_ONE(__vabs), SIMD_ONE(__vabsss), SIMD_ONE(__vneg), SIMD_ONE(__vnegss),
                    SIMD_BOTH(__vabsdiffs), SIMD_BOTH(__vabsdiffu), SIMD_BOTH(__vadd), SIMD_BOTH(__vsub),
                    SIMD_BOTH(__vaddss), SIMD_BOTH(__vsubss), SIMD_BOTH(__vaddus), SIMD_BOTH(__vsubus),
                    SIMD_BOTH(__vavgs), SIMD_BOTH(__vavgu), SIMD_BOTH(__vhaddu), SIMD_BOTH(__vmaxs),
                    SIMD_BOTH(__vmaxu), SIMD_BOTH(__vmins), SIMD_BOTH(__vminu), SIMD_BOTH(__vcmpeq),
                    SIMD_BOTH(__vcmpne), SIMD_BOTH(__vcmpges), SIMD_BOTH(__vcmpgeu), SIMD_BOTH(__vcmpgts),
                    SIMD_BOTH(__vcmpgtu), SIMD_BOTH(__vcmples), SIMD_BOTH(__vcmpleu), SIMD_BOTH(__vcmplts),
                    SIMD_BOTH(__vcmpltu), SIMD_BOTH(__vseteq), SIMD_BOTH(__vsetne), SIMD_BOTH(__vsetges),
                    SIMD_BOTH(__vsetgeu), SIMD_BOTH(__vsetgts), SIMD_BOTH(__vsetgtu), SIMD_BOTH(__vsetles),
                    SIMD_BOTH(__vsetleu), SIMD_BOTH(__vsetlts), SIMD_BOTH(__vsetltu), SIMD_BOTH(__vsads),
                    SIMD_BOTH(__vsadu),
                    (unsigned)__dp4a((int)x, (int)y, -5), __dp4a(x, y, 5u), (unsigned)__dp2a_lo((int)x, (int)y, 7),
                    (unsigned)__dp2a_hi((int)x, (int)y, 7), __dp2a_lo(x, y, 7u), __dp2a_hi(x, y, 7u)};
    for (int k = 0; k < (int)(sizeof(r) / sizeof(r[0])); k++) out[k * n + i] = r[k];
}

// Saturating half arithmetic and the Bessel functions I0, I1.
extern "C" __global__ void saturated_and_bessel(const float* x, float* out, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    __half h = __float2half(x[i] / 4.0f);
    out[4 * i + 0] = __half2float(__hadd_sat(h, __float2half(0.25f)));
    out[4 * i + 1] = __half2float(__hmul_sat(h, h));
    out[4 * i + 2] = cyl_bessel_i0f(x[i]);
    out[4 * i + 3] = cyl_bessel_i1f(x[i]);
}
