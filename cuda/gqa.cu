// gqa.cu: grouped-query attention (GQA), causal, forward and backward, and the key/value-cache decode step.
// Wrapper: helpers/ops/gqa.py · notebook: notebooks/11_llama_ops.ipynb · tests: tests/test_op_gqa.py.
//
// GQA is GPT-2's attention (attention.cu) with fewer key/value heads than query heads: NH query heads
// share NKV key/value heads (NKV divides NH), G = NH / NKV query heads per key/value head, and query
// head h uses key/value head g = h / G. Multi-head attention is NKV = NH (G = 1), multi-query
// attention NKV = 1. The K/V projections and the K/V cache shrink by NH / NKV.
//
// Input qkv (B, T, W), W = (NH + 2 NKV) hs, the output of the fused projection: for token t of sequence b
//     q_h = qkv[b, t, h*hs : (h+1)*hs]                          h = 0 .. NH-1
//     k_g = qkv[b, t, (NH + g)*hs : (NH + g + 1)*hs]             g = 0 .. NKV-1
//     v_g = qkv[b, t, (NH + NKV + g)*hs : (NH + NKV + g + 1)*hs]
// For each sequence b and query head h, with g = h / G, the query row t and the key/value rows t2:
//     scores[t, t2] = q_t . k_t2 / sqrt(hs)   for t2 <= t  (causal)
//     att[t, :]     = softmax(scores[t, :])    (0 above the diagonal)
//     y_t           = sum over t2 <= t of att[t, t2] v_t2
// and out[b, t, h*hs : (h+1)*hs] = y_t: out is (B, T, NH*hs), the query heads side by side.
// The key/value heads are shared by index arithmetic (g = h / G), never copied G times.
// Backward, given dout: per query head exactly attention's backward (attention.cu), except that a key
// or value row receives the gradients of ALL G query heads of its group:
//     dq_t(h)  = sum_t2 ds_h[t, t2] k_t2 / sqrt(hs)
//     dk_t2(g) = sum over h in group g, t >= t2 of ds_h[t, t2] q_t(h) / sqrt(hs)
//     dv_t2(g) = sum over h in group g, t >= t2 of att_h[t, t2] dy_t(h)
// with ds_h = att_h * (datt_h - rowsum(datt_h * att_h)), datt_h[t, t2] = dy_t(h) . v_t2. The gradients
// are ADDED into dqkv's slices (they accumulate, as in llm.c). Every gradient element has one owner
// in every version: no atomics, the same bits in every order.
// Decode (generation, one new position of one sequence): caches k_cache, v_cache (NKV, maxT, hs); the
// step appends the position's k, v at row pos and lets its NH queries attend over rows 0..pos.
//
// forward version 1, naive: the (B, NH, T, T) matrix in memory, one kernel per step, one thread per
//     element: gqa_forward1_scores (masked scaled scores into att), gqa_forward1_softmax (one thread
//     per row, in place), gqa_forward1_values (one thread per output channel). Any hs, any block size.
// forward version 2, fused: one warp per query row (b, h, t), online softmax over the keys 0..t (the
//     running max m, sum l and accumulator acc rescaled when m grows), out = acc / l, and the row's
//     lse = m + log l stored for the backward. The lanes split the head's channels (lane + 32 j,
//     j < 4): hs <= 128; the block a whole number of warps. As attention_forward2.
// forward version 3, tiled: a block of NW warps takes NW consecutive rows of one (b, g) in the order
//     (t, j): flat row r = t*G + j is position t of query head g*G + j. So the block's warps are the G
//     heads of about NW / G positions, and all of them need the keys of the same key/value head: the
//     block loads a K and a V tile of 32 rows into shared memory once and every warp, whatever its
//     head, uses it. Against version 2 that is NW times less K/V traffic (every warp there reads every
//     key row itself); against tiling each query head on its own (attention_forward3 with the index
//     arithmetic) it keeps the block full where that would not be: at T < NW, short prompts and
//     small batches, a per-head block has idle warps, this one G times fewer; and the G query heads
//     of a position are adjacent in qkv, so the block's queries are one contiguous stretch. Within a
//     tile lane j scores key k0 + j by itself and the online-softmax update is once per tile (one warp
//     max, one warp sum per 32 keys), as attention_forward3. hs <= 128, shared memory (see the
//     wrapper) within 48 KiB, B*NKV <= 65535 blocks on the grid's y axis.
//
// backward version 1, naive, one owner per gradient element: gqa_backward1_datt (datt = dy v^T into a
//     (B, NH, T, T) scratch), gqa_backward1_softmax (scratch becomes dscores in place),
//     gqa_backward1_dq (one thread per dq element), gqa_backward1_dkdv (one thread per (dk, dv) pair
//     of elements of a key/value head: it walks the G heads of its group and, for each, the column
//     t >= t2 of dscores and att). Any hs, any block size; reads forward 1's att.
// backward version 2, recomputation from lse (flash-attention-2 style), no (T, T) matrix:
//     gqa_backward2_preprocess: D[b, h, t] = dy_t . out_t (the softmax backward's row sum), one thread
//     per row; gqa_backward2_dq: one warp per query row (b, h, t) walks its keys t2 <= t;
//     gqa_backward2_dkdv: one warp per KEY row (b, g, t2) walks the G query heads of its group and
//     their queries t >= t2, so that dk and dv have one owner (the G heads are summed in registers):
//     deterministic, no atomics. The scores are recomputed in both kernels. hs <= 128, whole warps.
// backward version 3, tiled as forward version 3: gqa_backward3_dq, NW flat query rows (t, j) of one
//     (b, g) share K/V tiles, one key per lane, no shuffles (lse is known); gqa_backward3_dkdv, NW key
//     rows of one (b, g) share tiles of 32 flat query rows (t, j) of ALL G heads (q, dy, lse, D staged
//     in shared memory), from the first row that sees the block's keys, r = t0*G, to the end; lane j
//     takes flat row r0 + j. D comes from gqa_backward2_preprocess. Backward 2 and 3 read the lse of
//     forward 2 or 3. Limits as forward 3.
//
// decode version 1, two kernels: gqa_decode1_append (one thread per channel of the NKV key/value
//     heads: row pos of the caches), gqa_decode1_attend: one block per QUERY head (as
//     kv_cache_forward1_decode), its pos+1 scores in dynamic shared memory, block reductions for the
//     max and the sum. Each key and value row is read G times, once by each head of its group.
// decode version 2: gqa_decode1_append, then gqa_decode2_attend, one block per KEY/VALUE head g: the
//     block stages its G queries in shared memory and each thread, for its keys t2, reads the key row
//     once and computes the scores of all G heads from it (GROUP_CHUNK heads at a time in registers:
//     the row is read ceil(G / 8) times); a warp per head then takes the max and the sum of its row;
//     the value rows are likewise read once per 8 heads. Shared memory: G*hs + G*(pos+1) + G floats
//     within 48 KiB.
//
// Index arithmetic is 32-bit except into the caches (long): the wrappers in helpers/ops/gqa.py check
// that every index fits.

