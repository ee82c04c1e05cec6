// The warp matrix functions (<mma.h>, namespace nvcuda::wmma), as CUDA's programming guide defines
// them, on both backends: the CPU backend's <mma.h> and NVIDIA's (tests/test_wmma.py compiles this
// file with NVRTC for sm_80 and sm_90 too). __nv_bfloat16 tiles are sm_80's: the kernels that use them
// are compiled from sm_80 on (the CuPy stand-in's T4, sm_75, runs the __half ones).
#include <mma.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>

using namespace nvcuda;

// ------------------------------------------------------------------------------------------------
// One 16x16x16 tile: d = a * b + c, each operand at its own offset and ldm, in either layout.
// layouts: bit 0 a col-major, bit 1 b col-major, bit 2 c col-major, bit 3 d col-major.
// ------------------------------------------------------------------------------------------------
template <class T, class LA, class LB, class TC, class TD>
__device__ void tile(const T* a, int lda, const T* b, int ldb, const TC* c, int ldc, TD* d, int ldd, int layouts) {
    wmma::fragment<wmma::matrix_a, 16, 16, 16, T, LA> fa;
    wmma::fragment<wmma::matrix_b, 16, 16, 16, T, LB> fb;
    wmma::fragment<wmma::accumulator, 16, 16, 16, TC> fc;
    wmma::fragment<wmma::accumulator, 16, 16, 16, TD> fd;
    wmma::load_matrix_sync(fa, a, lda);
    wmma::load_matrix_sync(fb, b, ldb);
    wmma::load_matrix_sync(fc, c, ldc, (layouts & 4) ? wmma::mem_col_major : wmma::mem_row_major);
    wmma::mma_sync(fd, fa, fb, fc);
    wmma::store_matrix_sync(d, fd, ldd, (layouts & 8) ? wmma::mem_col_major : wmma::mem_row_major);
}

template <class T, class TC, class TD>
__device__ void tile_in_layouts(const T* a, int a_off, int lda, const T* b, int b_off, int ldb, const TC* c, int c_off,
                                int ldc, TD* d, int d_off, int ldd, int layouts) {
    a += a_off;
    b += b_off;
    c += c_off;
    d += d_off;
    switch (layouts & 3) {   // (the same for the whole warp, as CUDA requires around these calls)
        case 0: tile<T, wmma::row_major, wmma::row_major, TC, TD>(a, lda, b, ldb, c, ldc, d, ldd, layouts); break;
        case 1: tile<T, wmma::col_major, wmma::row_major, TC, TD>(a, lda, b, ldb, c, ldc, d, ldd, layouts); break;
        case 2: tile<T, wmma::row_major, wmma::col_major, TC, TD>(a, lda, b, ldb, c, ldc, d, ldd, layouts); break;
        default: tile<T, wmma::col_major, wmma::col_major, TC, TD>(a, lda, b, ldb, c, ldc, d, ldd, layouts); break;
    }
}

// __half inputs with every accumulator combination NVIDIA's header has, and __nv_bfloat16 (float only)
extern "C" __global__ void tile_half_f32(const __half* a, int a_off, int lda, const __half* b, int b_off, int ldb,
    const float* c, int c_off, int ldc, float* d, int d_off, int ldd, int layouts) {
    tile_in_layouts(a, a_off, lda, b, b_off, ldb, c, c_off, ldc, d, d_off, ldd, layouts);
}
extern "C" __global__ void tile_half_f16(const __half* a, int a_off, int lda, const __half* b, int b_off, int ldb,
    const __half* c, int c_off, int ldc, __half* d, int d_off, int ldd, int layouts) {
    tile_in_layouts(a, a_off, lda, b, b_off, ldb, c, c_off, ldc, d, d_off, ldd, layouts);
}
extern "C" __global__ void tile_half_f32_to_f16(const __half* a, int a_off, int lda, const __half* b, int b_off, int ldb,
    const float* c, int c_off, int ldc, __half* d, int d_off, int ldd, int layouts) {
    tile_in_layouts(a, a_off, lda, b, b_off, ldb, c, c_off, ldc, d, d_off, ldd, layouts);
}
extern "C" __global__ void tile_half_f16_to_f32(const __half* a, int a_off, int lda, const __half* b, int b_off, int ldb,
    const __half* c, int c_off, int ldc, float* d, int d_off, int ldd, int layouts) {
    tile_in_layouts(a, a_off, lda, b, b_off, ldb, c, c_off, ldc, d, d_off, ldd, layouts);
}
#if __CUDA_ARCH__ >= 800
extern "C" __global__ void tile_bf16(const __nv_bfloat16* a, int a_off, int lda, const __nv_bfloat16* b, int b_off, int ldb,
    const float* c, int c_off, int ldc, float* d, int d_off, int ldd, int layouts) {
    tile_in_layouts(a, a_off, lda, b, b_off, ldb, c, c_off, ldc, d, d_off, ldd, layouts);
}
#endif

