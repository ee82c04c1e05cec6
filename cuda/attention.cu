// attention.cu: GPT-2's causal self-attention, forward and backward, llm.c's layout.
// Wrapper: helpers/ops/attention.py · notebook: notebooks/04_attention.ipynb · tests: tests/test_op_attention.py.
//
// Input qkv (B, T, 3C), the output of the qkv projection: for token t of sequence b,
//     q = qkv[b, t, 0:C],  k = qkv[b, t, C:2C],  v = qkv[b, t, 2C:3C],
// each split into NH heads of hs = C / NH channels (head h owns channels h*hs .. h*hs + hs - 1).
// For each sequence b and head h, with the query row t and the key/value rows t2:
//     scores[t, t2] = q_t . k_t2 / sqrt(hs)         for t2 <= t  (causal: a token sees only the past)
//     att[t, :]     = softmax(scores[t, :])          (att[t, t2] = 0 for t2 > t)
//     y_t           = sum over t2 <= t of att[t, t2] * v_t2
// and out[b, t, h*hs : (h+1)*hs] = y_t: the heads are concatenated back into (B, T, C).
// Backward, given dout = dL/dout (see notebooks/04_attention.ipynb for the derivation):
//     dv_t2 = sum_t att[t, t2] dy_t              datt[t, t2] = dy_t . v_t2
//     dscores[t, :] = att[t, :] * (datt[t, :] - sum_t2 datt[t, t2] att[t, t2])
//     dq_t = sum_t2 dscores[t, t2] k_t2 / sqrt(hs)   dk_t2 = sum_t dscores[t, t2] q_t / sqrt(hs)
// dq, dk, dv are ADDED into dqkv's three slices (gradients accumulate, as in llm.c).
//
// version 1, naive: the attention matrix is materialised, one kernel per step of the math, one thread
//     per output element, like llm.c's dev/cuda attention_forward1.
//     forward:  attention_forward1_scores (masked scaled scores into att, -inf above the diagonal),
//               attention_forward1_softmax (one thread per row, in place: att becomes probabilities),
//               attention_forward1_values (out = att v, one thread per output channel).
//     backward: attention_backward1_datt (datt = dy v^T into a (B,NH,T,T) scratch),
//               attention_backward1_softmax (scratch becomes dscores, in place, one thread per row),
//               attention_backward1_dq (one thread per dq element), attention_backward1_dkdv (one
//               thread per (dk, dv) pair of elements). Every gradient element has exactly one owner:
//               no atomics, the same bits in every order.
//     Memory: B*NH*T*T floats for att (kept for the backward) plus as much scratch in the backward:
//     for GPT-2 at B=8, T=1024 that is 400 MB each, per layer. And the matrix is written and read
//     back several times: the kernels are bound by that traffic, not by arithmetic.
// version 2, fused (flash-attention style): ONE kernel, one warp per (b, h, query row t), and the
//     (T, T) matrix is never stored. The warp walks the keys t2 = 0..t once, keeping an ONLINE
//     softmax: the running maximum m, the running sum l of exp(score - m) and the running
//     accumulator acc of exp(score - m) v; when a new score raises the maximum, l and acc are
//     rescaled by exp(m_old - m_new). At the end out = acc / l. The lanes split the head's channels
//     (lane holds channels lane, lane+32, lane+64, lane+96: hs <= 128), so each score is a dot
//     product added up across the warp with shuffles. It stores lse = m + log(l), the log of the
//     softmax's denominator, one float per row, for the backward.
//     backward (flash-attention-2 style): recompute p = exp(score - lse) instead of reading att.
//               attention_backward2_preprocess: D[t] = dy_t . out_t (= sum_t2 datt att, the row sum
//               of the softmax backward), one thread per row, into a (B,NH,T) scratch;
//               attention_backward2_dq: one warp per query row, walks its keys t2 <= t;
//               attention_backward2_dkdv: one warp per key row, walks its queries t >= t2.
//               The scores are recomputed in both kernels (twice the QK^T work) so that each
//               gradient has one owner: no atomicAdd on dq, deterministic.
//     Memory: B*NH*T floats for lse (and as much scratch for D): 0.4 MB instead of 400 MB.
// version 3, tiled (flash-attention proper): version 2 reads every key and value row from global
//     memory once per query row, and pays a 5-shuffle reduction for every single score. Now a block
//     of NW warps takes NW consecutive query rows of one (b, h) and walks the keys in tiles of 32:
//     the block loads a K tile and a V tile into shared memory once (coalesced) and all NW warps
//     use it (NW times less global traffic), and within a tile lane j computes the score of key j
//     by itself, so the online-softmax update happens once per TILE: one warp max and one warp sum
//     per 32 keys instead of 32 sums. The p_j go through a per-warp shared array to every lane,
//     which adds sum_j p_j v_j to its channels of the accumulator. The lse is the same as v2's.
//     backward: the same tiling. attention_backward3_dq: NW query rows share K/V tiles (with lse
//               known there is no online softmax: no shuffles at all); attention_backward3_dkdv:
//               NW key rows share tiles of q, dy, lse and D; D comes from
//               attention_backward2_preprocess. Backward versions 2 and 3 read the lse of either
//               forward 2 or 3.
//     Shared memory grows with hs and NW: for hs = 128 and NW = 8, 38 KB (forward) and 43.5 KB
//     (backward dk/dv); the wrappers check the 48 KB a launch may ask for.
// version 4, bf16 storage (mixed precision, notebook 13): version 3's tiling and its float32
//     arithmetic, operation for operation, on bf16 qkv, out, dout and dqkv (cuda/bf16.cuh). Version 3
//     is the one to extend: it is the fastest, and as each block converts a K/V tile once into its
//     float32 shared memory for all NW warps, the conversions cost once per tile, not once per
//     query row as in version 2. Rows move 16 bytes (8 bf16, one bf16x8) at a time, so hs must be a
//     multiple of 8 and the arrays 16-byte aligned; a result row is rounded once to bf16 when stored
//     (nearest even), after the warp has written it in float32 to its own shared row, from which
//     lanes store 8 channels each. dqkv += ... loads the bf16 gradient, adds in float32 and rounds
//     once. lse, the D scratch (attention_backward4_preprocess, D from the bf16 out) and all
//     accumulators stay float32; the shared memory is version 3's. Given version 3 the same values
//     (the bf16 inputs as float32), version 4 computes the same float32 numbers: its outputs are
//     version 3's rounded to bf16 (the tests check it).
//
// Index arithmetic is 32-bit: the wrappers in helpers/ops/attention.py check that every index fits.

#include "common.cuh"  // warp_sum, warp_max
#include "bf16.cuh"    // version 4: bf16x8, to_float, to_bf16

