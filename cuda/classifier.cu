// classifier.cu: GPT-2's last layer turned into a loss and its gradient: softmax, cross-entropy,
// and the backward pass of both. Wrapper: helpers/ops/classifier.py (one step, `forward`, which
// computes the losses and dlogits together) · notebook: notebooks/06_classifier.ipynb · tests:
// tests/test_op_classifier.py.
//
// The input is logits (N, Vp), N = B*T rows, one per position: row n holds a score for every token
// of the vocabulary. Only the first V columns are real tokens; llm.c pads the vocabulary from
// V = 50257 to Vp = 50304 (a multiple of 128, kinder to the matmul) and columns V..Vp-1 must be
// ignored: they are not part of the softmax, and their gradient is 0. With targets[n] the token
// that actually comes next, and dloss the gradient of the mean loss with respect to each row's
// loss (1 / N):
//
//     probs[n, v]   = exp(logits[n, v] - m_n) / s_n          for v < V, 0 for V <= v < Vp,
//                     m_n = max_v logits[n, v],  s_n = sum_v exp(logits[n, v] - m_n)
//     losses[n]     = -log probs[n, targets[n]] = log s_n - (logits[n, targets[n]] - m_n)
//     dlogits[n, v] = (probs[n, v] - [v == targets[n]]) * dloss      (0 for v >= V)
//
// version 1, unfused, three kernels, each a straight port of the CPU loops (llm.c's kernel 1):
//     softmax_forward1: one thread per row: a pass for the max, one for the sum of exp (writing the
//         exponentials to probs), one that normalises; zeros in the padded columns.
//     crossentropy_forward1: one thread per row: losses[n] = -log probs[n, targets[n]].
//     crossentropy_softmax_backward1: one thread per element: dlogits = (probs - onehot) * dloss,
//         WRITTEN, as versions 2 and 3 do (see there why), so dlogits may be the logits array:
//         the two kernels before it have read the logits for the last time.
//     The probabilities are stored: (N, Vp) floats, 1.65 GB for GPT-2 124M at B=8, T=1024, written
//     once and read twice. And one thread per row is slow on a GPU: a few thousand threads, each
//     walking 50257 columns alone, neighbouring threads 200 KB apart in memory.
// version 2, fused_classifier2: one block per row, everything in one kernel, no probabilities
//     stored. Pass 1 reads the row once and computes the max and the sum together ("online
//     softmax": when a larger max turns up, the sum so far is rescaled by exp(old max - new max));
//     each thread does that for its strided columns, then the block merges the (max, sum) pairs of
//     its threads with warp shuffles and shared memory. Pass 2 reads the row again and writes
//     dlogits, and the thread that meets the target column writes the loss. Neighbouring threads
//     read neighbouring columns (coalesced). dlogits may be the logits array itself (llm.c
//     overwrites the logits with their gradient to save 1.65 GB): every column is read and then
//     written by the same thread, and the loss is computed from the value that thread has just
//     read, so no thread ever reads a column another thread has already overwritten. dlogits is
//     WRITTEN, not accumulated: in place there is nothing to accumulate onto, and the logits feed
//     nothing but the loss, so their gradient has no other term.
// version 3, fused_classifier3: version 2 with float4 loads and stores: each thread moves four
//     columns with one 16-byte instruction, a quarter of the memory instructions. The rows must
//     start on 16 bytes: Vp must be a multiple of 4 (llm.c's Vp = 50304 = 393 * 128 is).
// version 4, fused_classifier4: bf16 storage (mixed precision, notebook 13): version 3 on bf16 logits
//     and dlogits (cuda/bf16.cuh), eight columns per 16-byte bf16x8 load and store, so Vp must be a
//     multiple of 8 (50304 = 6288 * 8 is) and the arrays 16-byte aligned. The softmax, its online
//     merge and the losses are computed in float32 from the bf16 values (converted exactly), as in
//     version 3; each gradient is rounded once to bf16 (nearest even) when stored, the losses stay
//     float32. dlogits is written, may be the logits array (the same argument as version 2's: a
//     thread reads its 8 columns before it writes them, and no other thread touches them), and its
//     padded columns get 0. Half the bytes of version 3: the kernel is memory-bound, so about half
//     the time, and llm.c's in-place (B, T, Vp) buffer is half the size.

