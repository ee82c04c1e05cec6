// cooperative_groups.h for the CPU backend: CUDA's cooperative groups on the runtime's fibers.
//
// thread_block (this_thread_block), thread_block_tile<N> (tiled_partition<N>, N = 1, 2, 4 ... 32),
// the dynamic tiled_partition(parent, N) for N up to 32 or the whole block, coalesced_group
// (coalesced_threads), their collectives (sync, shfl*, any, all, ballot, match_*), cg::reduce,
// cg::inclusive_scan / exclusive_scan with cg::plus, less, greater, bit_and, bit_or, bit_xor or your
// own functor, cg::sync(g). A tile's collectives are the warp collectives of the runtime on the
// tile's lanes, so a tile whose lanes do not all arrive is reported as a deadlock, as the GPU would
// hang. Grid-wide groups need a cooperative launch, which helpers.device does not make: this_grid()
// is a clear error.
#pragma once
#include <cstdint>
#include <type_traits>

namespace cooperative_groups {

namespace details {
static inline unsigned lane() { return (unsigned)::gpt2cpu::self()->lane; }
static inline unsigned linear_rank() { return (unsigned)::gpt2cpu::self()->linear; }
static inline unsigned block_threads() { return blockDim.x * blockDim.y * blockDim.z; }
static inline unsigned nth_set_bit(unsigned mask, unsigned n) {
    for (unsigned lane = 0; lane < 32; lane++)
        if (((mask >> lane) & 1) && n-- == 0) return lane;
    return 0;
}
}  // namespace details

class thread_block {
  public:
    void sync(int line = __builtin_LINE()) const { ::gpt2cpu::syncthreads(line); }
    unsigned thread_rank() const { return details::linear_rank(); }
    unsigned size() const { return details::block_threads(); }
    unsigned num_threads() const { return size(); }
    dim3 group_index() const { return dim3(blockIdx.x, blockIdx.y, blockIdx.z); }
    dim3 thread_index() const { return dim3(threadIdx.x, threadIdx.y, threadIdx.z); }
    dim3 dim_threads() const { return dim3(blockDim.x, blockDim.y, blockDim.z); }
    dim3 group_dim() const { return dim_threads(); }
};
static inline thread_block this_thread_block() { return thread_block(); }

// A group of lanes of one warp: the base of tiles and coalesced groups.
class warp_group {
  protected:
    unsigned mask_;   // the member lanes, as lane bits of the warp
    unsigned width_;  // a tile's width (power of two), or 32 for a coalesced group
    bool tile_;
  public:
    warp_group(unsigned mask, unsigned width, bool tile) : mask_(mask), width_(width), tile_(tile) {}
    unsigned size() const { return tile_ ? width_ : (unsigned)__builtin_popcount(mask_); }
    unsigned num_threads() const { return size(); }
    unsigned thread_rank() const {
        return tile_ ? details::lane() % width_ : (unsigned)__builtin_popcount(mask_ & ((1u << details::lane()) - 1));
    }
    unsigned meta_group_rank() const { return tile_ ? details::linear_rank() / width_ : 0; }
    unsigned meta_group_size() const {
        return tile_ ? (details::block_threads() + width_ - 1) / width_ : 1;
    }
    void sync() const { __syncwarp(mask_); }
    unsigned lane_of(unsigned rank) const {
        return tile_ ? (details::lane() & ~(width_ - 1)) + rank % width_ : details::nth_set_bit(mask_, rank);
    }
    template <class T> T shfl(T v, unsigned src_rank) const {
        return tile_ ? __shfl_sync(mask_, v, (int)src_rank, (int)width_) : __shfl_sync(mask_, v, (int)lane_of(src_rank));
    }
    template <class T> T shfl_down(T v, unsigned delta) const {
        if (tile_) return __shfl_down_sync(mask_, v, delta, (int)width_);
        unsigned r = thread_rank() + delta;
        T got = __shfl_sync(mask_, v, (int)lane_of(r < size() ? r : thread_rank()));
        return r < size() ? got : v;
    }
    template <class T> T shfl_up(T v, unsigned delta) const {
        if (tile_) return __shfl_up_sync(mask_, v, delta, (int)width_);
        unsigned me = thread_rank();
        T got = __shfl_sync(mask_, v, (int)lane_of(me >= delta ? me - delta : me));
        return me >= delta ? got : v;
    }
    template <class T> T shfl_xor(T v, unsigned lane_mask) const {
        if (tile_) return __shfl_xor_sync(mask_, v, (int)lane_mask, (int)width_);
        unsigned r = thread_rank() ^ lane_mask;
        return __shfl_sync(mask_, v, (int)lane_of(r < size() ? r : thread_rank()));
    }
    // votes and matches, with the result's bits numbered by rank in the group
    unsigned compact(unsigned lane_bits) const {
        if (tile_) return (lane_bits >> (details::lane() & ~(width_ - 1))) & (width_ == 32 ? 0xffffffffu : ((1u << width_) - 1));
        unsigned out = 0, k = 0;
        for (unsigned l = 0; l < 32; l++)
            if ((mask_ >> l) & 1) { if ((lane_bits >> l) & 1) out |= 1u << k; k++; }
        return out;
    }
    unsigned ballot(int pred) const { return compact(__ballot_sync(mask_, pred)); }
    bool any(int pred) const { return __any_sync(mask_, pred) != 0; }
    bool all(int pred) const { return __all_sync(mask_, pred) != 0; }
    template <class T> unsigned match_any(T v) const { return compact(__match_any_sync(mask_, v)); }
    template <class T> unsigned match_all(T v, int& pred) const {
        unsigned m = __match_all_sync(mask_, v, &pred);
        return compact(m);
    }
};

// thread_block_tile<N> or, as CUDA also spells it, thread_block_tile<N, Parent>: the same tile (the
// parent only says where it came from), so either converts to the other.
template <unsigned N, class Parent = void> class thread_block_tile;
template <unsigned N> class thread_block_tile<N, void> : public warp_group {
    static_assert(N >= 1 && N <= 32 && (N & (N - 1)) == 0, "a tile has 1, 2, 4, 8, 16 or 32 threads");
  public:
    thread_block_tile()
        : warp_group(N == 32 ? 0xffffffffu : (((1u << N) - 1) << (details::lane() & ~(N - 1))), N, true) {}
    static constexpr unsigned num_threads() { return N; }
    static constexpr unsigned size() { return N; }
};
template <unsigned N, class Parent> class thread_block_tile : public thread_block_tile<N, void> {
  public:
    thread_block_tile() = default;
    thread_block_tile(const thread_block_tile<N, void>&) {}
};

template <unsigned N, class Parent> static inline thread_block_tile<N, Parent> tiled_partition(const Parent&) {
    return thread_block_tile<N, Parent>();
}

// thread_group: any group, as CUDA's common base of them all (`cg::thread_group g = block;`): the
// whole block, or lanes of one warp. What tiled_partition(parent, n) returns, n known at run time.
class thread_group {
    bool block_;
    warp_group lanes_;
  public:
    thread_group(const thread_block&) : block_(true), lanes_(0xffffffffu, 32, true) {}
    thread_group(const warp_group& g) : block_(false), lanes_(g) {}
    void sync(int line = __builtin_LINE()) const { if (block_) ::gpt2cpu::syncthreads(line); else lanes_.sync(); }
    unsigned thread_rank() const { return block_ ? details::linear_rank() : lanes_.thread_rank(); }
    unsigned size() const { return block_ ? details::block_threads() : lanes_.size(); }
    unsigned num_threads() const { return size(); }
};
template <class Parent> static inline thread_group tiled_partition(const Parent&, unsigned n) {
    if (n == 0 || n > 32 || (n & (n - 1)))
        ::gpt2cpu::runtime_error(::gpt2cpu::self(),
            "tiled_partition(group, %u): the CPU backend supports tiles of 1, 2, 4, 8, 16 or 32 threads", n);
    return thread_group(warp_group(n == 32 ? 0xffffffffu : (((1u << n) - 1) << (details::lane() & ~(n - 1))), n,
                                   true));
}

class coalesced_group : public warp_group {
  public:
    explicit coalesced_group(unsigned mask) : warp_group(mask, 32, false) {}
};
// The lanes that run this call together (the runtime's __activemask rendezvous at the caller's line).
static inline coalesced_group coalesced_threads(int line = __builtin_LINE()) {
    return coalesced_group(::gpt2cpu::activemask(line));
}

static inline void sync(const thread_block& g, int line = __builtin_LINE()) { g.sync(line); }
static inline void sync(const warp_group& g) { g.sync(); }
static inline void sync(const thread_group& g, int line = __builtin_LINE()) { g.sync(line); }

class grid_group {
  public:
    void sync() const {
        ::gpt2cpu::runtime_error(::gpt2cpu::self(),
            "this_grid().sync() needs a cooperative launch (cudaLaunchCooperativeKernel), which helpers.device does "
            "not make on either backend: split the kernel in two launches instead");
    }
    unsigned long long thread_rank() const {
        unsigned long long block = blockIdx.x + (unsigned long long)gridDim.x * (blockIdx.y + (unsigned long long)gridDim.y * blockIdx.z);
        return block * details::block_threads() + details::linear_rank();
    }
    unsigned long long size() const {
        return (unsigned long long)gridDim.x * gridDim.y * gridDim.z * details::block_threads();
    }
};
static inline grid_group this_grid() { return grid_group(); }

// ---- the functors of <cooperative_groups/reduce.h> and <cooperative_groups/scan.h> --------------
template <class T> struct plus { T operator()(T a, T b) const { return a + b; } };
template <class T> struct less { T operator()(T a, T b) const { return b < a ? b : a; } };
template <class T> struct greater { T operator()(T a, T b) const { return a < b ? b : a; } };
template <class T> struct bit_and { T operator()(T a, T b) const { return a & b; } };
template <class T> struct bit_or { T operator()(T a, T b) const { return a | b; } };
template <class T> struct bit_xor { T operator()(T a, T b) const { return a ^ b; } };

// The group's values combined in rank order, 0 first: every member gets the result.
template <class T, class Op> static inline T reduce(const warp_group& g, T value, Op op) {
    T acc = g.shfl(value, 0);
    for (unsigned r = 1; r < g.size(); r++) acc = op(acc, g.shfl(value, r));
    return acc;
}
template <class T, class Op> static inline T inclusive_scan(const warp_group& g, T value, Op op) {
    T acc = g.shfl(value, 0), mine = acc;
    for (unsigned r = 1; r < g.size(); r++) {
        acc = op(acc, g.shfl(value, r));
        if (r == g.thread_rank()) mine = acc;
    }
    return mine;
}
template <class T> static inline T inclusive_scan(const warp_group& g, T value) { return inclusive_scan(g, value, plus<T>()); }
template <class T, class Op> static inline T exclusive_scan(const warp_group& g, T value, Op op) {
    T acc = g.shfl(value, 0), mine = T();
    for (unsigned r = 1; r < g.size(); r++) {
        if (r == g.thread_rank()) mine = acc;
        acc = op(acc, g.shfl(value, r));
    }
    return mine;
}
template <class T> static inline T exclusive_scan(const warp_group& g, T value) { return exclusive_scan(g, value, plus<T>()); }

}  // namespace cooperative_groups