#define NEG_INF __int_as_float(0xff800000)
#define MAX_PER_LANE 4  // versions 2 and 3: a lane holds at most 4 channels of a head, so hs <= 4 * 32 = 128

// ------------------------------------------------------------------------------------------------
// version 1: naive, the (T, T) matrices in memory
// ------------------------------------------------------------------------------------------------

// att[b, h, t, t2] = q_t . k_t2 / sqrt(hs) for t2 <= t, -inf above the diagonal. One thread each.
extern "C" __global__ void attention_forward1_scores(float* att, const float* qkv, int B, int T, int C, int NH) {
    int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= B * NH * T * T) {
        return;
    }
    int t2 = idx % T;
    int t = (idx / T) % T;
    int h = (idx / (T * T)) % NH;
    int b = idx / (NH * T * T);
    if (t2 > t) {  // the causal mask: softmax turns -inf into exactly 0
        att[idx] = NEG_INF;
        return;
    }
    int hs = C / NH;
    const float* q = qkv + (b * T + t) * 3 * C + h * hs;
    const float* k = qkv + (b * T + t2) * 3 * C + C + h * hs;
    float s = 0.0f;
    for (int i = 0; i < hs; i++) {
        s += q[i] * k[i];
    }
    att[idx] = s * (1.0f / sqrtf((float)hs));
}

// In place: each row of att becomes softmax(row). One thread per row (B*NH*T rows); the row's max is
// subtracted before exp so that exp never overflows; entries above the diagonal become exactly 0.
extern "C" __global__ void attention_forward1_softmax(float* att, int B, int NH, int T) {
    int row = blockIdx.x * blockDim.x + threadIdx.x;
    if (row >= B * NH * T) {
        return;
    }
    int t = row % T;
    float* a = att + row * T;
    float m = NEG_INF;
    for (int t2 = 0; t2 <= t; t2++) {
        m = fmaxf(m, a[t2]);
    }
    float sum = 0.0f;
    for (int t2 = 0; t2 <= t; t2++) {
        float e = expf(a[t2] - m);
        a[t2] = e;
        sum += e;
    }
    float inv_sum = 1.0f / sum;
    for (int t2 = 0; t2 < T; t2++) {
        a[t2] = (t2 <= t) ? a[t2] * inv_sum : 0.0f;
    }
}

// out[b, t, h*hs + i] = sum over t2 <= t of att[b, h, t, t2] * v[b, t2, h*hs + i]. One thread each.
extern "C" __global__ void attention_forward1_values(float* out, const float* att, const float* qkv, int B, int T,
                                                     int C, int NH) {
    int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= B * T * C) {
        return;
    }
    int c = idx % C;
    int t = (idx / C) % T;
    int b = idx / (C * T);
    int hs = C / NH;
    int h = c / hs;
    const float* a = att + ((b * NH + h) * T + t) * T;
    const float* v = qkv + b * T * 3 * C + 2 * C + c;  // v[b, t2, c] = v[t2 * 3C]
    float y = 0.0f;
    for (int t2 = 0; t2 <= t; t2++) {
        y += a[t2] * v[t2 * 3 * C];
    }
    out[idx] = y;
}

// datt[b, h, t, t2] = dy_t . v_t2 for t2 <= t (0 above the diagonal, where att is 0). One thread each.
extern "C" __global__ void attention_backward1_datt(float* datt, const float* dout, const float* qkv, int B, int T,
                                                    int C, int NH) {
    int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= B * NH * T * T) {
        return;
    }
    int t2 = idx % T;
    int t = (idx / T) % T;
    int h = (idx / (T * T)) % NH;
    int b = idx / (NH * T * T);
    if (t2 > t) {
        datt[idx] = 0.0f;
        return;
    }
    int hs = C / NH;
    const float* dy = dout + (b * T + t) * C + h * hs;
    const float* v = qkv + (b * T + t2) * 3 * C + 2 * C + h * hs;
    float s = 0.0f;
    for (int i = 0; i < hs; i++) {
        s += dy[i] * v[i];
    }
    datt[idx] = s;
}

// In place, the softmax backward of one row: ds = att * (datt - sum(datt * att)). One thread per row.
extern "C" __global__ void attention_backward1_softmax(float* dscores, const float* att, int B, int NH, int T) {
    int row = blockIdx.x * blockDim.x + threadIdx.x;
    if (row >= B * NH * T) {
        return;
    }
    int t = row % T;
    float* d = dscores + row * T;
    const float* a = att + row * T;
    float dot = 0.0f;
    for (int t2 = 0; t2 <= t; t2++) {
        dot += d[t2] * a[t2];
    }
    for (int t2 = 0; t2 < T; t2++) {
        d[t2] = (t2 <= t) ? a[t2] * (d[t2] - dot) : 0.0f;
    }
}

// dq[b, t, h*hs + i] += sum over t2 <= t of dscores[b, h, t, t2] * k[b, t2, h*hs + i] / sqrt(hs).
// One thread per element of dq.
extern "C" __global__ void attention_backward1_dq(float* dqkv, const float* dscores, const float* qkv, int B, int T,
                                                  int C, int NH) {
    int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= B * T * C) {
        return;
    }
    int c = idx % C;
    int t = (idx / C) % T;
    int b = idx / (C * T);
    int hs = C / NH;
    int h = c / hs;
    const float* ds = dscores + ((b * NH + h) * T + t) * T;
    const float* k = qkv + b * T * 3 * C + C + c;
    float g = 0.0f;
    for (int t2 = 0; t2 <= t; t2++) {
        g += ds[t2] * k[t2 * 3 * C];
    }
    dqkv[(b * T + t) * 3 * C + c] += g * (1.0f / sqrtf((float)hs));
}

// For key row t2 and channel c of head h, one thread adds both
//     dk[b, t2, c] += sum over t >= t2 of dscores[b, h, t, t2] * q[b, t, c] / sqrt(hs)
//     dv[b, t2, c] += sum over t >= t2 of att[b, h, t, t2] * dout[b, t, c]
// (a column of the (T, T) matrices: consecutive t are T floats apart).
extern "C" __global__ void attention_backward1_dkdv(float* dqkv, const float* dscores, const float* att,
                                                    const float* dout, const float* qkv, int B, int T, int C, int NH) {
    int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= B * T * C) {
        return;
    }
    int c = idx % C;
    int t2 = (idx / C) % T;
    int b = idx / (C * T);
    int hs = C / NH;
    int h = c / hs;
    const float* ds = dscores + (b * NH + h) * T * T + t2;  // column t2: row t at ds[t * T]
    const float* a = att + (b * NH + h) * T * T + t2;
    const float* q = qkv + b * T * 3 * C + c;
    const float* dy = dout + b * T * C + c;
    float gk = 0.0f, gv = 0.0f;
    for (int t = t2; t < T; t++) {
        gk += ds[t * T] * q[t * 3 * C];
        gv += a[t * T] * dy[t * C];
    }
    dqkv[(b * T + t2) * 3 * C + C + c] += gk * (1.0f / sqrtf((float)hs));
    dqkv[(b * T + t2) * 3 * C + 2 * C + c] += gv;
}

