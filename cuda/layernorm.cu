// layernorm.cu: GPT-2's layer normalisation, forward and backward, over the last axis of a
// (N, C) float32 array (N = B*T rows of C channels), eps = 1e-5 (passed in).
// Wrapper: helpers/ops/layernorm.py · notebook: notebooks/02_layernorm.ipynb · tests: tests/test_op_layernorm.py.
//
// Forward, for each row x of C values:
//     mean = sum(x) / C                 var = sum((x - mean)^2) / C   (biased, as PyTorch/GPT-2)
//     rstd = 1 / sqrt(var + eps)        xhat = (x - mean) * rstd
//     out  = xhat * weight + bias       (weight, bias: C values shared by all rows)
// mean[row] and rstd[row] are saved: the backward pass recomputes xhat from them.
//
// Backward (derived in notebooks/02_layernorm.ipynb), with dxhat = dout * weight:
//     dbias   += sum over rows of dout          dweight += sum over rows of dout * xhat
//     dinp    += rstd * (dxhat - mean_c(dxhat) - xhat * mean_c(dxhat * xhat))
// Every gradient is ACCUMULATED (+=): the caller zeroes them first (see helpers/ops).
//
// Every kernel here is a reduction per row (two of them: a mean, then a variance or the two means
// of the backward) followed by an elementwise pass. The versions differ in who does a row's
// reduction:
//
// version 1, layernorm_forward1: one thread per row, plain loops: a pass for the mean, a pass for
//     the variance (two passes rather than E[x^2] - mean^2, which cancels catastrophically when
//     |mean| >> std), a pass to write out. Any C. Slow on a GPU: only N threads (8192 for GPT-2
//     small), each walking 3 KB alone, and neighbouring threads read addresses C floats apart, so
//     no load is coalesced.
// version 2, layernorm_forward2: one warp (32 threads) per row. Lane k reads elements k, k+32,
//     k+64...: the warp's 32 loads of one step are consecutive (coalesced). The 32 partial sums are
//     combined with __shfl_xor_sync (a butterfly: afterwards EVERY lane holds the total, so all of
//     them can normalise without another broadcast). Any C; the block must be whole warps.
// version 3, layernorm_forward3: one block per row, for long rows: more threads per row than a warp.
//     Each thread loads float4 (16 bytes, 4 channels at once: a quarter of the load instructions),
//     so C must be a multiple of 4 (and the arrays 16-byte aligned). A block reduction: each warp
//     reduces with shuffles, lane 0 of each warp writes its sum to shared memory, a barrier, and
//     every warp reduces those (at most 32) sums again so every thread holds the total.
//
// version 1, layernorm_backward1: one thread per row, plain loops: a pass for the two means, a pass
//     that writes dinp and adds this row's dout and dout*xhat into dbias/dweight with float
//     atomicAdd. Every row adds into the same C gradients, in whatever order the threads happen
//     to run: float addition is not associative, so the last bits of dweight/dbias change from
//     run to run (nondeterministic), and the atomics on C addresses serialise.
// version 2, layernorm_backward2 + layernorm_backward2_reduce: DETERMINISTIC, no float atomics.
//     A block per row (blocks loop over rows blockIdx.x, blockIdx.x + gridDim.x, ...), the two row
//     means by block reductions. Column c of a row is always handled by thread c % blockDim.x, so
//     that thread alone accumulates the block's dbias[c] and dweight[c] in shared memory (2*C floats
//     of dynamic shared memory: C <= 6128 within 48 KiB). At the end each block writes its partial
//     sums to scratch[blockIdx.x] (a (gridDim.x, 2, C) buffer the wrapper allocates), and a second
//     kernel, one thread per column, adds the gridDim.x partials in block order 0, 1, 2... into
//     dbias and dweight. The same inputs give the same bits on every run.

// The reductions of versions 2 and 3, warp_sum and block_sum, are in common.cuh (shared with
// attention.cu, global_norm.cu and kv_cache.cu): a butterfly of __shfl_xor_sync inside each warp,
// then, for a block, the warps' sums through 32 floats of shared memory.
#include "common.cuh"

// ------------------------------------------------------------------------------------------------
// Forward
// ------------------------------------------------------------------------------------------------

