// common.cuh: the pieces the kernel files share, included with #include "common.cuh" (the CPU
// backend, CuPy and the NVRTC report all put cuda/ on the include path). Introduced in
// notebooks/02_layernorm.ipynb; used by layernorm.cu, attention.cu, global_norm.cu, kv_cache.cu, rmsnorm.cu,
// gqa.cu.
//
// Warp and block reductions of one float per thread. Every one of them returns the result to
// EVERY thread that called it, and adds (or compares) in an order fixed by the lane and warp
// numbers, never by timing: the same inputs give the same bits on every run and every GPU.
//
//   warp_sum(v), warp_max(v)              all 32 lanes of the warp must call them (full mask)
//   block_sum(v, scratch), block_max(...)  every thread of the block must call them: blockDim.x a
//                                          multiple of 32, `scratch` 32 floats of __shared__
//                                          memory; they end with a barrier, so a second call may
//                                          reuse the same scratch at once
//
// reduce_sum.cu (notebook 00) writes its reductions out on purpose: it is where they are taught.
#pragma once

#define WARP_SIZE 32
#define FULL_MASK 0xffffffffu

// Blocks (or steps) needed to cover n items with `per` each.
__device__ __forceinline__ int ceil_div(int n, int per) { return (n + per - 1) / per; }

// The sum of v over the 32 lanes, in every lane: a butterfly. At each step lane k adds the value of
// lane k ^ offset (offset 16, 8, 4, 2, 1), so after five steps every lane has added all 32, and
// every lane has added them in the same pairs.
__device__ __forceinline__ float warp_sum(float v) {
    for (int offset = WARP_SIZE / 2; offset > 0; offset /= 2) {
        v += __shfl_xor_sync(FULL_MASK, v, offset);
    }
    return v;
}

// The maximum of v over the 32 lanes, in every lane (the same butterfly).
__device__ __forceinline__ float warp_max(float v) {
    for (int offset = WARP_SIZE / 2; offset > 0; offset /= 2) {
        v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, offset));
    }
    return v;
}

// The sum of v over the whole block, in every thread. Each warp reduces its 32 values, lane 0 of
// each warp writes its warp's sum to scratch, and after a barrier every warp reduces those (at most
// 32) sums again, lanes past the last warp contributing 0.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
    int lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE, num_warps = blockDim.x / WARP_SIZE;
    v = warp_sum(v);
    if (lane == 0) {
        scratch[warp] = v;
    }
    __syncthreads();  // every warp's sum is written before anyone reads them
    v = warp_sum(lane < num_warps ? scratch[lane] : 0.0f);
    __syncthreads();  // everyone has read scratch before a next call overwrites it
    return v;
}

// The maximum of v over the whole block, in every thread (as block_sum; lanes past the last warp
// contribute -inf, written as its bits: NVRTC has no INFINITY macro).
__device__ __forceinline__ float block_max(float v, float* scratch) {
    int lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE, num_warps = blockDim.x / WARP_SIZE;
    v = warp_max(v);
    if (lane == 0) {
        scratch[warp] = v;
    }
    __syncthreads();
    v = warp_max(lane < num_warps ? scratch[lane] : __int_as_float(0xff800000));
    __syncthreads();
    return v;
}
