// Solution of the exercise in notebooks/11_llama_ops.ipynb: the residual add fused into RMSNorm.
//
// In a Llama block the stream is updated, h = x + attn_out, and then normalised for the MLP,
// rmsnorm(h). As two kernels, h makes a round trip: the residual kernel reads x and attn_out and
// writes h, RMSNorm reads h again. Fused, one warp per row reads x and attn_out once, keeps its
// row's h in registers only as long as the reduction needs, and writes h (the next residual needs
// it) and the normalised row: 16 bytes per channel instead of 20, and one launch instead of two.
// llm.c fuses the same pair for GPT-2 (fused_residual_forward5: residual + layernorm).
//
//     residual[row] = a[row] + b[row]
//     rstd[row]     = 1 / sqrt(mean(residual[row]^2) + eps)
//     out[row]      = residual[row] * rstd[row] * weight
//
// One warp per row of C channels; the lanes take channels lane, lane + 32, ...; warp_sum from
// cuda/common.cuh adds the squares across the warp (every lane gets the total). Any C; the block
// must be a whole number of warps.

#include "common.cuh"  // warp_sum

extern "C" __global__ void residual_rmsnorm_forward(float* residual, float* out, float* rstd, const float* a,
                                                    const float* b, const float* weight, int N, int C, float eps) {
    int lane = threadIdx.x % 32;
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (row >= N) {
        return;  // the whole warp leaves together: the shuffles below see all 32 lanes or none
    }
    const float* a_row = a + (long)row * C;
    const float* b_row = b + (long)row * C;
    float* h_row = residual + (long)row * C;
    float sum_sq = 0.0f;
    for (int c = lane; c < C; c += 32) {
        float h = a_row[c] + b_row[c];
        h_row[c] = h;  // written once; read back below by the same lane only (no barrier needed)
        sum_sq += h * h;
    }
    float r = rsqrtf(warp_sum(sum_sq) / C + eps);
    for (int c = lane; c < C; c += 32) {
        out[(long)row * C + c] = h_row[c] * r * weight[c];
    }
    if (lane == 0) {
        rstd[row] = r;
    }
}
