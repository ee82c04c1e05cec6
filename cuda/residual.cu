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
