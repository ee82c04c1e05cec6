// mma.h for the CPU backend: CUDA's warp matrix functions (namespace nvcuda::wmma, the C++ API of
// the tensor cores) on the runtime's fibers, with the semantics CUDA's programming guide gives them.
//
// What it provides:
// - the tags matrix_a, matrix_b, accumulator, row_major, col_major and layout_t (mem_row_major,
//   mem_col_major);
// - fragment<Use, m, n, k, T, Layout> for the shapes m16n16k16, m32n8k16 and m8n32k16: matrix_a and
//   matrix_b of __half or __nv_bfloat16 (row_major or col_major), accumulators of float or __half,
//   with num_elements, x[], element_type and storage_element_type;
// - fill_fragment, load_matrix_sync (a layout argument for accumulators), mma_sync with the type
//   combinations NVIDIA's header has (__half: float or __half accumulators, c and d independently;
//   __nv_bfloat16: float ones) and store_matrix_sync.
// Anything else (tf32, double, integer and sub-byte fragments, bmma_sync, other shapes) is a compile
// error that says what is supported.
//
// The element layout. CUDA leaves the mapping of a tile's elements to the lanes' x[] unspecified; the
// one here is the simplest that behaves as documented: the rows x cols tile (m x k for matrix_a, k x n
// for matrix_b, m x n for an accumulator), numbered row by row, is spread over the 32 lanes in order,
// num_elements = rows * cols / 32 to a lane: element (r, c) is x[(r * cols + c) % num_elements] of lane
// (r * cols + c) / num_elements. So every element is in exactly one lane's fragment, and an operation
// that every lane applies to all of its x[] (scaling an accumulator, a ReLU) applies to the whole tile
// once. (NVIDIA's num_elements are the same for accumulators and __nv_bfloat16 tiles; its __half
// matrix_a/matrix_b fragments hold each element twice, 16 to a lane for m16n16k16, where these hold 8.)
// Code that assumes any particular mapping is wrong on a GPU too, of another generation if not this one.
// A fragment is born filled with 0xff bytes (NaN), like shared memory here: an accumulator used before
// fill_fragment or load_matrix_sync gives NaN, not whatever zeros the stack happened to hold. (So is
// `fragment<...> f{};`, which C++ zeroes on a GPU, NVIDIA's fragments being aggregates: C++ gives no
// way to tell it from `fragment<...> f;`, and a result that is NaN here is loud, where stack zeros
// would hide the missing fill. Set fragments with fill_fragment or load_matrix_sync, as the guide does.)
//
// Warp-collective. load_matrix_sync, store_matrix_sync, mma_sync and fill_fragment must be called by
// all 32 lanes of the warp together, with the same arguments (CUDA: "otherwise the code execution is
// likely to hang"). Each is a warp collective of the runtime (warp.h): every lane waits with a record
// of its call, and the lane that completes the warp checks that all 32 make the same call (the same
// function at the same source line, the same template instantiation) with the same pointer, ldm,
// layout or fill value, then does the work for the whole warp before any lane goes on. A lane that
// skips the call and exits (or waits at __syncthreads) is a deadlock naming the function and the
// line; lanes at different calls, or passing different arguments, are an error naming both lanes; a
// block whose thread count is not a multiple of 32 (a partial warp) is an error.
//
// Checked as CUDA states: the pointer must be 256-bit (32-byte) aligned, measured from the start of
// its allocation (a NumPy array that owns its memory stands for a cudaMalloc'd block, 256-byte aligned)
// or of its shared variable, as a GPU's alignment makes it matter (a KernelError naming the argument
// and element otherwise); ldm must be a multiple of 8 for __half and __nv_bfloat16, of 4 for
// float (16 bytes); a store's ldm must be at least the tile's row length (row-major) or column length
// (column-major), or its rows would overlap (a load may overlap them: ldm 0 repeats one row); the
// layout must be mem_row_major or mem_col_major. Every element is read and written through the normal
// memory path, so a tile that reaches past an array is an out-of-bounds fault naming the argument, and
// racecheck sees the writes.
//
// Numbers. mma_sync computes D = A * B + C: for each element, starting from C's value as a float, it
// adds the products A[i][k] * B[k][j] one at a time in k order, each sum rounded to float (the
// products of two __half or two __nv_bfloat16 values are exact in float), and rounds the result once
// to D's type (round to nearest even for a __half D). CUDA does not specify the tensor cores' rounding
// (they add groups of products with wider intermediates), so a GPU's result may differ from this in the
// last bits of the float sum; tests bound the difference by a float32 summation error.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <cuda_fp16.h>
#include <cuda_bf16.h>

