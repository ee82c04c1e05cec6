// 02_layernorm_welford.cu: the reference solution of notebook 02's exercise.
//
// layernorm_forward_welford is layernorm_forward2 (one warp per row, launched the same way) with
// the mean and the variance computed in ONE pass over the row, by Welford's algorithm, instead of
// a pass for the mean and a second pass for the variance: the row is read twice (statistics, then
// output) instead of three times.
//
// Each lane keeps, for the elements it has seen: their count n, their mean, and m2, the sum of
// squared deviations from that mean. Adding an element x:
//     n += 1;  d = x - mean;  mean += d / n;  m2 += d * (x - mean)
// which never subtracts two large nearly-equal sums (unlike sum(x^2)/n - mean^2). Two lanes' stats
// (a and b) combine exactly (Chan et al.):
//     n = na + nb;   mean = (na*mean_a + nb*mean_b) / n;   m2 = m2_a + m2_b + d*d * na*nb/n,  d = mean_b - mean_a
// The butterfly of __shfl_xor_sync combines lane k with lane k^offset on BOTH lanes; the formula
// above is symmetric in a and b (the same bits whichever is "a"), so after the 5 steps all 32 lanes
// hold identical statistics, as with the plain sums of version 2.

__device__ void welford_combine(float& n, float& mean, float& m2, float n_b, float mean_b, float m2_b) {
    float n_ab = n + n_b;
    if (n_ab == 0.0f) {
        return;  // both empty (C < 32: some lanes saw no element)
    }
    float d = mean_b - mean;
    float mean_ab = (n * mean + n_b * mean_b) / n_ab;
    m2 = (m2 + m2_b) + d * d * (n * n_b / n_ab);
    mean = mean_ab;
    n = n_ab;
}

extern "C" __global__ void layernorm_forward_welford(float* out, float* mean, float* rstd, const float* inp,
                                                     const float* weight, const float* bias, int N, int C,
                                                     float eps) {
    int lane = threadIdx.x % 32;
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (row >= N) {
        return;  // the whole warp: no lane of a shuffle below is missing
    }
    const float* x = inp + (size_t)row * C;
    float* y = out + (size_t)row * C;

    float n = 0.0f, m = 0.0f, m2 = 0.0f;
    for (int c = lane; c < C; c += 32) {
        float v = x[c];
        n += 1.0f;
        float d = v - m;
        m += d / n;
        m2 += d * (v - m);
    }
    for (int offset = 16; offset > 0; offset /= 2) {
        float n_b = __shfl_xor_sync(0xffffffff, n, offset);
        float mean_b = __shfl_xor_sync(0xffffffff, m, offset);
        float m2_b = __shfl_xor_sync(0xffffffff, m2, offset);
        welford_combine(n, m, m2, n_b, mean_b, m2_b);
    }
    float s = rsqrtf(m2 / C + eps);

    for (int c = lane; c < C; c += 32) {
        y[c] = (x[c] - m) * s * weight[c] + bias[c];
    }
    if (lane == 0) {
        mean[row] = m;
        rstd[row] = s;
    }
}
