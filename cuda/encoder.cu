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
// A model without learned positions (Llama: its positions enter through RoPE, cuda/rope.cu) passes
// wpe = NULL (None from Python): the forward then adds nothing, and the backward has no dwpe to
// write (encoder_backward1 skips it; the wrapper leaves out encoder_backward2_dwpe).
//
// All indices are 32-bit ints: the wrappers check that B*T*C and V*C are below 2^31.

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