// ------------------------------------------------------------------------------------------------
// version 2: fused, one warp per row, online softmax, nothing (T, T) in memory
// ------------------------------------------------------------------------------------------------

// One warp per (b, h, t): out[b, t, head h] and lse[b, h, t]. Rows are numbered row = (b*NH + h)*T + t,
// warp w of block x takes row x * (blockDim.x / 32) + w; blockDim.x must be a multiple of 32.
extern "C" __global__ void attention_forward2(float* out, float* lse, const float* qkv, int B, int T, int C, int NH) {
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (row >= B * NH * T) {
        return;  // the whole warp leaves together (no barrier in this kernel): no shuffle misses a lane
    }
    int t = row % T;
    int h = (row / T) % NH;
    int b = row / (NH * T);
    int hs = C / NH;
    float scale = 1.0f / sqrtf((float)hs);
    const float* q = qkv + (b * T + t) * 3 * C + h * hs;
    const float* k = qkv + b * T * 3 * C + C + h * hs;  // key t2 at k + t2 * 3C
    const float* v = k + C;

    float qs[MAX_PER_LANE], acc[MAX_PER_LANE];
#pragma unroll
    for (int j = 0; j < MAX_PER_LANE; j++) {  // channel lane + 32 j: consecutive lanes, consecutive floats
        int i = lane + 32 * j;
        qs[j] = (i < hs) ? q[i] * scale : 0.0f;  // scaling q once saves a multiply per key
        acc[j] = 0.0f;
    }
    float m = NEG_INF;  // running maximum of the scores seen so far
    float l = 0.0f;     // running sum of exp(score - m)
    for (int t2 = 0; t2 <= t; t2++) {
        const float* kt = k + t2 * 3 * C;
        const float* vt = v + t2 * 3 * C;
        float s = 0.0f;
#pragma unroll
        for (int j = 0; j < MAX_PER_LANE; j++) {
            int i = lane + 32 * j;
            if (i < hs) {
                s += qs[j] * kt[i];
            }
        }
        s = warp_sum(s);  // the score, in every lane
        float m_new = fmaxf(m, s);
        float correction = expf(m - m_new);  // rescales what was summed against the old maximum (0 at t2 = 0)
        float p = expf(s - m_new);
        l = l * correction + p;
#pragma unroll
        for (int j = 0; j < MAX_PER_LANE; j++) {
            int i = lane + 32 * j;
            if (i < hs) {
                acc[j] = acc[j] * correction + p * vt[i];
            }
        }
        m = m_new;
    }
    float* o = out + (b * T + t) * C + h * hs;
    float inv_l = 1.0f / l;
#pragma unroll
    for (int j = 0; j < MAX_PER_LANE; j++) {
        int i = lane + 32 * j;
        if (i < hs) {
            o[i] = acc[j] * inv_l;
        }
    }
    if (lane == 0) {
        lse[row] = m + logf(l);  // log sum_t2 exp(score): p = exp(score - lse) in the backward
    }
}

// D[b, h, t] = dy_t . out_t over the head's channels. It equals sum_t2 datt[t, t2] att[t, t2]
// (out_t = sum_t2 att v_t2), the row sum that the softmax backward subtracts. One thread per row.
extern "C" __global__ void attention_backward2_preprocess(float* D, const float* dout, const float* out, int B, int T,
                                                          int C, int NH) {
    int row = blockIdx.x * blockDim.x + threadIdx.x;
    if (row >= B * NH * T) {
        return;
    }
    int t = row % T;
    int h = (row / T) % NH;
    int b = row / (NH * T);
    int hs = C / NH;
    const float* dy = dout + (b * T + t) * C + h * hs;
    const float* o = out + (b * T + t) * C + h * hs;
    float d = 0.0f;
    for (int i = 0; i < hs; i++) {
        d += dy[i] * o[i];
    }
    D[row] = d;
}

// One warp per query row (b, h, t): dq_t += sum over t2 <= t of ds[t, t2] k_t2 / sqrt(hs), with
//     p = exp(q_t . k_t2 / sqrt(hs) - lse[t]),  ds = p * (dy_t . v_t2 - D[t]).
extern "C" __global__ void attention_backward2_dq(float* dqkv, const float* dout, const float* qkv, const float* lse,
                                                  const float* D, int B, int T, int C, int NH) {
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (row >= B * NH * T) {
        return;  // whole warps only
    }
    int t = row % T;
    int h = (row / T) % NH;
    int b = row / (NH * T);
    int hs = C / NH;
    float scale = 1.0f / sqrtf((float)hs);
    const float* q = qkv + (b * T + t) * 3 * C + h * hs;
    const float* dy = dout + (b * T + t) * C + h * hs;
    const float* k = qkv + b * T * 3 * C + C + h * hs;
    const float* v = k + C;
    float lse_t = lse[row];
    float D_t = D[row];

    float qs[MAX_PER_LANE], dyr[MAX_PER_LANE], dq[MAX_PER_LANE];
#pragma unroll
    for (int j = 0; j < MAX_PER_LANE; j++) {
        int i = lane + 32 * j;
        qs[j] = (i < hs) ? q[i] * scale : 0.0f;
        dyr[j] = (i < hs) ? dy[i] : 0.0f;
        dq[j] = 0.0f;
    }
    for (int t2 = 0; t2 <= t; t2++) {
        const float* kt = k + t2 * 3 * C;
        const float* vt = v + t2 * 3 * C;
        float s = 0.0f, dp = 0.0f;
#pragma unroll
        for (int j = 0; j < MAX_PER_LANE; j++) {
            int i = lane + 32 * j;
            if (i < hs) {
                s += qs[j] * kt[i];
                dp += dyr[j] * vt[i];
            }
        }
        s = warp_sum(s);
        dp = warp_sum(dp);
        float ds = expf(s - lse_t) * (dp - D_t);
#pragma unroll
        for (int j = 0; j < MAX_PER_LANE; j++) {
            int i = lane + 32 * j;
            if (i < hs) {
                dq[j] += ds * kt[i];
            }
        }
    }
    float* g = dqkv + (b * T + t) * 3 * C + h * hs;
#pragma unroll
    for (int j = 0; j < MAX_PER_LANE; j++) {
        int i = lane + 32 * j;
        if (i < hs) {
            g[i] += dq[j] * scale;
        }
    }
}

