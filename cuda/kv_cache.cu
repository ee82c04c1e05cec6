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
//
// version 2, bf16 storage (mixed precision, notebook 13): the caches, qkv and out are bf16
//     (cuda/bf16.cuh), half the bytes of the caches that a long generation reads at every step; the
//     scores, the softmax and the accumulators are float32, and each output is rounded once to bf16.
// kv_cache_forward2_append: one thread per 8 channels, one 16-byte bf16x8 copy each for k and v (an
//     exact copy: nothing to round).
// kv_cache_forward2_decode: version 1's decode, operation for operation, on bf16 data: the block first
//     converts its head's q into shared memory (hs floats after the maxT scores), then each thread
//     scores its positions reading the key row 16 bytes at a time. The weighted sum of the values keeps
//     one thread per channel, reading 2-byte bf16s (consecutive threads, consecutive channels: each
//     warp reads 64 contiguous bytes per row): 16-byte loads there would leave only hs / 8 threads busy.
//     hs must be a multiple of 8 and qkv and the caches 16-byte aligned (the wrapper checks).

#define DECODE_BLOCK 128   // threads per block of kv_cache_forward1_decode and _forward2_decode: whole warps

#include "common.cuh"  // block_max, block_sum
#include "bf16.cuh"    // version 2: bf16x8, to_float, to_bf16

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

// version 2: k and v of the newest position into row `pos` of the bf16 caches, 8 channels per thread
// (hs % 8 == 0: a chunk of 8 never straddles two heads).
extern "C" __global__ void kv_cache_forward2_append(__nv_bfloat16* k_cache, __nv_bfloat16* v_cache,
                                                    const __nv_bfloat16* qkv, int pos, int C, int NH, int maxT) {
    int i = 8 * (blockIdx.x * blockDim.x + threadIdx.x);  // the first of this thread's 8 channels
    if (i < C) {
        int hs = C / NH, h = i / hs, c = i % hs;
        store_bf16x8(k_cache + ((long)h * maxT + pos) * hs + c, load_bf16x8(qkv + C + i));
        store_bf16x8(v_cache + ((long)h * maxT + pos) * hs + c, load_bf16x8(qkv + 2 * C + i));
    }
}

// version 2: as kv_cache_forward1_decode on bf16 q, caches and out; float32 scores and sums.
extern "C" __global__ void __launch_bounds__(DECODE_BLOCK) kv_cache_forward2_decode(__nv_bfloat16* out,
        const __nv_bfloat16* qkv, const __nv_bfloat16* k_cache, const __nv_bfloat16* v_cache, int pos, int C, int NH,
        int maxT) {
    extern __shared__ float p[];          // maxT floats: the scores, then the exp(score - max); then q (hs)
    __shared__ float scratch[32];
    int h = blockIdx.x, hs = C / NH;
    float* qs = p + maxT;
    const __nv_bfloat16* q = qkv + h * hs;
    const __nv_bfloat16* K = k_cache + (long)h * maxT * hs;
    const __nv_bfloat16* V = v_cache + (long)h * maxT * hs;
    for (int c = threadIdx.x; c < hs / 8; c += blockDim.x) {
        bf16x8 x = load_bf16x8(q + 8 * c);
#pragma unroll
        for (int u = 0; u < 8; u++) {
            qs[8 * c + u] = to_float(x.v[u]);
        }
    }
    __syncthreads();  // q is complete before anyone scores with it
    float scale = rsqrtf((float)hs);
    float local_max = __int_as_float(0xff800000);  // -inf
    for (int t2 = threadIdx.x; t2 <= pos; t2 += blockDim.x) {
        float s = 0.0f;
        for (int c = 0; c < hs / 8; c++) {
            bf16x8 k = load_bf16x8(K + t2 * hs + 8 * c);
#pragma unroll
            for (int u = 0; u < 8; u++) {
                s += qs[8 * c + u] * to_float(k.v[u]);  // the channels in order, as version 1
            }
        }
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
        for (int t2 = 0; t2 <= pos; t2++) acc += p[t2] * to_float(V[t2 * hs + c]);
        out[h * hs + c] = to_bf16(acc / l);  // the one rounding
    }
}
