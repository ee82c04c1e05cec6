// rmsnorm.cu: Llama's RMS normalisation, forward and backward, over the last axis of a (N, C)
// float32 array (N = B*T rows of C channels), eps passed in (Hugging Face's LlamaConfig defaults
// rms_norm_eps to 1e-6; a model passes its own).
// Wrapper: helpers/ops/rmsnorm.py · notebook: notebooks/11_llama_ops.ipynb · tests: tests/test_op_rmsnorm.py.
//
// Forward, for each row x of C values (LayerNorm without the mean and without the bias):
//     rstd = 1 / sqrt(sum(x^2) / C + eps)       xhat = x * rstd
//     out  = xhat * weight                      (weight: C values shared by all rows)
// as Hugging Face's LlamaRMSNorm computes it in float32: (x * rstd), then times weight.
// rstd[row] is saved: the backward pass recomputes xhat from it.
//
// Backward, with dxhat = dout * weight. out depends on x through xhat and through rstd, and
// d rstd / d x_c = -rstd^3 x_c / C, so
//     dweight += sum over rows of dout * xhat
//     dinp    += rstd * (dxhat - xhat * mean_c(dxhat * xhat))
// (LayerNorm's formula without its mean_c(dxhat) term: there is no mean to differentiate).
// Every gradient is ACCUMULATED (+=): the caller zeroes them first (see helpers/ops).
//
// Every kernel is a reduction per row (the sum of squares; in the backward the sum of
// dxhat * xhat) followed by an elementwise pass. The versions differ in who does a row's
// reduction, and every one of them is deterministic: no float atomics anywhere.
//
// version 1, rmsnorm_forward1: one thread per row, plain loops: a pass for the sum of squares, a
//     pass to write out. Any C, any block size. Slow on a GPU: only N threads, each walking its row
//     alone, and neighbouring threads read addresses C floats apart, so no load is coalesced.
// version 2, rmsnorm_forward2: one warp (32 threads) per row. Lane k reads elements k, k+32, ...:
//     each step's 32 loads are consecutive (coalesced). warp_sum (common.cuh) leaves the total in
//     every lane, so all lanes can normalise without a broadcast. Any C; the block must be whole
//     warps (blockDim.x / 32 rows per block).
// version 3, rmsnorm_forward3: one block per row, for long rows: more threads per row than a warp,
//     each loading float4 (4 channels per 16-byte load: a quarter of the load instructions), the
//     sum by block_sum (each warp's shuffles, then the warps' sums through shared memory). C must
//     be a multiple of 4 and out, x, weight 16-byte aligned; the block whole warps.
//
// version 1, rmsnorm_backward1_dx + rmsnorm_backward1_dweight: two kernels, each a plain loop.
//     The first has one thread per row: a pass for sum(dxhat * xhat), a pass that adds into dinp.
//     The second has one thread per channel c, which adds dout[row, c] * xhat[row, c] over the rows
//     in order 0, 1, 2, ...: one owner per dweight element, so no atomics and the same bits on
//     every run (and its loads are coalesced: neighbouring threads read neighbouring channels).
//     Any C, any block size.
// version 2, rmsnorm_backward2 + rmsnorm_backward2_reduce: a block per row (blocks loop over rows
//     blockIdx.x, blockIdx.x + gridDim.x, ...), float4 loads and stores, the row's sum by block_sum.
//     Float4 i of a row (channels 4i..4i+3) is always handled by thread i % blockDim.x, so that
//     thread alone accumulates the block's dweight partial sums for those channels, in C floats of
//     dynamic shared memory (C <= 12256 within 48 KiB), with no barrier and no race. At the end each
//     block writes its partial sums to scratch[blockIdx.x] (a (gridDim.x, C) buffer the wrapper
//     allocates), and a second kernel, one thread per channel, adds the gridDim.x partials in block
//     order 0, 1, 2, ... into dweight: deterministic. C % 4 == 0, the arrays 16-byte aligned, the
//     block whole warps.

// The reductions of versions 2 and 3 (warp_sum, block_sum) are in common.cuh.
#include "common.cuh"

// ------------------------------------------------------------------------------------------------
// Forward
// ------------------------------------------------------------------------------------------------