// ------------------------------------------------------------------------------------------------
// The other two shapes, m32n8k16 and m8n32k16: d = a * b + 0.5, a row-major (M x K), b col-major,
// d row-major.
// ------------------------------------------------------------------------------------------------
template <int M, int N, int K, class T>
__device__ void shape(const T* a, const T* b, float* d) {
    wmma::fragment<wmma::matrix_a, M, N, K, T, wmma::row_major> fa;
    wmma::fragment<wmma::matrix_b, M, N, K, T, wmma::col_major> fb;
    wmma::fragment<wmma::accumulator, M, N, K, float> acc;
    wmma::fill_fragment(acc, 0.5f);
    wmma::load_matrix_sync(fa, a, K);
    wmma::load_matrix_sync(fb, b, K);
    wmma::mma_sync(acc, fa, fb, acc);
    wmma::store_matrix_sync(d, acc, N, wmma::mem_row_major);
}

extern "C" __global__ void shapes_half(const __half* a32, const __half* b8, float* d32x8, const __half* a8,
                                       const __half* b32, float* d8x32) {
    shape<32, 8, 16>(a32, b8, d32x8);
    shape<8, 32, 16>(a8, b32, d8x32);
}

#if __CUDA_ARCH__ >= 800
extern "C" __global__ void shapes_bf16(const __nv_bfloat16* a32, const __nv_bfloat16* b8, float* d32x8,
                                       const __nv_bfloat16* a8, const __nv_bfloat16* b32, float* d8x32) {
    shape<32, 8, 16>(a32, b8, d32x8);
    shape<8, 32, 16>(a8, b32, d8x32);
}

// ------------------------------------------------------------------------------------------------
// A tiled matmul from fragments, as the programming guide's example: out = alpha * x @ w^T + beta * c,
// x (M, K) and w (N, K) row-major (w^T is a col-major matrix_b with ldm K), c and out (M, N) row-major;
// M, N and K multiples of 16. One warp per 16x16 tile of out; the scaling is elementwise on x[].
// ------------------------------------------------------------------------------------------------
extern "C" __global__ void matmul_bf16(const __nv_bfloat16* x, const __nv_bfloat16* w, const float* c, float* out,
                                       int M, int N, int K, float alpha, float beta) {
    int warp = (blockIdx.x * blockDim.x + threadIdx.x) / 32;
    int tm = warp / (N / 16), tn = warp % (N / 16);
    if (tm * 16 >= M) return;   // whole warps: the condition is the same for all 32 lanes
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
    wmma::fill_fragment(acc, 0.0f);
    for (int k = 0; k < K; k += 16) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> fa;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> fb;
        wmma::load_matrix_sync(fa, x + tm * 16 * K + k, K);
        wmma::load_matrix_sync(fb, w + tn * 16 * K + k, K);
        wmma::mma_sync(acc, fa, fb, acc);
    }
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> fc;
    wmma::load_matrix_sync(fc, c + tm * 16 * N + tn * 16, N, wmma::mem_row_major);
    for (int i = 0; i < acc.num_elements; i++) acc.x[i] = alpha * acc.x[i] + beta * fc.x[i];
    wmma::store_matrix_sync(out + tm * 16 * N + tn * 16, acc, N, wmma::mem_row_major);
}
#endif

// ------------------------------------------------------------------------------------------------
// A tiled matmul through shared memory, any M, N, K: out (M, N) float = x (M, K) @ w (K, N), __half,
// row-major. A block of 4 warps computes a 32x32 tile of out: each k-step stages 32x16 of x and 16x32
// of w (zero-padded) in shared memory, each warp multiplies its 16x16 part; the result goes through
// shared memory so that only the elements inside out are written. (-DWMMA_MISSING_SYNC leaves out the
// barrier between the staging and the loads: a race racecheck must find.)
// ------------------------------------------------------------------------------------------------
extern "C" __global__ void matmul_half_shared(const __half* x, const __half* w, float* out, int M, int N, int K) {
    __shared__ __align__(32) __half xs[32 * 16];
    __shared__ __align__(32) __half ws[16 * 32];
    __shared__ __align__(32) float os[32 * 32];
    int warp = threadIdx.x / 32, wm = warp / 2, wn = warp % 2;
    int row0 = blockIdx.y * 32, col0 = blockIdx.x * 32;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
    wmma::fill_fragment(acc, 0.0f);
    for (int k = 0; k < K; k += 16) {
        for (int i = threadIdx.x; i < 32 * 16; i += blockDim.x) {
            int r = i / 16, cx = i % 16, rw = i / 32, cw = i % 32;
            xs[i] = (row0 + r < M && k + cx < K) ? x[(row0 + r) * K + k + cx] : __float2half(0.0f);
            ws[i] = (k + rw < K && col0 + cw < N) ? w[(k + rw) * N + col0 + cw] : __float2half(0.0f);
        }
#ifndef WMMA_MISSING_SYNC
        __syncthreads();
#endif
        wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> fa;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::row_major> fb;
        wmma::load_matrix_sync(fa, xs + wm * 16 * 16, 16);
        wmma::load_matrix_sync(fb, ws + wn * 16, 32);
        wmma::mma_sync(acc, fa, fb, acc);
        __syncthreads();
    }
    wmma::store_matrix_sync(os + wm * 16 * 32 + wn * 16, acc, 32, wmma::mem_row_major);
    __syncthreads();
    for (int i = threadIdx.x; i < 32 * 32; i += blockDim.x) {
        int r = i / 32, cc = i % 32;
        if (row0 + r < M && col0 + cc < N) out[(row0 + r) * N + col0 + cc] = os[i];
    }
}

