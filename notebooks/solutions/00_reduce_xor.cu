// Solution of the exercise in notebooks/00_first_kernels.ipynb: reduce_sum_warp with a butterfly.
//
// __shfl_xor_sync(mask, v, k) gives each lane the value of lane (lane XOR k). With k = 16, 8, 4,
// 2, 1, lanes exchange values in pairs whose distance halves each step (a "butterfly"), and since
// both lanes of a pair add the same two numbers, after five steps EVERY lane holds the warp's total,
// not just lane 0 as with __shfl_down_sync. Handy when all threads need the result (a softmax's
// maximum, a layernorm's mean); here it lets any lane write the partial sum.

__device__ float warp_allreduce_sum(float v) {
    for (int lane_mask = 16; lane_mask > 0; lane_mask /= 2) {
        v += __shfl_xor_sync(0xffffffff, v, lane_mask);
    }
    return v;  // the same total in all 32 lanes
}

extern "C" __global__ void reduce_sum_xor(const float* x, float* partial, int n) {
    __shared__ float warp_sums[32];
    int lane = threadIdx.x % 32;
    int warp = threadIdx.x / 32;
    int num_warps = blockDim.x / 32;
    int i = blockIdx.x * blockDim.x + threadIdx.x;

    float v = (i < n) ? x[i] : 0.0f;
    v = warp_allreduce_sum(v);
    if (lane == 0) {
        warp_sums[warp] = v;
    }
    __syncthreads();

    if (warp == 0) {
        v = (lane < num_warps) ? warp_sums[lane] : 0.0f;
        v = warp_allreduce_sum(v);
        if (lane == num_warps - 1) {  // any lane would do: all hold the total
            partial[blockIdx.x] = v;
        }
    }
}
