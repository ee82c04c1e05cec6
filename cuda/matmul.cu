// matmul.cu: the linear layer of GPT-2, out = x @ weight^T + bias, and its backward pass.
// Wrapper: helpers/ops/matmul.py · notebook: notebooks/03_matmul.ipynb · tests: tests/test_op_matmul.py.
//
// Shapes (PyTorch's nn.Linear layout, as in llm.c):
//     x (N, C), weight (OC, C), bias (OC), out (N, OC), with N = B*T rows (one per token);
//     out[n][oc] = bias[oc] + sum_c x[n][c] * weight[oc][c]
// Backward, ACCUMULATING into the gradients like llm.c (the caller zeroes them first):
//     dx (N, C)       += dout @ weight      dx[n][c]       += sum_oc dout[n][oc] * weight[oc][c]
//     dweight (OC, C) += dout^T @ x         dweight[oc][c] += sum_n  dout[n][oc] * x[n][c]
//     dbias (OC)      += column sums        dbias[oc]      += sum_n  dout[n][oc]
// The forward and the two big backward products are the same operation, a matrix product, with
// the operands read in different layouts. Every version gives a correct answer at any shape;
// bias is optional: `has_bias` = 0 and any 1-element array for `bias`.
//
// version 1, naive: one thread per output element, which loops over the whole inner dimension
//     reading both operands from global memory: 2 loads per multiply-add. A GPU can do ~20
//     multiply-adds in the time it loads one float from memory, so this is memory-bound, and
//     it reads each element of x OC times and each element of weight N times.
//     dbias: one thread per column, summing down the column (consecutive threads read
//     consecutive addresses: coalesced), deterministic.
// version 2, shared-memory tiles: a 16x16 block computes a 16x16 tile of the output. The inner
//     dimension is walked in steps of 16; at each step the block loads a 16x16 tile of each
//     operand into shared memory (one element per thread, zeros past the edges), waits, and
//     every thread does 16 multiply-adds from shared memory. Each element loaded from global
//     memory is used by 16 threads: 16 times fewer global loads. The tiles are padded to 17
//     columns so that 16 threads reading a column of a tile hit 16 different banks.
//     dbias: a 32x16 block per group of 32 columns; the 16 rows of threads sum strided rows,
//     then a shared-memory tree combines them in a fixed order (deterministic, no atomics).
// version 3, register blocking: a block of 16x16 threads computes a 128x128 output tile, each
//     thread an 8x8 sub-block whose 64 sums stay in registers. At each step of 16 along the
//     inner dimension the block stages a 128x16 slice of each operand in shared memory (float4
//     loads from global: 16 bytes per instruction), then each thread, for each of the 16 k,
//     reads 8 values of each operand from shared memory (two float4 each) and does the 8x8 =
//     64 multiply-adds of their outer product: 16 floats read from shared memory (4 float4
//     instructions) per 64 multiply-adds, instead of 2 floats per multiply-add in version 2.
//     Each element loaded from global memory serves 128 outputs. One engine
//     (block_matmul_128x128) serves the forward, dx and dweight; they differ in how the
//     operands are laid out in memory. Needs C % 4 == 0 and OC % 4 == 0 (float4 loads and
//     stores along those dimensions) and 16-byte aligned arrays; N can be anything.
//     dbias: version 2's kernel.
//
// All indices are int: the wrappers check that every array has fewer than 2^31 elements.

// ------------------------------------------------------------------------------------------------
// version 1: naive, one thread per output element
// ------------------------------------------------------------------------------------------------
// 2-D grid: x over output columns (oc), y over rows (n). Consecutive threads of a warp have
// consecutive oc, so the store is coalesced; the weight reads are not (rows C floats apart).
extern "C" __global__ void matmul_forward1(float* out, const float* x, const float* weight, const float* bias,
                                           int N, int C, int OC, int has_bias) {
    int oc = blockIdx.x * blockDim.x + threadIdx.x;
    int n = blockIdx.y * blockDim.y + threadIdx.y;
    if (n < N && oc < OC) {
        float acc = has_bias ? bias[oc] : 0.0f;
        for (int c = 0; c < C; c++) {
            acc += x[n * C + c] * weight[oc * C + c];
        }
        out[n * OC + oc] = acc;
    }
}

