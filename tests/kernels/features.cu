// Kernels that exercise each CUDA feature the CPU backend supports (tests/test_cpu_backend.py).
// They are real CUDA: tests/test_nvrtc.py compiles them with NVRTC for sm_80 and sm_90 too.
// name_expressions: scale_template<float>, scale_template<int>, block_sum_template<float, 64>

// 3D grid and block: every thread writes its own coordinates, so the test can check all of them.
extern "C" __global__ void coordinates(int* out, int total) {
    int tx = threadIdx.x, ty = threadIdx.y, tz = threadIdx.z;
    int bx = blockIdx.x, by = blockIdx.y, bz = blockIdx.z;
    int thread_in_block = tx + blockDim.x * (ty + blockDim.y * tz);
    int block_linear = bx + gridDim.x * (by + gridDim.y * bz);
    int threads_per_block = blockDim.x * blockDim.y * blockDim.z;
    int i = block_linear * threads_per_block + thread_in_block;
    if (i < total) {
        out[i * 8 + 0] = tx; out[i * 8 + 1] = ty; out[i * 8 + 2] = tz;
        out[i * 8 + 3] = bx; out[i * 8 + 4] = by; out[i * 8 + 5] = bz;
        out[i * 8 + 6] = blockDim.x * 10000 + blockDim.y * 100 + blockDim.z;
        out[i * 8 + 7] = gridDim.x * 10000 + gridDim.y * 100 + gridDim.z;
    }
}

// Static shared memory (2-D array and a scalar) and __syncthreads: reverse each block's slice.
extern "C" __global__ void reverse_in_block(const float* in, float* out, int n) {
    __shared__ float tile[2][128];
    __shared__ int count;
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (threadIdx.x == 0) count = 0;
    tile[1][threadIdx.x] = i < n ? in[i] : -1.0f;
    __syncthreads();
    atomicAdd(&count, 1);
    int j = blockIdx.x * blockDim.x + (blockDim.x - 1 - threadIdx.x);
    if (j < n) out[j] = tile[1][threadIdx.x];
    __syncthreads();
    if (threadIdx.x == 0 && count != (int)blockDim.x) out[0] = -12345.0f;
}

// Dynamic shared memory sized at launch: block-wide tree sum.
extern "C" __global__ void block_sum_dynamic(const float* in, float* out, int n) {
    extern __shared__ float buf[];
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    buf[threadIdx.x] = i < n ? in[i] : 0.0f;
    __syncthreads();
    for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
        if (threadIdx.x < stride) buf[threadIdx.x] += buf[threadIdx.x + stride];
        __syncthreads();
    }
    if (threadIdx.x == 0) out[blockIdx.x] = buf[0];
}

// Reads shared memory nobody wrote: the CPU backend poisons it, so this returns NaN there.
extern "C" __global__ void read_uninitialised_shared(float* out) {
    __shared__ float never_written[32];
    out[threadIdx.x] = never_written[threadIdx.x];
}

// Warp shuffles with widths: out has 6 values per thread.
extern "C" __global__ void shuffles(const float* in, float* out, int width) {
    int t = threadIdx.x;
    float v = in[t];
    out[t * 6 + 0] = __shfl_sync(0xffffffff, v, 3, width);
    out[t * 6 + 1] = __shfl_xor_sync(0xffffffff, v, 1, width);
    out[t * 6 + 2] = __shfl_down_sync(0xffffffff, v, 2, width);
    out[t * 6 + 3] = __shfl_up_sync(0xffffffff, v, 2, width);
    __syncwarp();
    float s = v;
    for (int offset = 16; offset > 0; offset /= 2) s += __shfl_xor_sync(0xffffffff, s, offset);
    out[t * 6 + 4] = s;
    int lane_value = __shfl_sync(0xffffffff, t * 7, 31 - (t % 32));
    out[t * 6 + 5] = (float)lane_value;
}

// Votes: ballot, any, all over a predicate given per thread.
extern "C" __global__ void votes(const int* pred, unsigned int* ballot, int* any, int* all) {
    int t = threadIdx.x;
    unsigned int b = __ballot_sync(0xffffffff, pred[t]);
    int a = __any_sync(0xffffffff, pred[t]);
    int l = __all_sync(0xffffffff, pred[t]);
    if (t % 32 == 0) { ballot[t / 32] = b; any[t / 32] = a; all[t / 32] = l; }
}

