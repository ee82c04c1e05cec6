// broken_kernels.cu: kernels that are WRONG ON PURPOSE. Do not copy them.
//
// What this file teaches: bugs that a GPU hides. Both kernels below often give the right answer
// on a GPU, or a wrong one without any error, or corrupt memory that something else owns. The
// notebook 00_first_kernels.ipynb runs them to show what the tools of this curriculum catch:
//
// reduce_sum_missing_sync:    reduce_sum_shared (reduce_sum.cu) without the __syncthreads()
//                             inside the loop: a thread may read buf[tid + stride] before its
//                             owner has added into it. Whether it does depends on the order the
//                             threads happen to run in: a data race. device.racecheck finds it.
// vector_add_no_bounds_check: vector_add (vector_add.cu) without `if (i < n)`: the threads of the
//                             last block that have no element read and write past the end of the
//                             arrays. On the CPU backend, the guard page after each array turns that
//                             into a KernelError naming the array, the thread and the block.

// BUG: no barrier between the steps of the tree.
extern "C" __global__ void reduce_sum_missing_sync(const float* x, float* partial, int n) {
    extern __shared__ float buf[];
    int tid = threadIdx.x;
    int i = blockIdx.x * blockDim.x + tid;
    buf[tid] = (i < n) ? x[i] : 0.0f;
    __syncthreads();
    for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
        if (tid < stride) {
            buf[tid] += buf[tid + stride];  // may read a value its owner has not finished yet
        }
        // the missing line: __syncthreads();
    }
    if (tid == 0) {
        partial[blockIdx.x] = buf[0];
    }
}

// BUG: no bounds check; every thread of the grid touches an element, even past the end.
extern "C" __global__ void vector_add_no_bounds_check(const float* a, const float* b, float* out, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    out[i] = a[i] + b[i];
}