#include "bf16.cuh"  // version 4: bf16x8, to_float, to_bf16

#define NEG_INF __int_as_float(0xff800000)  // -infinity (NVRTC has no INFINITY)

// ------------------------------------------------------------------------------------------------
// version 1: unfused, one thread per row (softmax, loss) or per element (backward)
// ------------------------------------------------------------------------------------------------

// probs[n, :V] = softmax(logits[n, :V]), probs[n, V:Vp] = 0; one thread per row n.
extern "C" __global__ void softmax_forward1(float* probs, const float* logits, int N, int V, int Vp) {
    int n = blockIdx.x * blockDim.x + threadIdx.x;
    if (n < N) {
        const float* x = logits + (size_t)n * Vp;  // size_t: N * Vp may not fit an int
        float* p = probs + (size_t)n * Vp;
        float m = NEG_INF;
        for (int v = 0; v < V; v++) {
            m = fmaxf(m, x[v]);
        }
        float s = 0.0f;
        for (int v = 0; v < V; v++) {
            float e = expf(x[v] - m);  // <= 1: subtracting the max keeps exp from overflowing
            p[v] = e;
            s += e;
        }
        float inv_s = 1.0f / s;
        for (int v = 0; v < V; v++) {
            p[v] *= inv_s;
        }
        for (int v = V; v < Vp; v++) {
            p[v] = 0.0f;  // the padded columns are not tokens
        }
    }
}

// losses[n] = -log probs[n, targets[n]]; one thread per row n.
extern "C" __global__ void crossentropy_forward1(float* losses, const float* probs, const int* targets, int N, int Vp) {
    int n = blockIdx.x * blockDim.x + threadIdx.x;
    if (n < N) {
        losses[n] = -logf(probs[(size_t)n * Vp + targets[n]]);
    }
}

// dlogits[n, v] = (probs[n, v] - [v == targets[n]]) * dloss; one thread per element of (N, Vp).
// The padded columns get 0, since softmax_forward1 wrote probs = 0 there.
extern "C" __global__ void crossentropy_softmax_backward1(float* dlogits, const float* probs, const int* targets,
                                                         float dloss, int N, int Vp) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;  // the wrapper checks that N * Vp fits an int
    if (i < N * Vp) {
        int n = i / Vp;
        int v = i % Vp;
        float indicator = (v == targets[n]) ? 1.0f : 0.0f;
        dlogits[i] = (probs[i] - indicator) * dloss;
    }
}

// ------------------------------------------------------------------------------------------------
// The online softmax and its block-wide merge (versions 2 and 3)
// ------------------------------------------------------------------------------------------------
// A pair (m, s) summarises a set of logits: m their max, s = sum of exp(x - m). The empty set is
// (-inf, 0).

// Adds one logit x to the pair. If x is a new max, the sum so far was relative to the old max:
// rescale it by exp(old - new) (with old = -inf for the first element: exp(-inf) = 0).
__device__ void online_add(float& m, float& s, float x) {
    if (x > m) {
        s = s * expf(m - x) + 1.0f;
        m = x;
    } else {
        s += expf(x - m);
    }
}

// Merges pair (m2, s2) into (m, s): both sums are rescaled to the larger max. The tests (m == mx)
// matter when both sets are empty: exp(-inf - (-inf)) would be exp(NaN).
__device__ void online_merge(float& m, float& s, float m2, float s2) {
    float mx = fmaxf(m, m2);
    s = s * (m == mx ? 1.0f : expf(m - mx)) + s2 * (m2 == mx ? 1.0f : expf(m2 - mx));
    m = mx;
}