// version 1: one thread per row, two loops over the row.
extern "C" __global__ void rmsnorm_forward1(float* out, float* rstd, const float* inp, const float* weight,
                                            int N, int C, float eps) {
    int row = blockIdx.x * blockDim.x + threadIdx.x;
    if (row < N) {
        const float* x = inp + (size_t)row * C;  // size_t: row * C can pass 2^31
        float* y = out + (size_t)row * C;
        float sum_sq = 0.0f;
        for (int c = 0; c < C; c++) {
            sum_sq += x[c] * x[c];
        }
        float s = rsqrtf(sum_sq / C + eps);
        for (int c = 0; c < C; c++) {
            y[c] = x[c] * s * weight[c];  // (x * rstd) * weight: Hugging Face's order
        }
        rstd[row] = s;
    }
}

// version 2: one warp per row; block = whole warps, blockDim.x / 32 rows per block.
extern "C" __global__ void rmsnorm_forward2(float* out, float* rstd, const float* inp, const float* weight,
                                            int N, int C, float eps) {
    int lane = threadIdx.x % 32;
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    // `row` is the same for the 32 lanes of a warp, so a warp past the last row leaves as a whole
    // and no shuffle waits for a lane that left.
    if (row >= N) {
        return;
    }
    const float* x = inp + (size_t)row * C;
    float* y = out + (size_t)row * C;

    float sum_sq = 0.0f;
    for (int c = lane; c < C; c += 32) {  // the 32 lanes read 32 consecutive floats per step
        sum_sq += x[c] * x[c];
    }
    float s = rsqrtf(warp_sum(sum_sq) / C + eps);

    for (int c = lane; c < C; c += 32) {
        y[c] = x[c] * s * weight[c];
    }
    if (lane == 0) {
        rstd[row] = s;
    }
}

// version 3: one block per row, float4 loads and stores, a block reduction. C % 4 == 0.
extern "C" __global__ void rmsnorm_forward3(float* out, float* rstd, const float* inp, const float* weight,
                                            int N, int C, float eps) {
    __shared__ float warp_sums[32];
    int row = blockIdx.x;  // gridDim.x == N: every block has a row, so no thread leaves before block_sum
    int C4 = C / 4;
    const float4* x = reinterpret_cast<const float4*>(inp + (size_t)row * C);
    float4* y = reinterpret_cast<float4*>(out + (size_t)row * C);
    const float4* w = reinterpret_cast<const float4*>(weight);

    float sum_sq = 0.0f;
    for (int i = threadIdx.x; i < C4; i += blockDim.x) {
        float4 v = x[i];
        sum_sq += (v.x * v.x + v.y * v.y) + (v.z * v.z + v.w * v.w);
    }
    float s = rsqrtf(block_sum(sum_sq, warp_sums) / C + eps);

    for (int i = threadIdx.x; i < C4; i += blockDim.x) {  // a second read of x: it hits the cache
        float4 v = x[i], wi = w[i];
        float4 o;
        o.x = v.x * s * wi.x;
        o.y = v.y * s * wi.y;
        o.z = v.z * s * wi.z;
        o.w = v.w * s * wi.w;
        y[i] = o;
    }
    if (threadIdx.x == 0) {
        rstd[row] = s;
    }
}

// ------------------------------------------------------------------------------------------------
// Backward
// ------------------------------------------------------------------------------------------------

// version 1, kernel 1 of 2: one thread per row adds the row's input gradient into dinp.
extern "C" __global__ void rmsnorm_backward1_dx(float* dinp, const float* dout, const float* inp,
                                                const float* weight, const float* rstd, int N, int C) {
    int row = blockIdx.x * blockDim.x + threadIdx.x;
    if (row < N) {
        const float* x = inp + (size_t)row * C;
        const float* dy = dout + (size_t)row * C;
        float* dx = dinp + (size_t)row * C;
        float s = rstd[row];

        float sum_dxhat_xhat = 0.0f;  // pass 1: the row's mean of dxhat * xhat
        for (int c = 0; c < C; c++) {
            sum_dxhat_xhat += (dy[c] * weight[c]) * (x[c] * s);
        }
        float mean_dxhat_xhat = sum_dxhat_xhat / C;

        for (int c = 0; c < C; c++) {  // pass 2: the gradient
            float xhat = x[c] * s;
            float dxhat = dy[c] * weight[c];
            dx[c] += s * (dxhat - xhat * mean_dxhat_xhat);
        }
    }
}

