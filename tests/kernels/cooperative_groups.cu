// Cooperative groups, as CUDA's programming guide defines them, on both backends: the CPU backend's
// <cooperative_groups.h> and NVIDIA's (tests/test_cuda_features.py compiles this file with NVRTC too).
#include <cooperative_groups.h>
#include <cooperative_groups/reduce.h>
#include <cooperative_groups/scan.h>

namespace cg = cooperative_groups;

// The block's own description: out[i] = (thread_rank, size, group_index.x, thread_index.x, dim_threads.x)
extern "C" __global__ void block_info(int* out) {
    cg::thread_block block = cg::this_thread_block();
    int* row = out + 5 * (blockIdx.x * blockDim.x + threadIdx.x);
    row[0] = block.thread_rank();
    row[1] = block.size();
    row[2] = block.group_index().x;
    row[3] = block.thread_index().x;
    row[4] = block.dim_threads().x;
}

// A block-wide sum through shared memory and block.sync(), then per-tile sums with cg::reduce.
template <unsigned N>
__device__ void tile_sums(const float* x, float* tile_out, int n) {
    cg::thread_block_tile<N, cg::thread_block> tile = cg::tiled_partition<N>(cg::this_thread_block());
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    float v = i < n ? x[i] : 0.0f;
    float s = cg::reduce(tile, v, cg::plus<float>());
    if (tile.thread_rank() == 0) tile_out[(blockIdx.x * blockDim.x) / N + tile.meta_group_rank()] = s;
}

extern "C" __global__ void reduce_tiles(const float* x, float* out1, float* out2, float* out4, float* out8,
                                        float* out16, float* out32, int n) {
    tile_sums<1>(x, out1, n);
    tile_sums<2>(x, out2, n);
    tile_sums<4>(x, out4, n);
    tile_sums<8>(x, out8, n);
    tile_sums<16>(x, out16, n);
    tile_sums<32>(x, out32, n);
}

struct max_abs {   // a user functor
    __device__ int operator()(int a, int b) const { return max(abs(a), abs(b)); }
};

// Scans and reductions of ints over tiles of 8 with every functor: 8 values per thread.
extern "C" __global__ void scans(const int* x, int* out, int n) {
    auto tile = cg::tiled_partition<8>(cg::this_thread_block());
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    int v = i < n ? x[i] : 0;
    int r[8] = {cg::inclusive_scan(tile, v, cg::plus<int>()), cg::exclusive_scan(tile, v, cg::plus<int>()),
                cg::reduce(tile, v, cg::less<int>()), cg::reduce(tile, v, cg::greater<int>()),
                cg::reduce(tile, v, cg::bit_and<int>()), cg::reduce(tile, v, cg::bit_or<int>()),
                cg::reduce(tile, v, cg::bit_xor<int>()), cg::reduce(tile, v, max_abs())};
    if (i < n)
        for (int k = 0; k < 8; k++) out[8 * i + k] = r[k];
}

// The tile collectives on tiles of 16: shfl, shfl_up, shfl_down, shfl_xor, any, all, ballot, match_any.
extern "C" __global__ void tile_collectives(const int* x, int* out) {
    cg::thread_block_tile<16> t = cg::tiled_partition<16>(cg::this_thread_block());
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    int v = x[i];
    int* row = out + 8 * i;
    row[0] = t.shfl(v, 3);
    row[1] = t.shfl_up(v, 2);
    row[2] = t.shfl_down(v, 5);
    row[3] = t.shfl_xor(v, 1);
    row[4] = t.any(v > 90);
    row[5] = t.all(v >= 0);
    row[6] = (int)t.ballot(v % 2 == 0);
    t.sync();
    row[7] = (int)t.match_any(v % 3);
}

// The dynamic partition and a coalesced group: the odd lanes of each warp sum their values.
extern "C" __global__ void dynamic_and_coalesced(const int* x, int* out) {
    cg::thread_block block = cg::this_thread_block();
    cg::thread_group tile4 = cg::tiled_partition(block, 4);
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    out[3 * i] = cg::reduce(cg::tiled_partition<4>(block), x[i], cg::plus<int>()) + 0 * (int)tile4.size();
    out[3 * i + 1] = tile4.thread_rank();
    out[3 * i + 2] = -1;
    if (threadIdx.x % 2) {
        cg::coalesced_group odd = cg::coalesced_threads();
        out[3 * i + 2] = cg::reduce(odd, x[i], cg::plus<int>()) * 100 + (int)odd.thread_rank();
    }
    cg::sync(block);
}

// thread_group, CUDA's common base of all groups: the block and a run-time tile through one type.
__device__ int rank_and_size(const cg::thread_group& g) { return (int)(g.thread_rank() * 10000 + g.size()); }

extern "C" __global__ void generic_groups(int* out) {
    cg::thread_group block = cg::this_thread_block();
    cg::thread_group tile = cg::tiled_partition(block, 8);
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    out[2 * i] = rank_and_size(block);
    block.sync();
    out[2 * i + 1] = rank_and_size(tile);
    cg::sync(tile);
}