// Merges the pairs of all threads of the block; every thread gets the block's pair, with the same
// bits. blockDim.x must be a multiple of 32 (whole warps: full shuffle masks). warp_m and warp_s
// are __shared__ arrays of 32 floats. Called once per kernel, so no barrier is needed at its end.
__device__ void block_merge(float& m, float& s, float* warp_m, float* warp_s) {
    int lane = threadIdx.x % 32;
    int warp = threadIdx.x / 32;
    int num_warps = blockDim.x / 32;
    // within each warp, a tree through registers: lane 0 ends with the warp's pair
    for (int offset = 16; offset > 0; offset /= 2) {
        float m2 = __shfl_down_sync(0xffffffff, m, offset);
        float s2 = __shfl_down_sync(0xffffffff, s, offset);
        online_merge(m, s, m2, s2);
    }
    if (lane == 0) {
        warp_m[warp] = m;
        warp_s[warp] = s;
    }
    __syncthreads();  // every warp's pair is in shared memory before anyone reads them
    // every thread merges the (at most 32) warp pairs itself, in the same order: the same result
    // everywhere, with no second barrier to broadcast it
    m = NEG_INF;
    s = 0.0f;
    for (int w = 0; w < num_warps; w++) {
        online_merge(m, s, warp_m[w], warp_s[w]);
    }
}

// The gradient of column v of row n (the value x = logits[n, v] already read), and the row's loss
// if v is the target. With dlogits == logits, the loss must come from this x, read before the
// thread writes the column: another thread never reads it (llm.c's kernel read logits[target] in
// thread 0 and needed a __syncthreads() before the writes; this needs none).
__device__ float dlogit(float x, int v, int target, float m, float s, float inv_s, float dloss, int V,
                        float* loss) {
    if (v >= V) {
        return 0.0f;  // a padded column: not in the softmax, no gradient
    }
    float p = expf(x - m) * inv_s;
    if (v == target) {
        *loss = logf(s) - (x - m);  // = -log p, without the rounding of p (and never log 0)
        p -= 1.0f;
    }
    return p * dloss;
}

// ------------------------------------------------------------------------------------------------
// version 2: fused, one block per row, online softmax, no probabilities stored
// ------------------------------------------------------------------------------------------------

// losses[n] and dlogits[n, :] from logits[n, :], one block per row: gridDim.x == N.
// dlogits may be the same array as logits (in place). blockDim.x: a multiple of 32.
extern "C" __global__ void fused_classifier2(float* losses, float* dlogits, const float* logits, const int* targets,
                                             float dloss, int V, int Vp) {
    __shared__ float warp_m[32];
    __shared__ float warp_s[32];
    int n = blockIdx.x;
    const float* x = logits + (size_t)n * Vp;
    float* dx = dlogits + (size_t)n * Vp;
    int target = targets[n];

    // pass 1: max and sum of exp in a single read of the row; thread t takes columns t, t + blockDim.x, ...
    float m = NEG_INF;
    float s = 0.0f;
    for (int v = threadIdx.x; v < V; v += blockDim.x) {
        online_add(m, s, x[v]);
    }
    block_merge(m, s, warp_m, warp_s);
    float inv_s = 1.0f / s;

    // pass 2: read the row again, write its gradient (zeros in the padded columns)
    for (int v = threadIdx.x; v < Vp; v += blockDim.x) {
        dx[v] = dlogit(x[v], v, target, m, s, inv_s, dloss, V, &losses[n]);
    }
}

// ------------------------------------------------------------------------------------------------
// version 3: version 2 with float4 loads and stores
// ------------------------------------------------------------------------------------------------