// version 1, kernel 2 of 2: one thread per channel adds dout * xhat over the rows, in row order.
extern "C" __global__ void rmsnorm_backward1_dweight(float* dweight, const float* dout, const float* inp,
                                                     const float* rstd, int N, int C) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c < C) {
        float dw = 0.0f;
        for (int row = 0; row < N; row++) {  // neighbouring threads read neighbouring channels
            size_t i = (size_t)row * C + c;
            dw += dout[i] * (inp[i] * rstd[row]);
        }
        dweight[c] += dw;
    }
}

// version 2, kernel 1 of 2: a block per row (rows blockIdx.x, blockIdx.x + gridDim.x, ...), dinp
// directly, and this block's partial sums of dweight into scratch[blockIdx.x]. float4 throughout:
// C % 4 == 0. Dynamic shared memory: C floats. blockDim.x a multiple of 32.
extern "C" __global__ void rmsnorm_backward2(float* dinp, float* scratch, const float* dout, const float* inp,
                                             const float* weight, const float* rstd, int N, int C) {
    extern __shared__ float4 dweight_acc[];  // C / 4 float4s: this block's dweight partial sums
    __shared__ float warp_sums[32];
    int C4 = C / 4;
    const float4* w = reinterpret_cast<const float4*>(weight);
    // Float4 i is only ever touched by thread i % blockDim.x, here and below: no barrier is needed
    // between these writes and that thread's later reads, and no two threads share an element.
    for (int i = threadIdx.x; i < C4; i += blockDim.x) {
        dweight_acc[i] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    }
    // The loop bound is the same for the whole block, so all its threads reach block_sum's barriers.
    for (int row = blockIdx.x; row < N; row += gridDim.x) {
        const float4* x = reinterpret_cast<const float4*>(inp + (size_t)row * C);
        const float4* dy = reinterpret_cast<const float4*>(dout + (size_t)row * C);
        float4* dx = reinterpret_cast<float4*>(dinp + (size_t)row * C);
        float s = rstd[row];

        float sum_dxhat_xhat = 0.0f;
        for (int i = threadIdx.x; i < C4; i += blockDim.x) {
            float4 xi = x[i], dyi = dy[i], wi = w[i];
            sum_dxhat_xhat += ((dyi.x * wi.x) * (xi.x * s) + (dyi.y * wi.y) * (xi.y * s)) +
                              ((dyi.z * wi.z) * (xi.z * s) + (dyi.w * wi.w) * (xi.w * s));
        }
        float m = block_sum(sum_dxhat_xhat, warp_sums) / C;

        for (int i = threadIdx.x; i < C4; i += blockDim.x) {  // second reads of x, dout: cache hits
            float4 xi = x[i], dyi = dy[i], wi = w[i], acc = dx[i], dw = dweight_acc[i];
            float4 xhat = make_float4(xi.x * s, xi.y * s, xi.z * s, xi.w * s);
            acc.x += s * (dyi.x * wi.x - xhat.x * m);
            acc.y += s * (dyi.y * wi.y - xhat.y * m);
            acc.z += s * (dyi.z * wi.z - xhat.z * m);
            acc.w += s * (dyi.w * wi.w - xhat.w * m);
            dw.x += dyi.x * xhat.x;
            dw.y += dyi.y * xhat.y;
            dw.z += dyi.z * xhat.z;
            dw.w += dyi.w * xhat.w;
            dx[i] = acc;
            dweight_acc[i] = dw;
        }
    }
    // Partial sums out; a block with no row writes zeros.
    float4* partial = reinterpret_cast<float4*>(scratch + (size_t)blockIdx.x * C);
    for (int i = threadIdx.x; i < C4; i += blockDim.x) {
        partial[i] = dweight_acc[i];
    }
}

// version 2, kernel 2 of 2: one thread per channel adds the num_blocks partial sums, in block order,
// into dweight. A fixed order: the same bits on every run.
extern "C" __global__ void rmsnorm_backward2_reduce(float* dweight, const float* scratch, int num_blocks, int C) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c < C) {
        float dw = 0.0f;
        for (int b = 0; b < num_blocks; b++) {  // consecutive threads read consecutive channels
            dw += scratch[(size_t)b * C + c];
        }
        dweight[c] += dw;
    }
}
