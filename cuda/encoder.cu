// encoder.cu: GPT-2's first layer, the token + position encoder, forward and backward.
// Wrapper: helpers/ops/encoder.py · notebook: notebooks/01_encoder.ipynb · tests: tests/test_op_encoder.py.
//
// Forward: each of the B*T positions of the batch holds a token id idx[b,t] in [0, V). Its
// activation is the token's row of the embedding table wte (V, C) plus the position's row of wpe
// (maxT, C):
//     out[b,t,:] = wte[idx[b,t], :] + wpe[t, :]                       out is (B, T, C)
// Backward: the gradient flows back into the rows that were read, and a token that appears at
// several positions receives the sum of their gradients:
//     dwte[idx[b,t], :] += dout[b,t,:]       dwpe[t, :] += dout[b,t,:]     for every (b, t)
// (+=: gradients accumulate, the caller zeroes them.) The whole op is memory-bound: one addition
// per 12 bytes moved.
//
// version 1, encoder_forward1: one thread per output element (b, t, c). The simplest mapping;
//     consecutive threads read consecutive floats of a row, so a warp's loads are coalesced.
// version 2, encoder_forward2: one thread per 4 consecutive channels, with float4 (16-byte) loads
//     and stores: a quarter of the threads and of the memory instructions for the same bytes.
//     C must be a multiple of 4 (each row then starts on a 16-byte boundary); the wrapper checks.
// version 1, encoder_backward1: one thread per (b, t, c), atomicAdd into dwte and dwpe. Correct,
//     since an atomic read-modify-write never loses an update; but positions with the same token
//     (and, for dwpe, all B positions with the same t) add into the same float in whatever order
//     the threads happen to run, and float addition is not associative: the last bits of dwte and
//     dwpe change from run to run. Training is then not reproducible bit for bit.
// version 2, encoder_backward2_dwpe + encoder_backward2_dwte: deterministic, no float atomics.
//     Every gradient element is owned by exactly one thread, which adds its terms in a fixed order.
//     dwpe: one thread per (t, c) loops over b = 0..B-1. dwte: the positions are first grouped by
//     token id ON THE HOST (a stable sort of idx, as llm.c does): bucket k holds the token
//     bucket_token[k] and, in bucket_pos[bucket_start[k] .. bucket_start[k+1]), the flat positions
//     b*T+t where it occurs, in increasing order. One thread per (bucket, c) adds those rows of
//     dout in that order. The result is the same bits in every run, and the same bits as adding
//     the positions one after the other in order (NumPy's np.add.at).
//
// version 3, encoder_forward3: bf16 storage (mixed precision, notebook 13): wte, wpe and out are
//     __nv_bfloat16. One thread per (b, t, 8 channels), one 16-byte bf16x8 load per table row piece
//     and one store (bf16.cuh): C must be a multiple of 8 and the arrays 16-byte aligned (the wrapper
//     checks). The two values are added in float32 and the sum rounded once to bf16 (nearest even):
//     the same bits as ml_dtypes' rounding of NumPy's float32 sum. Without wpe, a plain copy.
// version 3, encoder_backward3_dwpe + encoder_backward3_dwte: version 2's deterministic ownership
//     (one thread per dwpe element looping over b; one thread per token bucket looping over its
//     positions in increasing order), reading bf16 dout. The parameter gradients dwte and dwpe stay
//     float32 (a bf16 accumulator would drop small terms: adding 1e-3 to 1 in bf16 gives 1), so each
//     term is converted to float32 and added there: the same bits as version 2 on the upcast dout.
//     One thread per 8 channels: one bf16x8 load of dout per position, two float4 loads and stores
//     of the float32 gradient; C % 8 == 0, dout, dwte and dwpe 16-byte aligned.
//
// A model without learned positions (Llama: its positions enter through RoPE, cuda/rope.cu) passes
// wpe = NULL (None from Python): the forward then adds nothing, and the backward has no dwpe to
// write (encoder_backward1 skips it; the wrapper leaves out encoder_backward2_dwpe and
// encoder_backward3_dwpe).
//
// All indices are 32-bit ints: the wrappers check that B*T*C and V*C are below 2^31.

