// Solution of the exercise in notebooks/06_classifier.ipynb: fused_classifier2 with ignore_index = -1.
//
// A position whose target is -1 is not trained on (a padded sequence, a prompt in fine-tuning): its
// loss is 0 and its whole row of dlogits is 0. The caller divides by the number of positions that
// count, dloss = 1 / (number of targets != -1), so the mean is over those alone.
//
// What changes against cuda/classifier.cu's version 2: `ignored` is the same for every thread of the
// block (one block per row), so the block may skip work on it, but every thread must still reach the
// __syncthreads() inside block_merge: the row's pass 1 runs over no columns instead of returning
// early. Pass 2 writes zeros, and thread 0 writes the loss 0 (no thread meets the target column).

#define NEG_INF __int_as_float(0xff800000)

__device__ void online_add(float& m, float& s, float x) {
    if (x > m) {
        s = s * expf(m - x) + 1.0f;
        m = x;
    } else {
        s += expf(x - m);
    }
}

__device__ void online_merge(float& m, float& s, float m2, float s2) {
    float mx = fmaxf(m, m2);
    s = s * (m == mx ? 1.0f : expf(m - mx)) + s2 * (m2 == mx ? 1.0f : expf(m2 - mx));
    m = mx;
}

__device__ void block_merge(float& m, float& s, float* warp_m, float* warp_s) {
    int lane = threadIdx.x % 32;
    int warp = threadIdx.x / 32;
    int num_warps = blockDim.x / 32;
    for (int offset = 16; offset > 0; offset /= 2) {
        float m2 = __shfl_down_sync(0xffffffff, m, offset);
        float s2 = __shfl_down_sync(0xffffffff, s, offset);
        online_merge(m, s, m2, s2);
    }
    if (lane == 0) {
        warp_m[warp] = m;
        warp_s[warp] = s;
    }
    __syncthreads();
    m = NEG_INF;
    s = 0.0f;
    for (int w = 0; w < num_warps; w++) {
        online_merge(m, s, warp_m[w], warp_s[w]);
    }
}

extern "C" __global__ void fused_classifier_ignore(float* losses, float* dlogits, const float* logits,
                                                   const int* targets, float dloss, int V, int Vp) {
    __shared__ float warp_m[32];
    __shared__ float warp_s[32];
    int n = blockIdx.x;
    const float* x = logits + (size_t)n * Vp;
    float* dx = dlogits + (size_t)n * Vp;
    int target = targets[n];
    bool ignored = (target == -1);  // the same for the whole block

    float m = NEG_INF;
    float s = 0.0f;
    int columns = ignored ? 0 : V;  // no early return: every thread must reach block_merge's barrier
    for (int v = threadIdx.x; v < columns; v += blockDim.x) {
        online_add(m, s, x[v]);
    }
    block_merge(m, s, warp_m, warp_s);
    float inv_s = 1.0f / s;  // inf for an ignored row: never used there

    if (ignored && threadIdx.x == 0) {
        losses[n] = 0.0f;
    }
    for (int v = threadIdx.x; v < Vp; v += blockDim.x) {
        float g = 0.0f;
        if (!ignored && v < V) {
            float xv = x[v];
            float p = expf(xv - m) * inv_s;
            if (v == target) {
                losses[n] = logf(s) - (xv - m);
                p -= 1.0f;
            }
            g = p * dloss;
        }
        dx[v] = g;
    }
}
