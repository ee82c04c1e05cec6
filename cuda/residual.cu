// residual.cu: the residual connection of GPT-2, forward and backward.
// Wrapper: helpers/ops/residual.py · notebook: notebooks/05_gelu_residual.ipynb · tests: tests/test_op_residual.py.
//
// What this file computes. Each transformer block adds its two sublayers' outputs to the stream
// that flows through the network:
//     x = x + attn(ln1(x))        x = x + mlp(ln2(x))          all (B, T, C)
// The forward pass is out = a + b, elementwise. Its backward pass is the simplest there is: the
// gradient of a sum reaches both terms unchanged, d(a + b)/da = d(a + b)/db = 1, so
//     da[i] += dout[i]        db[i] += dout[i]
// (accumulating, as every gradient here does: the residual stream's gradient also receives what
// flows back through the sublayer). This "gradient highway" is why deep residual networks train.
//
// A float32 addition is correctly rounded (IEEE 754) on a GPU as in NumPy, so these kernels agree
// with the reference bit for bit. One addition per 12 bytes moved (forward: read a and b, write
// out): purely memory-bound, judged in GB/s.
//
// version 1, residual_forward1 / residual_backward1: one element per thread, `if (i < n)` for the
//     tail; 4-byte loads and stores.
// version 2, residual_forward2 / residual_backward2: four elements per thread through float4 pointers,
//     one 16-byte load or store per array (a quarter of the memory instructions of version 1 for the
//     same bytes). The arrays are seen as n4 = n / 4 float4s: n must be a multiple of 4 and the
//     arrays 16-byte aligned (the Python wrapper checks both; in GPT-2, n = B*T*C with C = 768).
// version 3, residual_forward3 / residual_backward3: bf16 storage (mixed precision, notebook 13):
//     every array is __nv_bfloat16, half the bytes of float32. Eight elements per thread, one 16-byte
//     bf16x8 load or store per array (bf16.cuh): n must be a multiple of 8 and the arrays 16-byte
//     aligned (the wrapper checks). Each sum is one float32 addition of the two values, rounded once
//     to bf16 (nearest even) when stored, so the result is ml_dtypes' rounding of NumPy's float32 sum
//     bit for bit; in the backward, da += dout loads the bf16 da, adds in float32 and rounds once.

#include "bf16.cuh"

// version 1: out[i] = a[i] + b[i], one element per thread.
extern "C" __global__ void residual_forward1(float* out, const float* a, const float* b, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        out[i] = a[i] + b[i];
    }
}

// version 2: four elements per thread, float4 loads and store; n4 = n / 4.
extern "C" __global__ void residual_forward2(float4* out, const float4* a, const float4* b, int n4) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n4) {
        float4 va = a[i];
        float4 vb = b[i];
        out[i] = make_float4(va.x + vb.x, va.y + vb.y, va.z + vb.z, va.w + vb.w);
    }
}

// version 1: da[i] += dout[i], db[i] += dout[i], one element per thread.
extern "C" __global__ void residual_backward1(float* da, float* db, const float* dout, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        float g = dout[i];  // read once, used twice
        da[i] += g;
        db[i] += g;
    }
}

// version 2: four elements per thread, float4 loads and stores; n4 = n / 4.
extern "C" __global__ void residual_backward2(float4* da, float4* db, const float4* dout, int n4) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n4) {
        float4 g = dout[i];
        float4 va = da[i];
        float4 vb = db[i];
        da[i] = make_float4(va.x + g.x, va.y + g.y, va.z + g.z, va.w + g.w);
        db[i] = make_float4(vb.x + g.x, vb.y + g.y, vb.z + g.z, vb.w + g.w);
    }
}

// version 3: bf16 storage, eight elements per thread, float32 additions rounded once; n8 = n / 8.
extern "C" __global__ void residual_forward3(__nv_bfloat16* out, const __nv_bfloat16* a, const __nv_bfloat16* b,
                                             int n8) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n8) {
        bf16x8 va = load_bf16x8(a + 8 * i);
        bf16x8 vb = load_bf16x8(b + 8 * i);
        bf16x8 r;
        for (int k = 0; k < 8; k++) {
            r.v[k] = to_bf16(to_float(va.v[k]) + to_float(vb.v[k]));
        }
        store_bf16x8(out + 8 * i, r);
    }
}

// version 3: da += dout, db += dout in bf16, each added in float32 and rounded once; n8 = n / 8.
extern "C" __global__ void residual_backward3(__nv_bfloat16* da, __nv_bfloat16* db, const __nv_bfloat16* dout,
                                              int n8) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n8) {
        bf16x8 g = load_bf16x8(dout + 8 * i);
        bf16x8 va = load_bf16x8(da + 8 * i);
        bf16x8 vb = load_bf16x8(db + 8 * i);
        for (int k = 0; k < 8; k++) {
            float gk = to_float(g.v[k]);
            va.v[k] = to_bf16(to_float(va.v[k]) + gk);
            vb.v[k] = to_bf16(to_float(vb.v[k]) + gk);
        }
        store_bf16x8(da + 8 * i, va);
        store_bf16x8(db + 8 * i, vb);
    }
}
