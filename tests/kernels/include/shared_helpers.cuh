// A local header in llm.c's common.h style: a type alias, a macro, a __device__ function with its own
// __shared__ array, and a template (tests/kernels/headers_and_signatures.cu includes it).
#pragma once

typedef float floatX;            // the element type, as llm.c's floatX
using index_t = int;
#define TILE 32
#define THREADS_PER_BLOCK (TILE * 4)

// The sum of v over the block (blockDim.x == THREADS_PER_BLOCK), through shared memory declared here.
__device__ inline float block_total(float v) {
    __shared__ float partial[THREADS_PER_BLOCK / 32];
    for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
    if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = v;
    __syncthreads();
    float total = 0.0f;
    for (int w = 0; w < THREADS_PER_BLOCK / 32; w++) total += partial[w];
    __syncthreads();
    return total;
}

template <typename T>
__device__ inline T twice(T x) { return x + x; }

// A typed view of the block's dynamic shared memory, the way NVIDIA's samples write it (an `extern
// __shared__` array declared inside a member function of a header's template).
template <class T>
struct SharedMemory {
    __device__ inline operator T*() {
        extern __shared__ int shared_words[];
        return (T*)shared_words;
    }
};