// One warp per key row (b, h, t2): walks the queries t = t2 .. T-1 that see it and adds
//     dk_t2 += sum_t ds[t, t2] q_t / sqrt(hs),   dv_t2 += sum_t p[t, t2] dy_t.
extern "C" __global__ void attention_backward2_dkdv(float* dqkv, const float* dout, const float* qkv, const float* lse,
                                                    const float* D, int B, int T, int C, int NH) {
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (row >= B * NH * T) {
        return;  // whole warps only
    }
    int t2 = row % T;
    int h = (row / T) % NH;
    int b = row / (NH * T);
    int hs = C / NH;
    float scale = 1.0f / sqrtf((float)hs);
    const float* k = qkv + (b * T + t2) * 3 * C + C + h * hs;
    const float* v = k + C;
    const float* q = qkv + b * T * 3 * C + h * hs;  // query t at q + t * 3C
    const float* dy = dout + b * T * C + h * hs;   // dy_t at dy + t * C
    const float* lse_bh = lse + (b * NH + h) * T;
    const float* D_bh = D + (b * NH + h) * T;

    float ks[MAX_PER_LANE], vr[MAX_PER_LANE], dk[MAX_PER_LANE], dv[MAX_PER_LANE];
#pragma unroll
    for (int j = 0; j < MAX_PER_LANE; j++) {
        int i = lane + 32 * j;
        ks[j] = (i < hs) ? k[i] * scale : 0.0f;
        vr[j] = (i < hs) ? v[i] : 0.0f;
        dk[j] = 0.0f;
        dv[j] = 0.0f;
    }
    for (int t = t2; t < T; t++) {
        const float* qt = q + t * 3 * C;
        const float* dyt = dy + t * C;
        float s = 0.0f, dp = 0.0f;
#pragma unroll
        for (int j = 0; j < MAX_PER_LANE; j++) {
            int i = lane + 32 * j;
            if (i < hs) {
                s += qt[i] * ks[j];
                dp += dyt[i] * vr[j];
            }
        }
        s = warp_sum(s);
        dp = warp_sum(dp);
        float p = expf(s - lse_bh[t]);
        float ds = p * (dp - D_bh[t]);
#pragma unroll
        for (int j = 0; j < MAX_PER_LANE; j++) {
            int i = lane + 32 * j;
            if (i < hs) {
                dv[j] += p * dyt[i];
                dk[j] += ds * qt[i];
            }
        }
    }
    float* gk = dqkv + (b * T + t2) * 3 * C + C + h * hs;
    float* gv = gk + C;
#pragma unroll
    for (int j = 0; j < MAX_PER_LANE; j++) {
        int i = lane + 32 * j;
        if (i < hs) {
            gk[i] += dk[j] * scale;
            gv[i] += dv[j];
        }
    }
}

// ------------------------------------------------------------------------------------------------
// version 3: tiled, K/V tiles in shared memory, one key per lane
// ------------------------------------------------------------------------------------------------

// A block of NW = blockDim.x / 32 warps takes NW consecutive query rows t0 .. t0 + NW - 1 of one
// (b, h) = blockIdx.y (b * NH + h), t0 = blockIdx.x * NW; warp w takes row t0 + w. The keys come in
// tiles of 32: the block loads tile k0 .. k0 + 31 of K and V into shared memory once (coalesced, all
// threads), and every warp uses it. Within a tile, lane j scores key k0 + j (a whole dot product in
// one lane: no shuffles), then the warp needs just one max and one sum across lanes for the online
// softmax update of the TILE, and adds the 32 p_j v_j to its accumulator (lane: channels as in v2).
// Dynamic shared memory, in floats: Ks 32*(hs+1) (rows padded by one float: lane j reads row j, and
// without the pad all 32 lanes would hit the same bank when hs is a multiple of 32), Vs 32*hs, Qs
// NW*hs (each warp's scaled query), Ps NW*32 (each warp's p of the tile).
extern "C" __global__ void attention_forward3(float* out, float* lse, const float* qkv, int B, int T, int C, int NH) {
    extern __shared__ float smem[];
    int nw = blockDim.x / 32;
    int warp = threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    int b = blockIdx.y / NH;
    int h = blockIdx.y % NH;
    int hs = C / NH;
    float scale = 1.0f / sqrtf((float)hs);
    int t0 = blockIdx.x * nw;
    int t = t0 + warp;                      // this warp's query row
    bool active = t < T;                    // the last block may have warps past the end...
    int t_last = min(t0 + nw - 1, T - 1);   // ...and the block needs keys up to its last row
    float* Ks = smem;
    float* Vs = Ks + 32 * (hs + 1);
    float* Qs = Vs + 32 * hs + warp * hs;
    float* Ps = Vs + 32 * hs + nw * hs + warp * 32;

    const float* q = qkv + (b * T + (active ? t : 0)) * 3 * C + h * hs;
    for (int i = lane; i < hs; i += 32) {
        Qs[i] = active ? q[i] * scale : 0.0f;
    }
    float acc[MAX_PER_LANE];
#pragma unroll
    for (int j = 0; j < MAX_PER_LANE; j++) {
        acc[j] = 0.0f;
    }
    float m = NEG_INF, l = 0.0f;
    for (int k0 = 0; k0 <= t_last; k0 += 32) {  // the same trip count in every warp: all reach the barriers
        __syncthreads();  // everyone is done with the previous tile (and the first time: Qs is written)
        for (int e = threadIdx.x; e < 32 * hs; e += blockDim.x) {
            int j = e / hs, i = e % hs;  // consecutive threads load consecutive channels
            int t2 = k0 + j;
            const float* kv = qkv + (b * T + min(t2, t_last)) * 3 * C + C + h * hs;
            Ks[j * (hs + 1) + i] = (t2 <= t_last) ? kv[i] : 0.0f;
            Vs[j * hs + i] = (t2 <= t_last) ? kv[C + i] : 0.0f;
        }
        __syncthreads();  // the tile is complete
        if (active && k0 <= t) {  // the same for all lanes of a warp: the shuffles see all 32
            int t2 = k0 + lane;
            float s = NEG_INF;  // keys past t are masked: p = exp(-inf) = 0
            if (t2 <= t) {
                s = 0.0f;
                for (int i = 0; i < hs; i++) {
                    s += Qs[i] * Ks[lane * (hs + 1) + i];
                }
            }
            float m_new = fmaxf(m, warp_max(s));  // finite: key k0 <= t is in the tile
            float correction = expf(m - m_new);
            float p = expf(s - m_new);
            l = l * correction + warp_sum(p);
            Ps[lane] = p;
            __syncwarp();  // every lane reads the p of all 32 keys
            int n = min(32, t - k0 + 1);  // the keys of this tile that row t sees
#pragma unroll
            for (int j = 0; j < MAX_PER_LANE; j++) {
                acc[j] *= correction;
            }
            for (int jj = 0; jj < n; jj++) {
                float pj = Ps[jj];
#pragma unroll
                for (int j = 0; j < MAX_PER_LANE; j++) {
                    int i = lane + 32 * j;
                    if (i < hs) {
                        acc[j] += pj * Vs[jj * hs + i];
                    }
                }
            }
            m = m_new;
        }
    }
    if (active) {
        float* o = out + (b * T + t) * C + h * hs;
        float inv_l = 1.0f / l;
#pragma unroll
        for (int j = 0; j < MAX_PER_LANE; j++) {
            int i = lane + 32 * j;
            if (i < hs) {
                o[i] = acc[j] * inv_l;
            }
        }
        if (lane == 0) {
            lse[(b * NH + h) * T + t] = m + logf(l);
        }
    }
}

