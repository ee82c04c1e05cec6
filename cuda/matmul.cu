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
// Versions 4 and 5 are mixed precision (cuda/bf16.cuh, notebook 13): x, weight, bias, out, dout and
// dx are bf16; dweight and dbias stay float32 (the gradients of parameters are accumulated in
// float32); every product and sum is float32, and a bf16 output is rounded once, when it is stored
// (dx: the old value converted, the sum added in float, rounded once). Both need C % 8 == 0 and
// OC % 8 == 0 (8 bf16 = 16 bytes per load) and 16-byte aligned arrays; N can be anything.
// version 4, bf16 storage on version 3's engine: the same 128x128 tiles and 8x8 register blocks;
//     each thread stages 8 bf16 per step with one 16-byte load and converts them once, so shared
//     memory holds float and the inner loop is version 3's. A thread's output columns come in
//     groups of 4 (tile_offset), stored as 4 bf16 in 8 bytes. dbias: version 2's tree over the bf16
//     dout, into float32.
// version 5, tensor cores (WMMA, <mma.h>): a block of 4 warps computes a 64x64 tile, each warp 32x32
//     as 2x2 fragments of 16x16, with mma_sync on bf16 fragments accumulating in float (m16n16k16).
//     At each step of 32 along the inner dimension the block stages both operands' 64x32 slices in
//     shared memory as bf16 (16-byte loads, zeros past the edges, rows padded by 16 bytes), and each
//     warp loads its fragments from there: a k-contiguous slice is a row-major matrix_a or a
//     column-major matrix_b, an r-contiguous one the other way round, so one engine serves the
//     forward, dx and dweight again. The accumulators go through shared memory (store_matrix_sync)
//     so that the epilogue can add the bias or the old gradient in float and store 8 outputs at once
//     (27 KiB of static shared memory per block: the two slices and the 64x64 float tile).
//     Needs bf16 tensor cores: sm_80 or later (sm_75 has none for bf16: the wrapper refuses it there).
//     The products of bf16 are exact in float; the order of the additions inside mma_sync is the
//     hardware's, fixed, so the bits are the same on every run. dbias: version 4's kernel.
//
// All indices are int: the wrappers check that every array has fewer than 2^31 elements.

#include "bf16.cuh"

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

// ------------------------------------------------------------------------------------------------
// version 4: bf16 storage, version 3's register tiles, 16-byte loads of 8 bf16
// ------------------------------------------------------------------------------------------------
// The tiles in shared memory stay float: each bf16 is converted once, when it is staged, so the
// inner loop is version 3's, in float32, and only the global traffic halves.

// 4 bf16 in 8 bytes: a thread's group of 4 output columns (see tile_offset), one 8-byte access.
struct __align__(8) bf16x4 {
    __nv_bfloat16 v[4];
};

// Stage rows r0 .. r0+127, inner indices k0 .. k0+15 of the bf16 operand P (rows x K) into S[BK][BM]
// as float; zeros past the edges. 128 x 16 values = 256 groups of 8 (16 bytes): one per thread.
template <bool K_CONTIGUOUS>
__device__ __forceinline__ void load_tile_bf16(float (*S)[BM], const __nv_bfloat16* P, int rows, int K, int r0,
                                               int k0) {
    int f = threadIdx.y * 16 + threadIdx.x;
    float v[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
    if (K_CONTIGUOUS) {
        // 2 threads per row, each 8 consecutive k; stored transposed. K % 8 == 0: a group starting
        // at k < K lies entirely inside the row, and at a 16-byte aligned address.
        int r = f / 2, k = (f % 2) * 8;
        if (r0 + r < rows && k0 + k < K) {
            bf16x8 p = load_bf16x8(&P[(r0 + r) * K + k0 + k]);
#pragma unroll
            for (int i = 0; i < 8; i++) {
                v[i] = to_float(p.v[i]);
            }
        }
#pragma unroll
        for (int i = 0; i < 8; i++) {
            S[k + i][r] = v[i];
        }
    } else {
        // 16 threads per k, each 8 consecutive rows, stored as they are (two float4). rows % 8 == 0.
        int k = f / 16, r = (f % 16) * 8;
        if (k0 + k < K && r0 + r < rows) {
            bf16x8 p = load_bf16x8(&P[(k0 + k) * rows + r0 + r]);
#pragma unroll
            for (int i = 0; i < 8; i++) {
                v[i] = to_float(p.v[i]);
            }
        }
        *reinterpret_cast<float4*>(&S[k][r]) = make_float4(v[0], v[1], v[2], v[3]);
        *reinterpret_cast<float4*>(&S[k][r + 4]) = make_float4(v[4], v[5], v[6], v[7]);
    }
}

// block_matmul_128x128 with bf16 operands: the same tiles, the same float32 products and sums.
template <bool A_K_CONTIGUOUS, bool B_K_CONTIGUOUS>
__device__ __forceinline__ void block_matmul_128x128_bf16(float (&acc)[8][8], const __nv_bfloat16* A,
                                                          const __nv_bfloat16* B, int M, int Ncols, int K, int m0,
                                                          int j0) {
    __shared__ float A_tile[BK][BM];  // A_tile[k][r] = A(m0 + r, k0 + k), converted to float
    __shared__ float B_tile[BK][BM];
    int tx = threadIdx.x, ty = threadIdx.y;
#pragma unroll
    for (int i = 0; i < 8; i++) {
#pragma unroll
        for (int j = 0; j < 8; j++) {
            acc[i][j] = 0.0f;
        }
    }
    for (int k0 = 0; k0 < K; k0 += BK) {
        load_tile_bf16<A_K_CONTIGUOUS>(A_tile, A, M, K, m0, k0);
        load_tile_bf16<B_K_CONTIGUOUS>(B_tile, B, Ncols, K, j0, k0);
        __syncthreads();  // both tiles staged before anyone reads them
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
                    acc[i][j] += a[i] * b[j];
                }
            }
        }
        __syncthreads();  // everyone is done with the tiles before the next step overwrites them
    }
}