// ------------------------------------------------------------------------------------------------
// Elementwise operations on x[]: d = relu(a * b) * scale with an accumulator of __half, and the
// fragments' sizes (num_elements of each kind, written by lane 0).
// ------------------------------------------------------------------------------------------------
extern "C" __global__ void relu_scaled(const __half* a, const __half* b, __half* d, float scale, int* sizes) {
    wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> fa;
    wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::row_major> fb;
    wmma::fragment<wmma::accumulator, 16, 16, 16, __half> acc;
    wmma::fill_fragment(acc, __float2half(0.0f));
    wmma::load_matrix_sync(fa, a, 16);
    wmma::load_matrix_sync(fb, b, 16);
    wmma::mma_sync(acc, fa, fb, acc);
    for (int i = 0; i < acc.num_elements; i++)
        acc.x[i] = __hmul(__hmax(acc.x[i], __float2half(0.0f)), __float2half(scale));
    wmma::store_matrix_sync(d, acc, 16, wmma::mem_col_major);
    if (threadIdx.x == 0) {
        sizes[0] = fa.num_elements;
        sizes[1] = fb.num_elements;
        sizes[2] = acc.num_elements;
    }
}

// ------------------------------------------------------------------------------------------------
// Misuse, which a GPU hides (a hang, garbage, or a result that depends on the element mapping): the
// CPU backend reports each. (On a GPU their results are undefined.)
// ------------------------------------------------------------------------------------------------
// A tile at any offset and ldm: a misaligned pointer or a bad ldm.
extern "C" __global__ void load_at(const __half* a, int a_off, int lda, float* d, int ldd) {
    wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> fa;
    wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::col_major> fb;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
    wmma::fill_fragment(acc, 0.0f);
    wmma::load_matrix_sync(fa, a + a_off, lda);
    wmma::load_matrix_sync(fb, a + a_off, lda);
    wmma::mma_sync(acc, fa, fb, acc);
    wmma::store_matrix_sync(d, acc, ldd, wmma::mem_row_major);
}

// Lane `skipper` does not call mma_sync: it returns (then = 0) or goes on to store_matrix_sync (then = 1).
extern "C" __global__ void lane_skips_mma(const __half* a, float* d, int skipper, int then) {
    wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> fa;
    wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::col_major> fb;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
    wmma::fill_fragment(acc, 0.0f);
    wmma::load_matrix_sync(fa, a, 16);
    wmma::load_matrix_sync(fb, a, 16);
    if ((int)(threadIdx.x % 32) == skipper) {
        if (then == 0) return;
    } else {
        wmma::mma_sync(acc, fa, fb, acc);   // the call lane `skipper` skips
    }
    wmma::store_matrix_sync(d, acc, 16, wmma::mem_row_major);
}

// Lane-dependent arguments: each half of the warp loads another tile (what = 0), or fills another value (1).
extern "C" __global__ void lane_dependent(const __half* a, float* d, int what) {
    wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> fa;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
    int half_warp = (threadIdx.x % 32) / 16;
    if (what == 0) wmma::load_matrix_sync(fa, a + half_warp * 256, 16);
    else wmma::fill_fragment(acc, (float)half_warp);
    wmma::fill_fragment(acc, 1.0f);
    wmma::store_matrix_sync(d, acc, 16, wmma::mem_row_major);
}

// Accumulators used before anything set them (no fill_fragment): NaN on the CPU backend. (The second is
// value-initialized, which zeroes NVIDIA's aggregate fragments: NaN on the CPU backend too, which cannot
// tell the two apart.)
extern "C" __global__ void unset_accumulator(float* d, float* d_braces) {
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> braces{};
    wmma::store_matrix_sync(d, acc, 16, wmma::mem_row_major);
    wmma::store_matrix_sync(d_braces, braces, 16, wmma::mem_row_major);
}