// dx[n][c] += sum_oc dout[n][oc] * weight[oc][c]   (weight read down a column: not transposed)
extern "C" __global__ void matmul_backward1_dx(float* dx, const float* dout, const float* weight,
                                               int N, int C, int OC) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    int n = blockIdx.y * blockDim.y + threadIdx.y;
    if (n < N && c < C) {
        float acc = 0.0f;
        for (int oc = 0; oc < OC; oc++) {
            acc += dout[n * OC + oc] * weight[oc * C + c];
        }
        dx[n * C + c] += acc;
    }
}

// dweight[oc][c] += sum_n dout[n][oc] * x[n][c]
extern "C" __global__ void matmul_backward1_dweight(float* dweight, const float* dout, const float* x,
                                                    int N, int C, int OC) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    int oc = blockIdx.y * blockDim.y + threadIdx.y;
    if (oc < OC && c < C) {
        float acc = 0.0f;
        for (int n = 0; n < N; n++) {
            acc += dout[n * OC + oc] * x[n * C + c];
        }
        dweight[oc * C + c] += acc;
    }
}

// dbias[oc] += sum_n dout[n][oc], one thread per column.
extern "C" __global__ void matmul_backward1_dbias(float* dbias, const float* dout, int N, int OC) {
    int oc = blockIdx.x * blockDim.x + threadIdx.x;
    if (oc < OC) {
        float acc = 0.0f;
        for (int n = 0; n < N; n++) {
            acc += dout[n * OC + oc];
        }
        dbias[oc] += acc;
    }
}

// ------------------------------------------------------------------------------------------------
// version 2: 16x16 shared-memory tiles
// ------------------------------------------------------------------------------------------------
#define TILE 16

// Block (16, 16) computes out[n0 .. n0+15][oc0 .. oc0+15]; thread (tx, ty) owns out[n0+ty][oc0+tx].
// Step k loads x[n0 .. n0+15][c0 .. c0+15] and weight[oc0 .. oc0+15][c0 .. c0+15], c0 = 16k.
extern "C" __global__ void matmul_forward2(float* out, const float* x, const float* weight,
                                                                  const float* bias, int N, int C, int OC,
                                                                  int has_bias) {
    __shared__ float x_tile[TILE][TILE + 1];  // x_tile[r][k] = x[n0 + r][c0 + k]
    __shared__ float w_tile[TILE][TILE + 1];  // w_tile[r][k] = weight[oc0 + r][c0 + k]
    int tx = threadIdx.x, ty = threadIdx.y;
    int n0 = blockIdx.y * TILE, oc0 = blockIdx.x * TILE;
    int n = n0 + ty, oc = oc0 + tx;

    float acc = 0.0f;
    for (int c0 = 0; c0 < C; c0 += TILE) {
        // Each thread loads one element of each tile; 16 consecutive threads read 16 consecutive
        // floats of a row (coalesced). Past the edges: zeros, which add nothing to the sums.
        int c = c0 + tx;
        x_tile[ty][tx] = (n < N && c < C) ? x[n * C + c] : 0.0f;
        w_tile[ty][tx] = (oc0 + ty < OC && c < C) ? weight[(oc0 + ty) * C + c] : 0.0f;
        __syncthreads();  // the whole tile must be loaded before anyone reads it
        for (int k = 0; k < TILE; k++) {
            // w_tile[tx][k]: 16 threads read a column; with 17 floats per row they hit 16 banks
            acc += x_tile[ty][k] * w_tile[tx][k];
        }
        __syncthreads();  // everyone is done with the tile before the next step overwrites it
    }
    if (n < N && oc < OC) {  // after the loop: every thread took part in every barrier
        out[n * OC + oc] = acc + (has_bias ? bias[oc] : 0.0f);
    }
}

