// Solution of the exercise in notebooks/04_attention.ipynb: a row softmax with an online maximum.
//
// One thread per row of x (rows, n). The first loop reads the row ONCE and keeps the running
// maximum m and the running sum l = sum of exp(x_i - m) over the elements seen so far: when an
// element raises the maximum, the sum so far was taken against the old maximum and is rescaled by
// exp(m_old - m_new). After the loop l is the softmax's denominator (against the row's maximum), and
// lse = m + log(l) = log(sum_i exp(x_i)). The second loop writes y_i = exp(x_i - m) / l.
// Two passes over the row instead of three (max, sum, normalise); attention_forward2 goes one
// step further and never needs the second pass, because it accumulates exp(s - m) v as it goes.

extern "C" __global__ void online_softmax(float* y, float* lse, const float* x, int rows, int n) {
    int row = blockIdx.x * blockDim.x + threadIdx.x;
    if (row >= rows) {
        return;
    }
    const float* xr = x + row * n;
    float m = __int_as_float(0xff800000);  // -inf: the maximum of nothing
    float l = 0.0f;
    for (int i = 0; i < n; i++) {
        float m_new = fmaxf(m, xr[i]);
        l = l * expf(m - m_new) + expf(xr[i] - m_new);  // exp(-inf) = 0 the first time
        m = m_new;
    }
    float inv_l = 1.0f / l;
    for (int i = 0; i < n; i++) {
        y[row * n + i] = expf(xr[i] - m) * inv_l;
    }
    lse[row] = m + logf(l);
}
