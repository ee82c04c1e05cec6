// vector_add.cu: the first kernels of the curriculum (notebooks/00_first_kernels.ipynb).
//
// What this file teaches: how a thread finds "its" element. A launch starts a grid of blocks,
// each block a group of threads; every thread runs the same function, and the only thing that
// tells threads apart is their coordinates: blockIdx (which block), threadIdx (which thread in
// the block) and blockDim (how many threads a block has). One element per thread is the classic
// mapping:
//
//     element i = blockIdx.x * blockDim.x + threadIdx.x
//
// The grid is rounded up to whole blocks, so the last block usually has threads with no element:
// they must do nothing, hence `if (i < n)`.
//
// fill_thread_ids: writes, for every element, the block and the thread that handled it (the
//                  picture of the indexing in the notebook is drawn from its output).
// vector_add:      out[i] = a[i] + b[i], the "hello world" of CUDA.

// Records who handled element i: block_of[i] = blockIdx.x, thread_of[i] = threadIdx.x.
extern "C" __global__ void fill_thread_ids(int* block_of, int* thread_of, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {  // the idle threads of the last block write nothing
        block_of[i] = blockIdx.x;
        thread_of[i] = threadIdx.x;
    }
}

// out[i] = a[i] + b[i] for i < n; one thread per element.
extern "C" __global__ void vector_add(const float* a, const float* b, float* out, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {  // without this, the threads past the end would read and write beyond the arrays
        out[i] = a[i] + b[i];
    }
}
