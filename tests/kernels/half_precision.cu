// 16-bit floats, as cuda_fp16.h and cuda_bf16.h define them, on both backends (tests/test_cuda_features.py
// compiles this file with NVRTC and NVIDIA's headers too).
#include <cuda_fp16.h>
#include <cuda_bf16.h>

// float -> half and bfloat16 in each of CUDA's rounding modes, and back: out[4 * i + mode].
extern "C" __global__ void convert(const float* x, __half* h, __nv_bfloat16* b, float* back, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float v = x[i];
    h[4 * i + 0] = __float2half_rn(v);
    h[4 * i + 1] = __float2half_rz(v);
    h[4 * i + 2] = __float2half_rd(v);
    h[4 * i + 3] = __float2half_ru(v);
    b[4 * i + 0] = __float2bfloat16_rn(v);
    b[4 * i + 1] = __float2bfloat16_rz(v);
    b[4 * i + 2] = __float2bfloat16_rd(v);
    b[4 * i + 3] = __float2bfloat16_ru(v);
    back[2 * i] = __half2float(h[4 * i]);
    back[2 * i + 1] = __bfloat162float(b[4 * i]);
}

// Arithmetic on halves (each operation rounds its exact result to nearest, as IEEE 754 says),
// comparisons, and a scalar __half parameter.
extern "C" __global__ void half_arith(const __half* a, const __half* b, __half* out, __half scale, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    __half x = a[i], y = b[i];
    out[8 * i + 0] = __hadd(x, y);
    out[8 * i + 1] = __hsub(x, y);
    out[8 * i + 2] = __hmul(x, y);
    out[8 * i + 3] = __hfma(x, y, scale);
    out[8 * i + 4] = __hmax(x, y);
    out[8 * i + 5] = __hmin(x, y);
    out[8 * i + 6] = __hlt(x, y) ? __float2half(1.0f) : __float2half(0.0f);
    out[8 * i + 7] = __hneg(__habs(x));
}

// The same on bfloat16, and __half2 / __nv_bfloat162 pairs. (bfloat16 arithmetic is sm_80's: the T4's
// sm_75 has none, so NVRTC compiles this kernel only from sm_80 on.)
#if __CUDA_ARCH__ >= 800
extern "C" __global__ void pairs(const __half2* a, const __nv_bfloat162* b, __half2* ha, __nv_bfloat162* bb,
                                 __nv_bfloat16* bs, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    ha[2 * i] = __hadd2(a[i], a[i]);
    ha[2 * i + 1] = __hmul2(a[i], __lowhigh2highlow(a[i]));
    bb[i] = __hfma2(b[i], b[i], b[i]);
    bs[2 * i] = __hadd(__low2bfloat16(b[i]), __high2bfloat16(b[i]));
    bs[2 * i + 1] = __hmul(__low2bfloat16(b[i]), __high2bfloat16(b[i]));
}
#endif

// atomicAdd on __half and __nv_bfloat16: every thread adds 1 to one of a few counters.
extern "C" __global__ void atomic_counts(__half* h, __nv_bfloat16* b, int n, int k) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        atomicAdd(h + i % k, __float2half(1.0f));
        atomicAdd(b + i % k, __float2bfloat16(1.0f));
    }
}

// An optional pointer: `bias` may be NULL (None from Python), and is read only when it is not.
extern "C" __global__ void add_bias(float* out, const float* x, const float* bias, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = x[i] + (bias != NULL ? bias[i] : 0.0f);
}

// The same without the test: reading through the null pointer is a KernelError naming `bias`.
extern "C" __global__ void add_bias_unchecked(float* out, const float* x, const float* bias, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = x[i] + bias[i];
}

// The math functions on 16-bit floats (CUDA documents them as approximate): out[6 * i + k]. (bfloat16
// math is sm_80's.)
#if __CUDA_ARCH__ >= 800
extern "C" __global__ void half_math(const __half2* h, const __nv_bfloat16* b, __half2* hout, __nv_bfloat16* bout,
                                     int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    __half2 x = h[i];
    hout[6 * i + 0] = h2exp(x);
    hout[6 * i + 1] = h2log(__habs2(x));
    hout[6 * i + 2] = h2sqrt(__habs2(x));
    hout[6 * i + 3] = h2rsqrt(__habs2(x));
    hout[6 * i + 4] = h2sin(x);
    hout[6 * i + 5] = h2cos(x);
    __nv_bfloat16 y = b[i];
    bout[6 * i + 0] = hexp(y);
    bout[6 * i + 1] = hlog(__habs(y));
    bout[6 * i + 2] = hsqrt(__habs(y));
    bout[6 * i + 3] = hrsqrt(__habs(y));
    bout[6 * i + 4] = hsin(y);
    bout[6 * i + 5] = hcos(y);
}
#endif
