"""The warp matrix functions (<mma.h>, namespace nvcuda::wmma): tests/kernels/wmma.cu against NumPy on
the active backend (the CPU backend, which emulates them in helpers/runtime/cpu_backend/include/mma.h;
in CI's second pass the strict CuPy stand-in; on a GPU, its tensor cores), the misuse a GPU hides as
clear errors on the CPU backend and through the stand-in, and the same file compiled by NVRTC for
sm_80 and sm_90 with NVIDIA's <mma.h>.

Tolerance. d = c + sum_k a_k b_k over K = 16 products per tile: a product of two 16-bit floats (11 or
8 significant bits) is exact in float32, and K additions in float32 make |d - exact| <= gamma_K
(|c| + sum_k |a_k b_k|), gamma_K ~ K u, u = 2^-24, in any order or grouping. A tensor core may
truncate instead of rounding (CUDA does not specify it), which doubles u: the bound used is
2 (K + 1) u (|c| + |a| @ |b|), plus half a unit of the last place of a __half result (2^-11 |d|) for
__half accumulators. Dropping or doubling one product errs by about sum / K, 1 / (2 K^2 u) = 30000
times the bound. On the CPU backend (and so through the stand-in) the result is moreover bit-exact to
the emulation's documented order: from c, each product added in k order, each sum rounded to float32,
the result rounded once to d's type. (A GPU that accumulates __half results in __half gets
2 (K + 1) 2^-11 (|c| + |a| @ |b|) more, where they are __half.)"""
import ml_dtypes
import numpy as np
import pytest

from helpers.runtime import cuda_source, device, nvrtc, nvrtc_report
from helpers.runtime.cpu_backend import INCLUDE_DIR
from helpers.runtime.cuda_source import REPO_ROOT

WMMA = REPO_ROOT / "tests" / "kernels" / "wmma.cu"
BF16 = ml_dtypes.bfloat16
U = 2.0**-24


def _cupy():
    import cupy
    return cupy


def on_a_gpu() -> bool:
    """CuPy on a real GPU (not the stand-in, which runs the kernels on the CPU backend)."""
    return device.name == "cupy" and not getattr(_cupy(), "__standin__", False)


def emulated() -> bool:
    return not on_a_gpu()


def bf16_runs() -> bool:
    """__nv_bfloat16 tiles are sm_80's: a T4 (sm_75) has none (the stand-in runs them on the CPU)."""
    return not on_a_gpu() or int(_cupy().cuda.Device().compute_capability) >= 80


def active():
    return device.load_module(WMMA)


def on_cpu():
    return device.load_module(WMMA, backend="cpu")


def host(a):
    return device.asnumpy(a)


# ------------------------------------------------------------------------------------------------
# NVIDIA's header, through NVRTC
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_nvrtc_compiles_the_wmma_kernels_with_nvidias_header(arch):
    rows = nvrtc_report.compile_file(WMMA, arch)
    assert {r.kernel for r in rows} == set(cuda_source.parse_kernels(WMMA.read_text()))


def test_nvrtc_gets_only_mma_h_of_the_crt_headers():
    """<mma.h> includes crt/mma.h, which the nvidia-cuda-crt wheel ships with the rest of crt/ (CUDA 13's):
    NVRTC is given a folder with crt/mma.h and crt/mma.hpp alone, so that the crt/ headers NVRTC has built
    in for its own version are never shadowed."""
    from pathlib import Path
    folder = nvrtc.mma_headers_dir()
    assert folder in nvrtc.cuda_include_dirs()
    assert sorted(p.name for p in (Path(folder) / "crt").iterdir()) == ["mma.h", "mma.hpp"]


def test_the_cpu_backend_provides_mma_h():
    assert (INCLUDE_DIR / "mma.h").is_file()
    assert cuda_source.kernels_needing_fibers(WMMA) >= {"tile_bf16", "matmul_half_shared", "unset_accumulator"}


# ------------------------------------------------------------------------------------------------
# One tile, every layout, every accumulator type
# ------------------------------------------------------------------------------------------------
# kernel -> (input type, c type, d type)
TILE_KERNELS = {"tile_bf16": (BF16, np.float32, np.float32), "tile_half_f32": (np.float16, np.float32, np.float32),
                "tile_half_f16": (np.float16, np.float16, np.float16),
                "tile_half_f32_to_f16": (np.float16, np.float32, np.float16),
                "tile_half_f16_to_f32": (np.float16, np.float16, np.float32)}