// Atomics on float and int from many blocks at once.
extern "C" __global__ void atomics(const float* x, const int* k, float* fsum, int* isum, int* imax,
                                   unsigned int* umax, int* cas_count, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    atomicAdd(fsum, x[i]);
    atomicAdd(isum, k[i]);
    atomicMax(imax, k[i]);
    atomicMax(umax, (unsigned int)k[i]);
    // atomicCAS as a lock-free increment: retry until our compare-and-swap wins
    int old = *cas_count, assumed;
    do {
        assumed = old;
        old = atomicCAS(cas_count, assumed, assumed + 1);
    } while (old != assumed);
}

// float atomicMax through atomicCAS on the bits (the classic idiom: CUDA has no float atomicMax).
extern "C" __global__ void atomic_max_float(const float* x, float* result, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    unsigned int* bits = (unsigned int*)result;
    unsigned int old = *bits, assumed;
    do {
        assumed = old;
        if (__uint_as_float(assumed) >= x[i]) break;
        old = atomicCAS(bits, assumed, __float_as_uint(x[i]));
    } while (old != assumed);
}

// float2 / float4 loads and make_*.
extern "C" __global__ void vector_types(const float4* in4, const float2* in2, float4* out4, float2* out2, int n4) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n4) {
        float4 v = in4[i];
        out4[i] = make_float4(v.w, v.z, v.y, v.x);
        float2 u = in2[i];
        out2[i] = make_float2(u.x + u.y, u.x - u.y);
    }
}

// Math functions and intrinsics: 12 results per input.
__device__ __forceinline__ float gelu_tanh(float x) {
    const float k = 0.7978845608028654f;  // sqrt(2/pi), spelled out: NVRTC has no M_PI
    return 0.5f * x * (1.0f + tanhf(k * (x + 0.044715f * x * x * x)));
}
extern "C" __global__ void __launch_bounds__(128) math_functions(const float* __restrict__ x,
                                                                  float* __restrict__ out, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float v = x[i];
    float* o = out + i * 12;
    o[0] = expf(v); o[1] = __expf(v); o[2] = logf(fabsf(v) + 1.0f); o[3] = rsqrtf(fabsf(v) + 1.0f);
    o[4] = sqrtf(fabsf(v)); o[5] = tanhf(v); o[6] = erff(v); o[7] = fmaxf(v, 0.25f);
    o[8] = __fdividef(v, 3.0f); o[9] = fminf(v, -0.25f); o[10] = powf(fabsf(v), 1.5f); o[11] = gelu_tanh(v);
}

// Templates, instantiated through name_expressions.
template <typename T>
__global__ void scale_template(T* x, T factor, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] = x[i] * factor;
}

template <typename T, int BLOCK>
__global__ void block_sum_template(const T* in, T* out, int n) {
    __shared__ T buf[BLOCK];
    int i = blockIdx.x * BLOCK + threadIdx.x;
    buf[threadIdx.x] = i < n ? in[i] : T(0);
    __syncthreads();
    for (int stride = BLOCK / 2; stride > 0; stride /= 2) {
        if (threadIdx.x < stride) buf[threadIdx.x] += buf[threadIdx.x + stride];
        __syncthreads();
    }
    if (threadIdx.x == 0) out[blockIdx.x] = buf[0];
}

// __launch_bounds__ before the name, and a barrier: still found and run with fibers.
extern "C" __global__ void __launch_bounds__(64) bounded_block_sum(const float* in, float* out) {
    __shared__ float buf[64];
    buf[threadIdx.x] = in[threadIdx.x];
    __syncthreads();
    if (threadIdx.x == 0) {
        float s = 0.0f;
        for (int i = 0; i < 64; i++) s += buf[i];
        out[0] = s;
    }
}

// printf from the kernel: the CPU backend prints it in the calling cell, in block order.
extern "C" __global__ void hello(int n) {
    if (threadIdx.x == 0) printf("hello from block %d of %d (n=%d)\n", blockIdx.x, gridDim.x, n);
}

// __syncthreads_count and friends.
extern "C" __global__ void barrier_votes(const int* pred, int* out) {
    int p = pred[threadIdx.x];
    int c = __syncthreads_count(p);
    int a = __syncthreads_and(p);
    int o = __syncthreads_or(p);
    if (threadIdx.x == 0) { out[0] = c; out[1] = a; out[2] = o; }
}
