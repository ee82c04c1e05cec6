// 01_encoder_forward_row.cu: the reference solution of notebook 01's exercise.
//
// The encoder's forward pass with one thread per position (b, t), looping over the C channels:
//     out[b,t,:] = wte[idx[b,t], :] + wpe[t, :]
// Each thread reads its token id once and copies a whole row. Correct, but on a GPU slower than
// one thread per (b, t, c): at each step of the loop the 32 threads of a warp touch 32 addresses
// C floats apart (32 different rows), so a warp's load needs 32 memory transactions instead of
// one, and there are only B*T threads to keep the GPU busy.

extern "C" __global__ void encoder_forward_row(float* out, const int* idx, const float* wte, const float* wpe,
                                               int B, int T, int C) {
    int bt = blockIdx.x * blockDim.x + threadIdx.x;  // one thread per position b*T + t
    if (bt < B * T) {
        int t = bt % T;
        const float* wte_row = wte + idx[bt] * C;
        const float* wpe_row = wpe + t * C;
        float* out_row = out + bt * C;
        for (int c = 0; c < C; c++) {
            out_row[c] = wte_row[c] + wpe_row[c];
        }
    }
}
