// The cost of the CPU backend's thread switch: each __syncthreads() parks every thread of the
// block once, so a launch makes (barriers + 1) * threads switches and almost no other work.
extern "C" __global__ void barriers_only(float* out, int barriers) {
    for (int i = 0; i < barriers; i++) __syncthreads();
    if (threadIdx.x == 0) out[blockIdx.x] = (float)barriers;
}