#include "bf16.cuh"

// version 1: one thread per (b, t, c).
extern "C" __global__ void encoder_forward1(float* out, const int* idx, const float* wte, const float* wpe,
                                            int B, int T, int C) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;  // flat index into out: (b*T + t)*C + c
    if (i < B * T * C) {
        int bt = i / C;
        int t = bt % T;
        int c = i % C;
        int token = idx[bt];
        out[i] = wpe ? wte[token * C + c] + wpe[t * C + c] : wte[token * C + c];
    }
}

// version 2: one thread per (b, t, 4 channels), 16-byte loads and stores. C % 4 == 0.
extern "C" __global__ void encoder_forward2(float* out, const int* idx, const float* wte, const float* wpe,
                                            int B, int T, int C) {
    int C4 = C / 4;                                 // float4s per row
    int i = blockIdx.x * blockDim.x + threadIdx.x;  // flat index into out viewed as float4s
    if (i < B * T * C4) {
        int bt = i / C4;
        int t = bt % T;
        int c4 = i % C4;
        int token = idx[bt];
        float4 w = reinterpret_cast<const float4*>(wte + token * C)[c4];
        float4 p = wpe ? reinterpret_cast<const float4*>(wpe + t * C)[c4] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        float4 o;
        o.x = w.x + p.x;
        o.y = w.y + p.y;
        o.z = w.z + p.z;
        o.w = w.w + p.w;
        reinterpret_cast<float4*>(out)[i] = o;
    }
}

// version 1: one thread per (b, t, c), float atomics. Correct sums, order-dependent last bits.
extern "C" __global__ void encoder_backward1(float* dwte, float* dwpe, const float* dout, const int* idx,
                                             int B, int T, int C) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;  // flat index into dout
    if (i < B * T * C) {
        int bt = i / C;
        int t = bt % T;
        int c = i % C;
        int token = idx[bt];
        float d = dout[i];
        atomicAdd(&dwte[token * C + c], d);  // other positions with the same token add here too
        if (dwpe) {
            atomicAdd(&dwpe[t * C + c], d);  // and so do the B positions with the same t
        }
    }
}

// version 2, dwpe: one thread per (t, c) owns dwpe[t, c] and adds dout[b, t, c] for b = 0, 1, ...
extern "C" __global__ void encoder_backward2_dwpe(float* dwpe, const float* dout, int B, int T, int C) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;  // flat index into dwpe[:T]: t*C + c
    if (i < T * C) {
        float acc = dwpe[i];  // accumulate onto what is there, in a fixed order
        for (int b = 0; b < B; b++) {
            acc += dout[b * T * C + i];  // dout[b, t, c]: (b*T + t)*C + c = b*T*C + i
        }
        dwpe[i] = acc;
    }
}

// version 2, dwte: one thread per (bucket k, channel c) owns dwte[bucket_token[k], c] and adds
// dout[p, c] for the positions p of its bucket, in increasing order. Buckets come from the host.
extern "C" __global__ void encoder_backward2_dwte(float* dwte, const float* dout, const int* bucket_token,
                                                  const int* bucket_start, const int* bucket_pos,
                                                  int num_buckets, int C) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;  // flat index over (bucket, c)
    if (i < num_buckets * C) {
        int k = i / C;
        int c = i % C;
        int token = bucket_token[k];
        float acc = dwte[token * C + c];
        for (int j = bucket_start[k]; j < bucket_start[k + 1]; j++) {
            acc += dout[bucket_pos[j] * C + c];  // position b*T+t, row of dout
        }
        dwte[token * C + c] = acc;
    }
}