// dx tile: dx[n0 .. n0+15][c0 .. c0+15]. Step k loads dout[n0 ..][o0 .. o0+15] and
// weight[o0 .. o0+15][c0 ..] (o0 = 16k); both are read along their rows (coalesced).
extern "C" __global__ void matmul_backward2_dx(float* dx, const float* dout,
                                                                      const float* weight, int N, int C, int OC) {
    __shared__ float d_tile[TILE][TILE + 1];  // d_tile[r][k] = dout[n0 + r][o0 + k]
    __shared__ float w_tile[TILE][TILE + 1];  // w_tile[k][j] = weight[o0 + k][c0 + j]
    int tx = threadIdx.x, ty = threadIdx.y;
    int n0 = blockIdx.y * TILE, c0 = blockIdx.x * TILE;
    int n = n0 + ty, c = c0 + tx;

    float acc = 0.0f;
    for (int o0 = 0; o0 < OC; o0 += TILE) {
        d_tile[ty][tx] = (n < N && o0 + tx < OC) ? dout[n * OC + o0 + tx] : 0.0f;
        w_tile[ty][tx] = (o0 + ty < OC && c < C) ? weight[(o0 + ty) * C + c] : 0.0f;
        __syncthreads();
        for (int k = 0; k < TILE; k++) {
            acc += d_tile[ty][k] * w_tile[k][tx];
        }
        __syncthreads();
    }
    if (n < N && c < C) {
        dx[n * C + c] += acc;
    }
}

// dweight tile: dweight[oc0 .. oc0+15][c0 .. c0+15]. The inner dimension is n: step k loads
// dout[m0 .. m0+15][oc0 ..] and x[m0 .. m0+15][c0 ..] (m0 = 16k), both along their rows.
extern "C" __global__ void matmul_backward2_dweight(float* dweight, const float* dout,
                                                                           const float* x, int N, int C, int OC) {
    __shared__ float d_tile[TILE][TILE + 1];  // d_tile[k][i] = dout[m0 + k][oc0 + i]
    __shared__ float x_tile[TILE][TILE + 1];  // x_tile[k][j] = x[m0 + k][c0 + j]
    int tx = threadIdx.x, ty = threadIdx.y;
    int oc0 = blockIdx.y * TILE, c0 = blockIdx.x * TILE;
    int oc = oc0 + ty, c = c0 + tx;

    float acc = 0.0f;
    for (int m0 = 0; m0 < N; m0 += TILE) {
        int m = m0 + ty;
        d_tile[ty][tx] = (m < N && oc0 + tx < OC) ? dout[m * OC + oc0 + tx] : 0.0f;
        x_tile[ty][tx] = (m < N && c < C) ? x[m * C + c] : 0.0f;
        __syncthreads();
        for (int k = 0; k < TILE; k++) {
            acc += d_tile[k][ty] * x_tile[k][tx];
        }
        __syncthreads();
    }
    if (oc < OC && c < C) {
        dweight[oc * C + c] += acc;
    }
}

// dbias: block (32, DBIAS_ROWS) per group of 32 columns. Thread (tx, ty) sums rows ty,
// ty + DBIAS_ROWS, ... of column oc0 + tx (a warp reads 32 consecutive floats of one row), then
// a tree over ty in shared memory, in a fixed order: the same bits on every run.
#define DBIAS_ROWS 16
extern "C" __global__ void matmul_backward2_dbias(float* dbias, const float* dout,
                                                                         int N, int OC) {
    __shared__ float partial[DBIAS_ROWS][32];
    int tx = threadIdx.x, ty = threadIdx.y;
    int oc = blockIdx.x * 32 + tx;
    float acc = 0.0f;
    if (oc < OC) {
        for (int n = ty; n < N; n += DBIAS_ROWS) {
            acc += dout[n * OC + oc];
        }
    }
    partial[ty][tx] = acc;
    __syncthreads();
    for (int stride = DBIAS_ROWS / 2; stride > 0; stride /= 2) {
        if (ty < stride) {
            partial[ty][tx] += partial[ty + stride][tx];
        }
        __syncthreads();  // the next step reads what this one wrote
    }
    if (ty == 0 && oc < OC) {
        dbias[oc] += partial[0][tx];
    }
}