// dq with the tiling of forward 3: the block's NW query rows share K/V tiles; lane j recomputes
// p = exp(q_t . k_j / sqrt(hs) - lse[t]) and ds = p (dy_t . v_j - D[t]) for key k0 + j, then the
// warp adds sum_j ds_j k_j to dq. With lse known there is no online softmax, hence no shuffle at all.
// Dynamic shared memory, in floats: Ks and Vs 32*(hs+1) each (lane j reads row j of both), Qs and
// dYs NW*hs each (the warp's scaled q and its dy), DSs NW*32.
extern "C" __global__ void attention_backward3_dq(float* dqkv, const float* dout, const float* qkv, const float* lse,
                                                  const float* D, int B, int T, int C, int NH) {
    extern __shared__ float smem[];
    int nw = blockDim.x / 32;
    int warp = threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    int b = blockIdx.y / NH;
    int h = blockIdx.y % NH;
    int hs = C / NH;
    float scale = 1.0f / sqrtf((float)hs);
    int t0 = blockIdx.x * nw;
    int t = t0 + warp;
    bool active = t < T;
    int t_last = min(t0 + nw - 1, T - 1);
    float* Ks = smem;
    float* Vs = Ks + 32 * (hs + 1);
    float* Qs = Vs + 32 * (hs + 1) + warp * hs;
    float* dYs = Vs + 32 * (hs + 1) + nw * hs + warp * hs;
    float* DSs = Vs + 32 * (hs + 1) + 2 * nw * hs + warp * 32;

    int tq = active ? t : 0;
    const float* q = qkv + (b * T + tq) * 3 * C + h * hs;
    const float* dy = dout + (b * T + tq) * C + h * hs;
    for (int i = lane; i < hs; i += 32) {
        Qs[i] = active ? q[i] * scale : 0.0f;
        dYs[i] = active ? dy[i] : 0.0f;
    }
    float lse_t = active ? lse[(b * NH + h) * T + t] : 0.0f;
    float D_t = active ? D[(b * NH + h) * T + t] : 0.0f;
    float dq[MAX_PER_LANE];
#pragma unroll
    for (int j = 0; j < MAX_PER_LANE; j++) {
        dq[j] = 0.0f;
    }
    for (int k0 = 0; k0 <= t_last; k0 += 32) {
        __syncthreads();
        for (int e = threadIdx.x; e < 32 * hs; e += blockDim.x) {
            int j = e / hs, i = e % hs;
            int t2 = k0 + j;
            const float* kv = qkv + (b * T + min(t2, t_last)) * 3 * C + C + h * hs;
            Ks[j * (hs + 1) + i] = (t2 <= t_last) ? kv[i] : 0.0f;
            Vs[j * (hs + 1) + i] = (t2 <= t_last) ? kv[C + i] : 0.0f;
        }
        __syncthreads();
        if (active && k0 <= t) {
            int t2 = k0 + lane;
            float ds = 0.0f;
            if (t2 <= t) {
                float s = 0.0f, dp = 0.0f;
                for (int i = 0; i < hs; i++) {
                    s += Qs[i] * Ks[lane * (hs + 1) + i];
                    dp += dYs[i] * Vs[lane * (hs + 1) + i];
                }
                ds = expf(s - lse_t) * (dp - D_t);
            }
            DSs[lane] = ds;
            __syncwarp();
            int n = min(32, t - k0 + 1);
            for (int jj = 0; jj < n; jj++) {
                float dsj = DSs[jj];
#pragma unroll
                for (int j = 0; j < MAX_PER_LANE; j++) {
                    int i = lane + 32 * j;
                    if (i < hs) {
                        dq[j] += dsj * Ks[jj * (hs + 1) + i];
                    }
                }
            }
        }
    }
    if (active) {
        float* g = dqkv + (b * T + t) * 3 * C + h * hs;
#pragma unroll
        for (int j = 0; j < MAX_PER_LANE; j++) {
            int i = lane + 32 * j;
            if (i < hs) {
                g[i] += dq[j] * scale;
            }
        }
    }
}

