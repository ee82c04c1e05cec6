// global_norm.cu: the squared global norm of the gradients, sum over all tensors of sum(g^2).
// Wrapper: helpers/ops/global_norm.py · notebook: notebooks/07_adamw.ipynb · tests: tests/test_op_global_norm.py.
//
// What it is for: gradient clipping. Before the AdamW step, the host takes norm = sqrt(this sum)
// over ALL of GPT-2's gradients at once, and if it exceeds max_norm every gradient is scaled by
// max_norm / (norm + 1e-6) (PyTorch's clip_grad_norm_; adamw.cu applies that factor on the fly).
// It is a reduction, like reduce_sum.cu in notebook 00, with one new requirement: the result must
// be DETERMINISTIC, the same bits on every run, so that two training runs from the same seed give
// the same model. Float addition is not associative ((a + b) + c != a + (b + c) in the last bits),
// so the order of the additions must not depend on which thread or block happens to run first.
//
// All kernels need blockDim.x to be a multiple of 32 (whole warps: the wrapper checks it).
//
// version 1, global_norm1 (what NOT to do): each block reduces its elements' squares and adds its
//     partial sum to out[0] with atomicAdd. One launch, short, and wrong in a subtle way: the blocks
//     finish in an order that changes from run to run, so the float additions into out[0] happen in
//     a different order each time and the last bits of the norm change. device.racecheck catches it.
// version 2, global_norm2: each block reduces its elements' squares (one element per thread) and
//     writes its partial sum to partials[blockIdx.x]: no two blocks write the same place. A second
//     launch, global_norm_sum_partials, sums the partials in one block in a fixed order. Two
//     launches instead of one, but the same bits every time. The number of partials grows with n
//     (124M parameters / 512 threads = 243 047 partials for GPT-2), and so does the second launch.
// version 3, global_norm3: a FIXED number of blocks (the wrapper's choice, at most 512) walks
//     the whole array in a grid-stride loop, each thread adding up many elements in a register
//     first, loaded four at a time with float4. The partials buffer has a fixed size whatever n is,
//     the second launch is tiny, and there are 4x fewer loads. Each block ADDS its sum to
//     partials[blockIdx.x] (+=): the gradients of several tensors can be reduced by one launch per
//     tensor into the same partials (launches run one after the other: still deterministic, as in
//     llm.c's global_norm.cuh). n must be a multiple of 4 (the wrapper checks it).
// global_norm_sum_partials: the second launch of versions 2 and 3. ONE block: thread k adds
//     partials k, k + blockDim.x, k + 2 blockDim.x, ... in that order, then the block reduction.

#include "common.cuh"  // block_sum: the order of its additions is fixed by lane and warp numbers

// version 1: one atomicAdd per block into out[0] (the caller zeroes it). NOT deterministic.
extern "C" __global__ void global_norm1(const float* x, float* out, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    float g = (i < n) ? x[i] : 0.0f;  // no early return: every thread must reach the barrier
    __shared__ float scratch[32];
    float partial = block_sum(g * g, scratch);
    if (threadIdx.x == 0) {
        atomicAdd(out, partial);  // the blocks add in whatever order they finish
    }
}

// version 2: one element per thread, one partial sum per block in partials[blockIdx.x].
extern "C" __global__ void global_norm2(const float* x, float* partials, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    float g = (i < n) ? x[i] : 0.0f;
    __shared__ float scratch[32];
    float partial = block_sum(g * g, scratch);
    if (threadIdx.x == 0) {
        partials[blockIdx.x] = partial;  // each block its own slot: no race, no atomics
    }
}

// version 3: grid-stride loop with float4 loads over n / 4 groups; partials[blockIdx.x] += block sum.
extern "C" __global__ void global_norm3(const float* x, float* partials, int n) {
    const float4* x4 = reinterpret_cast<const float4*>(x);
    int n4 = n / 4;  // n % 4 == 0, checked by the wrapper
    float acc = 0.0f;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n4; i += gridDim.x * blockDim.x) {
        float4 g = x4[i];
        acc += g.x * g.x + g.y * g.y + g.z * g.z + g.w * g.w;
    }
    __shared__ float scratch[32];
    float partial = block_sum(acc, scratch);
    if (threadIdx.x == 0) {
        partials[blockIdx.x] += partial;  // accumulates over launches (one per tensor); zeroed by the caller
    }
}

// The second launch: out[0] = the sum of the n partials, in a fixed order. Launch with ONE block.
extern "C" __global__ void global_norm_sum_partials(const float* partials, float* out, int n) {
    __shared__ float scratch[32];
    float acc = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        acc += partials[i];
    }
    float total = block_sum(acc, scratch);
    if (threadIdx.x == 0) {
        out[0] = total;
    }
}
