// rope.cu: rotary position embedding (RoPE) of Llama's query and key heads, forward and backward, in
// Hugging Face's `rotate_half` convention.
// Wrapper: helpers/ops/rope.py · notebook: notebooks/11_llama_ops.ipynb · tests: tests/test_op_rope.py.
//
// Layout. The fused projection gives qkv (B, T, W), W = (NH + 2*NKV) * hs: in each row (one token)
// NH query heads, then NKV key heads, then NKV value heads, hs channels each (grouped-query
// attention: NKV divides NH). Row (b, t) is at position p = pos0 + t (pos0 > 0 when generation
// continues a sequence; the decode step has B = T = 1 and pos0 = the position).
//
// Forward. Each query and key head vector x (hs channels, hs even, half = hs / 2) is rotated pair by
// pair: channel i and channel i + half (i < half) form a pair, turned by the angle p * inv_freq[i]:
//     out[i]        = x[i] * cos - x[i + half] * sin
//     out[i + half] = x[i + half] * cos + x[i] * sin
// (Hugging Face's q * cos + rotate_half(q) * sin, whose cos/sin repeat the same half values over both
// halves). The value heads are copied unchanged. The angles are not computed here: cos and sin come
// as tables (n_positions, half) built on the host (helpers/ops/rope.py, frequencies()), row p for
// position p: float32 values computed as Hugging Face's LlamaRotaryEmbedding computes them (equal to
// its, or a unit in the last place away; tests/test_op_rope.py bounds the difference).
//
// Backward. A rotation is orthogonal: its transpose is the rotation by -angle, so with g = dout
//     dqkv[i]        += g[i] * cos + g[i + half] * sin
//     dqkv[i + half] += g[i + half] * cos - g[i] * sin
// for the query and key heads, and dqkv += dout for the value heads (the copy's gradient). Like every
// backward here it ACCUMULATES (+=): the caller zeroes dqkv first.
//
// Every output depends only on the two inputs of its own pair: no thread reads what another writes, so
// out may be qkv itself (in place), and no version needs shared memory, barriers or atomics (the
// results are the same bits in every thread order). The op is memory-bound: per element a few FLOPs
// against 8 bytes of qkv read and out written (12 bytes in the backward, which also reads dqkv), plus
// the table, which is small ((pos0 + T) * half floats, shared by every head and every sequence of the
// batch) and stays in the caches.
//
// version 1, rope_forward1 / rope_backward1: one thread per pair (row, head, i), the plain translation.
//     Any even hs, any alignment. Each thread finds its row, head and channel by divisions, issues
//     4-byte loads of x[i], x[i + half], cos and sin and two 4-byte stores. Consecutive threads take
//     consecutive i, so the loads are coalesced; the table is re-read for every head.
// version 2, rope_forward2 / rope_backward2: one thread per four pairs (row, head, i .. i+3) through
//     float4: one 16-byte load of x[i..i+3], one of x[i+half .. i+half+3], one of each table row
//     slice, two 16-byte stores. The bytes that reach memory are the same as version 1's (qkv once,
//     out once: the traffic that bounds the kernel), but a quarter of the load/store instructions and
//     of the index arithmetic, and fewer bytes of table requested: one warp covers several heads of
//     the same row (hs = 64: 4 heads of 8 threads each), and their requests for the same table row are
//     served by the same cache sectors, where version 1's warp (32 pairs: one head at hs = 64) reads a
//     fresh table slice per head. By that count version 2 moves no more bytes than version 1 and
//     issues a quarter of the memory instructions, so it is not slower (the wrapper's default; an
//     argument from the traffic count, not yet a GPU timing: the CPU backend's times say nothing). It
//     assumes half % 4 == 0 (hs a multiple of 8: Llama's 64 and 128 are) and qkv, out (dqkv, dout)
//     and the tables 16-byte aligned; every row, head half and table row then starts aligned too.
//     The wrapper checks both.
//
// Indices are int: the wrapper checks B*T*W and n_positions*half below 2^31. In the code half is
// `half_hs` (`half` names CUDA's 16-bit float type).

// Rotate the pair (a, b) = (x[i], x[i + half_hs]) by the angle whose cosine and sine are (c, s); the
// backward calls it with -s (the rotation by -angle).
__device__ __forceinline__ void rotate(float a, float b, float c, float s, float* out_a, float* out_b) {
    *out_a = a * c - b * s;
    *out_b = b * c + a * s;
}

// ------------------------------------------------------------------------------------------------
// Forward
// ------------------------------------------------------------------------------------------------

// version 1: one thread per pair; n_pairs = N * heads * half_hs, N = B * T rows.
extern "C" __global__ void rope_forward1(float* out, const float* qkv, const float* cos_table, const float* sin_table,
                                         int N, int T, int n_head, int n_kv_head, int half_hs, int pos0) {
    int heads = n_head + 2 * n_kv_head;
    int pair = blockIdx.x * blockDim.x + threadIdx.x;
    if (pair >= N * heads * half_hs) {
        return;
    }
    int i = pair % half_hs;
    int head = (pair / half_hs) % heads;
    int row = pair / (half_hs * heads);
    int offset = (row * heads + head) * 2 * half_hs;  // where this head's hs channels start
    float a = qkv[offset + i];
    float b = qkv[offset + i + half_hs];
    if (head < n_head + n_kv_head) {                // a query or key head: rotate
        int angle = (pos0 + row % T) * half_hs + i;    // row p = pos0 + t of the tables, column i
        rotate(a, b, cos_table[angle], sin_table[angle], &out[offset + i], &out[offset + i + half_hs]);
    } else {                                        // a value head: copy
        out[offset + i] = a;
        out[offset + i + half_hs] = b;
    }
}