// ------------------------------------------------------------------------------------------------
// version 3: 128x128 tiles, 8x8 outputs per thread in registers, float4 loads
// ------------------------------------------------------------------------------------------------
// The engine computes, for the block's tile, acc[i][j] = sum_k A(m, k) * B(j', k) where m and j'
// are the output row and column of the thread's element (i, j). Each operand is either
//   "k-contiguous": P(r, k) = P[r * K + k]      (x and weight in the forward, dout for dx), or
//   "r-contiguous": P(r, k) = P[k * rows + r]   (weight for dx, dout and x for dweight).
// In shared memory both are stored k-major, S[k][r], so that a thread reads its 8 values of one
// k as two float4.
#define BM 128  // output tile: BM x BM
#define BK 16   // step along the inner dimension

// Stage rows r0 .. r0+127, inner indices k0 .. k0+15 of operand P (rows x K) into S[BK][BM];
// zeros past the edges. 128 x 16 floats = 512 float4: two per thread.
template <bool K_CONTIGUOUS>
__device__ __forceinline__ void load_tile(float (*S)[BM], const float* P, int rows, int K, int r0, int k0) {
    int tid = threadIdx.y * 16 + threadIdx.x;
#pragma unroll
    for (int i = 0; i < 2; i++) {
        int f = tid + i * 256;
        if (K_CONTIGUOUS) {
            // 4 threads per row, each 4 consecutive k (a float4 along k); stored transposed.
            // K % 4 == 0: a float4 starting at k < K lies entirely inside the row.
            int r = f / 4, k = (f % 4) * 4;
            float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            if (r0 + r < rows && k0 + k < K) {
                v = *reinterpret_cast<const float4*>(&P[(r0 + r) * K + k0 + k]);
            }
            S[k + 0][r] = v.x;
            S[k + 1][r] = v.y;
            S[k + 2][r] = v.z;
            S[k + 3][r] = v.w;
        } else {
            // 32 threads per k, each 4 consecutive rows (a float4 along r), stored as they are.
            // rows % 4 == 0: a float4 starting at r < rows lies entirely inside.
            int k = f / 32, r = (f % 32) * 4;
            float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            if (k0 + k < K && r0 + r < rows) {
                v = *reinterpret_cast<const float4*>(&P[(k0 + k) * rows + r0 + r]);
            }
            *reinterpret_cast<float4*>(&S[k][r]) = v;
        }
    }
}

// Thread (tx, ty) owns rows   ty*4 + {0..3} and 64 + ty*4 + {0..3}   of the tile (i = 0..7),
//                and columns tx*4 + {0..3} and 64 + tx*4 + {0..3}   (j = 0..7).
// Two groups of 4 rather than 8 in a row: the 8 threads of a quarter warp then read 32
// consecutive floats of a shared row (no bank conflicts), and a warp stores 64 consecutive
// floats of an output row.
__device__ __forceinline__ int tile_offset(int t, int i) {
    return (i < 4) ? t * 4 + i : 64 + t * 4 + (i - 4);
}

template <bool A_K_CONTIGUOUS, bool B_K_CONTIGUOUS>
__device__ __forceinline__ void block_matmul_128x128(float (&acc)[8][8], const float* A, const float* B,
                                                     int M, int Ncols, int K, int m0, int j0) {
    __shared__ float A_tile[BK][BM];  // A_tile[k][r] = A(m0 + r, k0 + k)
    __shared__ float B_tile[BK][BM];  // B_tile[k][r] = B(j0 + r, k0 + k)
    int tx = threadIdx.x, ty = threadIdx.y;
#pragma unroll
    for (int i = 0; i < 8; i++) {
#pragma unroll
        for (int j = 0; j < 8; j++) {
            acc[i][j] = 0.0f;
        }
    }
    for (int k0 = 0; k0 < K; k0 += BK) {
        load_tile<A_K_CONTIGUOUS>(A_tile, A, M, K, m0, k0);
        load_tile<B_K_CONTIGUOUS>(B_tile, B, Ncols, K, j0, k0);
        __syncthreads();
#pragma unroll
        for (int k = 0; k < BK; k++) {
            float4 a_lo = *reinterpret_cast<const float4*>(&A_tile[k][ty * 4]);
            float4 a_hi = *reinterpret_cast<const float4*>(&A_tile[k][64 + ty * 4]);
            float4 b_lo = *reinterpret_cast<const float4*>(&B_tile[k][tx * 4]);
            float4 b_hi = *reinterpret_cast<const float4*>(&B_tile[k][64 + tx * 4]);
            float a[8] = {a_lo.x, a_lo.y, a_lo.z, a_lo.w, a_hi.x, a_hi.y, a_hi.z, a_hi.w};
            float b[8] = {b_lo.x, b_lo.y, b_lo.z, b_lo.w, b_hi.x, b_hi.y, b_hi.z, b_hi.w};
#pragma unroll
            for (int i = 0; i < 8; i++) {
#pragma unroll
                for (int j = 0; j < 8; j++) {
                    acc[i][j] += a[i] * b[j];  // the outer product of a column of A and one of B
                }
            }
        }
        __syncthreads();
    }
}