// dk and dv with the roles swapped: a block takes NW consecutive KEY rows t2 = t0 + w of one (b, h)
// and walks the query tiles q0 .. q0 + 31 from q0 = t0 (earlier queries see none of its keys) to
// T - 1, staging q, dy, lse and D of the tile in shared memory. Lane j takes query q0 + j:
// p = exp(q_j . k / sqrt(hs) - lse[j]), ds = p (dy_j . v - D[j]); then the warp adds sum_j p_j dy_j to
// dv and sum_j ds_j q_j to dk. Dynamic shared memory, in floats: Qs and dYs 32*(hs+1) each, Ls and Ds
// 32 each, Kw and Vw NW*hs each (the warp's scaled k and its v), Ps and DSs NW*32 each.
extern "C" __global__ void attention_backward3_dkdv(float* dqkv, const float* dout, const float* qkv, const float* lse,
                                                    const float* D, int B, int T, int C, int NH) {
    extern __shared__ float smem[];
    int nw = blockDim.x / 32;
    int warp = threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    int b = blockIdx.y / NH;
    int h = blockIdx.y % NH;
    int hs = C / NH;
    float scale = 1.0f / sqrtf((float)hs);
    int t0 = blockIdx.x * nw;
    int t2 = t0 + warp;  // this warp's key row
    bool active = t2 < T;
    float* Qs = smem;
    float* dYs = Qs + 32 * (hs + 1);
    float* Ls = dYs + 32 * (hs + 1);
    float* Ds = Ls + 32;
    float* Kw = Ds + 32 + warp * hs;
    float* Vw = Ds + 32 + nw * hs + warp * hs;
    float* Ps = Ds + 32 + 2 * nw * hs + warp * 32;
    float* DSs = Ds + 32 + 2 * nw * hs + nw * 32 + warp * 32;

    const float* k = qkv + (b * T + (active ? t2 : 0)) * 3 * C + C + h * hs;
    for (int i = lane; i < hs; i += 32) {
        Kw[i] = active ? k[i] * scale : 0.0f;
        Vw[i] = active ? k[C + i] : 0.0f;
    }
    const float* lse_bh = lse + (b * NH + h) * T;
    const float* D_bh = D + (b * NH + h) * T;
    float dk[MAX_PER_LANE], dv[MAX_PER_LANE];
#pragma unroll
    for (int j = 0; j < MAX_PER_LANE; j++) {
        dk[j] = 0.0f;
        dv[j] = 0.0f;
    }
    for (int q0 = t0; q0 < T; q0 += 32) {  // t0 < T: every block has at least one key row
        __syncthreads();
        for (int e = threadIdx.x; e < 32 * hs; e += blockDim.x) {
            int j = e / hs, i = e % hs;
            int tq = min(q0 + j, T - 1);
            bool ok = q0 + j < T;
            Qs[j * (hs + 1) + i] = ok ? qkv[(b * T + tq) * 3 * C + h * hs + i] : 0.0f;
            dYs[j * (hs + 1) + i] = ok ? dout[(b * T + tq) * C + h * hs + i] : 0.0f;
        }
        if (threadIdx.x < 32) {
            int tq = min(q0 + (int)threadIdx.x, T - 1);
            bool ok = q0 + (int)threadIdx.x < T;
            Ls[threadIdx.x] = ok ? lse_bh[tq] : 0.0f;
            Ds[threadIdx.x] = ok ? D_bh[tq] : 0.0f;
        }
        __syncthreads();
        if (active && q0 + 31 >= t2) {  // some query of the tile sees key t2
            int t = q0 + lane;
            float p = 0.0f, ds = 0.0f;
            if (t >= t2 && t < T) {
                float s = 0.0f, dp = 0.0f;
                for (int i = 0; i < hs; i++) {
                    s += Qs[lane * (hs + 1) + i] * Kw[i];
                    dp += dYs[lane * (hs + 1) + i] * Vw[i];
                }
                p = expf(s - Ls[lane]);
                ds = p * (dp - Ds[lane]);
            }
            Ps[lane] = p;
            DSs[lane] = ds;
            __syncwarp();
            int first = max(0, t2 - q0);     // queries before t2 do not see the key
            int last = min(32, T - q0);      // nor do queries past the end exist
            for (int jj = first; jj < last; jj++) {
                float pj = Ps[jj], dsj = DSs[jj];
#pragma unroll
                for (int j = 0; j < MAX_PER_LANE; j++) {
                    int i = lane + 32 * j;
                    if (i < hs) {
                        dv[j] += pj * dYs[jj * (hs + 1) + i];
                        dk[j] += dsj * Qs[jj * (hs + 1) + i];
                    }
                }
            }
        }
    }
    if (active) {
        float* gk = dqkv + (b * T + t2) * 3 * C + C + h * hs;
        float* gv = gk + C;
#pragma unroll
        for (int j = 0; j < MAX_PER_LANE; j++) {
            int i = lane + 32 * j;
            if (i < hs) {
                gk[i] += dk[j] * scale;
                gv[i] += dv[j];
            }
        }
    }
}

// ------------------------------------------------------------------------------------------------
// version 4: version 3 on bf16 storage (mixed precision), float32 tiles and arithmetic
// ------------------------------------------------------------------------------------------------
// The arithmetic of version 3, operation for operation: only the loads and stores change. Rows are
// read 8 bf16 (16 bytes, one bf16x8) at a time, converted once into the float32 shared-memory tiles,
// and a result row is rounded once to bf16 when stored. The stores go 16 bytes at a time too: each
// lane's channels (lane, lane + 32, ...) are not 8 consecutive ones, so the warp first writes its
// float32 row into its own shared row (the q row, no longer read), then lanes store 8 channels each.
// HS8 = hs / 8 chunks per head row: hs % 8 == 0 (with C = NH * hs, every row starts on 16 bytes).

// As attention_forward3, with out and qkv in bf16; lse stays float32.
extern "C" __global__ void attention_forward4(__nv_bfloat16* out, float* lse, const __nv_bfloat16* qkv, int B, int T,
                                              int C, int NH) {
    extern __shared__ float smem[];
    int nw = blockDim.x / 32;
    int warp = threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    int b = blockIdx.y / NH;
    int h = blockIdx.y % NH;
    int hs = C / NH;
    int hs8 = hs / 8;
    float scale = 1.0f / sqrtf((float)hs);
    int t0 = blockIdx.x * nw;
    int t = t0 + warp;
    bool active = t < T;
    int t_last = min(t0 + nw - 1, T - 1);
    float* Ks = smem;
    float* Vs = Ks + 32 * (hs + 1);
    float* Qs = Vs + 32 * hs + warp * hs;
    float* Ps = Vs + 32 * hs + nw * hs + warp * 32;

    const __nv_bfloat16* q = qkv + (b * T + (active ? t : 0)) * 3 * C + h * hs;
    for (int c = lane; c < hs8; c += 32) {
        bf16x8 x = load_bf16x8(q + 8 * c);
#pragma unroll
        for (int u = 0; u < 8; u++) {
            Qs[8 * c + u] = active ? to_float(x.v[u]) * scale : 0.0f;
        }
    }
    float acc[MAX_PER_LANE];
#pragma unroll
    for (int j = 0; j < MAX_PER_LANE; j++) {
        acc[j] = 0.0f;
    }
    float m = NEG_INF, l = 0.0f;
    for (int k0 = 0; k0 <= t_last; k0 += 32) {
        __syncthreads();  // everyone is done with the previous tile (and the first time: Qs is written)
        for (int e = threadIdx.x; e < 32 * hs8; e += blockDim.x) {
            int j = e / hs8, c = e % hs8;  // consecutive threads load consecutive 16-byte chunks of a row
            int t2 = k0 + j;
            bool ok = t2 <= t_last;
            const __nv_bfloat16* kv = qkv + (b * T + min(t2, t_last)) * 3 * C + C + h * hs + 8 * c;
            bf16x8 kx = load_bf16x8(kv), vx = load_bf16x8(kv + C);
#pragma unroll
            for (int u = 0; u < 8; u++) {
                Ks[j * (hs + 1) + 8 * c + u] = ok ? to_float(kx.v[u]) : 0.0f;
                Vs[j * hs + 8 * c + u] = ok ? to_float(vx.v[u]) : 0.0f;
            }
        }
        __syncthreads();  // the tile is complete
        if (active && k0 <= t) {
            int t2 = k0 + lane;
            float s = NEG_INF;
            if (t2 <= t) {
                s = 0.0f;
                for (int i = 0; i < hs; i++) {
                    s += Qs[i] * Ks[lane * (hs + 1) + i];
                }
            }
            float m_new = fmaxf(m, warp_max(s));
            float correction = expf(m - m_new);
            float p = expf(s - m_new);
            l = l * correction + warp_sum(p);
            Ps[lane] = p;
            __syncwarp();
            int n = min(32, t - k0 + 1);
#pragma unroll
            for (int j = 0; j < MAX_PER_LANE; j++) {
                acc[j] *= correction;
            }
            for (int jj = 0; jj < n; jj++) {
                float pj = Ps[jj];
#pragma unroll
                for (int j = 0; j < MAX_PER_LANE; j++) {
                    int i = lane + 32 * j;
                    if (i < hs) {
                        acc[j] += pj * Vs[jj * hs + i];
                    }
                }
            }
            m = m_new;
        }
    }
    if (active) {
        float inv_l = 1.0f / l;
        __syncwarp();  // every lane has read Qs for the last time: it now holds the output row
#pragma unroll
        for (int j = 0; j < MAX_PER_LANE; j++) {
            int i = lane + 32 * j;
            if (i < hs) {
                Qs[i] = acc[j] * inv_l;
            }
        }
        __syncwarp();  // the row is complete before lanes read 8 channels each
        __nv_bfloat16* o = out + (b * T + t) * C + h * hs;
        for (int c = lane; c < hs8; c += 32) {
            bf16x8 r;
#pragma unroll
            for (int u = 0; u < 8; u++) {
                r.v[u] = to_bf16(Qs[8 * c + u]);  // the one rounding of the output
            }
            store_bf16x8(o + 8 * c, r);
        }
        if (lane == 0) {
            lse[(b * NH + h) * T + t] = m + logf(l);
        }
    }
}

