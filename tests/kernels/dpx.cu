// DPX (CUDA 12's max/min instructions) on the CPU backend. NVRTC does not declare them: they come with the
// CUDA toolkit's crt/sm_90_rt.h, which nvcc includes and NVRTC's built-in headers (and NVIDIA's pip
// headers) lack, so this file's kernel is compiled by the CPU backend only (__CUDACC_RTC__ is NVRTC's).
#ifndef __CUDACC_RTC__
// DPX (CUDA 12): out[k * n + i] in the order of tests/test_cuda_features.py's DPX list; pred[4 * i + k].
#define DPX_ALL(S) __vimax_##S(x, y), __vimin_##S(x, y), __vimax3_##S(x, y, z), __vimin3_##S(x, y, z), \
                   __viaddmax_##S(x, y, z), __viaddmin_##S(x, y, z)
#define DPX_RELU(S) __vimax_##S##_relu(x, y), __vimin_##S##_relu(x, y), __vimax3_##S##_relu(x, y, z), \
                    __vimin3_##S##_relu(x, y, z), __viaddmax_##S##_relu(x, y, z), __viaddmin_##S##_relu(x, y, z)
extern "C" __global__ void dpx_ops(const int* a, const int* b, const int* c, int* out, int* pred, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    int x = a[i], y = b[i], z = c[i];
    unsigned ux = (unsigned)x, uy = (unsigned)y, uz = (unsigned)z;
    int r[] = {DPX_ALL(s32), DPX_RELU(s32)};
    unsigned u[] = {
#define x ux
#define y uy
#define z uz
        DPX_ALL(u32), DPX_ALL(s16x2), DPX_ALL(u16x2), DPX_RELU(s16x2)
#undef x
#undef y
#undef z
    };
    int k = 0;
    for (int j = 0; j < 12; j++) out[(k++) * n + i] = r[j];
    for (int j = 0; j < 24; j++) out[(k++) * n + i] = (int)u[j];
    bool p0, p1, p2, p3;
    out[(k++) * n + i] = __vibmax_s32(x, y, &p0);
    out[(k++) * n + i] = (int)__vibmin_u16x2(ux, uy, &p1, &p2);
    __vibmin_s32(x, y, &p3);
    pred[4 * i] = p0; pred[4 * i + 1] = p1; pred[4 * i + 2] = p2; pred[4 * i + 3] = p3;
}
#endif