// version 1: one thread per row, three loops over the row.
extern "C" __global__ void layernorm_forward1(float* out, float* mean, float* rstd, const float* inp,
                                              const float* weight, const float* bias, int N, int C, float eps) {
    int row = blockIdx.x * blockDim.x + threadIdx.x;
    if (row < N) {
        const float* x = inp + (size_t)row * C;
        float* y = out + (size_t)row * C;
        float sum = 0.0f;
        for (int c = 0; c < C; c++) {
            sum += x[c];
        }
        float m = sum / C;
        float sum_sq = 0.0f;
        for (int c = 0; c < C; c++) {
            float d = x[c] - m;
            sum_sq += d * d;
        }
        float s = rsqrtf(sum_sq / C + eps);
        for (int c = 0; c < C; c++) {
            y[c] = (x[c] - m) * s * weight[c] + bias[c];
        }
        mean[row] = m;
        rstd[row] = s;
    }
}

// version 2: one warp per row; block = whole warps, blockDim.x / 32 rows per block.
extern "C" __global__ void layernorm_forward2(float* out, float* mean, float* rstd, const float* inp,
                                              const float* weight, const float* bias, int N, int C, float eps) {
    int lane = threadIdx.x % 32;
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    // `row` is the same for the 32 lanes of a warp, so a warp past the last row returns as a whole
    // and no shuffle below waits for a lane that left. (No __syncthreads in this kernel.)
    if (row >= N) {
        return;
    }
    const float* x = inp + (size_t)row * C;
    float* y = out + (size_t)row * C;

    float sum = 0.0f;
    for (int c = lane; c < C; c += 32) {  // lanes read 32 consecutive floats per step
        sum += x[c];
    }
    float m = warp_sum(sum) / C;

    float sum_sq = 0.0f;
    for (int c = lane; c < C; c += 32) {
        float d = x[c] - m;
        sum_sq += d * d;
    }
    float s = rsqrtf(warp_sum(sum_sq) / C + eps);

    for (int c = lane; c < C; c += 32) {
        y[c] = (x[c] - m) * s * weight[c] + bias[c];
    }
    if (lane == 0) {
        mean[row] = m;
        rstd[row] = s;
    }
}

// version 3: one block per row, float4 loads and stores, block reductions. C % 4 == 0.
extern "C" __global__ void layernorm_forward3(float* out, float* mean, float* rstd, const float* inp,
                                              const float* weight, const float* bias, int N, int C, float eps) {
    __shared__ float warp_sums[32];
    int row = blockIdx.x;  // gridDim.x == N: every block has a row, and no thread may leave early
    int C4 = C / 4;
    const float4* x = reinterpret_cast<const float4*>(inp + (size_t)row * C);
    float4* y = reinterpret_cast<float4*>(out + (size_t)row * C);
    const float4* w = reinterpret_cast<const float4*>(weight);
    const float4* b = reinterpret_cast<const float4*>(bias);

    float sum = 0.0f;
    for (int i = threadIdx.x; i < C4; i += blockDim.x) {
        float4 v = x[i];
        sum += (v.x + v.y) + (v.z + v.w);
    }
    float m = block_sum(sum, warp_sums) / C;

    float sum_sq = 0.0f;
    for (int i = threadIdx.x; i < C4; i += blockDim.x) {  // a second read of x: it hits the cache on a GPU
        float4 v = x[i];
        float d0 = v.x - m, d1 = v.y - m, d2 = v.z - m, d3 = v.w - m;
        sum_sq += (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3);
    }
    float s = rsqrtf(block_sum(sum_sq, warp_sums) / C + eps);

    for (int i = threadIdx.x; i < C4; i += blockDim.x) {
        float4 v = x[i], wi = w[i], bi = b[i];
        float4 o;
        o.x = (v.x - m) * s * wi.x + bi.x;
        o.y = (v.y - m) * s * wi.y + bi.y;
        o.z = (v.z - m) * s * wi.z + bi.z;
        o.w = (v.w - m) * s * wi.w + bi.w;
        y[i] = o;
    }
    if (threadIdx.x == 0) {
        mean[row] = m;
        rstd[row] = s;
    }
}

// ------------------------------------------------------------------------------------------------
// Backward
// ------------------------------------------------------------------------------------------------