// out = x @ weight^T + bias: A = x (N x C, k-contiguous), B = weight (OC x C, k-contiguous).
extern "C" __global__ void matmul_forward3(float* out, const float* x, const float* weight,
                                                                  const float* bias, int N, int C, int OC,
                                                                  int has_bias) {
    int m0 = blockIdx.y * BM, j0 = blockIdx.x * BM;
    float acc[8][8];
    block_matmul_128x128<true, true>(acc, x, weight, N, OC, C, m0, j0);
#pragma unroll
    for (int i = 0; i < 8; i++) {
        int n = m0 + tile_offset(threadIdx.y, i);
#pragma unroll
        for (int h = 0; h < 2; h++) {  // two float4 per row: columns j = 4h .. 4h+3
            int oc = j0 + tile_offset(threadIdx.x, 4 * h);
            if (n < N && oc < OC) {  // OC % 4 == 0: all four columns exist
                float4 v = make_float4(acc[i][4 * h], acc[i][4 * h + 1], acc[i][4 * h + 2], acc[i][4 * h + 3]);
                if (has_bias) {
                    float4 b = *reinterpret_cast<const float4*>(&bias[oc]);
                    v.x += b.x;
                    v.y += b.y;
                    v.z += b.z;
                    v.w += b.w;
                }
                *reinterpret_cast<float4*>(&out[n * OC + oc]) = v;
            }
        }
    }
}

// acc (BM x BM) added into the tile (m0, j0) of `grad` (rows x cols, cols % 4 == 0).
__device__ __forceinline__ void accumulate_tile(float* grad, const float (&acc)[8][8], int rows, int cols,
                                                int m0, int j0) {
#pragma unroll
    for (int i = 0; i < 8; i++) {
        int r = m0 + tile_offset(threadIdx.y, i);
#pragma unroll
        for (int h = 0; h < 2; h++) {
            int c = j0 + tile_offset(threadIdx.x, 4 * h);
            if (r < rows && c < cols) {
                float4* p = reinterpret_cast<float4*>(&grad[r * cols + c]);
                float4 g = *p;
                g.x += acc[i][4 * h];
                g.y += acc[i][4 * h + 1];
                g.z += acc[i][4 * h + 2];
                g.w += acc[i][4 * h + 3];
                *p = g;
            }
        }
    }
}

// dx = dout @ weight: A = dout (N x OC, k = oc contiguous), B(c, oc) = weight[oc][c] (c-contiguous).
extern "C" __global__ void matmul_backward3_dx(float* dx, const float* dout,
                                                                      const float* weight, int N, int C, int OC) {
    int m0 = blockIdx.y * BM, j0 = blockIdx.x * BM;
    float acc[8][8];
    block_matmul_128x128<true, false>(acc, dout, weight, N, C, OC, m0, j0);
    accumulate_tile(dx, acc, N, C, m0, j0);
}

// dweight = dout^T @ x: A(oc, n) = dout[n][oc] (oc-contiguous), B(c, n) = x[n][c] (c-contiguous).
extern "C" __global__ void matmul_backward3_dweight(float* dweight, const float* dout,
                                                                           const float* x, int N, int C, int OC) {
    int m0 = blockIdx.y * BM, j0 = blockIdx.x * BM;
    float acc[8][8];
    block_matmul_128x128<false, false>(acc, dout, x, OC, C, N, m0, j0);
    accumulate_tile(dweight, acc, OC, C, m0, j0);
}