// version 3: bf16 storage, one thread per (b, t, 8 channels), the float32 sum rounded once. C % 8 == 0.
extern "C" __global__ void encoder_forward3(__nv_bfloat16* out, const int* idx, const __nv_bfloat16* wte,
                                            const __nv_bfloat16* wpe, int B, int T, int C) {
    int C8 = C / 8;                                 // bf16x8s per row
    int i = blockIdx.x * blockDim.x + threadIdx.x;  // flat index into out viewed as bf16x8s
    if (i < B * T * C8) {
        int bt = i / C8;
        int t = bt % T;
        int c8 = i % C8;
        bf16x8 o = load_bf16x8(wte + idx[bt] * C + 8 * c8);
        if (wpe) {
            bf16x8 p = load_bf16x8(wpe + t * C + 8 * c8);
#pragma unroll
            for (int k = 0; k < 8; k++) {
                o.v[k] = to_bf16(to_float(o.v[k]) + to_float(p.v[k]));  // float32 add, one rounding
            }
        }
        store_bf16x8(out + 8 * i, o);  // out + bt*C + 8*c8
    }
}

// 8 float32 gradients at p (16-byte aligned) into acc, and back: two float4s each way.
__device__ __forceinline__ void load_float8(const float* p, float* acc) {
    float4 lo = reinterpret_cast<const float4*>(p)[0], hi = reinterpret_cast<const float4*>(p)[1];
    acc[0] = lo.x; acc[1] = lo.y; acc[2] = lo.z; acc[3] = lo.w;
    acc[4] = hi.x; acc[5] = hi.y; acc[6] = hi.z; acc[7] = hi.w;
}

__device__ __forceinline__ void store_float8(float* p, const float* acc) {
    reinterpret_cast<float4*>(p)[0] = make_float4(acc[0], acc[1], acc[2], acc[3]);
    reinterpret_cast<float4*>(p)[1] = make_float4(acc[4], acc[5], acc[6], acc[7]);
}

// version 3, dwpe: one thread per (t, 8 channels) owns those 8 floats of dwpe and adds dout[b, t, c]
// for b = 0, 1, ... in float32, as version 2 does one channel at a time. C % 8 == 0.
extern "C" __global__ void encoder_backward3_dwpe(float* dwpe, const __nv_bfloat16* dout, int B, int T, int C) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;  // flat index into dwpe[:T] viewed as groups of 8
    if (i < T * (C / 8)) {
        float acc[8];
        load_float8(dwpe + 8 * i, acc);  // accumulate onto what is there, in a fixed order
        for (int b = 0; b < B; b++) {
            bf16x8 d = load_bf16x8(dout + b * T * C + 8 * i);  // dout[b, t, 8 channels]
#pragma unroll
            for (int k = 0; k < 8; k++) {
                acc[k] += to_float(d.v[k]);
            }
        }
        store_float8(dwpe + 8 * i, acc);
    }
}

// version 3, dwte: one thread per (bucket k, 8 channels) owns those 8 floats of dwte[bucket_token[k]]
// and adds the bucket's rows of dout in increasing position order, in float32. C % 8 == 0.
extern "C" __global__ void encoder_backward3_dwte(float* dwte, const __nv_bfloat16* dout, const int* bucket_token,
                                                  const int* bucket_start, const int* bucket_pos,
                                                  int num_buckets, int C) {
    int C8 = C / 8;
    int i = blockIdx.x * blockDim.x + threadIdx.x;  // flat index over (bucket, group of 8 channels)
    if (i < num_buckets * C8) {
        int k = i / C8;
        int c = 8 * (i % C8);
        float* row = dwte + bucket_token[k] * C + c;
        float acc[8];
        load_float8(row, acc);
        for (int j = bucket_start[k]; j < bucket_start[k + 1]; j++) {
            bf16x8 d = load_bf16x8(dout + bucket_pos[j] * C + c);  // position b*T+t, row of dout
#pragma unroll
            for (int q = 0; q < 8; q++) {
                acc[q] += to_float(d.v[q]);
            }
        }
        store_float8(row, acc);
    }
}