SENTINEL = -7.0   # what the elements of d outside the tile keep


def place(tile, col_major, ldm, offset, dtype, fill=SENTINEL):
    """A flat array holding `tile` at `offset` with leading dimension `ldm`, in either layout."""
    r, c = np.indices(tile.shape)
    index = offset + (c * ldm + r if col_major else r * ldm + c)
    buf = np.full(index.max() + 1 + 5, fill, dtype)
    buf[index] = tile
    return buf, index


def exact_order(a, b, c, out_dtype):
    """The emulation's result: from c, each product added in k order in float32, rounded once to out_dtype."""
    acc = c.astype(np.float32)
    for k in range(a.shape[1]):
        acc = (acc + (a[:, k:k + 1].astype(np.float64) * b[k:k + 1, :].astype(np.float64)).astype(np.float32)
               ).astype(np.float32)
    return acc.astype(out_dtype)


def check_tile(name, got, a, b, c, out_dtype, terms=16):
    a64, b64, c64 = (x.astype(np.float64) for x in (a, b, c))
    ref = a64 @ b64 + c64
    bound = 2 * (terms + 1) * U * (np.abs(c64) + np.abs(a64) @ np.abs(b64))
    if out_dtype == np.float16:
        bound = bound + 2.0**-11 * np.abs(ref) + 2.0**-25   # (the last: half of the smallest subnormal step)
        if not emulated():   # a GPU may accumulate in __half itself (CUDA does not say)
            bound = bound + 2 * (terms + 1) * 2.0**-11 * (np.abs(c64) + np.abs(a64) @ np.abs(b64))
    err = np.abs(got.astype(np.float64) - ref)
    assert (err <= bound).all(), f"{name}: worst error {err.max():.3g}, {(err / bound).max():.2f} times the bound"
    if emulated():
        want = exact_order(a, b, c, out_dtype)
        assert np.array_equal(got.view(np.uint16 if out_dtype == np.float16 else np.uint32),
                              want.view(np.uint16 if out_dtype == np.float16 else np.uint32)), name


def tile_inputs(rng, in_dtype, c_dtype):
    a = rng.uniform(-2, 2, (16, 16)).astype(in_dtype)
    b = rng.uniform(-2, 2, (16, 16)).astype(in_dtype)
    c = rng.standard_normal((16, 16)).astype(c_dtype)
    return a, b, c


def run_tile(mod, name, a, b, c, d_dtype, layouts, ld=(16, 16, 16, 16), offsets=(0, 0, 0, 0)):
    """d = a @ b + c by kernel `name`, each operand at its offset and ldm in the layouts' bits."""
    bufs = [place(m, (layouts >> bit) & 1, ldm, off, m.dtype) for bit, (m, ldm, off) in
            enumerate(zip((a, b, c), ld, offsets))]
    d_buf, d_index = place(np.zeros((16, 16)), (layouts >> 3) & 1, ld[3], offsets[3], d_dtype)
    d_buf[d_index] = SENTINEL
    out = device.asarray(d_buf)
    args = []
    for (buf, _), ldm, off in zip(bufs, ld, offsets):
        args += [device.asarray(buf), off, ldm]
    mod.get_function(name)((1,), (32,), (*args, out, offsets[3], ld[3], layouts))
    out = host(out)
    outside = np.ones(out.size, bool)
    outside[d_index] = False
    assert (out[outside] == SENTINEL).all(), f"{name}: an element outside the tile was written"
    return out[d_index]


@pytest.mark.parametrize("name", sorted(TILE_KERNELS))
def test_a_16x16x16_tile_in_every_layout(name, rng):
    in_dtype, c_dtype, d_dtype = TILE_KERNELS[name]
    if in_dtype == BF16 and not bf16_runs():
        pytest.skip("__nv_bfloat16 tiles need sm_80")
    mod = active()
    for layouts in range(16):   # a, b, c, d each row- or column-major
        a, b, c = tile_inputs(rng, in_dtype, c_dtype)
        got = run_tile(mod, name, a, b, c, d_dtype, layouts)
        check_tile(f"{name}, layouts {layouts:04b}", got, a, b, c, d_dtype)