// out = x @ weight^T + bias in bf16: the sum and the bias added in float, rounded once.
extern "C" __global__ void matmul_forward4(__nv_bfloat16* out, const __nv_bfloat16* x, const __nv_bfloat16* weight,
                                           const __nv_bfloat16* bias, int N, int C, int OC, int has_bias) {
    int m0 = blockIdx.y * BM, j0 = blockIdx.x * BM;
    float acc[8][8];
    block_matmul_128x128_bf16<true, true>(acc, x, weight, N, OC, C, m0, j0);
#pragma unroll
    for (int i = 0; i < 8; i++) {
        int n = m0 + tile_offset(threadIdx.y, i);
#pragma unroll
        for (int h = 0; h < 2; h++) {  // two groups of 4 columns per row: j = 4h .. 4h+3
            int oc = j0 + tile_offset(threadIdx.x, 4 * h);
            if (n < N && oc < OC) {  // OC % 8 == 0: all four columns exist
                bf16x4 b = {};
                if (has_bias) {
                    b = *reinterpret_cast<const bf16x4*>(&bias[oc]);
                }
                bf16x4 o;
#pragma unroll
                for (int q = 0; q < 4; q++) {
                    o.v[q] = to_bf16(acc[i][4 * h + q] + (has_bias ? to_float(b.v[q]) : 0.0f));
                }
                *reinterpret_cast<bf16x4*>(&out[n * OC + oc]) = o;
            }
        }
    }
}

// acc added into the tile (m0, j0) of the bf16 gradient `grad` (rows x cols, cols % 8 == 0): the old
// value converted to float, the sum rounded once.
__device__ __forceinline__ void accumulate_tile_bf16(__nv_bfloat16* grad, const float (&acc)[8][8], int rows,
                                                     int cols, int m0, int j0) {
#pragma unroll
    for (int i = 0; i < 8; i++) {
        int r = m0 + tile_offset(threadIdx.y, i);
#pragma unroll
        for (int h = 0; h < 2; h++) {
            int c = j0 + tile_offset(threadIdx.x, 4 * h);
            if (r < rows && c < cols) {
                bf16x4* p = reinterpret_cast<bf16x4*>(&grad[r * cols + c]);
                bf16x4 g = *p;
#pragma unroll
                for (int q = 0; q < 4; q++) {
                    g.v[q] = to_bf16(to_float(g.v[q]) + acc[i][4 * h + q]);
                }
                *p = g;
            }
        }
    }
}

// dx (bf16) += dout @ weight: the operands as in version 3.
extern "C" __global__ void matmul_backward4_dx(__nv_bfloat16* dx, const __nv_bfloat16* dout,
                                               const __nv_bfloat16* weight, int N, int C, int OC) {
    int m0 = blockIdx.y * BM, j0 = blockIdx.x * BM;
    float acc[8][8];
    block_matmul_128x128_bf16<true, false>(acc, dout, weight, N, C, OC, m0, j0);
    accumulate_tile_bf16(dx, acc, N, C, m0, j0);
}

