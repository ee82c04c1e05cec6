// Kernels that lean on a local header and on C++ in their signatures, as real CUDA code does:
// typedef'd and `using` types, __launch_bounds__ with constant expressions (before or after `void`),
// and a __shared__ array declared inside the header's __device__ function.
#include "include/shared_helpers.cuh"

// name_expressions: scale_template<float>, scale_template<int>

typedef unsigned int uint;

extern "C" __global__ void __launch_bounds__(THREADS_PER_BLOCK, 1) block_sums(const floatX* x, floatX* out,
                                                                                index_t n) {
    index_t i = blockIdx.x * blockDim.x + threadIdx.x;
    float total = block_total(i < n ? x[i] : 0.0f);
    if (threadIdx.x == 0) out[blockIdx.x] = total;
}

extern "C" __launch_bounds__((TILE * TILE) / (4 * 2)) __global__ void doubled(floatX* x, uint n) {
    uint i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] = twice(x[i]);
}

template <typename T>
__global__ void scale_template(T* x, T factor, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] = x[i] * factor;
}

// Each block reverses its part of x through the dynamic shared memory that SharedMemory<T> names.
extern "C" __global__ void reverse_blocks(const double* x, double* y, int n) {
    double* tile = SharedMemory<double>();
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    tile[threadIdx.x] = i < n ? x[i] : 0.0;
    __syncthreads();
    int j = blockIdx.x * blockDim.x + (blockDim.x - 1 - threadIdx.x);
    if (j < n) y[j] = tile[threadIdx.x];
}