@pytest.mark.parametrize("name", ["tile_bf16", "tile_half_f16"])
def test_sub_tiles_of_larger_matrices(name, rng):
    """ldm above 16 and a tile that starts inside the array: only the tile's elements are read and written."""
    in_dtype, c_dtype, d_dtype = TILE_KERNELS[name]
    if in_dtype == BF16 and not bf16_runs():
        pytest.skip("__nv_bfloat16 tiles need sm_80")
    mod = active()
    # offsets of 32 bytes' multiples; ldm multiples of 16 bytes (8 16-bit elements, 4 floats)
    f32 = c_dtype == np.float32
    ld = (24, 40, 20 if f32 else 24, 36 if d_dtype == np.float32 else 48)
    offsets = (48, 16, 8 if f32 else 16, 24 if d_dtype == np.float32 else 32)
    for layouts in (0b0000, 0b1111, 0b0110, 0b1001):
        a, b, c = tile_inputs(rng, in_dtype, c_dtype)
        got = run_tile(mod, name, a, b, c, d_dtype, layouts, ld, offsets)
        check_tile(f"{name}, layouts {layouts:04b}, ldm {ld}", got, a, b, c, d_dtype)


def test_a_bias_row_loaded_with_ldm_0_repeats_in_every_row(rng):
    """ldm 0 (a multiple of 8) makes every row of a loaded accumulator the same: the bias of a linear layer."""
    a, b, _ = tile_inputs(rng, np.float16, np.float32)
    bias = rng.standard_normal(16).astype(np.float32)
    d = device.empty((256,))
    active().get_function("tile_half_f32")((1,), (32,), (device.asarray(a.ravel()), 0, 16, device.asarray(b.ravel()), 0,
                                                         16, device.asarray(bias), 0, 0, d, 0, 16, 0))
    check_tile("bias with ldm 0", host(d).reshape(16, 16), a, b, np.tile(bias, (16, 1)), np.float32)


@pytest.mark.parametrize("dtype", [np.float16, BF16], ids=["half", "bf16"])
def test_the_m32n8k16_and_m8n32k16_shapes(dtype, rng):
    if dtype == BF16 and not bf16_runs():
        pytest.skip("__nv_bfloat16 tiles need sm_80")
    a32, b8 = rng.uniform(-2, 2, (32, 16)).astype(dtype), rng.uniform(-2, 2, (16, 8)).astype(dtype)
    a8, b32 = rng.uniform(-2, 2, (8, 16)).astype(dtype), rng.uniform(-2, 2, (16, 32)).astype(dtype)
    d32x8, d8x32 = device.zeros((32, 8)), device.zeros((8, 32))
    name = "shapes_half" if dtype == np.float16 else "shapes_bf16"
    # b is col-major: its transpose, row-major
    active().get_function(name)((1,), (32,), (device.asarray(a32), device.asarray(np.ascontiguousarray(b8.T)), d32x8,
                                               device.asarray(a8), device.asarray(np.ascontiguousarray(b32.T)), d8x32))
    half = np.full((32, 8), 0.5, np.float32)
    check_tile(f"{name} 32x8x16", host(d32x8), a32, b8, half, np.float32)
    check_tile(f"{name} 8x32x16", host(d8x32), a8, b32, half.reshape(8, 32), np.float32)


