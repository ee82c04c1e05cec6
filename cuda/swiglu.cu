// swiglu.cu: Llama's SwiGLU, the nonlinearity in the middle of its MLP, forward and backward.
// Wrapper: helpers/ops/swiglu.py · notebook: notebooks/11_llama_ops.ipynb · tests: tests/test_op_swiglu.py.
//
// What this file computes. Llama's MLP is down(silu(gate(x)) * up(x)). The model fuses the gate and
// up projections into ONE matmul whose output row holds both halves:
//     gate_up = x @ [W_gate; W_up]^T      (N, 2H): gate_up[row] = [g_0 .. g_{H-1} | u_0 .. u_{H-1}]
//     out     = silu(g) * u               (N, H)   <- this file, elementwise over (row, j)
//     y       = down(out)                 (N, C)
// with g = gate_up[row, j], u = gate_up[row, H + j] and
//     sigmoid(g) = 1 / (1 + exp(-g))      silu(g) = g * sigmoid(g)
// Backward, with s = sigmoid(g) and s' = s (1 - s):
//     d silu / dg = s + g s (1 - s) = s (1 + g (1 - s))
//     dg += dout * u * s * (1 + g * (1 - s))          du += dout * silu(g)
// both ACCUMULATED (+=) into dgate_up's two halves, as every gradient here is.
//
// Large |g|. 1 / (1 + exp(-g)) as written overflows exp to inf for g < -88 (then s = 1/inf = 0,
// which is still right), but its complement 1 - s, computed as the subtraction, loses its relative
// accuracy as s nears 1 (it is exactly 0 past g = 17), and exp(-g) * s would be inf * 0 = NaN at
// g = -1e4. So both come from e = exp(-|g|), which lies in (0, 1] and never overflows:
//     g >= 0:  s = 1 / (1 + e),   1 - s = e / (1 + e)
//     g <  0:  s = e / (1 + e),   1 - s = 1 / (1 + e)
// each a few roundings from the exact value for every finite g (no cancellation, no inf, no NaN).
//
// Each output element is independent and needs ~20 FLOPs (one exp) per 12 bytes moved (forward:
// read g and u, write out): memory-bound, like gelu.cu; the figure of merit is GB/s.
//
// version 1, swiglu_forward1 / swiglu_backward1: one output element (row, j) per thread, `if (i <
//     n)` for the tail, 4-byte loads and stores. The thread's row and column come from one integer
//     division of its index by H. Any H.
// version 2, swiglu_forward2 / swiglu_backward2: four consecutive output elements per thread
//     through float4: one 16-byte load from the gate half, one from the up half, one 16-byte store
//     (the backward: also dout and both halves of dgate_up): a quarter of the memory instructions
//     and of the index arithmetic. The arrays are seen as float4s, so H must be a multiple of 4
//     (then each half of a gate_up row starts on a float4) and the arrays 16-byte aligned; the
//     Python wrapper checks both (Llama's H, 11008 or 14336, always is).

// s = sigmoid(g) and its complement 1 - s, both from e = exp(-|g|) in (0, 1]: no overflow.
__device__ __forceinline__ void sigmoid_pair(float g, float* s, float* one_minus_s) {
    float e = expf(-fabsf(g));
    float r = 1.0f / (1.0f + e);
    *s = g >= 0.0f ? r : e * r;
    *one_minus_s = g >= 0.0f ? e * r : r;
}

__device__ __forceinline__ float silu(float g) {
    float s, one_minus_s;
    sigmoid_pair(g, &s, &one_minus_s);
    return g * s;
}

// d silu / dg = s (1 + g (1 - s)); also returns silu(g) = g s, which the backward needs for du.
__device__ __forceinline__ float silu_grad(float g, float* silu_g) {
    float s, one_minus_s;
    sigmoid_pair(g, &s, &one_minus_s);
    *silu_g = g * s;
    return s * (1.0f + g * one_minus_s);
}

// version 1: out[row, j] = silu(gate_up[row, j]) * gate_up[row, H + j], one element per thread.
extern "C" __global__ void swiglu_forward1(float* out, const float* gate_up, int N, int H) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;  // out's flat index: row * H + j
    if (i < N * H) {
        int row = i / H, j = i % H;
        const float* gu = gate_up + (size_t)row * 2 * H;
        out[i] = silu(gu[j]) * gu[H + j];
    }
}

// version 2: four elements per thread, float4; H4 = H / 4 float4s per half of a gate_up row.
extern "C" __global__ void swiglu_forward2(float4* out, const float4* gate_up, int N, int H4) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;  // out's flat float4 index: row * H4 + j
    if (i < N * H4) {
        int row = i / H4, j = i % H4;
        const float4* gu = gate_up + (size_t)row * 2 * H4;
        float4 g = gu[j];       // one 16-byte load from the gate half
        float4 u = gu[H4 + j];  // one from the up half
        float4 r;
        r.x = silu(g.x) * u.x;
        r.y = silu(g.y) * u.y;
        r.z = silu(g.z) * u.z;
        r.w = silu(g.w) * u.w;
        out[i] = r;  // one 16-byte store
    }
}

// version 1: dg += dout * u * silu'(g), du += dout * silu(g), one output element per thread (each
// thread owns one element of each half of dgate_up: no two threads write the same place).
extern "C" __global__ void swiglu_backward1(float* dgate_up, const float* dout, const float* gate_up, int N, int H) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < N * H) {
        int row = i / H, j = i % H;
        size_t gate = (size_t)row * 2 * H + j, up = gate + H;
        float g = gate_up[gate], u = gate_up[up], dy = dout[i];
        float silu_g;
        float grad = silu_grad(g, &silu_g);
        dgate_up[gate] += dy * u * grad;
        dgate_up[up] += dy * silu_g;
    }
}

// version 2: four elements per thread; reads g, u, dout and both halves of dgate_up as float4.
extern "C" __global__ void swiglu_backward2(float4* dgate_up, const float4* dout, const float4* gate_up, int N,
                                            int H4) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < N * H4) {
        int row = i / H4, j = i % H4;
        size_t gate = (size_t)row * 2 * H4 + j, up = gate + H4;
        float4 g = gate_up[gate], u = gate_up[up], dy = dout[i];
        float4 dg = dgate_up[gate], du = dgate_up[up];
        float silu_g;
        float grad = silu_grad(g.x, &silu_g);
        dg.x += dy.x * u.x * grad;
        du.x += dy.x * silu_g;
        grad = silu_grad(g.y, &silu_g);
        dg.y += dy.y * u.y * grad;
        du.y += dy.y * silu_g;
        grad = silu_grad(g.z, &silu_g);
        dg.z += dy.z * u.z * grad;
        du.z += dy.z * silu_g;
        grad = silu_grad(g.w, &silu_g);
        dg.w += dy.w * u.w * grad;
        du.w += dy.w * silu_g;
        dgate_up[gate] = dg;
        dgate_up[up] = du;
    }
}