namespace nvcuda {
namespace wmma {

// what a fragment is for, and how a matrix_a / matrix_b tile lies in memory
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
// how an accumulator tile lies in memory (an argument of load_matrix_sync and store_matrix_sync)
enum layout_t { mem_row_major, mem_col_major };

// (named so that code using them reaches the message below, rather than an unknown name)
namespace precision { struct tf32; }
namespace experimental { namespace precision { struct u4; struct s4; struct b1; } }

}  // namespace wmma
}  // namespace nvcuda

namespace gpt2cpu {
namespace wmma_detail {

namespace w = ::nvcuda::wmma;

// The tile of a fragment: m x k for matrix_a, k x n for matrix_b, m x n for an accumulator.
template <class Use, int M, int N, int K> struct tile { enum { rows = 16, cols = 16, known = 0 }; };
template <int M, int N, int K> struct tile<w::matrix_a, M, N, K> { enum { rows = M, cols = K, known = 1 }; };
template <int M, int N, int K> struct tile<w::matrix_b, M, N, K> { enum { rows = K, cols = N, known = 1 }; };
template <int M, int N, int K> struct tile<w::accumulator, M, N, K> { enum { rows = M, cols = N, known = 1 }; };

template <int M, int N, int K> struct shape {
    static constexpr bool ok = (M == 16 && N == 16 && K == 16) || (M == 32 && N == 8 && K == 16) ||
                               (M == 8 && N == 32 && K == 16);
};

template <class T> struct storage { typedef T type; };
template <> struct storage<w::precision::tf32> { typedef float type; };
template <> struct storage<w::experimental::precision::u4> { typedef unsigned type; };
template <> struct storage<w::experimental::precision::s4> { typedef int type; };
template <> struct storage<w::experimental::precision::b1> { typedef unsigned type; };

template <class T> struct identity { typedef T type; };

template <class T> struct element_name { static const char* get() { return "?"; } };
template <> struct element_name<__half> { static const char* get() { return "__half"; } };
template <> struct element_name<__nv_bfloat16> { static const char* get() { return "__nv_bfloat16"; } };
template <> struct element_name<float> { static const char* get() { return "float"; } };

static inline void from_float(float v, float& out) { out = v; }
static inline void from_float(float v, __half& out) { out = __float2half_rn(v); }

// The call site a wmma function records (its default argument: the caller's file and line).
struct Site {
    const char* file;
    int line;
    explicit constexpr Site(const char* f, int l) : file(f), line(l) {}
};
#define GPT2CPU_WMMA_SITE ::gpt2cpu::wmma_detail::Site site = ::gpt2cpu::wmma_detail::Site(__builtin_FILE(), __builtin_LINE())

// One address per template instantiation of a call (WarpCall::kind).
template <class... Ts> struct Kind { static const char id; };
template <class... Ts> const char Kind<Ts...>::id = 0;

static inline Fiber* begin(const char* what) {
    Fiber* f = self();
    Block* b = f->block;
    if (b->plain)
        runtime_error(f, "internal: %s in a kernel run as a plain loop (the CPU backend's source reader did not see "
                         "the call: call it as wmma::%s or nvcuda::wmma::%s)", what, what + 6, what + 6);
    WarpState& ws = b->warps[f->warp];
    if (ws.existing != 0xffffffffu)
        runtime_error(f, "%s is a warp collective of all 32 lanes, and warp %d of this block has only %d (the block's "
                         "%d threads are not a multiple of 32): give the block a multiple of 32 threads",
                      what, f->warp, __builtin_popcount(ws.existing), b->n);
    return f;
}

static inline void init_call(WarpCall& c, const char* what, const Site& s, const void* kind) {
    memset(&c, 0, sizeof c);
    c.what = what;
    c.file = s.file;
    c.line = s.line;
    c.kind = kind;
}

static inline void add_arg(WarpCall& c, const char* name, int kind, uint64_t value) {
    c.arg_name[c.nargs] = name;
    c.arg_kind[c.nargs] = kind;
    c.arg[c.nargs] = value;
    c.nargs++;
}

// Arrive with `call`; the lane that completes the warp runs work(calls), calls[lane] being each lane's
// record, before any lane goes on.
// (inlined, as the work is, into the kernel: a fault in it is reported at the kernel's line)
template <class Work> static inline __attribute__((always_inline)) void collective(Fiber* f, WarpCall& call, Work&& work) {
    if (warp_arrive(f, 0xffffffffu, 0, call.what, &call)) {
        WarpCall* calls[32];
        for (int lane = 0; lane < 32; lane++) calls[lane] = f->block->fibers[f->warp * 32 + lane]->call;
        work(calls);
        warp_release(f, 0xffffffffu);
    }
    yield_next(f);
    f->parity ^= 1;
}

template <class T> static inline void check_pointer(Fiber* f, const char* what, const void* p, unsigned ldm, int write) {
    // measured from the start of the argument's allocation (memory.h: a fault the Python side attributes
    // to the argument and element) or of the __shared__ variable; the stack is not checked
    Worker* wk = nullptr;
    int id = window_of(p) < 0 ? shared_slot_of(p, &wk) : -1;
    if (id >= 0 && wk && wk->shared.start[id]) {
        size_t rel = (size_t)((const char*)p - wk->shared.start[id]);
        if (rel % 32)
            runtime_error(f, "%s: the pointer is %zu bytes into the shared memory %s%s%s: not a multiple of 32. CUDA "
                             "requires a 256-bit (32-byte) aligned pointer to the tile's first element (declare the "
                             "variable __align__(32) and start tiles at multiples of 32 bytes); on a GPU the %s goes "
                             "wrong or the kernel stops with 'misaligned address'",
                          what, rel, id == 0 ? "of the block (extern __shared__)" : "variable `",
                          id == 0 ? "" : wk->shared.name[id], id == 0 ? "" : "`", write ? "write" : "read");
    } else {
        check_vector_access(p, 32, what, write);
    }
    const unsigned step = 16 / sizeof(T);
    if (ldm % step)
        runtime_error(f, "%s: ldm %u is not a multiple of %u. CUDA requires the stride between the tile's rows "
                         "(row-major) or columns (column-major) to be a multiple of 16 bytes: of 8 elements for "
                         "__half and __nv_bfloat16, of 4 for float (this tile's elements are %s)",
                      what, ldm, step, element_name<T>::get());
}

static inline void check_layout(Fiber* f, const char* what, int layout) {
    if (layout != w::mem_row_major && layout != w::mem_col_major)
        runtime_error(f, "%s: layout %d is neither wmma::mem_row_major nor wmma::mem_col_major", what, layout);
}

// Where element (r, c) of a tile lies in memory.
static inline size_t offset(int r, int c, unsigned ldm, bool row_major) {
    return row_major ? (size_t)r * ldm + (size_t)c : (size_t)c * ldm + (size_t)r;
}

}  // namespace wmma_detail
}  // namespace gpt2cpu

