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
//
// bf16 storage (mixed precision, notebook 13): the activations (x, out, dout, dinp) and the weight and
// bias are __nv_bfloat16; mean, rstd, the partial sums and dweight/dbias stay float32 (statistics and
// parameter gradients), and every sum and formula is float32, as above. Each output is rounded once
// to bf16 (nearest even) when stored; dinp += ... loads the bf16 gradient, adds in float32, rounds once.
// version 4, layernorm_forward4: version 2's warp per row, reading and writing 8 channels at a time
//     with one 16-byte bf16x8 load or store (bf16.cuh): lane k takes channels 8k..8k+7, then
//     8(k+32).., so a warp's load covers 512 consecutive bytes. C must be a multiple of 8 and every
//     array 16-byte aligned (GPT-2's C = 768: 96 groups, 3 per lane). x is read three times, as in
//     version 2 (mean, variance, output): the second and third reads hit the cache on a GPU.
// version 3, layernorm_backward3 + layernorm_backward2_reduce: version 2's deterministic scheme (a
//     block per row, per-block float32 partial sums of dbias/dweight in shared memory, reduced in
//     block order by version 2's second kernel), with bf16x8 loads of x, dout, weight and dinp: group i
//     of 8 channels is always handled by thread i % blockDim.x, which alone owns those 8 columns'
//     accumulators. They are stored as acc[k * C/8 + i] (channel 8i + k), not acc[8i + k], so that the
//     threads of a warp touch consecutive words (no shared-memory bank conflicts). C % 8 == 0,
//     C <= 6128 (2*C floats of shared memory), arrays 16-byte aligned.

// The reductions of versions 2 and 3, warp_sum and block_sum, are in common.cuh (shared with
// attention.cu, global_norm.cu and kv_cache.cu): a butterfly of __shfl_xor_sync inside each warp,
// then, for a block, the warps' sums through 32 floats of shared memory.
#include "common.cuh"
#include "bf16.cuh"

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

// ------------------------------------------------------------------------------------------------
// bf16 storage, float32 compute
// ------------------------------------------------------------------------------------------------

// version 4: bf16 x, weight, bias, out; a warp per row as version 2, 8 channels per bf16x8 load.
// float32 mean and rstd. C % 8 == 0; block = whole warps, blockDim.x / 32 rows per block.
extern "C" __global__ void layernorm_forward4(__nv_bfloat16* out, float* mean, float* rstd, const __nv_bfloat16* inp,
                                              const __nv_bfloat16* weight, const __nv_bfloat16* bias, int N, int C,
                                              float eps) {
    int lane = threadIdx.x % 32;
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (row >= N) {
        return;  // the whole warp leaves together (as in version 2): no shuffle waits for it
    }
    int C8 = C / 8;
    const __nv_bfloat16* x = inp + (size_t)row * C;
    __nv_bfloat16* y = out + (size_t)row * C;

    float sum = 0.0f;
    for (int i = lane; i < C8; i += 32) {
        bf16x8 v = load_bf16x8(x + 8 * i);
#pragma unroll
        for (int k = 0; k < 8; k++) {
            sum += to_float(v.v[k]);
        }
    }
    float m = warp_sum(sum) / C;

    float sum_sq = 0.0f;
    for (int i = lane; i < C8; i += 32) {
        bf16x8 v = load_bf16x8(x + 8 * i);
#pragma unroll
        for (int k = 0; k < 8; k++) {
            float d = to_float(v.v[k]) - m;
            sum_sq += d * d;
        }
    }
    float s = rsqrtf(warp_sum(sum_sq) / C + eps);

    for (int i = lane; i < C8; i += 32) {
        bf16x8 v = load_bf16x8(x + 8 * i), w = load_bf16x8(weight + 8 * i), b = load_bf16x8(bias + 8 * i), o;
#pragma unroll
        for (int k = 0; k < 8; k++) {
            o.v[k] = to_bf16((to_float(v.v[k]) - m) * s * to_float(w.v[k]) + to_float(b.v[k]));  // one rounding
        }
        store_bf16x8(y + 8 * i, o);
    }
    if (lane == 0) {
        mean[row] = m;
        rstd[row] = s;
    }
}