// version 1: one thread per row; dweight and dbias by float atomicAdd (nondeterministic bits).
extern "C" __global__ void layernorm_backward1(float* dinp, float* dweight, float* dbias, const float* dout,
                                               const float* inp, const float* weight, const float* mean,
                                               const float* rstd, int N, int C) {
    int row = blockIdx.x * blockDim.x + threadIdx.x;
    if (row < N) {
        const float* x = inp + (size_t)row * C;
        const float* dy = dout + (size_t)row * C;
        float* dx = dinp + (size_t)row * C;
        float m = mean[row];
        float s = rstd[row];

        // pass 1: the two means over the row
        float sum_dxhat = 0.0f;
        float sum_dxhat_xhat = 0.0f;
        for (int c = 0; c < C; c++) {
            float xhat = (x[c] - m) * s;
            float dxhat = weight[c] * dy[c];
            sum_dxhat += dxhat;
            sum_dxhat_xhat += dxhat * xhat;
        }
        float mean_dxhat = sum_dxhat / C;
        float mean_dxhat_xhat = sum_dxhat_xhat / C;

        // pass 2: the gradients
        for (int c = 0; c < C; c++) {
            float xhat = (x[c] - m) * s;
            float dxhat = weight[c] * dy[c];
            atomicAdd(&dbias[c], dy[c]);          // every row adds here: the order is up to the scheduler
            atomicAdd(&dweight[c], dy[c] * xhat);
            dx[c] += s * (dxhat - mean_dxhat - xhat * mean_dxhat_xhat);
        }
    }
}

// version 2, kernel 1 of 2: a block per row (rows blockIdx.x, blockIdx.x + gridDim.x, ...), dinp
// directly, and this block's partial sums of dbias and dweight into scratch[blockIdx.x].
// Dynamic shared memory: 2 * C floats. blockDim.x a multiple of 32.
extern "C" __global__ void layernorm_backward2(float* dinp, float* scratch, const float* dout, const float* inp,
                                               const float* weight, const float* mean, const float* rstd,
                                               int N, int C) {
    extern __shared__ float acc[];  // acc[0..C): this block's dbias; acc[C..2C): its dweight
    __shared__ float warp_sums[32];
    float* dbias_acc = acc;
    float* dweight_acc = acc + C;
    // Column c is only ever touched by thread c % blockDim.x, here and below: no barrier needed
    // between these writes and that thread's later reads, and no race between threads.
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        dbias_acc[c] = 0.0f;
        dweight_acc[c] = 0.0f;
    }
    // The loop bound is the same for the whole block, so all threads reach the same barriers.
    for (int row = blockIdx.x; row < N; row += gridDim.x) {
        const float* x = inp + (size_t)row * C;
        const float* dy = dout + (size_t)row * C;
        float* dx = dinp + (size_t)row * C;
        float m = mean[row];
        float s = rstd[row];

        float sum_dxhat = 0.0f;
        float sum_dxhat_xhat = 0.0f;
        for (int c = threadIdx.x; c < C; c += blockDim.x) {
            float xhat = (x[c] - m) * s;
            float dxhat = weight[c] * dy[c];
            sum_dxhat += dxhat;
            sum_dxhat_xhat += dxhat * xhat;
        }
        float mean_dxhat = block_sum(sum_dxhat, warp_sums) / C;
        float mean_dxhat_xhat = block_sum(sum_dxhat_xhat, warp_sums) / C;

        for (int c = threadIdx.x; c < C; c += blockDim.x) {
            float xhat = (x[c] - m) * s;
            float dxhat = weight[c] * dy[c];
            dbias_acc[c] += dy[c];
            dweight_acc[c] += dy[c] * xhat;
            dx[c] += s * (dxhat - mean_dxhat - xhat * mean_dxhat_xhat);
        }
    }
    // Partial sums out; a block with no row writes zeros.
    float* partial = scratch + (size_t)blockIdx.x * 2 * C;
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        partial[c] = dbias_acc[c];
        partial[C + c] = dweight_acc[c];
    }
}

// version 2, kernel 2 of 2: one thread per column adds the num_blocks partial sums, in block
// order, into dbias and dweight. Fixed order: the same bits on every run.
extern "C" __global__ void layernorm_backward2_reduce(float* dweight, float* dbias, const float* scratch,
                                                      int num_blocks, int C) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c < C) {
        float db = 0.0f;
        float dw = 0.0f;
        for (int b = 0; b < num_blocks; b++) {  // consecutive threads read consecutive columns
            const float* partial = scratch + (size_t)b * 2 * C;
            db += partial[c];
            dw += partial[C + c];
        }
        dbias[c] += db;
        dweight[c] += dw;
    }
}