#include "common.cuh"  // warp_sum, warp_max, block_sum, block_max, ceil_div

#define NEG_INF __int_as_float(0xff800000)
#define MAX_PER_LANE 4    // forward/backward 2 and 3: a lane holds at most 4 channels, so hs <= 128
#define DECODE_BLOCK 128  // threads per block of the decode kernels (whole warps: block reductions)
#define GROUP_CHUNK 8     // decode 2: the query heads whose scores one thread keeps in registers at once

// ------------------------------------------------------------------------------------------------
// forward version 1: naive, the (T, T) matrices in memory
// ------------------------------------------------------------------------------------------------

// att[b, h, t, t2] = q_t(h) . k_t2(h / G) / sqrt(hs) for t2 <= t, -inf above the diagonal. One thread each.
extern "C" __global__ void gqa_forward1_scores(float* att, const float* qkv, int B, int T, int NH, int NKV, int hs) {
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
    int W = (NH + 2 * NKV) * hs;  // qkv's row: NH query heads, NKV key heads, NKV value heads
    int g = h / (NH / NKV);       // the key/value head of query head h
    const float* q = qkv + (b * T + t) * W + h * hs;
    const float* k = qkv + (b * T + t2) * W + (NH + g) * hs;
    float s = 0.0f;
    for (int i = 0; i < hs; i++) {
        s += q[i] * k[i];
    }
    att[idx] = s * (1.0f / sqrtf((float)hs));
}

// In place: each row of att becomes softmax(row). One thread per row (B*NH*T rows), the row's max
// subtracted before exp; entries above the diagonal become exactly 0.
extern "C" __global__ void gqa_forward1_softmax(float* att, int B, int NH, int T) {
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

// out[b, t, h*hs + i] = sum over t2 <= t of att[b, h, t, t2] * v_t2(h / G)[i]. One thread each.
extern "C" __global__ void gqa_forward1_values(float* out, const float* att, const float* qkv, int B, int T, int NH,
                                               int NKV, int hs) {
    int C = NH * hs;
    int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= B * T * C) {
        return;
    }
    int c = idx % C;
    int t = (idx / C) % T;
    int b = idx / (C * T);
    int h = c / hs, i = c % hs;
    int W = (NH + 2 * NKV) * hs;
    int g = h / (NH / NKV);
    const float* a = att + ((b * NH + h) * T + t) * T;
    const float* v = qkv + b * T * W + (NH + NKV + g) * hs + i;  // v_t2[i] at v[t2 * W]
    float y = 0.0f;
    for (int t2 = 0; t2 <= t; t2++) {
        y += a[t2] * v[t2 * W];
    }
    out[idx] = y;
}

