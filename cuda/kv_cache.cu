// kv_cache.cu: the attention step of generation with a key/value cache. Wrapper:
// helpers/ops/kv_cache.py · notebook: notebooks/10_sampling.ipynb · tests: tests/test_op_kv_cache.py.
//
// Generating token by token, the full forward pass of notebook 08 would recompute the keys and values
// of every earlier position at every step. They do not change: position t2's key and value depend
// only on tokens 0..t2. So each layer keeps them in a cache, k_cache and v_cache of shape
// (NH, maxT, hs), and a step computes only the newest position's q, k, v (the qkv projection of one
// token, (3C,)), appends k and v at position `pos`, and lets q attend over cache positions 0..pos.
// The other ops of the step (layernorm, the matmuls, GELU, residual) are the kernels of notebooks
// 02-05 on a single row.
//
// version 1, two kernels:
// kv_cache_forward1_append: one thread per channel of C, copies k and v into their head's row `pos`.
// kv_cache_forward1_decode: one block per head. Its threads compute the scores q . k_t2 / sqrt(hs) for
//     t2 = 0..pos into dynamic shared memory (maxT floats), a block reduction gives their maximum and
//     the sum of exp(score - max), and each thread then accumulates output channels of
//     sum_t2 softmax_t2 v_t2. No causal mask is needed: the cache holds only the past.

#define DECODE_BLOCK 128   // threads per block of kv_cache_forward1_decode: whole warps

#include "common.cuh"  // block_max, block_sum

extern "C" __global__ void kv_cache_forward1_append(float* k_cache, float* v_cache, const float* qkv, int pos, int C,
                                                    int NH, int maxT) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < C) {
        int hs = C / NH, h = i / hs, c = i % hs;
        k_cache[((long)h * maxT + pos) * hs + c] = qkv[C + i];
        v_cache[((long)h * maxT + pos) * hs + c] = qkv[2 * C + i];
    }
}

extern "C" __global__ void __launch_bounds__(DECODE_BLOCK) kv_cache_forward1_decode(float* out, const float* qkv,
        const float* k_cache, const float* v_cache, int pos, int C, int NH, int maxT) {
    extern __shared__ float p[];          // maxT floats: the scores, then the exp(score - max)
    __shared__ float scratch[32];
    int h = blockIdx.x, hs = C / NH;
    const float* q = qkv + h * hs;
    const float* K = k_cache + (long)h * maxT * hs;
    const float* V = v_cache + (long)h * maxT * hs;
    float scale = rsqrtf((float)hs);
    float local_max = __int_as_float(0xff800000);  // -inf
    for (int t2 = threadIdx.x; t2 <= pos; t2 += blockDim.x) {
        float s = 0.0f;
        for (int c = 0; c < hs; c++) s += q[c] * K[t2 * hs + c];
        s *= scale;
        p[t2] = s;
        local_max = fmaxf(local_max, s);
    }
    float m = block_max(local_max, scratch);   // (its barriers also publish p)
    float local_sum = 0.0f;
    for (int t2 = threadIdx.x; t2 <= pos; t2 += blockDim.x) {
        float e = expf(p[t2] - m);
        p[t2] = e;
        local_sum += e;
    }
    float l = block_sum(local_sum, scratch);
    for (int c = threadIdx.x; c < hs; c += blockDim.x) {
        float acc = 0.0f;
        for (int t2 = 0; t2 <= pos; t2++) acc += p[t2] * V[t2 * hs + c];
        out[h * hs + c] = acc / l;
    }
}
