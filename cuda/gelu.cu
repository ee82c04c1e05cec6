// gelu.cu: GPT-2's GELU activation, forward and backward.
// Wrapper: helpers/ops/gelu.py · notebook: notebooks/05_gelu_residual.ipynb · tests: tests/test_op_gelu.py.
//
// What this file computes. In every transformer block, the MLP is
//     h = fc(ln2(x))            (B, T, 4C)
//     a = gelu(h)               (B, T, 4C)   <- this file, elementwise
//     y = proj(a)               (B, T, C)
// with GPT-2's tanh approximation of GELU (not the exact erf form: GPT-2 was trained with this one,
// so matching its outputs needs it):
//     u       = s * (x + k x^3),      s = sqrt(2/pi) = 0.7978845608...,  k = 0.044715
//     gelu(x) = 0.5 x (1 + tanh u)
// and its derivative (derived in the notebook), with sech^2 u = 1 - tanh^2 u:
//     gelu'(x) = 0.5 (1 + tanh u) + 0.5 x (1 - tanh^2 u) s (1 + 3 k x^2)
// The backward pass ACCUMULATES, as all gradients here do: dx[i] += gelu'(x[i]) * dout[i].
// (llm.c computes sech u as 1 / coshf(u); 1 - tanh^2 u reuses the tanh already computed, and the two
// agree to float32 rounding. NVRTC has no M_PI, so s is written as a literal.)
//
// Each element is independent and needs a handful of FLOPs per 8 bytes moved (forward: read x,
// write out), far below what a GPU can compute per byte it loads: these kernels are memory-bound,
// and their figure of merit is GB/s.
//
// version 1, gelu_forward1 / gelu_backward1: one element per thread, `if (i < n)` for the tail.
//     The simplest mapping; each thread issues 4-byte loads and stores.
// version 2, gelu_forward2 / gelu_backward2: four elements per thread through float4, one 16-byte
//     load per input and one 16-byte store per output (LDG.128 / STG.128 on a GPU): a quarter of
//     the memory instructions and of the index arithmetic for the same bytes, and each warp moves
//     512 contiguous bytes per instruction. The parameters are float4 pointers: the arrays are seen
//     as n4 = n / 4 float4s, so n must be a multiple of 4 and the arrays 16-byte aligned (the
//     Python wrapper checks both; in GPT-2, n = B*T*4C always is). llm.c's version also adds
//     cache-streaming hints (__ldcs/__stcs), a second-order effect left out here.
// version 3, gelu_forward3 / gelu_backward3: bf16 storage (mixed precision, notebook 13). x, out,
//     dout and dx are __nv_bfloat16: half the bytes of float32 to move, and moving bytes is what
//     these memory-bound kernels spend their time on. Eight elements per thread through one 16-byte bf16x8 load or store per
//     array (bf16.cuh), so n must be a multiple of 8 and the arrays 16-byte aligned (the wrapper
//     checks; GPT-2's n = B*T*4C is). The formula is computed in float32, as in version 2, and each
//     result is rounded once to bf16 (round to nearest even) when stored. dx += ... loads the bf16
//     gradient, adds in float32 and rounds once: one rounding per accumulation, not two.

#include "bf16.cuh"

#define GELU_SCALING_FACTOR 0.7978845608028654f  // sqrt(2 / pi)
#define GELU_CUBIC 0.044715f

__device__ __forceinline__ float gelu(float x) {
    float u = GELU_SCALING_FACTOR * (x + GELU_CUBIC * x * x * x);
    return 0.5f * x * (1.0f + tanhf(u));
}

// d gelu / dx at x
__device__ __forceinline__ float gelu_grad(float x) {
    float u = GELU_SCALING_FACTOR * (x + GELU_CUBIC * x * x * x);
    float t = tanhf(u);
    float sech2 = 1.0f - t * t;  // d tanh(u) / du
    return 0.5f * (1.0f + t) + 0.5f * x * sech2 * GELU_SCALING_FACTOR * (1.0f + 3.0f * GELU_CUBIC * x * x);
}

// version 1: out[i] = gelu(x[i]), one element per thread.
extern "C" __global__ void gelu_forward1(float* out, const float* x, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        out[i] = gelu(x[i]);
    }
}

// version 2: four elements per thread, one float4 load and one float4 store; n4 = n / 4.
extern "C" __global__ void gelu_forward2(float4* out, const float4* x, int n4) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n4) {
        float4 v = x[i];  // one 16-byte load
        float4 r;
        r.x = gelu(v.x);
        r.y = gelu(v.y);
        r.z = gelu(v.z);
        r.w = gelu(v.w);
        out[i] = r;  // one 16-byte store
    }
}

// version 1: dx[i] += gelu'(x[i]) * dout[i], one element per thread.
extern "C" __global__ void gelu_backward1(float* dx, const float* dout, const float* x, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        dx[i] += gelu_grad(x[i]) * dout[i];
    }
}

// version 2: four elements per thread; reads x, dout and dx as float4, writes dx as float4; n4 = n / 4.
extern "C" __global__ void gelu_backward2(float4* dx, const float4* dout, const float4* x, int n4) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n4) {
        float4 v = x[i];
        float4 g = dout[i];
        float4 acc = dx[i];
        acc.x += gelu_grad(v.x) * g.x;
        acc.y += gelu_grad(v.y) * g.y;
        acc.z += gelu_grad(v.z) * g.z;
        acc.w += gelu_grad(v.w) * g.w;
        dx[i] = acc;
    }
}

// version 3: bf16 storage, eight elements per thread (one bf16x8 per array), float32 math; n8 = n / 8.
extern "C" __global__ void gelu_forward3(__nv_bfloat16* out, const __nv_bfloat16* x, int n8) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n8) {
        bf16x8 v = load_bf16x8(x + 8 * i);  // one 16-byte load
        bf16x8 r;
        for (int k = 0; k < 8; k++) {
            r.v[k] = to_bf16(gelu(to_float(v.v[k])));  // float32 math, one rounding
        }
        store_bf16x8(out + 8 * i, r);  // one 16-byte store
    }
}

// version 3: dx += gelu'(x) * dout with bf16 dx, dout, x; added in float32, rounded once; n8 = n / 8.
extern "C" __global__ void gelu_backward3(__nv_bfloat16* dx, const __nv_bfloat16* dout, const __nv_bfloat16* x,
                                          int n8) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n8) {
        bf16x8 v = load_bf16x8(x + 8 * i);
        bf16x8 g = load_bf16x8(dout + 8 * i);
        bf16x8 acc = load_bf16x8(dx + 8 * i);
        for (int k = 0; k < 8; k++) {
            acc.v[k] = to_bf16(to_float(acc.v[k]) + gelu_grad(to_float(v.v[k])) * to_float(g.v[k]));
        }
        store_bf16x8(dx + 8 * i, acc);
    }
}