# ------------------------------------------------------------------------------------------------
# Matmuls built from fragments, elementwise operations, racecheck
# ------------------------------------------------------------------------------------------------
def test_a_tiled_48x32x64_bf16_matmul_with_elementwise_scaling(rng):
    """out = alpha * x @ w^T + beta * c, one warp per 16x16 tile, alpha and beta applied to x[]."""
    if not bf16_runs():
        pytest.skip("__nv_bfloat16 tiles need sm_80")
    M, N, K, alpha, beta = 48, 32, 64, 0.75, -1.5
    x = rng.uniform(-1, 1, (M, K)).astype(BF16)
    w = rng.uniform(-1, 1, (N, K)).astype(BF16)
    c = rng.standard_normal((M, N)).astype(np.float32)
    out = device.empty((M, N))
    fn = active().get_function("matmul_bf16")
    args = (device.asarray(x), device.asarray(w), device.asarray(c), out, M, N, K, alpha, beta)
    fn((2,), (96,), args)   # 6 warps, one per tile
    x64, w64, c64 = (v.astype(np.float64) for v in (x, w, c))
    ref = alpha * x64 @ w64.T + beta * c64
    bound = 2 * (K + 3) * U * (abs(alpha) * np.abs(x64) @ np.abs(w64).T + abs(beta) * np.abs(c64))
    got = host(out).astype(np.float64)
    assert (np.abs(got - ref) <= bound).all(), f"worst {(np.abs(got - ref) / bound).max():.2f} times the bound"
    if emulated():   # the products of all K, in k order from 0, then the elementwise scaling in float32
        acc = exact_order(x, w.T, np.zeros((M, N), np.float32), np.float32)
        want = np.float32(alpha) * acc + np.float32(beta) * c
        assert np.array_equal(host(out), want)
    device.racecheck(fn, (2,), (96,), args)


