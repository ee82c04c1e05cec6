// Solution of the exercise in notebooks/03_matmul.ipynb: matmul_forward2 with a 2x2 register block.
//
// A block of 16x16 threads computes a 32x32 tile of out; thread (tx, ty) computes the four outputs
//     out[n0 + ty][oc0 + tx]       out[n0 + ty][oc0 + tx + 16]
//     out[n0 + ty + 16][oc0 + tx]  out[n0 + ty + 16][oc0 + tx + 16]
// (16 apart rather than side by side, so that 16 consecutive threads still read and write 16
// consecutive floats). At each step of 16 along C the block loads a 32x16 tile of x and one of
// weight, two elements of each per thread. Then for each k a thread reads 2 values of x and 2 of
// weight from shared memory and does 2x2 = 4 multiply-adds: 1 shared load per multiply-add instead
// of 2 in matmul_forward2, and each float loaded from global memory serves 32 outputs instead of
// 16. Version 3 pushes the same idea to 8x8 per thread.

#define T2 32  // output tile (T2 x T2); the block is 16 x 16 threads
#define K2 16  // step along C

extern "C" __global__ void matmul_forward_2x2(float* out, const float* x, const float* weight, const float* bias,
                                              int N, int C, int OC, int has_bias) {
    __shared__ float x_tile[T2][K2 + 1];  // x_tile[r][k] = x[n0 + r][c0 + k]
    __shared__ float w_tile[T2][K2 + 1];  // w_tile[r][k] = weight[oc0 + r][c0 + k]
    int tx = threadIdx.x, ty = threadIdx.y;
    int n0 = blockIdx.y * T2, oc0 = blockIdx.x * T2;

    float acc[2][2] = {{0.0f, 0.0f}, {0.0f, 0.0f}};
    for (int c0 = 0; c0 < C; c0 += K2) {
        int c = c0 + tx;
        for (int h = 0; h < 2; h++) {  // rows ty and ty + 16 of each tile
            int r = ty + 16 * h;
            x_tile[r][tx] = (n0 + r < N && c < C) ? x[(n0 + r) * C + c] : 0.0f;
            w_tile[r][tx] = (oc0 + r < OC && c < C) ? weight[(oc0 + r) * C + c] : 0.0f;
        }
        __syncthreads();
        for (int k = 0; k < K2; k++) {
            float a0 = x_tile[ty][k], a1 = x_tile[ty + 16][k];
            float b0 = w_tile[tx][k], b1 = w_tile[tx + 16][k];
            acc[0][0] += a0 * b0;
            acc[0][1] += a0 * b1;
            acc[1][0] += a1 * b0;
            acc[1][1] += a1 * b1;
        }
        __syncthreads();
    }
    for (int i = 0; i < 2; i++) {
        for (int j = 0; j < 2; j++) {
            int n = n0 + ty + 16 * i, oc = oc0 + tx + 16 * j;
            if (n < N && oc < OC) {
                out[n * OC + oc] = acc[i][j] + (has_bias ? bias[oc] : 0.0f);
            }
        }
    }
}