namespace nvcuda {
namespace wmma {

template <class Use, int m, int n, int k, class T, class Layout = void>
class fragment {
    typedef ::gpt2cpu::wmma_detail::tile<Use, m, n, k> tile_;
    static constexpr bool is_input_ = std::is_same<Use, matrix_a>::value || std::is_same<Use, matrix_b>::value;
    static_assert(tile_::known, "wmma::fragment's first parameter is wmma::matrix_a, wmma::matrix_b or wmma::accumulator");
    static_assert(::gpt2cpu::wmma_detail::shape<m, n, k>::ok,
                  "wmma::fragment: the CPU backend runs the shapes m16n16k16, m32n8k16 and m8n32k16 (of __half and "
                  "__nv_bfloat16 tiles)");
    static_assert(!is_input_ || std::is_same<T, __half>::value || std::is_same<T, __nv_bfloat16>::value,
                  "wmma::fragment: the CPU backend runs matrix_a and matrix_b fragments of __half and __nv_bfloat16 "
                  "(tf32, double, integer and sub-byte fragments only on a GPU)");
    static_assert(!is_input_ || std::is_same<Layout, row_major>::value || std::is_same<Layout, col_major>::value,
                  "wmma::fragment: a matrix_a or matrix_b fragment's last parameter is its memory layout, "
                  "wmma::row_major or wmma::col_major");
    static_assert(is_input_ || std::is_same<T, float>::value || std::is_same<T, __half>::value,
                  "wmma::fragment: the CPU backend runs accumulators of float and __half (int and double only on a "
                  "GPU)");
    static_assert(is_input_ || std::is_same<Layout, void>::value,
                  "wmma::fragment: an accumulator has no layout parameter: its memory layout is an argument of "
                  "load_matrix_sync and store_matrix_sync (wmma::mem_row_major or wmma::mem_col_major)");