// version 3, kernel 1 of 2: as layernorm_backward2 with bf16 dinp (+=), dout, inp, weight and 8
// channels per bf16x8 load; float32 partial sums of dbias, dweight into scratch[blockIdx.x] (channel
// order), reduced by layernorm_backward2_reduce. Dynamic shared memory: 2 * C floats. C % 8 == 0,
// blockDim.x a multiple of 32.
extern "C" __global__ void layernorm_backward3(__nv_bfloat16* dinp, float* scratch, const __nv_bfloat16* dout,
                                               const __nv_bfloat16* inp, const __nv_bfloat16* weight,
                                               const float* mean, const float* rstd, int N, int C) {
    extern __shared__ float acc[];  // acc[k*C8 + i]: channel 8i + k's dbias; acc[C + k*C8 + i]: its dweight
    __shared__ float warp_sums[32];
    int C8 = C / 8;
    float* dbias_acc = acc;
    float* dweight_acc = acc + C;
    // Group i of 8 channels is only ever touched by thread i % blockDim.x, here and below: no barrier
    // needed between these writes and that thread's later reads, and no race between threads.
    for (int i = threadIdx.x; i < C8; i += blockDim.x) {
#pragma unroll
        for (int k = 0; k < 8; k++) {
            dbias_acc[k * C8 + i] = 0.0f;
            dweight_acc[k * C8 + i] = 0.0f;
        }
    }
    // The loop bound is the same for the whole block, so all threads reach the same barriers.
    for (int row = blockIdx.x; row < N; row += gridDim.x) {
        const __nv_bfloat16* x = inp + (size_t)row * C;
        const __nv_bfloat16* dy = dout + (size_t)row * C;
        __nv_bfloat16* dx = dinp + (size_t)row * C;
        float m = mean[row];
        float s = rstd[row];

        float sum_dxhat = 0.0f;
        float sum_dxhat_xhat = 0.0f;
        for (int i = threadIdx.x; i < C8; i += blockDim.x) {
            bf16x8 xv = load_bf16x8(x + 8 * i), dyv = load_bf16x8(dy + 8 * i), wv = load_bf16x8(weight + 8 * i);
#pragma unroll
            for (int k = 0; k < 8; k++) {
                float xhat = (to_float(xv.v[k]) - m) * s;
                float dxhat = to_float(wv.v[k]) * to_float(dyv.v[k]);
                sum_dxhat += dxhat;
                sum_dxhat_xhat += dxhat * xhat;
            }
        }
        float mean_dxhat = block_sum(sum_dxhat, warp_sums) / C;
        float mean_dxhat_xhat = block_sum(sum_dxhat_xhat, warp_sums) / C;

        for (int i = threadIdx.x; i < C8; i += blockDim.x) {
            bf16x8 xv = load_bf16x8(x + 8 * i), dyv = load_bf16x8(dy + 8 * i), wv = load_bf16x8(weight + 8 * i);
            bf16x8 dxv = load_bf16x8(dx + 8 * i);
#pragma unroll
            for (int k = 0; k < 8; k++) {
                float xhat = (to_float(xv.v[k]) - m) * s;
                float g = to_float(dyv.v[k]);
                float dxhat = to_float(wv.v[k]) * g;
                dbias_acc[k * C8 + i] += g;
                dweight_acc[k * C8 + i] += g * xhat;
                // += into a bf16 gradient: load, add in float32, round once
                dxv.v[k] = to_bf16(to_float(dxv.v[k]) + s * (dxhat - mean_dxhat - xhat * mean_dxhat_xhat));
            }
            store_bf16x8(dx + 8 * i, dxv);
        }
    }
    // Partial sums out in channel order, the layout layernorm_backward2_reduce reads; a block with
    // no row writes zeros.
    float* partial = scratch + (size_t)blockIdx.x * 2 * C;
    for (int i = threadIdx.x; i < C8; i += blockDim.x) {
#pragma unroll
        for (int k = 0; k < 8; k++) {
            partial[8 * i + k] = dbias_acc[k * C8 + i];
            partial[C + 8 * i + k] = dweight_acc[k * C8 + i];
        }
    }
}