// ------------------------------------------------------------------------------------------------
// backward version 1: naive, through a (B, NH, T, T) scratch
// ------------------------------------------------------------------------------------------------

// datt[b, h, t, t2] = dy_t(h) . v_t2(h / G) for t2 <= t (0 above the diagonal). One thread each.
extern "C" __global__ void gqa_backward1_datt(float* datt, const float* dout, const float* qkv, int B, int T, int NH,
                                              int NKV, int hs) {
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
    int W = (NH + 2 * NKV) * hs;
    int g = h / (NH / NKV);
    const float* dy = dout + (b * T + t) * NH * hs + h * hs;
    const float* v = qkv + (b * T + t2) * W + (NH + NKV + g) * hs;
    float s = 0.0f;
    for (int i = 0; i < hs; i++) {
        s += dy[i] * v[i];
    }
    datt[idx] = s;
}

// In place, the softmax backward of one row: ds = att * (datt - sum(datt * att)). One thread per row.
extern "C" __global__ void gqa_backward1_softmax(float* dscores, const float* att, int B, int NH, int T) {
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

// dq[b, t, h*hs + i] += sum over t2 <= t of dscores[b, h, t, t2] * k_t2(h / G)[i] / sqrt(hs). One thread each.
extern "C" __global__ void gqa_backward1_dq(float* dqkv, const float* dscores, const float* qkv, int B, int T, int NH,
                                            int NKV, int hs) {
    int C = NH * hs;
    int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= B * T * C) {
        return;
    }
    int c = idx % C;
    int t = (idx / C) % T;
    int b = idx / (C * T);
    int h = c / hs, i = c % hs;
    int W = (NH + 2 * NKV) * hs;
    int g = h / (NH / NKV);
    const float* ds = dscores + ((b * NH + h) * T + t) * T;
    const float* k = qkv + b * T * W + (NH + g) * hs + i;  // k_t2[i] at k[t2 * W]
    float grad = 0.0f;
    for (int t2 = 0; t2 <= t; t2++) {
        grad += ds[t2] * k[t2 * W];
    }
    dqkv[(b * T + t) * W + c] += grad * (1.0f / sqrtf((float)hs));
}

// For key/value row t2 and channel i of key/value head g, one thread adds both
//     dk_t2(g)[i] += sum over the G heads h of group g, t >= t2 of dscores[b, h, t, t2] q_t(h)[i] / sqrt(hs)
//     dv_t2(g)[i] += sum over the same of att[b, h, t, t2] dy_t(h)[i]
// (column t2 of each head's (T, T) matrices: consecutive t are T floats apart). The thread owns the
// pair of elements: the group's G contributions are added in its registers, not with atomics.
extern "C" __global__ void gqa_backward1_dkdv(float* dqkv, const float* dscores, const float* att, const float* dout,
                                              const float* qkv, int B, int T, int NH, int NKV, int hs) {
    int KC = NKV * hs;  // the channels of one of k or v
    int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= B * T * KC) {
        return;
    }
    int c = idx % KC;
    int t2 = (idx / KC) % T;
    int b = idx / (KC * T);
    int g = c / hs, i = c % hs;
    int G = NH / NKV, W = (NH + 2 * NKV) * hs, C = NH * hs;
    float gk = 0.0f, gv = 0.0f;
    for (int j = 0; j < G; j++) {
        int h = g * G + j;
        const float* ds = dscores + (b * NH + h) * T * T + t2;  // column t2: row t at ds[t * T]
        const float* a = att + (b * NH + h) * T * T + t2;
        const float* q = qkv + b * T * W + h * hs + i;         // q_t(h)[i] at q[t * W]
        const float* dy = dout + b * T * C + h * hs + i;       // dy_t(h)[i] at dy[t * C]
        for (int t = t2; t < T; t++) {
            gk += ds[t * T] * q[t * W];
            gv += a[t * T] * dy[t * C];
        }
    }
    dqkv[(b * T + t2) * W + (NH + g) * hs + i] += gk * (1.0f / sqrtf((float)hs));
    dqkv[(b * T + t2) * W + (NH + NKV + g) * hs + i] += gv;
}

// ------------------------------------------------------------------------------------------------
// forward and backward version 2: fused, one warp per row, nothing (T, T) in memory
// ------------------------------------------------------------------------------------------------

