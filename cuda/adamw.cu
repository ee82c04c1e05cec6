// adamw.cu: one AdamW optimizer step over all of GPT-2's parameters.
// Wrapper: helpers/ops/adamw.py · notebook: notebooks/07_adamw.ipynb · tests: tests/test_op_adamw.py.
//
// What this file computes: for every parameter p with gradient g and optimizer state m, v (the
// running means of g and g^2), at step t = 1, 2, 3, ... (PyTorch's torch.optim.AdamW, as llm.c):
//
//     g     = grad_scale * g                        (grad_scale: the clip coefficient, 1 = no clipping)
//     m     = beta1 * m + (1 - beta1) * g
//     v     = beta2 * v + (1 - beta2) * g * g
//     m_hat = m / (1 - beta1^t)                      (bias corrections: m and v start at 0)
//     v_hat = v / (1 - beta2^t)
//     p     = p - lr * (m_hat / (sqrt(v_hat) + eps) + weight_decay * p)
//
// Every parameter is independent of every other: an elementwise kernel, no barrier, no shared
// memory. It reads p, g, m, v and writes p, m, v: 28 bytes per parameter for about 18 FLOPs, so
// its speed is set by memory bandwidth, like vector_add. All parameters live in one flat buffer
// (and all gradients, m and v in three more), so ONE launch updates the whole model.
// `grad_scale` applies gradient clipping on the fly, as llm.c does: the host computes the clip
// coefficient from the global gradient norm (global_norm.cu) and passes it here, which saves a
// separate pass over the gradients that would scale them in memory.
//
// version 1, adamw1: one thread per parameter; each thread computes the bias corrections
//     1 - beta^t itself with powf (the same two numbers in every one of the 124 million threads).
// version 2, adamw2: the bias corrections are computed once on the host (in float32, with the same
//     powf as version 1 and as llm.c's train_gpt2.cu) and passed in; each thread updates four
//     consecutive parameters with float4 loads and stores (one 16-byte access instead of four
//     4-byte ones per array: fewer memory instructions, fewer threads). n must be a multiple of 4
//     and the arrays 16-byte aligned: the wrapper in helpers/ops/adamw.py checks both (every
//     GPT-2 tensor has a multiple of C elements, and C is a multiple of 4).
// version 3, adamw3 (bf16, mixed precision as llm.c trains; notebooks/13_precision.ipynb): the
//     parameters the model computes with are bf16, and a float32 MASTER copy of them is what the
//     optimizer updates: an update lr * step is often below half a bf16 step of the parameter (2^-8
//     of it), so updating the bf16 values directly would round most updates away. The master copy,
//     m and v are updated exactly as version 2 updates params, m and v (the same adamw_element, so
//     the same float32 bits); the new bf16 parameter is then the master rounded STOCHASTICALLY
//     (bf16.cuh's to_bf16_stochastic with random_bits(index, seed), index = the element's place in
//     the arrays): up with probability equal to the fraction that bf16 drops, so the bf16 copy is
//     right on average and carries no bias from always rounding the same way. The old bf16 parameter
//     is never read (weight decay uses the master value). Params 2 bytes, the other four arrays 4
//     bytes each: 18 bytes per parameter instead of 28. Eight parameters per thread: two float4 of
//     each float32 array and one 16-byte store of eight bf16. n must be a multiple of 8 and every
//     array 16-byte aligned (the wrapper checks). The seed chooses the roundings, the same bits on
//     every run and backend (helpers/ops/adamw.py has them in NumPy); pass a new seed at each step
//     (and for each tensor updated by its own launch), or the same elements round the same way.
//     `offset` is the index of params[0] in its tensor, 0 for a whole tensor: the bits are
//     random_bits(offset + k, seed), so a tensor updated in pieces (ZeRO-1 gives each rank a shard of
//     it, helpers/train/parallel.py) rounds exactly as it does in one launch.

#include "bf16.cuh"

// version 1: one thread per parameter, bias corrections with powf in every thread.
extern "C" __global__ void adamw1(float* params, const float* grads, float* m, float* v, int n, int t,
                                  float lr, float beta1, float beta2, float eps, float weight_decay,
                                  float grad_scale) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) {
        return;  // no barrier in this kernel: the idle threads of the last block may leave at once
    }
    float g = grad_scale * grads[i];
    float m_i = beta1 * m[i] + (1.0f - beta1) * g;
    float v_i = beta2 * v[i] + (1.0f - beta2) * g * g;
    m[i] = m_i;
    v[i] = v_i;
    float m_hat = m_i / (1.0f - powf(beta1, (float)t));
    float v_hat = v_i / (1.0f - powf(beta2, (float)t));
    float p = params[i];
    params[i] = p - lr * (m_hat / (sqrtf(v_hat) + eps) + weight_decay * p);
}