// As attention_backward2_preprocess, D = dy_t . out_t from bf16 dout and out, summed in float32 in
// the same channel order. One thread per row.
extern "C" __global__ void attention_backward4_preprocess(float* D, const __nv_bfloat16* dout,
                                                          const __nv_bfloat16* out, int B, int T, int C, int NH) {
    int row = blockIdx.x * blockDim.x + threadIdx.x;
    if (row >= B * NH * T) {
        return;
    }
    int t = row % T;
    int h = (row / T) % NH;
    int b = row / (NH * T);
    int hs = C / NH;
    const __nv_bfloat16* dy = dout + (b * T + t) * C + h * hs;
    const __nv_bfloat16* o = out + (b * T + t) * C + h * hs;
    float d = 0.0f;
    for (int c = 0; c < hs / 8; c++) {
        bf16x8 a = load_bf16x8(dy + 8 * c), y = load_bf16x8(o + 8 * c);
#pragma unroll
        for (int u = 0; u < 8; u++) {
            d += to_float(a.v[u]) * to_float(y.v[u]);
        }
    }
    D[row] = d;
}

// As attention_backward3_dq, with dqkv (+=), dout and qkv in bf16. At the end the warp's dq row goes
// through its Qs row, and dqkv is updated 8 channels at a time: load bf16, add in float32, round once.
extern "C" __global__ void attention_backward4_dq(__nv_bfloat16* dqkv, const __nv_bfloat16* dout,
                                                  const __nv_bfloat16* qkv, const float* lse, const float* D, int B,
                                                  int T, int C, int NH) {
    extern __shared__ float smem[];
    int nw = blockDim.x / 32;
    int warp = threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    int b = blockIdx.y / NH;
    int h = blockIdx.y % NH;
    int hs = C / NH;
    int hs8 = hs / 8;
    float scale = 1.0f / sqrtf((float)hs);
    int t0 = blockIdx.x * nw;
    int t = t0 + warp;
    bool active = t < T;
    int t_last = min(t0 + nw - 1, T - 1);
    float* Ks = smem;
    float* Vs = Ks + 32 * (hs + 1);
    float* Qs = Vs + 32 * (hs + 1) + warp * hs;
    float* dYs = Vs + 32 * (hs + 1) + nw * hs + warp * hs;
    float* DSs = Vs + 32 * (hs + 1) + 2 * nw * hs + warp * 32;

    int tq = active ? t : 0;
    const __nv_bfloat16* q = qkv + (b * T + tq) * 3 * C + h * hs;
    const __nv_bfloat16* dy = dout + (b * T + tq) * C + h * hs;
    for (int c = lane; c < hs8; c += 32) {
        bf16x8 qx = load_bf16x8(q + 8 * c), dx = load_bf16x8(dy + 8 * c);
#pragma unroll
        for (int u = 0; u < 8; u++) {
            Qs[8 * c + u] = active ? to_float(qx.v[u]) * scale : 0.0f;
            dYs[8 * c + u] = active ? to_float(dx.v[u]) : 0.0f;
        }
    }
    float lse_t = active ? lse[(b * NH + h) * T + t] : 0.0f;
    float D_t = active ? D[(b * NH + h) * T + t] : 0.0f;
    float dq[MAX_PER_LANE];
#pragma unroll
    for (int j = 0; j < MAX_PER_LANE; j++) {
        dq[j] = 0.0f;
    }
    for (int k0 = 0; k0 <= t_last; k0 += 32) {
        __syncthreads();
        for (int e = threadIdx.x; e < 32 * hs8; e += blockDim.x) {
            int j = e / hs8, c = e % hs8;
            int t2 = k0 + j;
            bool ok = t2 <= t_last;
            const __nv_bfloat16* kv = qkv + (b * T + min(t2, t_last)) * 3 * C + C + h * hs + 8 * c;
            bf16x8 kx = load_bf16x8(kv), vx = load_bf16x8(kv + C);
#pragma unroll
            for (int u = 0; u < 8; u++) {
                Ks[j * (hs + 1) + 8 * c + u] = ok ? to_float(kx.v[u]) : 0.0f;
                Vs[j * (hs + 1) + 8 * c + u] = ok ? to_float(vx.v[u]) : 0.0f;
            }
        }
        __syncthreads();
        if (active && k0 <= t) {
            int t2 = k0 + lane;
            float ds = 0.0f;
            if (t2 <= t) {
                float s = 0.0f, dp = 0.0f;
                for (int i = 0; i < hs; i++) {
                    s += Qs[i] * Ks[lane * (hs + 1) + i];
                    dp += dYs[i] * Vs[lane * (hs + 1) + i];
                }
                ds = expf(s - lse_t) * (dp - D_t);
            }
            DSs[lane] = ds;
            __syncwarp();
            int n = min(32, t - k0 + 1);
            for (int jj = 0; jj < n; jj++) {
                float dsj = DSs[jj];
#pragma unroll
                for (int j = 0; j < MAX_PER_LANE; j++) {
                    int i = lane + 32 * j;
                    if (i < hs) {
                        dq[j] += dsj * Ks[jj * (hs + 1) + i];
                    }
                }
            }
        }
    }
    if (active) {
        __syncwarp();  // Qs is read for the last time: it now holds the warp's dq row
#pragma unroll
        for (int j = 0; j < MAX_PER_LANE; j++) {
            int i = lane + 32 * j;
            if (i < hs) {
                Qs[i] = dq[j];
            }
        }
        __syncwarp();
        __nv_bfloat16* g = dqkv + (b * T + t) * 3 * C + h * hs;
        for (int c = lane; c < hs8; c += 32) {
            bf16x8 x = load_bf16x8(g + 8 * c);
#pragma unroll
            for (int u = 0; u < 8; u++) {
                x.v[u] = to_bf16(to_float(x.v[u]) + Qs[8 * c + u] * scale);  // += in float32, one rounding
            }
            store_bf16x8(g + 8 * c, x);
        }
    }
}