// One warp per query row (b, h, t): out[b, t, head h] and lse[b, h, t]. row = (b*NH + h)*T + t; warp w
// of block x takes row x * (blockDim.x / 32) + w; blockDim.x a multiple of 32.
extern "C" __global__ void gqa_forward2(float* out, float* lse, const float* qkv, int B, int T, int NH, int NKV,
                                        int hs) {
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (row >= B * NH * T) {
        return;  // the whole warp leaves together (no barrier here): no shuffle misses a lane
    }
    int t = row % T;
    int h = (row / T) % NH;
    int b = row / (NH * T);
    int W = (NH + 2 * NKV) * hs;
    int g = h / (NH / NKV);
    float scale = 1.0f / sqrtf((float)hs);
    const float* q = qkv + (b * T + t) * W + h * hs;
    const float* k = qkv + b * T * W + (NH + g) * hs;  // key t2 at k + t2 * W
    const float* v = k + NKV * hs;                     // the value heads follow the key heads

    float qs[MAX_PER_LANE], acc[MAX_PER_LANE];
#pragma unroll
    for (int j = 0; j < MAX_PER_LANE; j++) {  // channel lane + 32 j: consecutive lanes, consecutive floats
        int i = lane + 32 * j;
        qs[j] = (i < hs) ? q[i] * scale : 0.0f;  // scaling q once saves a multiply per key
        acc[j] = 0.0f;
    }
    float m = NEG_INF;  // running maximum of the scores so far
    float l = 0.0f;     // running sum of exp(score - m)
    for (int t2 = 0; t2 <= t; t2++) {
        const float* kt = k + t2 * W;
        const float* vt = v + t2 * W;
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
    float* o = out + (b * T + t) * NH * hs + h * hs;
    float inv_l = 1.0f / l;
#pragma unroll
    for (int j = 0; j < MAX_PER_LANE; j++) {
        int i = lane + 32 * j;
        if (i < hs) {
            o[i] = acc[j] * inv_l;
        }
    }
    if (lane == 0) {
        lse[row] = m + logf(l);  // p = exp(score - lse) in the backward
    }
}

// D[b, h, t] = dy_t . out_t over head h's channels (= sum_t2 datt[t, t2] att[t, t2], since out_t =
// sum_t2 att v_t2: the row sum the softmax backward subtracts). One thread per row (b, h, t).
extern "C" __global__ void gqa_backward2_preprocess(float* D, const float* dout, const float* out, int B, int T, int NH,
                                                    int hs) {
    int row = blockIdx.x * blockDim.x + threadIdx.x;
    if (row >= B * NH * T) {
        return;
    }
    int t = row % T;
    int h = (row / T) % NH;
    int b = row / (NH * T);
    const float* dy = dout + (b * T + t) * NH * hs + h * hs;
    const float* o = out + (b * T + t) * NH * hs + h * hs;
    float d = 0.0f;
    for (int i = 0; i < hs; i++) {
        d += dy[i] * o[i];
    }
    D[row] = d;
}

// One warp per query row (b, h, t): dq_t += sum over t2 <= t of ds[t, t2] k_t2 / sqrt(hs), with
//     p = exp(q_t . k_t2 / sqrt(hs) - lse[t]),  ds = p * (dy_t . v_t2 - D[t]), k and v of head h / G.
extern "C" __global__ void gqa_backward2_dq(float* dqkv, const float* dout, const float* qkv, const float* lse,
                                            const float* D, int B, int T, int NH, int NKV, int hs) {
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (row >= B * NH * T) {
        return;  // whole warps only
    }
    int t = row % T;
    int h = (row / T) % NH;
    int b = row / (NH * T);
    int W = (NH + 2 * NKV) * hs;
    int g = h / (NH / NKV);
    float scale = 1.0f / sqrtf((float)hs);
    const float* q = qkv + (b * T + t) * W + h * hs;
    const float* dy = dout + (b * T + t) * NH * hs + h * hs;
    const float* k = qkv + b * T * W + (NH + g) * hs;
    const float* v = k + NKV * hs;
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
        const float* kt = k + t2 * W;
        const float* vt = v + t2 * W;
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
    float* grad = dqkv + (b * T + t) * W + h * hs;
#pragma unroll
    for (int j = 0; j < MAX_PER_LANE; j++) {
        int i = lane + 32 * j;
        if (i < hs) {
            grad[i] += dq[j] * scale;
        }
    }
}

// One warp per KEY row (b, g, t2), row = (b*NKV + g)*T + t2: walks the G query heads h of group g and,
// for each, the queries t = t2 .. T-1 that see the key, and adds
//     dk_t2 += sum_h sum_t ds_h[t, t2] q_t(h) / sqrt(hs),   dv_t2 += sum_h sum_t p_h[t, t2] dy_t(h).
// One warp owns the key row's dk and dv: the G heads are summed in its registers, no atomics.
extern "C" __global__ void gqa_backward2_dkdv(float* dqkv, const float* dout, const float* qkv, const float* lse,
                                              const float* D, int B, int T, int NH, int NKV, int hs) {
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (row >= B * NKV * T) {
        return;  // whole warps only
    }
    int t2 = row % T;
    int g = (row / T) % NKV;
    int b = row / (NKV * T);
    int G = NH / NKV, W = (NH + 2 * NKV) * hs, C = NH * hs;
    float scale = 1.0f / sqrtf((float)hs);
    const float* k = qkv + (b * T + t2) * W + (NH + g) * hs;
    const float* v = k + NKV * hs;

    float ks[MAX_PER_LANE], vr[MAX_PER_LANE], dk[MAX_PER_LANE], dv[MAX_PER_LANE];
#pragma unroll
    for (int j = 0; j < MAX_PER_LANE; j++) {
        int i = lane + 32 * j;
        ks[j] = (i < hs) ? k[i] * scale : 0.0f;
        vr[j] = (i < hs) ? v[i] : 0.0f;
        dk[j] = 0.0f;
        dv[j] = 0.0f;
    }
    for (int jh = 0; jh < G; jh++) {
        int h = g * G + jh;
        const float* q = qkv + b * T * W + h * hs;     // q_t(h) at q + t * W
        const float* dy = dout + b * T * C + h * hs;   // dy_t(h) at dy + t * C
        const float* lse_bh = lse + (b * NH + h) * T;
        const float* D_bh = D + (b * NH + h) * T;
        for (int t = t2; t < T; t++) {
            const float* qt = q + t * W;
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
    }
    float* gk = dqkv + (b * T + t2) * W + (NH + g) * hs;
    float* gv = gk + NKV * hs;
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
// forward and backward version 3: tiled, the G heads of a group in one block share K/V tiles
// ------------------------------------------------------------------------------------------------

// A block of NW = blockDim.x / 32 warps takes the NW consecutive flat rows r0 .. r0 + NW - 1 of one
// (b, g) = blockIdx.y (b * NKV + g), r0 = blockIdx.x * NW: flat row r is position t = r / G of query
// head h = g*G + r % G, so the G heads of a position are neighbours and the block spans only
// about NW / G positions. Warp w takes row r0 + w. The keys come in tiles of 32: the block loads
// tile k0 .. k0 + 31 of K and V (of head g) into shared memory once, coalesced, and every warp uses
// it. Lane j scores key k0 + j by itself (no shuffles), then one warp max and one warp sum update the
// online softmax for the tile, and the 32 p_j v_j are added to the lane's channels. Dynamic shared
// memory, in floats: Ks 32*(hs+1) (padded rows: lane j reads row j, and without the pad all lanes
// would hit one bank when hs is a multiple of 32), Vs 32*hs, Qs NW*hs (each warp's scaled query), Ps NW*32.
extern "C" __global__ void gqa_forward3(float* out, float* lse, const float* qkv, int B, int T, int NH, int NKV,
                                        int hs) {
    extern __shared__ float smem[];
    int nw = blockDim.x / 32;
    int warp = threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    int b = blockIdx.y / NKV;
    int g = blockIdx.y % NKV;
    int G = NH / NKV, W = (NH + 2 * NKV) * hs;
    float scale = 1.0f / sqrtf((float)hs);
    int r0 = blockIdx.x * nw;
    int r = r0 + warp;                                // this warp's flat row
    bool active = r < G * T;                          // the last block may have warps past the end...
    int t = r / G, h = g * G + r % G;                 // (meaningful when active)
    int t_last = min((r0 + nw - 1) / G, T - 1);       // ...and the block needs keys up to its last position
    float* Ks = smem;
    float* Vs = Ks + 32 * (hs + 1);
    float* Qs = Vs + 32 * hs + warp * hs;
    float* Ps = Vs + 32 * hs + nw * hs + warp * 32;

    const float* q = qkv + (b * T + (active ? t : 0)) * W + (active ? h : 0) * hs;
    for (int i = lane; i < hs; i += 32) {
        Qs[i] = active ? q[i] * scale : 0.0f;
    }
    float acc[MAX_PER_LANE];
#pragma unroll
    for (int j = 0; j < MAX_PER_LANE; j++) {
        acc[j] = 0.0f;
    }
    float m = NEG_INF, l = 0.0f;
    const float* kv_b = qkv + b * T * W + (NH + g) * hs;  // key t2 at kv_b + t2 * W, its value NKV*hs further
    for (int k0 = 0; k0 <= t_last; k0 += 32) {  // the same trip count in every warp: all reach the barriers
        __syncthreads();  // everyone is done with the previous tile (and the first time: Qs is written)
        for (int e = threadIdx.x; e < 32 * hs; e += blockDim.x) {
            int j = e / hs, i = e % hs;  // consecutive threads load consecutive channels
            int t2 = k0 + j;
            const float* kv = kv_b + min(t2, t_last) * W;
            Ks[j * (hs + 1) + i] = (t2 <= t_last) ? kv[i] : 0.0f;
            Vs[j * hs + i] = (t2 <= t_last) ? kv[NKV * hs + i] : 0.0f;
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
        float* o = out + (b * T + t) * NH * hs + h * hs;
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

// dq with the tiling of forward 3: the block's NW flat query rows (t, j) of one (b, g) share K/V
// tiles; lane j recomputes p = exp(q_t . k_j / sqrt(hs) - lse) and ds = p (dy_t . v_j - D) for key
// k0 + j, then the warp adds sum_j ds_j k_j to dq. With lse known there is no online softmax, hence no
// shuffle. Dynamic shared memory, in floats: Ks and Vs 32*(hs+1) each, Qs and dYs NW*hs each, DSs NW*32.
extern "C" __global__ void gqa_backward3_dq(float* dqkv, const float* dout, const float* qkv, const float* lse,
                                            const float* D, int B, int T, int NH, int NKV, int hs) {
    extern __shared__ float smem[];
    int nw = blockDim.x / 32;
    int warp = threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    int b = blockIdx.y / NKV;
    int g = blockIdx.y % NKV;
    int G = NH / NKV, W = (NH + 2 * NKV) * hs, C = NH * hs;
    float scale = 1.0f / sqrtf((float)hs);
    int r0 = blockIdx.x * nw;
    int r = r0 + warp;
    bool active = r < G * T;
    int t = active ? r / G : 0, h = active ? g * G + r % G : 0;
    int t_last = min((r0 + nw - 1) / G, T - 1);
    float* Ks = smem;
    float* Vs = Ks + 32 * (hs + 1);
    float* Qs = Vs + 32 * (hs + 1) + warp * hs;
    float* dYs = Vs + 32 * (hs + 1) + nw * hs + warp * hs;
    float* DSs = Vs + 32 * (hs + 1) + 2 * nw * hs + warp * 32;

    const float* q = qkv + (b * T + t) * W + h * hs;
    const float* dy = dout + (b * T + t) * C + h * hs;
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
    const float* kv_b = qkv + b * T * W + (NH + g) * hs;
    for (int k0 = 0; k0 <= t_last; k0 += 32) {
        __syncthreads();  // the previous tile is used up (first time: Qs, dYs written)
        for (int e = threadIdx.x; e < 32 * hs; e += blockDim.x) {
            int j = e / hs, i = e % hs;
            int t2 = k0 + j;
            const float* kv = kv_b + min(t2, t_last) * W;
            Ks[j * (hs + 1) + i] = (t2 <= t_last) ? kv[i] : 0.0f;
            Vs[j * (hs + 1) + i] = (t2 <= t_last) ? kv[NKV * hs + i] : 0.0f;
        }
        __syncthreads();  // the tile is complete
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
            __syncwarp();  // every lane reads all 32 ds
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
        float* grad = dqkv + (b * T + t) * W + h * hs;
#pragma unroll
        for (int j = 0; j < MAX_PER_LANE; j++) {
            int i = lane + 32 * j;
            if (i < hs) {
                grad[i] += dq[j] * scale;
            }
        }
    }
}

// dk and dv: a block takes NW consecutive KEY rows t2 = t0 + w of one (b, g) and walks the flat query
// rows r = t*G + j of all G heads of the group in tiles of 32, from r = t0*G (earlier positions see
// none of its keys) to G*T - 1, staging q, dy, lse and D of the tile in shared memory. Lane j takes
// flat row r0 + j: p = exp(q . k / sqrt(hs) - lse), ds = p (dy . v - D); then the warp adds
// sum_j p_j dy_j to dv and sum_j ds_j q_j to dk: every head of the group lands in the same registers,
// one owner per key row. Dynamic shared memory, in floats: Qs and dYs 32*(hs+1) each, Ls and Ds 32
// each, Kw and Vw NW*hs each (the warp's scaled k and its v), Ps and DSs NW*32 each.
extern "C" __global__ void gqa_backward3_dkdv(float* dqkv, const float* dout, const float* qkv, const float* lse,
                                              const float* D, int B, int T, int NH, int NKV, int hs) {
    extern __shared__ float smem[];
    int nw = blockDim.x / 32;
    int warp = threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    int b = blockIdx.y / NKV;
    int g = blockIdx.y % NKV;
    int G = NH / NKV, W = (NH + 2 * NKV) * hs, C = NH * hs;
    int R = G * T;  // the group's flat query rows
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

    const float* k = qkv + (b * T + (active ? t2 : 0)) * W + (NH + g) * hs;
    for (int i = lane; i < hs; i += 32) {
        Kw[i] = active ? k[i] * scale : 0.0f;
        Vw[i] = active ? k[NKV * hs + i] : 0.0f;
    }
    float dk[MAX_PER_LANE], dv[MAX_PER_LANE];
#pragma unroll
    for (int j = 0; j < MAX_PER_LANE; j++) {
        dk[j] = 0.0f;
        dv[j] = 0.0f;
    }
    for (int r0 = t0 * G; r0 < R; r0 += 32) {  // t0 < T: every block has at least one key row
        __syncthreads();  // the previous tile is used up (first time: Kw, Vw written)
        for (int e = threadIdx.x; e < 32 * hs; e += blockDim.x) {
            int j = e / hs, i = e % hs;
            bool ok = r0 + j < R;
            int rq = min(r0 + j, R - 1);
            int tq = rq / G, hq = g * G + rq % G;
            Qs[j * (hs + 1) + i] = ok ? qkv[(b * T + tq) * W + hq * hs + i] : 0.0f;
            dYs[j * (hs + 1) + i] = ok ? dout[(b * T + tq) * C + hq * hs + i] : 0.0f;
        }
        if (threadIdx.x < 32) {
            bool ok = r0 + (int)threadIdx.x < R;
            int rq = min(r0 + (int)threadIdx.x, R - 1);
            int tq = rq / G, hq = g * G + rq % G;
            Ls[threadIdx.x] = ok ? lse[(b * NH + hq) * T + tq] : 0.0f;
            Ds[threadIdx.x] = ok ? D[(b * NH + hq) * T + tq] : 0.0f;
        }
        __syncthreads();  // the tile is complete
        if (active && r0 + 31 >= t2 * G) {  // some row of the tile (position >= t2) sees key t2
            int rq = r0 + lane;
            float p = 0.0f, ds = 0.0f;
            if (rq < R && rq / G >= t2) {
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
            __syncwarp();  // every lane reads the p and ds of all 32 rows
            int first = max(0, t2 * G - r0);  // rows of positions before t2 do not see the key
            int last = min(32, R - r0);       // nor do rows past the end exist
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
        float* gk = dqkv + (b * T + t2) * W + (NH + g) * hs;
        float* gv = gk + NKV * hs;
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
// decode: one position of one sequence against the K/V cache
// ------------------------------------------------------------------------------------------------

// Row pos of the caches (NKV, maxT, hs) gets this position's keys and values: one thread per channel
// of the NKV key heads (qkv is one position's W = (NH + 2 NKV) hs values).
extern "C" __global__ void gqa_decode1_append(float* k_cache, float* v_cache, const float* qkv, int pos, int NH,
                                              int NKV, int hs, int maxT) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c < NKV * hs) {
        int g = c / hs, i = c % hs;
        long at = ((long)g * maxT + pos) * hs + i;  // the caches may pass 2^31 elements before qkv does
        k_cache[at] = qkv[NH * hs + c];
        v_cache[at] = qkv[(NH + NKV) * hs + c];
    }
}

// One block per QUERY head h, reading key/value head g = h / G: the scores q . k_t2 / sqrt(hs),
// t2 = 0..pos, into dynamic shared memory (pos+1 floats), a block max and a block sum, then each
// thread accumulates output channels of sum_t2 softmax_t2 v_t2. No mask: the cache holds only the past.
extern "C" __global__ void __launch_bounds__(DECODE_BLOCK) gqa_decode1_attend(float* out, const float* qkv,
        const float* k_cache, const float* v_cache, int pos, int NH, int NKV, int hs, int maxT) {
    extern __shared__ float p[];  // pos+1 floats: the scores, then exp(score - max)
    __shared__ float scratch[32];
    int h = blockIdx.x;
    int g = h / (NH / NKV);
    const float* q = qkv + h * hs;
    const float* K = k_cache + (long)g * maxT * hs;
    const float* V = v_cache + (long)g * maxT * hs;
    float scale = 1.0f / sqrtf((float)hs);
    float local_max = NEG_INF;
    for (int t2 = threadIdx.x; t2 <= pos; t2 += blockDim.x) {
        float s = 0.0f;
        for (int i = 0; i < hs; i++) {
            s += q[i] * K[(long)t2 * hs + i];
        }
        s *= scale;
        p[t2] = s;
        local_max = fmaxf(local_max, s);
    }
    float m = block_max(local_max, scratch);  // (its barriers also publish p)
    float local_sum = 0.0f;
    for (int t2 = threadIdx.x; t2 <= pos; t2 += blockDim.x) {
        float e = expf(p[t2] - m);
        p[t2] = e;
        local_sum += e;
    }
    float l = block_sum(local_sum, scratch);  // (and these publish the exp)
    for (int i = threadIdx.x; i < hs; i += blockDim.x) {
        float acc = 0.0f;
        for (int t2 = 0; t2 <= pos; t2++) {
            acc += p[t2] * V[(long)t2 * hs + i];
        }
        out[h * hs + i] = acc / l;
    }
}

// One block per KEY/VALUE head g, for the G query heads h = g*G .. g*G + G - 1 (consecutive in qkv).
// Dynamic shared memory, in floats: Qs G*hs (the group's scaled queries), P G*(pos+1) (head j's scores
// at P[j*(pos+1) + t2], then exp(score - max)), inv_l G. Scores: thread x takes keys t2 = x, x + 128, ...;
// it reads each key element once per GROUP_CHUNK heads and adds it into that many scores in registers.
// Softmax: warp w takes heads w, w + 4, ... (a warp max and a warp sum over the row). Values: thread
// (chunk, i) reads v_t2[i] once per chunk of heads and adds it into GROUP_CHUNK outputs.
extern "C" __global__ void __launch_bounds__(DECODE_BLOCK) gqa_decode2_attend(float* out, const float* qkv,
        const float* k_cache, const float* v_cache, int pos, int NH, int NKV, int hs, int maxT) {
    extern __shared__ float smem[];
    int g = blockIdx.x;
    int G = NH / NKV, n = pos + 1;
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32, nwarps = blockDim.x / 32;
    float* Qs = smem;
    float* P = Qs + G * hs;
    float* inv_l = P + G * n;
    const float* q = qkv + g * G * hs;  // the group's G query heads, side by side
    const float* K = k_cache + (long)g * maxT * hs;
    const float* V = v_cache + (long)g * maxT * hs;
    float scale = 1.0f / sqrtf((float)hs);
    for (int e = threadIdx.x; e < G * hs; e += blockDim.x) {
        Qs[e] = q[e] * scale;
    }
    __syncthreads();  // Qs is complete
    for (int t2 = threadIdx.x; t2 < n; t2 += blockDim.x) {
        const float* kt = K + (long)t2 * hs;
        for (int j0 = 0; j0 < G; j0 += GROUP_CHUNK) {
            float s[GROUP_CHUNK];
#pragma unroll
            for (int jj = 0; jj < GROUP_CHUNK; jj++) {
                s[jj] = 0.0f;
            }
            for (int i = 0; i < hs; i++) {
                float ki = kt[i];  // read once for up to GROUP_CHUNK heads
#pragma unroll
                for (int jj = 0; jj < GROUP_CHUNK; jj++) {
                    if (j0 + jj < G) {
                        s[jj] += Qs[(j0 + jj) * hs + i] * ki;
                    }
                }
            }
#pragma unroll
            for (int jj = 0; jj < GROUP_CHUNK; jj++) {
                if (j0 + jj < G) {
                    P[(j0 + jj) * n + t2] = s[jj];
                }
            }
        }
    }
    __syncthreads();  // every score is written
    for (int j = warp; j < G; j += nwarps) {  // the same for all lanes of a warp: the shuffles see all 32
        float* pj = P + j * n;
        float m = NEG_INF;
        for (int t2 = lane; t2 < n; t2 += 32) {
            m = fmaxf(m, pj[t2]);
        }
        m = warp_max(m);
        float l = 0.0f;
        for (int t2 = lane; t2 < n; t2 += 32) {
            float e = expf(pj[t2] - m);
            pj[t2] = e;
            l += e;
        }
        l = warp_sum(l);
        if (lane == 0) {
            inv_l[j] = 1.0f / l;
        }
    }
    __syncthreads();  // every row holds its exp, every inv_l is written
    int chunks = ceil_div(G, GROUP_CHUNK);
    for (int e = threadIdx.x; e < chunks * hs; e += blockDim.x) {
        int j0 = (e / hs) * GROUP_CHUNK, i = e % hs;
        float acc[GROUP_CHUNK];
#pragma unroll
        for (int jj = 0; jj < GROUP_CHUNK; jj++) {
            acc[jj] = 0.0f;
        }
        for (int t2 = 0; t2 < n; t2++) {
            float vi = V[(long)t2 * hs + i];  // read once for up to GROUP_CHUNK heads
#pragma unroll
            for (int jj = 0; jj < GROUP_CHUNK; jj++) {
                if (j0 + jj < G) {
                    acc[jj] += P[(j0 + jj) * n + t2] * vi;
                }
            }
        }
#pragma unroll
        for (int jj = 0; jj < GROUP_CHUNK; jj++) {
            if (j0 + jj < G) {
                out[(g * G + j0 + jj) * hs + i] = acc[jj] * inv_l[j0 + jj];
            }
        }
    }
}
