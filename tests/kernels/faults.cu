// Deliberately faulty kernels: each one shows a bug class that the CPU backend turns into a clear
// Python error (tests/test_cpu_backend.py). They are valid CUDA: tests/test_nvrtc.py compiles them.

extern "C" __global__ void write_past_end(float* out, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    out[i] = 1.0f;  // no `if (i < n)`: the last block writes past the end
}

extern "C" __global__ void read_past_end(const float* in, float* out, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = in[i + 1];  // the last thread reads one element too far
}

extern "C" __global__ void read_before_start(const float* in, float* out, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = in[i - 2048];
}

extern "C" __global__ void huge_local_array(float* out, int n) {
    float scratch[200000];  // 800 KB of locals: more than a thread's stack
    for (int k = 0; k < 200000; k++) scratch[k] = out[0] + k;
    out[threadIdx.x] = scratch[n];
}

extern "C" __global__ void early_return_before_barrier(const float* in, float* out, int n) {
    __shared__ float buf[64];
    if (threadIdx.x >= n) return;  // these threads never reach the barrier below
    buf[threadIdx.x] = in[threadIdx.x];
    __syncthreads();
    out[threadIdx.x] = buf[(threadIdx.x + 1) % n];
}

extern "C" __global__ void barriers_in_branches(float* out) {
    if (threadIdx.x % 2 == 0) {
        __syncthreads();
    } else {
        __syncthreads();
    }
    out[threadIdx.x] = 1.0f;
}

extern "C" __global__ void shuffle_with_exited_lane(const float* in, float* out) {
    if (threadIdx.x == 5) return;
    float v = __shfl_xor_sync(0xffffffff, in[threadIdx.x], 1);
    out[threadIdx.x] = v;
}

extern "C" __global__ void spin_forever(float* flag) {
    int n = 0;
    while (flag[0] == 0.0f) { flag[1] = (float)++n; }  // the store keeps the loop (an empty one may be removed)
}

extern "C" __global__ void missing_syncthreads(const float* in, float* out) {
    __shared__ float buf[64];
    buf[threadIdx.x] = in[threadIdx.x];
    // missing __syncthreads(): the read below may see a neighbour's slot before it is written
    out[threadIdx.x] = buf[(threadIdx.x + 1) % 64];
}

extern "C" __global__ void warp_race(const float* in, float* out) {
    __shared__ float buf[32];
    buf[threadIdx.x] = in[threadIdx.x];
    // legacy "warp-synchronous" code: without __syncwarp() this is a race under Volta+ rules
    out[threadIdx.x] = buf[31 - threadIdx.x];
}

extern "C" __global__ void warp_race_fixed(const float* in, float* out) {
    __shared__ float buf[32];
    buf[threadIdx.x] = in[threadIdx.x];
    __syncwarp();
    out[threadIdx.x] = buf[31 - threadIdx.x];
}

// A block sum whose result is read by every thread, without the barrier that keeps the next call
// from overwriting warp_sums while slower warps still read it.
__device__ float block_sum_missing_second_barrier(float v, float* warp_sums) {
    for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffff, v, offset);
    if (threadIdx.x % 32 == 0) warp_sums[threadIdx.x / 32] = v;
    __syncthreads();
    float total = 0.0f;
    for (int w = 0; w < (int)blockDim.x / 32; w++) total += warp_sums[w];
    return total;  // missing __syncthreads() here
}

extern "C" __global__ void warp_runs_ahead(const float* x, float* out) {
    __shared__ float warp_sums[32];
    float a = block_sum_missing_second_barrier(x[threadIdx.x], warp_sums);
    float b = block_sum_missing_second_barrier(2.0f * x[threadIdx.x], warp_sums);
    out[threadIdx.x] = a + 10.0f * b;
}

extern "C" __global__ void divide_by_zero(const int* in, int* out) {
    out[threadIdx.x] = 100 / in[threadIdx.x];
}

extern "C" __global__ void null_pointer(float* out) {
    float* p = 0;
    out[threadIdx.x] = p[threadIdx.x + 8];
}

extern "C" __global__ void dynamic_shared_overrun(float* out, int k) {
    extern __shared__ float buf[];
    buf[threadIdx.x * k] = 1.0f;  // k large: far past the dynamic shared memory asked for
    out[threadIdx.x] = 0.0f;
}

// 40 KiB of static shared memory is fine alone, but not with 16 KiB of dynamic shared memory on top.
extern "C" __global__ void too_much_shared(float* out) {
    __shared__ float a[10240];
    extern __shared__ float b[];
    a[threadIdx.x] = 1.0f;
    b[threadIdx.x] = 2.0f;
    __syncthreads();
    out[threadIdx.x] = a[threadIdx.x] + b[threadIdx.x];
}

extern "C" __global__ void all_params(const float* f, const double* d, const int* i, unsigned int* u,
                                      long long ll, unsigned long long ull, float x, double y, int k,
                                      unsigned int uk, bool flag, void* anything) {
}