@pytest.mark.parametrize("M, N, K", [(48, 32, 64), (37, 21, 40)])
def test_a_matmul_through_shared_memory_at_any_shape(M, N, K, rng):
    """__half tiles staged in __shared__ memory by a block of 4 warps, zero-padded at the edges, the
    result staged too; racecheck runs the threads and blocks in several orders."""
    x = rng.uniform(-1, 1, (M, K)).astype(np.float16)
    w = rng.uniform(-1, 1, (K, N)).astype(np.float16)
    out = device.empty((M, N))
    fn = active().get_function("matmul_half_shared")
    grid = (-(-N // 32), -(-M // 32))
    args = (device.asarray(x), device.asarray(w), out, M, N, K)
    fn(grid, (128,), args)
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    Kp = -(-K // 16) * 16
    bound = 2 * (Kp + 1) * U * (np.abs(x64) @ np.abs(w64))
    got = host(out).astype(np.float64)
    assert (np.abs(got - x64 @ w64) <= bound).all()
    if emulated():
        xp = np.zeros((M, Kp), np.float16)
        xp[:, :K] = x
        wp = np.zeros((Kp, N), np.float16)
        wp[:K] = w
        assert np.array_equal(host(out), exact_order(xp, wp, np.zeros((M, N), np.float32), np.float32))
    device.racecheck(fn, grid, (128,), args)


def test_racecheck_finds_a_missing_barrier_before_load_matrix_sync(rng):
    """Without the __syncthreads() between staging the tiles and loading them, a warp's load_matrix_sync
    reads what the other warps have not written yet: the orders disagree."""
    M, N, K = 32, 32, 32
    x = rng.uniform(-1, 1, (M, K)).astype(np.float16)
    w = rng.uniform(-1, 1, (K, N)).astype(np.float16)
    racy = device.load_module(WMMA, options=("-DWMMA_MISSING_SYNC",), backend="cpu").get_function("matmul_half_shared")
    with pytest.raises(device.RaceError, match="matmul_half_shared"):
        device.racecheck(racy, (1, 1), (128,), (x, w, np.zeros((M, N), np.float32), M, N, K))


def test_elementwise_operations_on_a_half_accumulator(rng):
    """relu(a @ b) * scale applied to every x[] of every lane: the whole tile once (stored col-major)."""
    a = rng.uniform(-2, 2, (16, 16)).astype(np.float16)
    b = rng.uniform(-2, 2, (16, 16)).astype(np.float16)
    d = device.empty((256,), np.float16)
    sizes = device.zeros((3,), np.int32)
    active().get_function("relu_scaled")((1,), (32,), (device.asarray(a), device.asarray(b), d, 0.5, sizes))
    acc = exact_order(a, b, np.zeros((16, 16), np.float32), np.float16).astype(np.float32)
    want = (np.maximum(acc, 0) * np.float32(np.float16(0.5))).astype(np.float16)   # __hmul: exact, rounded once
    got = host(d).reshape(16, 16).T   # (col-major)
    if emulated():
        assert np.array_equal(got, want)
        # the layout here: each of the 256 elements in exactly one lane (NVIDIA's __half a/b hold 16, twice each)
        assert host(sizes).tolist() == [8, 8, 8]
    else:
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        ref = np.maximum(a64 @ b64, 0) * 0.5   # (a GPU may accumulate in __half: 17 of its roundings, and 1 more)
        assert (np.abs(got.astype(np.float64) - ref) <= 18 * 2.0**-11 * (np.abs(a64) @ np.abs(b64)) + 2.0**-24).all()


def test_an_accumulator_used_before_it_is_set_is_nan():
    """No fill_fragment: NaN on the CPU backend (fragments start as 0xff bytes), not the zeros a stack
    might happen to hold (on a GPU: whatever the registers held). `fragment<...> f{};` too, though C++
    zeroes NVIDIA's aggregate fragments: nothing in C++ tells it from `fragment<...> f;`, and NaN is loud
    where zeros would hide a missing fill_fragment."""
    d, braces = np.zeros(256, np.float32), np.zeros(256, np.float32)
    on_cpu().get_function("unset_accumulator")((1,), (32,), (d, braces))
    assert np.isnan(d).all() and np.isnan(braces).all()


# ------------------------------------------------------------------------------------------------
# Misuse: clear errors on the CPU backend and through the stand-in (on a GPU: a hang or garbage)
# ------------------------------------------------------------------------------------------------
BACKENDS = ["cpu", "active"]


def kernel_module(which):
    if which == "active":
        if device.name == "cpu":
            pytest.skip("the active backend is the CPU backend (tested as 'cpu')")
        if on_a_gpu():
            pytest.skip("on a GPU these bugs hang or give garbage")
        return active()
    return on_cpu()


def kernel_errors(which):
    kernel_module(which)   # (skips where the backend cannot say)
    if which == "active":
        return (_cupy().cuda.driver.CUDADriverError,)
    return (device.KernelError,)


def line_of(text):
    return 1 + WMMA.read_text().splitlines().index(text)


def launch(which, name, block, *args):
    mod = kernel_module(which)
    arrays = [device.asarray(a) if which == "active" and isinstance(a, np.ndarray) else a for a in args]
    mod.get_function(name)((1,), block, tuple(arrays))


@pytest.mark.parametrize("which", BACKENDS)
def test_a_lane_that_skips_mma_sync_and_exits_is_a_deadlock_naming_the_call(which):
    a, d = np.ones(256, np.float16), np.zeros(256, np.float32)
    line = line_of("        wmma::mma_sync(acc, fa, fb, acc);   // the call lane `skipper` skips")
    with pytest.raises(kernel_errors(which), match=rf"deadlock in block \(0,0,0\): thread 0 waits at wmma::mma_sync "
                                                   rf"\(line {line}\), but lane 31 of its warp \(thread 31\) exited "
                                                   rf"without calling it\. The warp matrix functions are warp "
                                                   rf"collectives: all 32 lanes"):
        launch(which, "lane_skips_mma", (32,), a, d, 31, 0)


@pytest.mark.parametrize("which", BACKENDS)
def test_a_lane_that_skips_mma_sync_and_goes_on_is_an_error_naming_both_calls(which):
    a, d = np.ones(256, np.float16), np.zeros(256, np.float32)
    mma = line_of("        wmma::mma_sync(acc, fa, fb, acc);   // the call lane `skipper` skips")
    store = mma + 2
    assert "store_matrix_sync" in WMMA.read_text().splitlines()[store - 1]
    with pytest.raises(kernel_errors(which), match=rf"the lanes of warp 0 meet at different warp matrix calls: lane 0 "
                                                   rf"\(thread 0\) calls wmma::mma_sync at line {mma}, lane 7 "
                                                   rf"\(thread 7\) calls wmma::store_matrix_sync at line {store}"):
        launch(which, "lane_skips_mma", (64,), a, d, 7, 1)


def test_a_lane_at_another_collective_is_an_error(tmp_path):
    path = tmp_path / "wmma_and_shuffle.cu"
    path.write_text("#include <mma.h>\nusing namespace nvcuda;\n"
                    'extern "C" __global__ void k(const __half* a, float* d) {\n'
                    "    wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> fa;\n"
                    "    if (threadIdx.x == 3) { __syncwarp(); return; }\n"
                    "    wmma::load_matrix_sync(fa, a, 16);\n}\n")
    fn = device.load_module(path, backend="cpu").get_function("k")
    with pytest.raises(device.KernelError, match=r"the lanes of warp 0 meet at different warp collectives: lane 0 "
                                                 r"\(thread 0\) calls wmma::load_matrix_sync \(line 6\), lane 3 "
                                                 r"\(thread 3\) calls __syncwarp"):
        fn((1,), (32,), (np.ones(256, np.float16), np.zeros(256, np.float32)))


@pytest.mark.parametrize("which", BACKENDS)
def test_a_misaligned_pointer_names_the_argument_and_element(which):
    a, d = np.ones(1024, np.float16), np.zeros(256, np.float32)
    with pytest.raises(kernel_errors(which), match=r"wmma::load_matrix_sync: the pointer is element 8 of `a` "
                                                   r"\(argument 0\), 16 bytes from the start of its allocation: not a "
                                                   r"multiple of 32\. CUDA requires a 256-bit \(32-byte\) aligned "
                                                   r"pointer"):
        launch(which, "load_at", (32,), a, 8, 16, d, 16)
    launch(which, "load_at", (32,), a, 16, 16, d, 16)   # 32 bytes in: aligned


def test_alignment_is_measured_from_the_allocation_as_on_a_gpu():
    """A NumPy array stands for a cudaMalloc'd block (256-byte aligned), whatever NumPy's own 16-byte
    alignment: a fresh array is aligned, a view is as aligned as its offset in the array it views."""
    store = np.ones(2048 + 8, np.float16)
    d = np.zeros(256, np.float32)
    fn = on_cpu().get_function("load_at")
    for start in (0, 8, 16):
        fresh = store[start:start + 1024].copy()
        fn((1,), (32,), (fresh, 0, 16, d, 16))
    fn((1,), (32,), (store[16:], 0, 16, d, 16))
    with pytest.raises(device.KernelError, match=r"element 0 of `a` \(argument 0\), 16 bytes from the start of its "
                                                 r"allocation"):
        fn((1,), (32,), (store[8:], 0, 16, d, 16))


def test_a_misaligned_tile_in_shared_memory_names_the_variable(tmp_path):
    path = tmp_path / "shared_tile.cu"
    path.write_text("#include <mma.h>\nusing namespace nvcuda;\n"
                    'extern "C" __global__ void k(float* d, int offset) {\n'
                    "    __shared__ __align__(32) __half tile[16 * 16 + 16];\n"
                    "    for (int i = threadIdx.x; i < 16 * 16 + 16; i += 32) tile[i] = __float2half(1.0f);\n"
                    "    __syncwarp();\n"
                    "    wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> fa;\n"
                    "    wmma::load_matrix_sync(fa, tile + offset, 16);\n"
                    "    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;\n"
                    "    wmma::fill_fragment(acc, 0.0f);\n"
                    "    wmma::store_matrix_sync(d, acc, 16, wmma::mem_row_major);\n}\n")
    fn = device.load_module(path, backend="cpu").get_function("k")
    fn((1,), (32,), (np.zeros(256, np.float32), 16))
    with pytest.raises(device.KernelError, match=r"wmma::load_matrix_sync: the pointer is 16 bytes into the shared "
                                                 r"memory variable `__half tile\[16\*16\+16\]`: not a multiple of 32"):
        fn((1,), (32,), (np.zeros(256, np.float32), 8))


@pytest.mark.parametrize("which", BACKENDS)
def test_bad_ldm_is_an_error(which):
    a, d = np.ones(1024, np.float16), np.zeros(512, np.float32)
    with pytest.raises(kernel_errors(which), match=r"wmma::load_matrix_sync: ldm 12 is not a multiple of 8\. CUDA "
                                                   r"requires the stride between the tile's rows"):
        launch(which, "load_at", (32,), a, 0, 12, d, 16)
    with pytest.raises(kernel_errors(which), match=r"wmma::store_matrix_sync: ldm 18 is not a multiple of 4"):
        launch(which, "load_at", (32,), a, 0, 16, d, 18)
    with pytest.raises(kernel_errors(which), match=r"wmma::store_matrix_sync: ldm 8 is less than the 16 columns of "
                                                   r"the 16x16 tile \(mem_row_major\), so the tile's rows would overlap"):
        launch(which, "load_at", (32,), a, 0, 16, d, 8)
    launch(which, "load_at", (32,), a, 0, 24, d, 20)   # above 16, multiples of 8 and 4: fine


@pytest.mark.parametrize("which", BACKENDS)
def test_lane_dependent_arguments_are_an_error(which):
    a, d = np.ones(1024, np.float16), np.zeros(256, np.float32)
    with pytest.raises(kernel_errors(which), match=r"wmma::load_matrix_sync at line \d+: lane 0 \(thread 0\) passes "
                                                   r"the pointer 0x[0-9a-f]+, lane 16 \(thread 16\) passes the pointer "
                                                   r"0x[0-9a-f]+ \(\+512 bytes from lane 0's\)\. Every lane of the warp "
                                                   r"must pass the same arguments"):
        launch(which, "lane_dependent", (32,), a, d, 0)
    with pytest.raises(kernel_errors(which), match=r"wmma::fill_fragment at line \d+: lane 0 \(thread 0\) passes the "
                                                   r"value 0, lane 16 \(thread 16\) passes the value 1"):
        launch(which, "lane_dependent", (32,), a, d, 1)


@pytest.mark.parametrize("which", BACKENDS)
def test_a_partial_warp_is_an_error(which):
    a, d = np.ones(1024, np.float16), np.zeros(256, np.float32)
    with pytest.raises(kernel_errors(which), match=r"wmma::fill_fragment is a warp collective of all 32 lanes, and "
                                                   r"warp 1 of this block has only 16 \(the block's 48 threads"):
        launch(which, "load_at", (48,), a, 0, 16, d, 16)


@pytest.mark.parametrize("which", BACKENDS)
def test_a_tile_past_the_end_of_an_array_names_it_and_the_line(which):
    a, d = np.ones(1024, np.float16), np.zeros(256, np.float32)
    line = line_of("    wmma::load_matrix_sync(fa, a + a_off, lda);")
    with pytest.raises(kernel_errors(which), match=rf"out-of-bounds read of `a` \(argument 0\).* at wmma\.cu:{line}"
                       if which == "cpu" else r"out-of-bounds read of `a` \(argument 0\)"):
        launch(which, "load_at", (32,), a, 1024 - 128, 16, d, 16)


UNSUPPORTED = {
    "tf32": ("wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::row_major> f;",
             r"the CPU backend runs the shapes m16n16k16, m32n8k16 and m8n32k16"),
    "double": ("wmma::fragment<wmma::matrix_a, 16, 16, 16, double, wmma::row_major> f;",
               r"matrix_a and matrix_b fragments of __half and __nv_bfloat16 \(tf32, double, integer and sub-byte "
               r"fragments only on a GPU\)"),
    "bf16_accumulator": ("wmma::fragment<wmma::accumulator, 16, 16, 16, __nv_bfloat16> f;",
                         r"accumulators of float and __half"),
    "accumulator_with_layout": ("wmma::fragment<wmma::accumulator, 16, 16, 16, float, wmma::row_major> f;",
                                r"an accumulator has no layout parameter"),
    "no_layout": ("wmma::fragment<wmma::matrix_b, 16, 16, 16, __half> f;", r"wmma::row_major or wmma::col_major"),
    "bf16_into_half": ("wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> a;\n"
                       "    wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> b;\n"
                       "    wmma::fragment<wmma::accumulator, 16, 16, 16, __half> c;\n"
                       "    wmma::mma_sync(c, a, b, c);",
                       r"accumulators of float and __half|accumulates in float"),
}


@pytest.mark.parametrize("name", sorted(UNSUPPORTED))
def test_what_the_emulation_lacks_is_a_compile_error_saying_so(tmp_path, name):
    body, message = UNSUPPORTED[name]
    path = tmp_path / f"{name}.cu"
    path.write_text(f'#include <mma.h>\nusing namespace nvcuda;\nextern "C" __global__ void k(float* x) {{\n'
                    f"    {body}\n    x[0] = 1.0f;\n}}\n")
    with pytest.raises(device.CompileError, match=message):
        device.load_module(path, backend="cpu")