// version 2: one thread per four pairs through float4; quads = half_hs / 4 per head.
extern "C" __global__ void rope_forward2(float* out, const float* qkv, const float* cos_table, const float* sin_table,
                                         int N, int T, int n_head, int n_kv_head, int half_hs, int pos0) {
    int heads = n_head + 2 * n_kv_head;
    int quads = half_hs / 4;
    int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= N * heads * quads) {
        return;
    }
    int q = idx % quads;
    int head = (idx / quads) % heads;
    int row = idx / (quads * heads);
    int offset = (row * heads + head) * 2 * half_hs;   // a multiple of 8 floats: 16-byte aligned
    const float4* x1 = reinterpret_cast<const float4*>(qkv + offset);          // x[0 .. half_hs)
    const float4* x2 = reinterpret_cast<const float4*>(qkv + offset + half_hs);   // x[half_hs .. hs)
    float4* y1 = reinterpret_cast<float4*>(out + offset);
    float4* y2 = reinterpret_cast<float4*>(out + offset + half_hs);
    float4 a = x1[q], b = x2[q];
    if (head < n_head + n_kv_head) {
        int p = pos0 + row % T;
        float4 c = reinterpret_cast<const float4*>(cos_table + p * half_hs)[q];
        float4 s = reinterpret_cast<const float4*>(sin_table + p * half_hs)[q];
        float4 ya, yb;
        rotate(a.x, b.x, c.x, s.x, &ya.x, &yb.x);
        rotate(a.y, b.y, c.y, s.y, &ya.y, &yb.y);
        rotate(a.z, b.z, c.z, s.z, &ya.z, &yb.z);
        rotate(a.w, b.w, c.w, s.w, &ya.w, &yb.w);
        y1[q] = ya;
        y2[q] = yb;
    } else {
        y1[q] = a;
        y2[q] = b;
    }
}

// ------------------------------------------------------------------------------------------------
// Backward: dqkv += R^T dout (the rotation by -angle) for q and k, dqkv += dout for v
// ------------------------------------------------------------------------------------------------

// version 1: one thread per pair.
extern "C" __global__ void rope_backward1(float* dqkv, const float* dout, const float* cos_table,
                                          const float* sin_table, int N, int T, int n_head, int n_kv_head, int half_hs,
                                          int pos0) {
    int heads = n_head + 2 * n_kv_head;
    int pair = blockIdx.x * blockDim.x + threadIdx.x;
    if (pair >= N * heads * half_hs) {
        return;
    }
    int i = pair % half_hs;
    int head = (pair / half_hs) % heads;
    int row = pair / (half_hs * heads);
    int offset = (row * heads + head) * 2 * half_hs;
    float ga = dout[offset + i];
    float gb = dout[offset + i + half_hs];
    if (head < n_head + n_kv_head) {
        int angle = (pos0 + row % T) * half_hs + i;
        float da, db;
        rotate(ga, gb, cos_table[angle], -sin_table[angle], &da, &db);
        dqkv[offset + i] += da;
        dqkv[offset + i + half_hs] += db;
    } else {
        dqkv[offset + i] += ga;
        dqkv[offset + i + half_hs] += gb;
    }
}

// version 2: one thread per four pairs through float4 (dout, dqkv and the tables).
extern "C" __global__ void rope_backward2(float* dqkv, const float* dout, const float* cos_table,
                                          const float* sin_table, int N, int T, int n_head, int n_kv_head, int half_hs,
                                          int pos0) {
    int heads = n_head + 2 * n_kv_head;
    int quads = half_hs / 4;
    int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= N * heads * quads) {
        return;
    }
    int q = idx % quads;
    int head = (idx / quads) % heads;
    int row = idx / (quads * heads);
    int offset = (row * heads + head) * 2 * half_hs;
    float4 ga = reinterpret_cast<const float4*>(dout + offset)[q];
    float4 gb = reinterpret_cast<const float4*>(dout + offset + half_hs)[q];
    float4* d1 = reinterpret_cast<float4*>(dqkv + offset);
    float4* d2 = reinterpret_cast<float4*>(dqkv + offset + half_hs);
    float4 acc_a = d1[q], acc_b = d2[q];
    if (head < n_head + n_kv_head) {
        int p = pos0 + row % T;
        float4 c = reinterpret_cast<const float4*>(cos_table + p * half_hs)[q];
        float4 s = reinterpret_cast<const float4*>(sin_table + p * half_hs)[q];
        float da, db;
        rotate(ga.x, gb.x, c.x, -s.x, &da, &db);
        acc_a.x += da;
        acc_b.x += db;
        rotate(ga.y, gb.y, c.y, -s.y, &da, &db);
        acc_a.y += da;
        acc_b.y += db;
        rotate(ga.z, gb.z, c.z, -s.z, &da, &db);
        acc_a.z += da;
        acc_b.z += db;
        rotate(ga.w, gb.w, c.w, -s.w, &da, &db);
        acc_a.w += da;
        acc_b.w += db;
    } else {
        acc_a.x += ga.x;
        acc_a.y += ga.y;
        acc_a.z += ga.z;
        acc_a.w += ga.w;
        acc_b.x += gb.x;
        acc_b.y += gb.y;
        acc_b.z += gb.z;
        acc_b.w += gb.w;
    }
    d1[q] = acc_a;
    d2[q] = acc_b;
}