  public:
    enum { num_elements = tile_::rows * tile_::cols / 32 };
    enum { num_storage_elements = num_elements };
    typedef T element_type;
    typedef typename ::gpt2cpu::wmma_detail::storage<T>::type storage_element_type;
    storage_element_type x[num_elements];
    // NaN until a load or a fill (see the top of this file)
    fragment() { memset((void*)x, 0xff, sizeof x); }
};

// fill_fragment(a, v): every element of the tile becomes v (all 32 lanes, the same v).
template <class Use, int m, int n, int k, class T, class Layout>
static inline void fill_fragment(fragment<Use, m, n, k, T, Layout>& a,
                                 const typename ::gpt2cpu::wmma_detail::identity<T>::type& v, GPT2CPU_WMMA_SITE) {
    namespace d = ::gpt2cpu::wmma_detail;
    const char* what = "wmma::fill_fragment";
    ::gpt2cpu::Fiber* f = d::begin(what);
    ::gpt2cpu::WarpCall call;
    d::init_call(call, what, site, &d::Kind<fragment<Use, m, n, k, T, Layout>>::id);
    double value = (double)(float)v;
    uint64_t bits;
    memcpy(&bits, &value, 8);
    d::add_arg(call, "the value", ::gpt2cpu::ARG_VALUE, bits);
    d::collective(f, call, [](::gpt2cpu::WarpCall**) {});
    for (int i = 0; i < a.num_elements; i++) a.x[i] = v;
}

// load_matrix_sync(a, p, ldm): a matrix_a or matrix_b tile from memory, laid out as its fragment says.
template <class Use, int m, int n, int k, class T, class Layout>
static inline __attribute__((always_inline)) void load_matrix_sync(
        fragment<Use, m, n, k, T, Layout>& a, const typename ::gpt2cpu::wmma_detail::identity<T>::type* p,
        unsigned ldm, GPT2CPU_WMMA_SITE) {
    static_assert(!std::is_same<Use, accumulator>::value,
                  "load_matrix_sync of an accumulator takes its memory layout: load_matrix_sync(c, p, ldm, "
                  "wmma::mem_row_major) or wmma::mem_col_major");
    namespace d = ::gpt2cpu::wmma_detail;
    typedef fragment<Use, m, n, k, T, Layout> F;
    typedef d::tile<Use, m, n, k> t;
    const char* what = "wmma::load_matrix_sync";
    ::gpt2cpu::Fiber* f = d::begin(what);
    d::check_pointer<T>(f, what, p, ldm, 0);
    ::gpt2cpu::WarpCall call;
    d::init_call(call, what, site, &d::Kind<F>::id);
    d::add_arg(call, "the pointer", ::gpt2cpu::ARG_POINTER, (uint64_t)(uintptr_t)p);
    d::add_arg(call, "ldm", ::gpt2cpu::ARG_UNSIGNED, ldm);
    call.frag[0] = &a;
    const bool row = std::is_same<Layout, row_major>::value;
    d::collective(f, call, [&](::gpt2cpu::WarpCall** calls) __attribute__((always_inline)) {
        for (int r = 0; r < t::rows; r++)
            for (int c = 0; c < t::cols; c++) {
                int e = r * t::cols + c;
                static_cast<F*>(calls[e / F::num_elements]->frag[0])->x[e % F::num_elements] = p[d::offset(r, c, ldm, row)];
            }
    });
}

// load_matrix_sync(c, p, ldm, layout): an accumulator tile from memory.
template <int m, int n, int k, class T>
static inline __attribute__((always_inline)) void load_matrix_sync(
        fragment<accumulator, m, n, k, T>& a, const typename ::gpt2cpu::wmma_detail::identity<T>::type* p,
        unsigned ldm, layout_t layout, GPT2CPU_WMMA_SITE) {
    namespace d = ::gpt2cpu::wmma_detail;
    typedef fragment<accumulator, m, n, k, T> F;
    typedef d::tile<accumulator, m, n, k> t;
    const char* what = "wmma::load_matrix_sync";
    ::gpt2cpu::Fiber* f = d::begin(what);
    d::check_layout(f, what, (int)layout);
    d::check_pointer<T>(f, what, p, ldm, 0);
    ::gpt2cpu::WarpCall call;
    d::init_call(call, what, site, &d::Kind<F>::id);
    d::add_arg(call, "the pointer", ::gpt2cpu::ARG_POINTER, (uint64_t)(uintptr_t)p);
    d::add_arg(call, "ldm", ::gpt2cpu::ARG_UNSIGNED, ldm);
    d::add_arg(call, "the layout", ::gpt2cpu::ARG_LAYOUT, (uint64_t)layout);
    call.frag[0] = &a;
    const bool row = layout == mem_row_major;
    d::collective(f, call, [&](::gpt2cpu::WarpCall** calls) __attribute__((always_inline)) {
        for (int r = 0; r < t::rows; r++)
            for (int c = 0; c < t::cols; c++) {
                int e = r * t::cols + c;
                static_cast<F*>(calls[e / F::num_elements]->frag[0])->x[e % F::num_elements] = p[d::offset(r, c, ldm, row)];
            }
    });
}

// store_matrix_sync(p, c, ldm, layout): an accumulator tile to memory.
template <int m, int n, int k, class T>
static inline __attribute__((always_inline)) void store_matrix_sync(
        typename ::gpt2cpu::wmma_detail::identity<T>::type* p, const fragment<accumulator, m, n, k, T>& a,
        unsigned ldm, layout_t layout, GPT2CPU_WMMA_SITE) {
    namespace d = ::gpt2cpu::wmma_detail;
    typedef fragment<accumulator, m, n, k, T> F;
    typedef d::tile<accumulator, m, n, k> t;
    const char* what = "wmma::store_matrix_sync";
    ::gpt2cpu::Fiber* f = d::begin(what);
    d::check_layout(f, what, (int)layout);
    d::check_pointer<T>(f, what, p, ldm, 1);
    const bool row = layout == mem_row_major;
    const unsigned lead = row ? t::cols : t::rows;
    if (ldm < lead)
        ::gpt2cpu::runtime_error(f, "%s: ldm %u is less than the %u %s of the %dx%d tile (%s), so the tile's %s would "
                                    "overlap in memory and lanes would write the same elements",
                                 what, ldm, lead, row ? "columns" : "rows", t::rows, t::cols,
                                 row ? "mem_row_major" : "mem_col_major", row ? "rows" : "columns");
    ::gpt2cpu::WarpCall call;
    d::init_call(call, what, site, &d::Kind<F>::id);
    d::add_arg(call, "the pointer", ::gpt2cpu::ARG_POINTER, (uint64_t)(uintptr_t)p);
    d::add_arg(call, "ldm", ::gpt2cpu::ARG_UNSIGNED, ldm);
    d::add_arg(call, "the layout", ::gpt2cpu::ARG_LAYOUT, (uint64_t)layout);
    call.frag[0] = (void*)&a;
    d::collective(f, call, [&](::gpt2cpu::WarpCall** calls) __attribute__((always_inline)) {
        for (int r = 0; r < t::rows; r++)
            for (int c = 0; c < t::cols; c++) {
                int e = r * t::cols + c;
                p[d::offset(r, c, ldm, row)] = static_cast<const F*>(calls[e / F::num_elements]->frag[0])->x[e % F::num_elements];
            }
    });
}

// mma_sync(d, a, b, c): D = A * B + C (d may be c).
template <int m, int n, int k, class TA, class LA, class TB, class LB, class TC, class TD>
static inline __attribute__((always_inline)) void mma_sync(
        fragment<accumulator, m, n, k, TD>& d, const fragment<matrix_a, m, n, k, TA, LA>& a,
        const fragment<matrix_b, m, n, k, TB, LB>& b, const fragment<accumulator, m, n, k, TC>& c, GPT2CPU_WMMA_SITE) {
    static_assert(std::is_same<TA, TB>::value,
                  "mma_sync multiplies matrix_a and matrix_b fragments of one element type (both __half or both "
                  "__nv_bfloat16)");
    static_assert(!std::is_same<TA, __nv_bfloat16>::value || (std::is_same<TC, float>::value && std::is_same<TD, float>::value),
                  "mma_sync of __nv_bfloat16 tiles accumulates in float: its accumulator fragments c and d must be float");
    namespace dd = ::gpt2cpu::wmma_detail;
    typedef fragment<accumulator, m, n, k, TD> FD;
    typedef fragment<matrix_a, m, n, k, TA, LA> FA;
    typedef fragment<matrix_b, m, n, k, TB, LB> FB;
    typedef fragment<accumulator, m, n, k, TC> FC;
    const char* what = "wmma::mma_sync";
    ::gpt2cpu::Fiber* f = dd::begin(what);
    ::gpt2cpu::WarpCall call;
    dd::init_call(call, what, site, &dd::Kind<FD, FA, FB, FC>::id);
    call.frag[0] = &d;
    call.frag[1] = (void*)&a;
    call.frag[2] = (void*)&b;
    call.frag[3] = (void*)&c;
    dd::collective(f, call, [&](::gpt2cpu::WarpCall** calls) __attribute__((always_inline)) {
        // the whole tiles, gathered from the 32 lanes' fragments (d may be c: all read before any write)
        float A[m][k], B[k][n], C[m][n];
        for (int e = 0; e < m * k; e++)
            A[e / k][e % k] = (float)static_cast<const FA*>(calls[e / FA::num_elements]->frag[1])->x[e % FA::num_elements];
        for (int e = 0; e < k * n; e++)
            B[e / n][e % n] = (float)static_cast<const FB*>(calls[e / FB::num_elements]->frag[2])->x[e % FB::num_elements];
        for (int e = 0; e < m * n; e++)
            C[e / n][e % n] = (float)static_cast<const FC*>(calls[e / FC::num_elements]->frag[3])->x[e % FC::num_elements];
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++) {
                float acc = C[i][j];
                for (int kk = 0; kk < k; kk++) acc += A[i][kk] * B[kk][j];   // exact product, one rounding per sum
                int e = i * n + j;
                dd::from_float(acc, static_cast<FD*>(calls[e / FD::num_elements]->frag[0])->x[e % FD::num_elements]);
            }
    });
}

}  // namespace wmma
}  // namespace nvcuda

#undef GPT2CPU_WMMA_SITE