// The update of one parameter with the bias corrections given; returns the new parameter and
// updates *m and *v in place (they are registers of the caller: the float4's components).
__device__ __forceinline__ float adamw_element(float p, float g, float* m, float* v, float lr, float beta1,
                                               float beta2, float beta1_correction, float beta2_correction,
                                               float eps, float weight_decay, float grad_scale) {
    g = grad_scale * g;
    float m_i = beta1 * *m + (1.0f - beta1) * g;
    float v_i = beta2 * *v + (1.0f - beta2) * g * g;
    *m = m_i;
    *v = v_i;
    float m_hat = m_i / beta1_correction;
    float v_hat = v_i / beta2_correction;
    return p - lr * (m_hat / (sqrtf(v_hat) + eps) + weight_decay * p);
}

// version 2: bias corrections from the host, four parameters per thread with float4 accesses.
// beta1_correction = 1 - beta1^t and beta2_correction = 1 - beta2^t; n % 4 == 0 (checked by the wrapper).
extern "C" __global__ void adamw2(float* params, const float* grads, float* m, float* v, int n, float lr,
                                  float beta1, float beta2, float beta1_correction, float beta2_correction,
                                  float eps, float weight_decay, float grad_scale) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;  // index of a group of four parameters
    if (i >= n / 4) {
        return;
    }
    float4 p = reinterpret_cast<float4*>(params)[i];
    float4 g = reinterpret_cast<const float4*>(grads)[i];
    float4 m4 = reinterpret_cast<float4*>(m)[i];
    float4 v4 = reinterpret_cast<float4*>(v)[i];
    p.x = adamw_element(p.x, g.x, &m4.x, &v4.x, lr, beta1, beta2, beta1_correction, beta2_correction, eps,
                        weight_decay, grad_scale);
    p.y = adamw_element(p.y, g.y, &m4.y, &v4.y, lr, beta1, beta2, beta1_correction, beta2_correction, eps,
                        weight_decay, grad_scale);
    p.z = adamw_element(p.z, g.z, &m4.z, &v4.z, lr, beta1, beta2, beta1_correction, beta2_correction, eps,
                        weight_decay, grad_scale);
    p.w = adamw_element(p.w, g.w, &m4.w, &v4.w, lr, beta1, beta2, beta1_correction, beta2_correction, eps,
                        weight_decay, grad_scale);
    reinterpret_cast<float4*>(params)[i] = p;
    reinterpret_cast<float4*>(m)[i] = m4;
    reinterpret_cast<float4*>(v)[i] = v4;
}

// version 3: bf16 parameters, stochastically rounded from float32 master weights that are updated
// as version 2 updates its parameters. Eight parameters per thread; n % 8 == 0 and all arrays
// 16-byte aligned (checked by the wrapper). params is only written: the master holds the value.
extern "C" __global__ void adamw3(__nv_bfloat16* params, float* master, const float* grads, float* m, float* v,
                                  int n, float lr, float beta1, float beta2, float beta1_correction,
                                  float beta2_correction, float eps, float weight_decay, float grad_scale,
                                  unsigned int seed, unsigned int offset) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;  // index of a group of eight parameters
    if (i >= n / 8) {
        return;
    }
    bf16x8 out;
    for (int half = 0; half < 2; half++) {  // two float4 per float32 array: elements 8i .. 8i+3, 8i+4 .. 8i+7
        int q = 2 * i + half;               // index of the float4
        float4 p = reinterpret_cast<float4*>(master)[q];
        float4 g = reinterpret_cast<const float4*>(grads)[q];
        float4 m4 = reinterpret_cast<float4*>(m)[q];
        float4 v4 = reinterpret_cast<float4*>(v)[q];
        p.x = adamw_element(p.x, g.x, &m4.x, &v4.x, lr, beta1, beta2, beta1_correction, beta2_correction, eps,
                            weight_decay, grad_scale);
        p.y = adamw_element(p.y, g.y, &m4.y, &v4.y, lr, beta1, beta2, beta1_correction, beta2_correction, eps,
                            weight_decay, grad_scale);
        p.z = adamw_element(p.z, g.z, &m4.z, &v4.z, lr, beta1, beta2, beta1_correction, beta2_correction, eps,
                            weight_decay, grad_scale);
        p.w = adamw_element(p.w, g.w, &m4.w, &v4.w, lr, beta1, beta2, beta1_correction, beta2_correction, eps,
                            weight_decay, grad_scale);
        reinterpret_cast<float4*>(master)[q] = p;
        reinterpret_cast<float4*>(m)[q] = m4;
        reinterpret_cast<float4*>(v)[q] = v4;
        // the random bits of element k of the tensor are random_bits(k, seed), whichever thread rounds it
        unsigned int k = offset + 4u * (unsigned int)q;
        out.v[4 * half + 0] = to_bf16_stochastic(p.x, random_bits(k + 0u, seed));
        out.v[4 * half + 1] = to_bf16_stochastic(p.y, random_bits(k + 1u, seed));
        out.v[4 * half + 2] = to_bf16_stochastic(p.z, random_bits(k + 2u, seed));
        out.v[4 * half + 3] = to_bf16_stochastic(p.w, random_bits(k + 3u, seed));
    }
    store_bf16x8(params + 8 * (long)i, out);
}
