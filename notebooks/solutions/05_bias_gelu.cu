// Solution of the exercise in notebooks/05_gelu_residual.ipynb: the bias add fused into GELU.
//
// In GPT-2's MLP the GELU input is the fc layer's matmul output plus its bias. As two kernels,
// h = pre + bias makes a round trip through memory: the bias add reads pre and writes h, GELU reads
// h and writes out, 16 bytes per element. Fused, each element is read once and written once: 8 bytes,
// half the traffic of a memory-bound pair of kernels. (llm.c does this fusion on the GPU in cuBLASLt's
// matmul epilogue, CUBLASLT_EPILOGUE_GELU_BIAS.) The bias has OC elements, one per channel, and
// element i of the flattened (B, T, OC) array belongs to channel i % OC. Every row reads the same
// 4*OC bytes of bias, which stay in cache, so they cost next to no bandwidth.

#define GELU_SCALING_FACTOR 0.7978845608028654f  // sqrt(2 / pi)

// out[i] = gelu(pre[i] + bias[i % OC]) for i < n, n = B*T*OC; one element per thread.
extern "C" __global__ void bias_gelu_forward(float* out, const float* pre, const float* bias, int n, int OC) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        float x = pre[i] + bias[i % OC];
        float u = GELU_SCALING_FACTOR * (x + 0.044715f * x * x * x);
        out[i] = 0.5f * x * (1.0f + tanhf(u));
    }
}