// dweight (float32) += dout^T @ x: version 3's accumulate_tile, float4 stores into float32.
extern "C" __global__ void matmul_backward4_dweight(float* dweight, const __nv_bfloat16* dout,
                                                    const __nv_bfloat16* x, int N, int C, int OC) {
    int m0 = blockIdx.y * BM, j0 = blockIdx.x * BM;
    float acc[8][8];
    block_matmul_128x128_bf16<false, false>(acc, dout, x, OC, C, N, m0, j0);
    accumulate_tile(dweight, acc, OC, C, m0, j0);
}

// dbias (float32) += column sums of the bf16 dout: version 2's kernel, each value converted as it is
// read. One column per thread keeps OC / 32 blocks busy; a warp reads 64 consecutive bytes of a row.
extern "C" __global__ void matmul_backward4_dbias(float* dbias, const __nv_bfloat16* dout, int N, int OC) {
    __shared__ float partial[DBIAS_ROWS][32];
    int tx = threadIdx.x, ty = threadIdx.y;
    int oc = blockIdx.x * 32 + tx;
    float acc = 0.0f;
    if (oc < OC) {
        for (int n = ty; n < N; n += DBIAS_ROWS) {
            acc += to_float(dout[n * OC + oc]);
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
// version 5: tensor cores through WMMA, bf16 in, float32 accumulation
// ------------------------------------------------------------------------------------------------
// Tensor cores do bf16 from sm_80 on (CUDA's <mma.h> declares bf16 fragments only there, and needs
// its crt/mma.h, which not every CUDA header package ships); the CPU backend has them when it provides
// <mma.h>. Where they are missing (sm_75) the kernels below still compile, so that the file does, but
// trap; matmul_wmma_available says which, and the wrapper reads it before it launches version 5.
#if defined(__CUDACC_RTC__)  // NVRTC, compiling for a GPU
#if __CUDA_ARCH__ >= 800 && __has_include(<crt/mma.h>)
#define MATMUL_WMMA 1
#endif
#elif defined(__has_include)  // the CPU backend (its __CUDA_ARCH__, if defined, says 900)
#if __has_include(<mma.h>) && (!defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800)
#define MATMUL_WMMA 1
#endif
#endif
#ifdef MATMUL_WMMA
#define MATMUL_WMMA_AVAILABLE 1
#else
#define MATMUL_WMMA_AVAILABLE 0
#endif
__device__ int matmul_wmma_available = MATMUL_WMMA_AVAILABLE;

#define WM 64            // a block's output tile: WM x WM, 4 warps, each 32 x 32 (2 x 2 fragments)
#define WK 32            // step along the inner dimension: two mma_sync steps of 16
#define WK_LD (WK + 8)   // a k-contiguous slice, staged S[r][k]: rows of 40 bf16
#define WR_LD (WM + 8)   // an r-contiguous slice, staged S[k][r]: rows of 72 bf16
#define WC_LD (WM + 4)   // the float tile of the epilogue: rows of 68 floats
// Why those row lengths: load_matrix_sync and store_matrix_sync need ldm a multiple of 16 bytes and
// fragments starting at 32-byte aligned addresses (rows 16 apart are 16 * 80, 16 * 144 or 16 * 272
// bytes apart: multiples of 32); the extra 16 bytes per row shift consecutive rows to other banks.

// What a block keeps in shared memory: the staged slices of both operands (bf16; WM * WK_LD holds
// either layout: WK * WR_LD is smaller) and the float32 output tile. One struct so that its
// alignment (32 bytes, as fragments need) holds on every backend.
struct __align__(32) WmmaTiles {
    __nv_bfloat16 a[WM * WK_LD];
    __nv_bfloat16 b[WM * WK_LD];
    float c[WM][WC_LD];
};

// Stage rows r0 .. r0+63, inner indices k0 .. k0+31 of the bf16 operand P (rows x K, laid out as in
// version 3: k-contiguous P[r * K + k] or r-contiguous P[k * rows + r]) as they are, 16 bytes at a
// time; zeros past the edges (they add nothing to the sums). 64 x 32 = 256 groups of 8: two per thread.
template <bool K_CONTIGUOUS>
__device__ __forceinline__ void stage_slice(__nv_bfloat16* S, const __nv_bfloat16* P, int rows, int K, int r0,
                                            int k0) {
#pragma unroll
    for (int i = 0; i < 2; i++) {
        int f = threadIdx.x + i * 128;
        bf16x8 v;
#pragma unroll
        for (int q = 0; q < 8; q++) {
            v.v[q] = to_bf16(0.0f);
        }
        if (K_CONTIGUOUS) {  // 4 threads per row, 8 consecutive k each (K % 8 == 0)
            int r = f / 4, k = (f % 4) * 8;
            if (r0 + r < rows && k0 + k < K) {
                v = load_bf16x8(&P[(r0 + r) * K + k0 + k]);
            }
            store_bf16x8(&S[r * WK_LD + k], v);
        } else {  // 8 threads per k, 8 consecutive rows each (rows % 8 == 0)
            int k = f / 8, r = (f % 8) * 8;
            if (k0 + k < K && r0 + r < rows) {
                v = load_bf16x8(&P[(k0 + k) * rows + r0 + r]);
            }
            store_bf16x8(&S[k * WR_LD + r], v);
        }
    }
}

#ifdef MATMUL_WMMA
#include <mma.h>

// How a staged slice reads as a fragment. Staged S[r][k] (k-contiguous), it is row-major as the
// matrix_a (rows m = r, columns k) and column-major as the matrix_b (rows k, columns n = r); staged
// S[k][r], the other way round. Either way the fragment starting at (r, k) starts at staged(r, k).
template <bool K_CONTIGUOUS>
struct Staged {
    typedef nvcuda::wmma::row_major a_layout;
    typedef nvcuda::wmma::col_major b_layout;
    static __device__ __forceinline__ int offset(int r, int k) { return r * WK_LD + k; }
    static const int ld = WK_LD;
};
template <>
struct Staged<false> {
    typedef nvcuda::wmma::col_major a_layout;
    typedef nvcuda::wmma::row_major b_layout;
    static __device__ __forceinline__ int offset(int r, int k) { return k * WR_LD + r; }
    static const int ld = WR_LD;
};

// t.c = the block's WM x WM tile of sum_k A(m, k) * B(j, k), operands as in block_matmul_128x128.
// Every warp of the block calls every fragment function (they are warp-collective): no branch here
// depends on anything but the loop counters. Warp w owns rows 32 * (w / 2) .., columns 32 * (w % 2) ..
template <bool A_K_CONTIGUOUS, bool B_K_CONTIGUOUS>
__device__ __forceinline__ void wmma_block_64x64(WmmaTiles& t, const __nv_bfloat16* A, const __nv_bfloat16* B,
                                                 int M, int Ncols, int K, int m0, int j0) {
    using namespace nvcuda;
    typedef Staged<A_K_CONTIGUOUS> SA;
    typedef Staged<B_K_CONTIGUOUS> SB;
    int warp = threadIdx.x / 32;
    int wm = (warp / 2) * 32, wn = (warp % 2) * 32;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2];
#pragma unroll
    for (int i = 0; i < 2; i++) {
#pragma unroll
        for (int j = 0; j < 2; j++) {
            wmma::fill_fragment(acc[i][j], 0.0f);
        }
    }
    for (int k0 = 0; k0 < K; k0 += WK) {
        stage_slice<A_K_CONTIGUOUS>(t.a, A, M, K, m0, k0);
        stage_slice<B_K_CONTIGUOUS>(t.b, B, Ncols, K, j0, k0);
        __syncthreads();  // both slices staged before any warp loads a fragment from them
#pragma unroll
        for (int kk = 0; kk < WK; kk += 16) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, typename SA::a_layout> a[2];
            wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, typename SB::b_layout> b[2];
#pragma unroll
            for (int i = 0; i < 2; i++) {
                wmma::load_matrix_sync(a[i], t.a + SA::offset(wm + 16 * i, kk), SA::ld);
                wmma::load_matrix_sync(b[i], t.b + SB::offset(wn + 16 * i, kk), SB::ld);
            }
#pragma unroll
            for (int i = 0; i < 2; i++) {
#pragma unroll
                for (int j = 0; j < 2; j++) {
                    wmma::mma_sync(acc[i][j], a[i], b[j], acc[i][j]);  // acc += a * b, in float
                }
            }
        }
        __syncthreads();  // every warp is done with the slices before the next step overwrites them
    }
#pragma unroll
    for (int i = 0; i < 2; i++) {
#pragma unroll
        for (int j = 0; j < 2; j++) {
            wmma::store_matrix_sync(&t.c[wm + 16 * i][wn + 16 * j], acc[i][j], WC_LD, wmma::mem_row_major);
        }
    }
    __syncthreads();  // the whole float tile is in shared memory before the epilogue reads it
}
#else
template <bool A_K_CONTIGUOUS, bool B_K_CONTIGUOUS>
__device__ __forceinline__ void wmma_block_64x64(WmmaTiles& t, const __nv_bfloat16* A, const __nv_bfloat16* B,
                                                 int M, int Ncols, int K, int m0, int j0) {
    __trap();  // no bf16 tensor cores here (the wrapper says so before launching)
}
#endif

// The epilogues: the float tile t.c read back 8 columns at a time (WM x WM = 512 groups of 8, four
// per thread; 8 consecutive threads cover a row: 128 contiguous bytes of bf16 output), each group
// rounded once and stored with one 16-byte store. OC (or C) % 8 == 0: a group is wholly in or out.
__device__ __forceinline__ void read_tile_row8(const WmmaTiles& t, int r, int c, float (&v)[8]) {
    float4 lo = *reinterpret_cast<const float4*>(&t.c[r][c]);
    float4 hi = *reinterpret_cast<const float4*>(&t.c[r][c + 4]);
    v[0] = lo.x, v[1] = lo.y, v[2] = lo.z, v[3] = lo.w, v[4] = hi.x, v[5] = hi.y, v[6] = hi.z, v[7] = hi.w;
}

// out = x @ weight^T + bias: A = x (k-contiguous), B = weight (k-contiguous), bias added in float.
// Block: 128 threads (4 warps); grid (ceil(OC / 64), ceil(N / 64)).
extern "C" __global__ void matmul_forward5(__nv_bfloat16* out, const __nv_bfloat16* x, const __nv_bfloat16* weight,
                                           const __nv_bfloat16* bias, int N, int C, int OC, int has_bias) {
    __shared__ WmmaTiles t;
    int m0 = blockIdx.y * WM, j0 = blockIdx.x * WM;
    wmma_block_64x64<true, true>(t, x, weight, N, OC, C, m0, j0);
#pragma unroll
    for (int i = 0; i < 4; i++) {
        int g = threadIdx.x + i * 128;
        int r = g / 8, c = (g % 8) * 8;
        int n = m0 + r, oc = j0 + c;
        if (n < N && oc < OC) {
            float v[8];
            read_tile_row8(t, r, c, v);
            if (has_bias) {
                bf16x8 b = load_bf16x8(&bias[oc]);
#pragma unroll
                for (int q = 0; q < 8; q++) {
                    v[q] += to_float(b.v[q]);
                }
            }
            bf16x8 o;
#pragma unroll
            for (int q = 0; q < 8; q++) {
                o.v[q] = to_bf16(v[q]);
            }
            store_bf16x8(&out[n * OC + oc], o);
        }
    }
}

// dx (bf16) += dout @ weight: A = dout (k = oc contiguous), B(c, oc) = weight[oc][c] (c-contiguous).
extern "C" __global__ void matmul_backward5_dx(__nv_bfloat16* dx, const __nv_bfloat16* dout,
                                               const __nv_bfloat16* weight, int N, int C, int OC) {
    __shared__ WmmaTiles t;
    int m0 = blockIdx.y * WM, j0 = blockIdx.x * WM;
    wmma_block_64x64<true, false>(t, dout, weight, N, C, OC, m0, j0);
#pragma unroll
    for (int i = 0; i < 4; i++) {
        int g = threadIdx.x + i * 128;
        int r = g / 8, c = (g % 8) * 8;
        int n = m0 + r, col = j0 + c;
        if (n < N && col < C) {
            float v[8];
            read_tile_row8(t, r, c, v);
            bf16x8 d = load_bf16x8(&dx[n * C + col]);
#pragma unroll
            for (int q = 0; q < 8; q++) {
                d.v[q] = to_bf16(to_float(d.v[q]) + v[q]);  // the old value in float, rounded once
            }
            store_bf16x8(&dx[n * C + col], d);
        }
    }
}

// dweight (float32) += dout^T @ x: A(oc, n) = dout[n][oc], B(c, n) = x[n][c] (both r-contiguous).
extern "C" __global__ void matmul_backward5_dweight(float* dweight, const __nv_bfloat16* dout,
                                                    const __nv_bfloat16* x, int N, int C, int OC) {
    __shared__ WmmaTiles t;
    int m0 = blockIdx.y * WM, j0 = blockIdx.x * WM;
    wmma_block_64x64<false, false>(t, dout, x, OC, C, N, m0, j0);
#pragma unroll
    for (int i = 0; i < 4; i++) {
        int g = threadIdx.x + i * 128;
        int r = g / 8, c = (g % 8) * 8;
        int oc = m0 + r, col = j0 + c;
        if (oc < OC && col < C) {
            float v[8];
            read_tile_row8(t, r, c, v);
            float4* p = reinterpret_cast<float4*>(&dweight[oc * C + col]);
            float4 lo = p[0], hi = p[1];
            p[0] = make_float4(lo.x + v[0], lo.y + v[1], lo.z + v[2], lo.w + v[3]);
            p[1] = make_float4(hi.x + v[4], hi.y + v[5], hi.z + v[6], hi.w + v[7]);
        }
    }
}
