// Kernels at the edges of what the CPU backend must get right (tests/test_cpu_backend_hazards.py):
// each is either run correctly or refused with a clear error, never answered wrongly. They are real
// CUDA: tests/test_nvrtc.py compiles them with NVRTC too.

// y = 2 x + 1 over a large array (launches that stage hundreds of MiB).
extern "C" __global__ void affine(const float* x, float* y, long long n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = 2.0f * x[i] + 1.0f;
}

// Each thread reads and writes only its own element, `offset` elements away from it (out of bounds
// unless offset is 0): an access far beyond the array.
extern "C" __global__ void access_at_offset(float* a, float* b, long long offset, int write) {
    if (threadIdx.x != 0 || blockIdx.x != 0) return;
    if (write) a[offset] = 1.0f;
    else b[0] = a[offset];
}

// A float parameter (for the launch checks of scalars).
extern "C" __global__ void scale_by_value(float* x, float k, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] *= k;
}

// Recursion: the depth is known only at run time, so no compiler can bound the stack.
__device__ int descend(int depth, volatile int* trail) {
    volatile int local[16];
    for (int k = 0; k < 16; k++) local[k] = depth + k;
    if (depth == 0) return local[0];
    int below = descend(depth - 1, trail);
    *trail = local[15];
    return below + local[depth % 16] - depth;
}
extern "C" __global__ void recurse(int* out, int depth) {
    volatile int trail = 0;
    int mine = (int)threadIdx.x * 1000;
    int r = descend(depth, &trail);
    __syncthreads();  // fibers: both threads' stacks are live at once
    out[threadIdx.x] = r + mine;
}

// Static __shared__ arrays indexed with a run-time index: in bounds (k < 64) or past the end.
extern "C" __global__ void static_shared_index(float* out, int k, int write) {
    __shared__ float first[64];
    __shared__ float second[64];
    if (threadIdx.x == 0) {
        for (int i = 0; i < 64; i++) { first[i] = (float)i; second[i] = 100.0f + i; }
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        if (write) first[k] = -1.0f;
        out[0] = first[k < 64 ? k : 0];
        out[1] = second[0];
        out[2] = write ? 0.0f : first[k];
    }
}

// Dynamic shared memory indexed past the size given at launch.
extern "C" __global__ void dynamic_shared_index(float* out, int k) {
    extern __shared__ float dyn[];
    dyn[threadIdx.x] = 1.0f;
    __syncthreads();
    if (threadIdx.x == 0) out[0] = dyn[k];
}

// A non-atomic read-modify-write of one address by every block: a race between blocks.
extern "C" __global__ void racy_counter(float* total) {
    if (threadIdx.x == 0) total[0] += 1.0f;
}
extern "C" __global__ void atomic_counter(float* total) {
    if (threadIdx.x == 0) atomicAdd(total, 1.0f);
}
// Block b reads what block b-1 writes: a dependence between blocks that CUDA does not order.
extern "C" __global__ void reads_neighbours_output(float* data, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n && blockIdx.x > 0) data[i] = data[i - blockDim.x] + 1.0f;
}
// Each block writes its own part only: no conflict.
extern "C" __global__ void disjoint_blocks(float* data, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) data[i] = 2.0f * i;
}

// A decoupled look-back: block b waits until block b-1 has published its flag. Correct on a GPU only
// if blocks are scheduled in order (which CUDA does not promise); one block at a time in reverse order
// can never finish.
extern "C" __global__ void look_back(volatile int* flags, int* out) {
    if (threadIdx.x == 0) {
        if (blockIdx.x > 0) {
            while (flags[blockIdx.x - 1] == 0) {}
        }
        out[blockIdx.x] = (int)blockIdx.x;
        __threadfence();
        flags[blockIdx.x] = 1;
    }
}

// float4 loads at an offset from the start of x (misaligned unless offset % 4 == 0).
extern "C" __global__ void load_float4_at(const float* x, float* out, int offset) {
    float4 v = *reinterpret_cast<const float4*>(x + offset);
    out[threadIdx.x] = v.x + v.y + v.z + v.w;
}
// A legal float4 load of the last whole group of four, from an array whose size need not be a
// multiple of 4 (cudaMalloc aligns every allocation to 256 bytes).
extern "C" __global__ void first_float4(const float* x, float* out) {
    float4 v = reinterpret_cast<const float4*>(x)[0];
    out[0] = v.x + v.y + v.z + v.w;
}
// Writes `count` floats from x[n] on: out of bounds past the end (any count > 0).
extern "C" __global__ void write_tail(float* x, int n, int count) {
    if (threadIdx.x < count) x[n + threadIdx.x] = 7.0f;
}

// A module global, kept between launches as on a GPU.
__device__ int launches_seen;
__device__ float scale_by = 3.0f;
extern "C" __global__ void count_launch(int* out) {
    atomicAdd(&launches_seen, 1);
    __syncthreads();
    if (threadIdx.x == 0) out[0] = launches_seen;
}
extern "C" __global__ void scale_with_global(float* x, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] *= scale_by;
}

// __activemask() inside a branch taken by lanes 0-4 only.
extern "C" __global__ void active_mask(unsigned int* out) {
    unsigned int m = 0xdeadbeef;
    if (threadIdx.x < 5) m = __activemask();
    __syncwarp();
    out[threadIdx.x] = m;
}

// assert() with a message the launch error must carry.
extern "C" __global__ void failing_assert(const int* x) {
    assert(x[threadIdx.x] >= 0 && "inputs are counts");
}

// printf of a line longer than a printf record holds.
extern "C" __global__ void long_printf(int n) {
    char line[2100];
    for (int i = 0; i < n; i++) line[i] = 'a' + i % 26;
    line[n] = 0;
    printf("%s|end\n", line);
}