// As fused_classifier2, four columns at a time. Vp must be a multiple of 4, so that every row
// starts on a 16-byte boundary (the arrays themselves are 16-byte aligned).
extern "C" __global__ void fused_classifier3(float* losses, float* dlogits, const float* logits, const int* targets,
                                             float dloss, int V, int Vp) {
    __shared__ float warp_m[32];
    __shared__ float warp_s[32];
    int n = blockIdx.x;
    const float4* x4 = reinterpret_cast<const float4*>(logits + (size_t)n * Vp);
    float4* dx4 = reinterpret_cast<float4*>(dlogits + (size_t)n * Vp);
    int target = targets[n];

    // pass 1 over the float4 chunks that hold real columns; the last one may hold padding too
    float m = NEG_INF;
    float s = 0.0f;
    int chunks_v = (V + 3) / 4;
    for (int c = threadIdx.x; c < chunks_v; c += blockDim.x) {
        float4 x = x4[c];
        int v = 4 * c;
        online_add(m, s, x.x);  // v < V: c < chunks_v guarantees it for the first of the four
        if (v + 1 < V) online_add(m, s, x.y);
        if (v + 2 < V) online_add(m, s, x.z);
        if (v + 3 < V) online_add(m, s, x.w);
    }
    block_merge(m, s, warp_m, warp_s);
    float inv_s = 1.0f / s;

    // pass 2 over all Vp / 4 chunks, padding included (dlogit writes 0 there)
    for (int c = threadIdx.x; c < Vp / 4; c += blockDim.x) {
        float4 x = x4[c];
        int v = 4 * c;
        float4 g;
        g.x = dlogit(x.x, v, target, m, s, inv_s, dloss, V, &losses[n]);
        g.y = dlogit(x.y, v + 1, target, m, s, inv_s, dloss, V, &losses[n]);
        g.z = dlogit(x.z, v + 2, target, m, s, inv_s, dloss, V, &losses[n]);
        g.w = dlogit(x.w, v + 3, target, m, s, inv_s, dloss, V, &losses[n]);
        dx4[c] = g;
    }
}

// ------------------------------------------------------------------------------------------------
// version 4: version 3 on bf16 logits and dlogits, eight columns per 16-byte load and store
// ------------------------------------------------------------------------------------------------

// As fused_classifier3, eight bf16 columns at a time, float32 inside, losses float32. Vp must be a
// multiple of 8, so that every row starts on a 16-byte boundary (the arrays themselves are aligned).
extern "C" __global__ void fused_classifier4(float* losses, __nv_bfloat16* dlogits, const __nv_bfloat16* logits,
                                             const int* targets, float dloss, int V, int Vp) {
    __shared__ float warp_m[32];
    __shared__ float warp_s[32];
    int n = blockIdx.x;
    const __nv_bfloat16* x = logits + (size_t)n * Vp;
    __nv_bfloat16* dx = dlogits + (size_t)n * Vp;
    int target = targets[n];

    // pass 1 over the 8-column chunks that hold real columns; the last one may hold padding too
    float m = NEG_INF;
    float s = 0.0f;
    int chunks_v = (V + 7) / 8;
    for (int c = threadIdx.x; c < chunks_v; c += blockDim.x) {
        bf16x8 xc = load_bf16x8(x + 8 * c);
#pragma unroll
        for (int u = 0; u < 8; u++) {
            if (8 * c + u < V) {
                online_add(m, s, to_float(xc.v[u]));
            }
        }
    }
    block_merge(m, s, warp_m, warp_s);
    float inv_s = 1.0f / s;

    // pass 2 over all Vp / 8 chunks, padding included (dlogit gives 0 there)
    for (int c = threadIdx.x; c < Vp / 8; c += blockDim.x) {
        bf16x8 xc = load_bf16x8(x + 8 * c);
        bf16x8 g;
#pragma unroll
        for (int u = 0; u < 8; u++) {
            g.v[u] = to_bf16(dlogit(to_float(xc.v[u]), 8 * c + u, target, m, s, inv_s, dloss, V, &losses[n]));
        }
        store_bf16x8(dx + 8 * c, g);  // after this thread's load of the same 16 bytes: safe in place
    }
}
