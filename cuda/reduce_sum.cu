// reduce_sum.cu: the sum of an array, the first kernel whose threads must cooperate.
// Teaching file, not an op: no wrapper module. notebooks/00_first_kernels.ipynb launches it directly
// and checks it against NumPy (the tests run the notebook through nbval).
//
// What this file teaches: threads of one block can share data through `__shared__` memory and
// wait for each other with `__syncthreads()`; the 32 threads of a warp can even read each other's
// registers with shuffles. Threads of different blocks cannot wait for each other inside a
// launch, so a reduction happens in passes: each block reduces its slice of the input to one
// partial sum, written to partial[blockIdx.x]; the caller launches the same kernel again on the
// partial sums until a single value is left (n = 10^6 with 256 threads: 3907 partials, then 16,
// then 1). Each pass reads one element per thread; threads past the end contribute 0, so n may be
// any size.
//
// version 1, reduce_sum_shared: every thread stores its element in dynamic shared memory
//     (blockDim.x floats, given as shared_mem at launch), then a tree reduction: at each step the
//     first half of the still-active threads adds the value of a partner in the second half, and
//     the active half shrinks. A barrier after every step, because the next step reads what other
//     threads wrote in this one. blockDim.x must be a power of two.
// version 2, reduce_sum_warp: the same tree inside each warp, but through registers: a thread
//     reads a value held by the thread `offset` lanes further with __shfl_down_sync, no shared
//     memory and no barrier needed for that part. Shared memory is used once, to hand the 32 (at
//     most) per-warp sums to the first warp, which reduces them the same way. blockDim.x must be
//     a multiple of 32.

// version 1: shared-memory tree reduction, one partial sum per block.
extern "C" __global__ void reduce_sum_shared(const float* x, float* partial, int n) {
    extern __shared__ float buf[];  // blockDim.x floats, sized by the launch's shared_mem
    int tid = threadIdx.x;
    int i = blockIdx.x * blockDim.x + tid;
    buf[tid] = (i < n) ? x[i] : 0.0f;
    __syncthreads();  // every element must be in buf before anyone reads a neighbour's
    for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
        if (tid < stride) {
            buf[tid] += buf[tid + stride];
        }
        __syncthreads();  // the next step reads what this step wrote
    }
    if (tid == 0) {
        partial[blockIdx.x] = buf[0];
    }
}

// The sum of `v` over the 32 lanes of a warp, returned to lane 0 (the other lanes get partial sums).
// After the step with offset 16, lane k holds v[k] + v[k+16]; after 8, 4, 2, 1, lane 0 holds all 32.
// The mask 0xffffffff says all 32 lanes take part: every lane of the warp must call it.
__device__ float warp_reduce_sum(float v) {
    for (int offset = 16; offset > 0; offset /= 2) {
        v += __shfl_down_sync(0xffffffff, v, offset);
    }
    return v;
}

// version 2: warp-shuffle reduction, one partial sum per block.
extern "C" __global__ void reduce_sum_warp(const float* x, float* partial, int n) {
    __shared__ float warp_sums[32];  // a block has at most 1024 / 32 = 32 warps
    int lane = threadIdx.x % 32;
    int warp = threadIdx.x / 32;
    int num_warps = blockDim.x / 32;
    int i = blockIdx.x * blockDim.x + threadIdx.x;

    float v = (i < n) ? x[i] : 0.0f;  // no early return: every lane must reach the shuffles
    v = warp_reduce_sum(v);
    if (lane == 0) {
        warp_sums[warp] = v;
    }
    __syncthreads();  // warp 0 reads the sums the other warps wrote

    if (warp == 0) {  // the whole first warp takes this branch, so the full mask is right
        v = (lane < num_warps) ? warp_sums[lane] : 0.0f;
        v = warp_reduce_sum(v);
        if (lane == 0) {
            partial[blockIdx.x] = v;
        }
    }
}