// As attention_backward3_dkdv, with dqkv (+=), dout and qkv in bf16; the warp's dk and dv rows go
// through its Kw and Vw rows for the 16-byte read-modify-writes of dqkv.
extern "C" __global__ void attention_backward4_dkdv(__nv_bfloat16* dqkv, const __nv_bfloat16* dout,
                                                    const __nv_bfloat16* qkv, const float* lse, const float* D, int B,
                                                    int T, int C, int NH) {
    extern __shared__ float smem[];
    int nw = blockDim.x / 32;
    int warp = threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    int b = blockIdx.y / NH;
    int h = blockIdx.y % NH;
    int hs = C / NH;
    int hs8 = hs / 8;
    float scale = 1.0f / sqrtf((float)hs);
    int t0 = blockIdx.x * nw;
    int t2 = t0 + warp;
    bool active = t2 < T;
    float* Qs = smem;
    float* dYs = Qs + 32 * (hs + 1);
    float* Ls = dYs + 32 * (hs + 1);
    float* Ds = Ls + 32;
    float* Kw = Ds + 32 + warp * hs;
    float* Vw = Ds + 32 + nw * hs + warp * hs;
    float* Ps = Ds + 32 + 2 * nw * hs + warp * 32;
    float* DSs = Ds + 32 + 2 * nw * hs + nw * 32 + warp * 32;

    const __nv_bfloat16* k = qkv + (b * T + (active ? t2 : 0)) * 3 * C + C + h * hs;
    for (int c = lane; c < hs8; c += 32) {
        bf16x8 kx = load_bf16x8(k + 8 * c), vx = load_bf16x8(k + C + 8 * c);
#pragma unroll
        for (int u = 0; u < 8; u++) {
            Kw[8 * c + u] = active ? to_float(kx.v[u]) * scale : 0.0f;
            Vw[8 * c + u] = active ? to_float(vx.v[u]) : 0.0f;
        }
    }
    const float* lse_bh = lse + (b * NH + h) * T;
    const float* D_bh = D + (b * NH + h) * T;
    float dk[MAX_PER_LANE], dv[MAX_PER_LANE];
#pragma unroll
    for (int j = 0; j < MAX_PER_LANE; j++) {
        dk[j] = 0.0f;
        dv[j] = 0.0f;
    }
    for (int q0 = t0; q0 < T; q0 += 32) {
        __syncthreads();
        for (int e = threadIdx.x; e < 32 * hs8; e += blockDim.x) {
            int j = e / hs8, c = e % hs8;
            int tq = min(q0 + j, T - 1);
            bool ok = q0 + j < T;
            bf16x8 qx = load_bf16x8(qkv + (b * T + tq) * 3 * C + h * hs + 8 * c);
            bf16x8 dx = load_bf16x8(dout + (b * T + tq) * C + h * hs + 8 * c);
#pragma unroll
            for (int u = 0; u < 8; u++) {
                Qs[j * (hs + 1) + 8 * c + u] = ok ? to_float(qx.v[u]) : 0.0f;
                dYs[j * (hs + 1) + 8 * c + u] = ok ? to_float(dx.v[u]) : 0.0f;
            }
        }
        if (threadIdx.x < 32) {
            int tq = min(q0 + (int)threadIdx.x, T - 1);
            bool ok = q0 + (int)threadIdx.x < T;
            Ls[threadIdx.x] = ok ? lse_bh[tq] : 0.0f;
            Ds[threadIdx.x] = ok ? D_bh[tq] : 0.0f;
        }
        __syncthreads();
        if (active && q0 + 31 >= t2) {
            int t = q0 + lane;
            float p = 0.0f, ds = 0.0f;
            if (t >= t2 && t < T) {
                float s = 0.0f, dp = 0.0f;
                for (int i = 0; i < hs; i++) {
                    s += Qs[lane * (hs + 1) + i] * Kw[i];
                    dp += dYs[lane * (hs + 1) + i] * Vw[i];
                }
                p = expf(s - Ls[lane]);
                ds = p * (dp - Ds[lane]);
            }
            Ps[lane] = p;
            DSs[lane] = ds;
            __syncwarp();
            int first = max(0, t2 - q0);
            int last = min(32, T - q0);
            for (int jj = first; jj < last; jj++) {
                float pj = Ps[jj], dsj = DSs[jj];
#pragma unroll
                for (int j = 0; j < MAX_PER_LANE; j++) {
                    int i = lane + 32 * j;
                    if (i < hs) {
                        dv[j] += pj * dYs[jj * (hs + 1) + i];
                        dk[j] += dsj * Qs[jj * (hs + 1) + i];
                    }
                }
            }
        }
    }
    if (active) {
        __syncwarp();  // Kw and Vw are read for the last time: they now hold the warp's dk and dv rows
#pragma unroll
        for (int j = 0; j < MAX_PER_LANE; j++) {
            int i = lane + 32 * j;
            if (i < hs) {
                Kw[i] = dk[j];
                Vw[i] = dv[j];
            }
        }
        __syncwarp();
        __nv_bfloat16* gk = dqkv + (b * T + t2) * 3 * C + C + h * hs;
        __nv_bfloat16* gv = gk + C;
        for (int c = lane; c < hs8; c += 32) {
            bf16x8 xk = load_bf16x8(gk + 8 * c), xv = load_bf16x8(gv + 8 * c);
#pragma unroll
            for (int u = 0; u < 8; u++) {
                xk.v[u] = to_bf16(to_float(xk.v[u]) + Kw[8 * c + u] * scale);
                xv.v[u] = to_bf16(to_float(xv.v[u]) + Vw[8 * c + u]);
            }
            store_bf16x8(gk + 8 * c, xk);
            store_bf16x8(gv + 8 * c, xv);
        }
    }
}
