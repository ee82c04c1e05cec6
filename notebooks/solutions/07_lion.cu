// Solution of the exercise in notebooks/07_adamw.ipynb: the Lion optimizer (Chen et al., 2023,
// "Symbolic Discovery of Optimization Algorithms"), one thread per parameter.
//
//     c = beta1 * m + (1 - beta1) * g            the direction: an interpolation of momentum and gradient
//     p = p - lr * (sign(c) + weight_decay * p)  every parameter moves by exactly lr (plus the decay)
//     m = beta2 * m + (1 - beta2) * g            the momentum, updated AFTER it was used, with beta2
//
// Compared with AdamW: one state array instead of two (m, no v), no square root, no division, no
// bias correction (the sign does not care about the scale of c); 20 bytes per parameter instead
// of 28. sign(0) is 0, as torch.sign and np.sign: (c > 0) - (c < 0).

extern "C" __global__ void lion(float* params, const float* grads, float* m, int n, float lr, float beta1,
                                float beta2, float weight_decay) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) {
        return;
    }
    float g = grads[i];
    float m_i = m[i];
    float c = beta1 * m_i + (1.0f - beta1) * g;
    float sign_c = (float)(c > 0.0f) - (float)(c < 0.0f);
    float p = params[i];
    params[i] = p - lr * (sign_c + weight_decay * p);
    m[i] = beta2 * m_i + (1.0f - beta2) * g;
}
