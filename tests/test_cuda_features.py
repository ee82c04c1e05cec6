"""CUDA that real code is written in, on the CPU backend with the GPU's results, and compiled by
NVRTC (for sm_80 and sm_90, with NVIDIA's own headers) in the same test: each feature at odd sizes
against NumPy. The kernels are in tests/kernels/, written from CUDA's documentation."""
import ml_dtypes
import numpy as np
import pytest

from helpers.runtime import cuda_source, device, nvrtc_report
from helpers.runtime.cuda_source import REPO_ROOT

KERNELS = REPO_ROOT / "tests" / "kernels"


def load(name):
    return device.load_module(KERNELS / name, backend="cpu")


FEATURE_FILES = ["cooperative_groups.cu", "half_precision.cu", "headers_and_signatures.cu", "intrinsics.cu"]


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("name", FEATURE_FILES)
def test_nvrtc_compiles_the_feature_kernels(name, arch):
    rows = nvrtc_report.compile_file(KERNELS / name, arch)   # NVIDIA's headers, the file's own folder
    assert {r.kernel.partition("<")[0] for r in rows} >= {k for k in cuda_source.parse_kernels(
        (KERNELS / name).read_text())}


# ------------------------------------------------------------------------------------------------
# Cooperative groups
# ------------------------------------------------------------------------------------------------
def test_cg_thread_block_describes_itself():
    blocks, threads = 3, 96
    out = np.full((blocks * threads, 5), -1, np.int32)
    load("cooperative_groups.cu").get_function("block_info")((blocks,), (threads,), (out,))
    t = np.arange(blocks * threads)
    expected = np.stack([t % threads, np.full_like(t, threads), t // threads, t % threads,
                         np.full_like(t, threads)], axis=1)
    assert np.array_equal(out, expected)


def test_cg_reduce_over_tiles_of_every_size():
    n, blocks, threads = 1000, 4, 256   # the last 24 threads read nothing
    x = np.random.default_rng(0).standard_normal(n).astype(np.float32)
    outs = [np.zeros(blocks * threads // size, np.float32) for size in (1, 2, 4, 8, 16, 32)]
    load("cooperative_groups.cu").get_function("reduce_tiles")((blocks,), (threads,), (x, *outs, n))
    padded = np.concatenate([x, np.zeros(blocks * threads - n, np.float32)]).astype(np.float64)
    for size, out in zip((1, 2, 4, 8, 16, 32), outs):
        ref = padded.reshape(-1, size).sum(axis=1)
        np.testing.assert_allclose(out, ref, atol=1e-5, rtol=1e-5, err_msg=f"tiles of {size}")


def test_cg_scans_and_every_functor():
    n, threads = 1001, 128
    x = np.random.default_rng(1).integers(-50, 50, n).astype(np.int32)
    out = np.zeros((n, 8), np.int32)
    load("cooperative_groups.cu").get_function("scans")((8,), (threads,), (x, out, n))
    padded = np.concatenate([x, np.zeros(8 * threads - n, np.int32)]).reshape(-1, 8)
    tiles = np.repeat(padded, 8, axis=0)[:n]      # each thread's tile
    rank = np.arange(n) % 8
    inclusive = np.cumsum(padded, axis=1).reshape(-1)[:n]
    assert np.array_equal(out[:, 0], inclusive)
    assert np.array_equal(out[:, 1], inclusive - x)
    assert np.array_equal(out[:, 2], tiles.min(axis=1)) and np.array_equal(out[:, 3], tiles.max(axis=1))
    assert np.array_equal(out[:, 4], np.bitwise_and.reduce(tiles, axis=1))
    assert np.array_equal(out[:, 5], np.bitwise_or.reduce(tiles, axis=1))
    assert np.array_equal(out[:, 6], np.bitwise_xor.reduce(tiles, axis=1))
    # max_abs folds in rank order: max(|max(|a|, |b|)|, |c|) = the largest |value|
    assert np.array_equal(out[:, 7], np.abs(tiles).max(axis=1))
    assert rank.max() == 7


def test_cg_tile_collectives():
    threads = 64
    x = np.random.default_rng(2).integers(0, 100, 2 * threads).astype(np.int32)
    out = np.zeros((2 * threads, 8), np.int32)
    load("cooperative_groups.cu").get_function("tile_collectives")((2,), (threads,), (x, out))
    tiles = x.reshape(-1, 16)
    for i in range(2 * threads):
        t, r = tiles[i // 16], i % 16
        assert out[i, 0] == t[3]
        assert out[i, 1] == (t[r - 2] if r >= 2 else t[r])
        assert out[i, 2] == (t[r + 5] if r + 5 < 16 else t[r])
        assert out[i, 3] == t[r ^ 1]
        assert out[i, 4] == int((t > 90).any()) and out[i, 5] == 1
        assert out[i, 6] == sum(1 << k for k in range(16) if t[k] % 2 == 0)
        assert out[i, 7] == sum(1 << k for k in range(16) if t[k] % 3 == t[r] % 3)


def test_cg_dynamic_partition_and_coalesced_group():
    threads = 64
    x = np.arange(threads, dtype=np.int32) * 3 + 1
    out = np.zeros((threads, 3), np.int32)
    load("cooperative_groups.cu").get_function("dynamic_and_coalesced")((1,), (threads,), (x, out))
    t = np.arange(threads)
    assert np.array_equal(out[:, 0], np.repeat(x.reshape(-1, 4).sum(axis=1), 4))
    assert np.array_equal(out[:, 1], t % 4)
    odd_sums = {w: int(x[w * 32:(w + 1) * 32][1::2].sum()) for w in range(2)}
    expected = np.where(t % 2, np.array([odd_sums[w] for w in t // 32]) * 100 + (t % 32) // 2, -1)
    assert np.array_equal(out[:, 2], expected)


# ------------------------------------------------------------------------------------------------
# 16-bit floats: cuda_fp16.h and cuda_bf16.h
# ------------------------------------------------------------------------------------------------
def all_values(dtype):
    """Every non-NaN value of a 16-bit float type, sorted, as float64 (infinities included)."""
    v = np.arange(2**16, dtype=np.uint16).view(dtype).astype(np.float64)
    return np.unique(v[~np.isnan(v)])


def round_to(dtype, x, mode):
    """x (float64) rounded to `dtype` by CUDA's mode: rn (nearest, ties to even), rz, rd, ru."""
    table = all_values(dtype)
    finite_max = table[-2]
    hi_index = np.clip(np.searchsorted(table, x, side="left"), 0, len(table) - 1)
    up = table[hi_index]                                          # smallest value >= x
    down = table[np.clip(np.searchsorted(table, x, side="right") - 1, 0, len(table) - 1)]   # largest <= x
    signed = lambda r: np.where(r == 0, np.copysign(0.0, x), r)  # noqa: E731  (a zero keeps x's sign)
    if mode == "ru":
        return signed(up)
    if mode == "rd":
        return signed(down)
    if mode == "rz":
        return signed(np.where(x >= 0, down, up))
    # nearest: the closer of down and up, ties to the even bit pattern; past the largest finite value
    # by half a step or more (IEEE 754: the step beyond it), infinity
    d_bits = down.astype(dtype).view(np.uint16)
    pick_up = (up - x < x - down) | ((up - x == x - down) & (d_bits % 2 == 1))
    out = np.where(pick_up, up, down)
    step = finite_max - table[-3]
    out = np.where(np.abs(x) >= finite_max + step / 2, np.copysign(np.inf, x), out)
    return signed(np.where(x == down, x, out))


def conversion_inputs():
    rng = np.random.default_rng(3)
    x = np.concatenate([
        rng.standard_normal(400) * np.exp2(rng.integers(-30, 20, 400)),   # every exponent, subnormals too
        1 + (np.arange(1, 40) * 2 - 1) * 2.0**-11,                         # halfway between halves near 1
        1 + (np.arange(1, 40) * 2 - 1) * 2.0**-8,                          # ... and between bfloat16s
        [0.0, -0.0, 65504.0, 65519.0, 65520.0, 1e6, -1e6, 6e-8, -6e-8, 3e-8, 1e-9, np.inf, -np.inf],
        rng.uniform(-1000, 1000, 460),
    ]).astype(np.float32)
    return x[:1001]


def test_conversions_round_as_cuda_defines():
    x = conversion_inputs()
    n = x.size
    h = np.zeros(4 * n, np.float16)
    b = np.zeros(4 * n, ml_dtypes.bfloat16)
    back = np.zeros(2 * n, np.float32)
    load("half_precision.cu").get_function("convert")((ceil(n, 128),), (128,), (x, h, b, back, n))
    for k, mode in enumerate(("rn", "rz", "rd", "ru")):
        for name, got, dtype in (("half", h, np.float16), ("bfloat16", b, ml_dtypes.bfloat16)):
            want = round_to(dtype, x.astype(np.float64), mode).astype(dtype)
            same = got[k::4].view(np.uint16) == want.view(np.uint16)
            assert same.all(), f"{name} {mode}: x={x[~same][:5]} got {got[k::4][~same][:5]} want {want[~same][:5]}"
    assert np.array_equal(h[0::4].view(np.uint16), x.astype(np.float16).view(np.uint16))   # NumPy agrees
    assert np.array_equal(b[0::4].view(np.uint16), x.astype(ml_dtypes.bfloat16).view(np.uint16))
    assert np.array_equal(back[0::2], h[0::4].astype(np.float32))
    assert np.array_equal(back[1::2], b[0::4].astype(np.float32))


def ceil(n, per):
    return -(-n // per)


def test_half_arithmetic_rounds_each_operation_once():
    n = 1001
    rng = np.random.default_rng(4)
    a, b = (rng.uniform(-8, 8, n).astype(np.float16) for _ in range(2))
    scale = 0.3
    out = np.zeros(8 * n, np.float16)
    load("half_precision.cu").get_function("half_arith")((ceil(n, 128),), (128,), (a, b, out, scale, n))
    a64, b64, s64 = a.astype(np.float64), b.astype(np.float64), float(np.float16(scale))
    want = [a64 + b64, a64 - b64, a64 * b64, a64 * b64 + s64, np.maximum(a64, b64), np.minimum(a64, b64),
            (a64 < b64).astype(np.float64), -np.abs(a64)]
    for k, w in enumerate(want):   # each exact in float64, then rounded once
        assert np.array_equal(out[k::8], round_to(np.float16, w, "rn").astype(np.float16)), f"operation {k}"


def test_pairs_and_bfloat16_arithmetic():
    n = 257
    rng = np.random.default_rng(5)
    a = rng.uniform(-4, 4, 2 * n).astype(np.float16)
    b = rng.uniform(-4, 4, 2 * n).astype(ml_dtypes.bfloat16)
    ha, bb = np.zeros(4 * n, np.float16), np.zeros(2 * n, ml_dtypes.bfloat16)
    bs = np.zeros(2 * n, ml_dtypes.bfloat16)
    load("half_precision.cu").get_function("pairs")((ceil(n, 64),), (64,), (a, b, ha, bb, bs, n))
    a64, b64 = a.astype(np.float64).reshape(n, 2), b.astype(np.float64).reshape(n, 2)
    r = lambda dtype, v: round_to(dtype, v, "rn").astype(dtype)  # noqa: E731
    assert np.array_equal(ha.reshape(n, 2, 2)[:, 0], r(np.float16, 2 * a64))
    assert np.array_equal(ha.reshape(n, 2, 2)[:, 1], r(np.float16, a64 * a64[:, ::-1]))
    assert np.array_equal(bb.reshape(n, 2).view(np.uint16), r(ml_dtypes.bfloat16, b64 * b64 + b64).view(np.uint16))
    assert np.array_equal(bs[0::2].view(np.uint16), r(ml_dtypes.bfloat16, b64[:, 0] + b64[:, 1]).view(np.uint16))
    assert np.array_equal(bs[1::2].view(np.uint16), r(ml_dtypes.bfloat16, b64[:, 0] * b64[:, 1]).view(np.uint16))


def test_atomic_add_on_16_bit_floats():
    n, k = 1001, 7
    h, b = np.zeros(k, np.float16), np.zeros(k, ml_dtypes.bfloat16)
    load("half_precision.cu").get_function("atomic_counts")((ceil(n, 128),), (128,), (h, b, n, k))
    counts = np.bincount(np.arange(n) % k)   # at most 143: exact in both formats
    assert np.array_equal(h.astype(np.int64), counts) and np.array_equal(b.astype(np.int64), counts)


def test_16_bit_arrays_are_checked_at_launch():
    fn = load("half_precision.cu").get_function("half_arith")
    a = np.zeros(8, np.float16)
    with pytest.raises(device.LaunchError, match=r"expects a float16 array, got float32; convert it with "
                                                 r"\.astype\(np\.float16\)"):
        fn((1,), (8,), (a.astype(np.float32), a, a, 0.5, 8))
    pairs = load("half_precision.cu").get_function("pairs")
    b = np.zeros(16, ml_dtypes.bfloat16)
    with pytest.raises(device.LaunchError, match=r"expects a bfloat16 array, got float16; convert it with "
                                                 r"\.astype\(ml_dtypes\.bfloat16\)"):
        pairs((1,), (8,), (a.repeat(2), b.astype(np.float16), np.zeros(32, np.float16), b, b, 8))
    with pytest.raises(device.LaunchError, match=r"reads it as __half2, so its size must be a multiple of 2"):
        pairs((1,), (8,), (np.zeros(15, np.float16), b, np.zeros(32, np.float16), b, b, 8))


# ------------------------------------------------------------------------------------------------
# Null pointers
# ------------------------------------------------------------------------------------------------
def test_none_is_a_null_pointer():
    n = 1001
    x, bias = np.arange(n, dtype=np.float32), np.full(n, 0.5, np.float32)
    mod = load("half_precision.cu")
    out = np.zeros(n, np.float32)
    mod.get_function("add_bias")((ceil(n, 128),), (128,), (out, x, None, n))
    assert np.array_equal(out, x)
    mod.get_function("add_bias")((ceil(n, 128),), (128,), (out, x, bias, n))
    assert np.array_equal(out, x + 0.5)
    with pytest.raises(device.KernelError, match=r"read through a null pointer .*the argument passed as None is `bias`"):
        mod.get_function("add_bias_unchecked")((ceil(n, 128),), (128,), (out, x, None, n))
    device.racecheck(mod.get_function("add_bias"), (ceil(n, 128),), (128,), (out, x, None, n))


# ------------------------------------------------------------------------------------------------
# Local headers, C++ in signatures, templates
# ------------------------------------------------------------------------------------------------
def test_shared_memory_declared_in_a_header():
    n = 1001
    x = np.random.default_rng(6).standard_normal(n).astype(np.float32)
    out = np.zeros(8, np.float32)
    fn = load("headers_and_signatures.cu").get_function("block_sums")
    fn((8,), (128,), (x, out, n))
    padded = np.concatenate([x, np.zeros(8 * 128 - n, np.float32)]).astype(np.float64).reshape(8, 128)
    np.testing.assert_allclose(out, padded.sum(axis=1), atol=1e-5, rtol=1e-6)
    device.racecheck(fn, (8,), (128,), (x, out, n))


def test_typedefs_and_launch_bounds_expressions_are_read_as_the_compiler_reads_them():
    mod = load("headers_and_signatures.cu")
    sums, doubled = mod.get_function("block_sums"), mod.get_function("doubled")
    assert sums.kernel.describe() == "block_sums(const float* x, float* out, int n)"   # floatX, index_t
    assert doubled.kernel.describe() == "doubled(float* x, unsigned int n)"             # uint
    assert sums.kernel.max_threads == 128 and doubled.kernel.max_threads == 128      # (TILE*4), (TILE*TILE)/(4*2)
    assert ",".join(p.ctype for p in sums.kernel.params) == mod._library.signature("block_sums")
    x = np.arange(1001, dtype=np.float32)
    y = x.copy()
    doubled((8,), (128,), (y, 1001))
    assert np.array_equal(y, 2 * x)
    with pytest.raises(device.LaunchError, match=r"declared __launch_bounds__\(128\) but was launched with 256"):
        doubled((4,), (256,), (y, 1001))
    with pytest.raises(device.LaunchError, match=r"expects a float32 array, got float64"):
        doubled((8,), (128,), (x.astype(np.float64), 1001))


def test_template_kernels_come_from_the_files_name_expressions_line():
    mod = load("headers_and_signatures.cu")   # no name_expressions: the file lists scale_template<float>, <int>
    xi = np.arange(1001, dtype=np.int32)
    mod.get_function("scale_template<int>")((8,), (128,), (xi, 3, 1001))
    assert np.array_equal(xi, 3 * np.arange(1001))
    xf = np.ones(1001, np.float32)
    mod.get_function("scale_template<float>")((8,), (128,), (xf, 0.5, 1001))
    assert np.all(xf == 0.5)


def test_a_file_of_template_kernels_without_instantiations_says_what_to_pass(tmp_path):
    path = tmp_path / "only_templates.cu"
    path.write_text("template <typename T, int N>\n__global__ void fill(T* x) { x[threadIdx.x] = T(N); }\n")
    with pytest.raises(device.CompileError, match=r"only template kernels \(fill\): say which instantiations to "
                                                  r"compile, e\.g\. load_module\(\.\.\., name_expressions="
                                                  r"\['fill<float, float>'\]\)"):
        device.load_module(path, backend="cpu")


# ------------------------------------------------------------------------------------------------
# What only a GPU runs: a clear error, never a cryptic one
# ------------------------------------------------------------------------------------------------
GPU_ONLY = {
    "inline_ptx.cu": ('extern "C" __global__ void lane_ids(int* out) {\n    int lane;\n'
                      '    asm volatile("mov.u32 %0, %%laneid;" : "=r"(lane));\n    out[threadIdx.x] = lane;\n}\n',
                      r"inline PTX \(`asm\(\.\.\.\)`\) \(line 3\) runs only on a GPU"),
    "nested_launch.cu": ('extern "C" __global__ void child(float* x) { x[threadIdx.x] = 1.0f; }\n'
                         'extern "C" __global__ void parent(float* x) { child<<<1, 32>>>(x); }\n',
                         r"a kernel launch inside a kernel \(dynamic parallelism\) \(line 2\) runs only on a GPU"),
    "textures.cu": ('extern "C" __global__ void fetch(cudaTextureObject_t t, float* out) {\n'
                    '    out[threadIdx.x] = tex1Dfetch<float>(t, threadIdx.x);\n}\n',
                    r"textures and surfaces \(line 1\) runs only on a GPU: read the array through a plain pointer"),
    "async_copy.cu": ('#include <cuda/barrier>\nextern "C" __global__ void copy(const float* x, float* y) {\n'
                      '    __shared__ float tile[32];\n'
                      '    tile[threadIdx.x] = x[threadIdx.x];\n    __syncthreads();\n'
                      '    y[threadIdx.x] = tile[31 - threadIdx.x];\n}\n',
                      r"asynchronous copies \(cp\.async: cuda::memcpy_async, cuda::barrier, cuda::pipeline\) \(line 1\)"),
}


@pytest.mark.parametrize("name", sorted(GPU_ONLY))
def test_gpu_only_features_are_refused_by_name(tmp_path, name):
    source, message = GPU_ONLY[name]
    path = tmp_path / name
    path.write_text(source)
    with pytest.raises(device.CompileError, match=message):
        device.load_module(path, backend="cpu")
    if name in ("inline_ptx.cu", "async_copy.cu"):   # valid CUDA: NVRTC compiles them
        for arch in ("sm_80", "sm_90"):
            nvrtc_report.compile_file(path, arch)


def test_a_header_the_cpu_backend_lacks_is_named_with_what_it_has(tmp_path):
    path = tmp_path / "thrust_user.cu"
    path.write_text('#include <cub/cub.cuh>\nextern "C" __global__ void k(float* x) { x[0] = 1.0f; }\n')
    with pytest.raises(device.CompileError, match=r"includes cub/cub\.cuh, which the CPU backend does not provide\. "
                                                  r"Of CUDA's headers it has <cooperative_groups\.h>"):
        device.load_module(path, backend="cpu")


# ------------------------------------------------------------------------------------------------
# Intrinsics: integer, float, memory, warp, atomic, vector, timing
# ------------------------------------------------------------------------------------------------
def u32(v):
    return int(v) & 0xFFFFFFFF


def s32(v):
    v = u32(v)
    return v - (1 << 32) if v >> 31 else v


def test_integer_intrinsics():
    n = 1001
    rng = np.random.default_rng(7)
    a = rng.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32)
    b = rng.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32)
    a[:4], b[:4] = [0, 0xFFFFFFFF, 0x00800000, 1], [0, 0xFFFFFFFF, 0x00FFFFFF, 0]
    out = np.zeros((14, n), np.uint32)
    load("intrinsics.cu").get_function("integer_ops")((ceil(n, 128),), (128,), (a, b, out, n))
    for i in range(n):
        x, y = int(a[i]), int(b[i])
        sx24, sy24 = s32(x << 8) >> 8, s32(y << 8) >> 8         # the low 24 bits, sign-extended
        xy = (x << 32) | y
        bytes_ = [(x >> 8 * k) & 0xFF for k in range(4)] + [(y >> 8 * k) & 0xFF for k in range(4)]
        s = y % 37
        funnel = (y << 32) | x                                  # hi:lo = b:a, shifted by s & 31 (it wraps)
        shift_l = s & 31
        want = [u32(sx24 * sy24), u32((x & 0xFFFFFF) * (y & 0xFFFFFF)), (x * y) >> 32, int(f"{x:032b}"[::-1], 2),
                sum(bytes_[(0x5140 >> 4 * k) & 7] << 8 * k for k in range(4)),
                u32((funnel << shift_l) >> 32), u32(funnel >> shift_l),
                abs(s32(x) - s32(y)) + 7 & 0xFFFFFFFF,
                64 - (xy >> (y % 64)).bit_length(),
                (lambda v: (v & -v).bit_length())((xy << (x % 64)) & (2**64 - 1)),
                min(u32(s32(x)), y), max(u32(s32(x)), y), bin(xy).count("1"), 32 - x.bit_length()]
        got = [int(out[k, i]) for k in range(14)]
        assert got == want, f"a={x:#x} b={y:#x}: " + ", ".join(f"#{k} got {g:#x} want {w:#x}" for k, (g, w) in
                                                             enumerate(zip(got, want)) if g != w)


def test_float_intrinsics_round_as_defined():
    from fractions import Fraction
    n = 1001
    rng = np.random.default_rng(8)
    a = (rng.standard_normal(n) * 3).astype(np.float32)
    b = (rng.standard_normal(n) * 3).astype(np.float32)
    b[b == 0] = 1.0
    out = np.zeros((9, n), np.float32)
    ints = np.zeros(2 * n, np.int32)
    load("intrinsics.cu").get_function("float_ops")((ceil(n, 128),), (128,), (a, b, out, ints, n))
    a64, b64 = a.astype(np.float64), b.astype(np.float64)

    def correctly_rounded(value, exact):
        """value (float32) is the float32 nearest the exact rational `exact`."""
        v = np.float32(value)
        up, down = np.nextafter(v, np.float32(np.inf)), np.nextafter(v, np.float32(-np.inf))
        return abs(Fraction(float(v)) - exact) <= min(abs(Fraction(float(up)) - exact), abs(Fraction(float(down)) - exact))

    for i in range(n):   # division and subtraction: the exact rational result, rounded once
        assert correctly_rounded(out[0, i], Fraction(float(a[i])) / Fraction(float(b[i]))), (a[i], b[i], out[0, i])
        assert correctly_rounded(out[1, i], Fraction(float(a[i])) - Fraction(float(b[i])))
        r, x = Fraction(float(out[2, i])), Fraction(abs(float(b[i])))   # 1/sqrt(x): r within half an ulp
        half_ulp = (Fraction(float(np.nextafter(out[2, i], np.float32(np.inf)))) - r) / 2
        assert (r - half_ulp) ** 2 * x <= 1 <= (r + half_ulp) ** 2 * x, (b[i], out[2, i])
    assert np.array_equal(ints[0::2], np.floor((a * np.float32(7.5)).astype(np.float64)).astype(np.int32))
    assert np.array_equal(ints[1::2], np.ceil((a * np.float32(7.5)).astype(np.float64)).astype(np.int32))
    # math functions: CUDA bounds their error in ulps (sincospif 1, normcdff 5, erfinvf 2, rcbrtf 1, norm3df 3)
    from math import erfc
    erfinv = np.vectorize(lambda y: _erfinv(y))
    refs = [np.sin(np.pi * a64), np.cos(np.pi * a64), 0.5 * np.vectorize(erfc)(-a64 / np.sqrt(2)),
            erfinv(a64 / 10), 1 / np.cbrt(b64), np.sqrt(a64**2 + b64**2 + 2.25)]
    for k, (ref, ulps) in enumerate(zip(refs, (1, 1, 5, 2, 1, 3)), start=3):
        spacing = np.spacing(np.abs(ref).astype(np.float32)).astype(np.float64)
        err = np.abs(out[k].astype(np.float64) - ref)
        # (sinpi and cospi near their zeros: an absolute ulp of the arguments' scale)
        allowed = (ulps + 0.5) * np.maximum(spacing, np.float64(2**-24) if k in (3, 4) else 0)
        assert (err <= allowed).all(), f"function {k}: worst {np.max(err / np.maximum(spacing, 1e-45)):.1f} ulps"


def _erfinv(y):
    """erf^-1 by Newton's method in float64 (a reference for erfinvf)."""
    from math import erf, exp, pi, sqrt
    x = 0.0
    for _ in range(60):
        x -= (erf(x) - y) / (2 / sqrt(pi) * exp(-x * x))
    return x


def test_memory_intrinsics_fences_and_clocks():
    n = 1001
    x = np.random.default_rng(9).standard_normal(n).astype(np.float32)
    y, info = np.zeros(n, np.float32), np.zeros(3, np.uint64)
    load("intrinsics.cu").get_function("memory_ops")((ceil(n, 64),), (64,), (x, y, info, n))
    assert np.array_equal(y, (((x + x) + x) + x) + x)   # five loads of the same value, added in order
    assert info.tolist() == [4, 1, 1]   # consecutive shared floats 4 bytes apart; clock64 does not go back


def test_warp_match_and_reduce():
    threads = 96
    x = np.random.default_rng(10).integers(0, 3_000_000, threads).astype(np.uint32)
    x[64:] = 1_500_000 + np.arange(32, dtype=np.uint32)   # the third warp: one value of v / 1e6
    out = np.zeros((threads, 8), np.uint32)
    load("intrinsics.cu").get_function("warp_ops")((1,), (threads,), (x, out))
    for w in range(3):
        v = x[32 * w:32 * (w + 1)].astype(np.int64)
        for lane in range(32):
            row = out[32 * w + lane]
            assert row[0] == sum(1 << k for k in range(32) if v[k] % 5 == v[lane] % 5)
            uniform = len(set((v // 1_000_000).tolist())) == 1
            assert (row[1], row[2]) == ((0xFFFFFFFF, 1) if uniform else (0, 0))
            assert row[3] == (v % 1000).sum() and row[4] == v.min() and row[5] == v.max()
            assert row[6] == np.bitwise_and.reduce(v) ^ np.bitwise_or.reduce(v)
            assert row[7] == u32(int(np.bitwise_xor.reduce(v)) + int(v.min()) - 50)


def test_atomics_of_every_family():
    n = 1003
    x = np.random.default_rng(11).integers(1, 2**31, n).astype(np.uint32)
    counters = np.array([0, 0, 0xFFFFFFFF, 0, 0], np.uint32)
    wide = np.array([2**64 - 1, 0], np.uint64)
    scoped = np.zeros(2, np.int32)
    load("intrinsics.cu").get_function("atomic_ops")((ceil(n, 128),), (128,), (x, counters, wide, scoped, n))
    inc, dec = 0, 0
    for _ in range(n):   # CUDA's definitions: inc wraps past val to 0, dec wraps 0 (or above val) to val
        inc = 0 if inc >= 9 else inc + 1
        dec = 9 if dec == 0 or dec > 9 else dec - 1
    bits = sum(1 << b for b in set((x % 32).tolist()))
    assert counters.tolist() == [inc, dec, 0xFFFFFFFF & ~bits, bits, int(np.bitwise_xor.reduce(x))]
    assert wide.tolist() == [int(x.min()) * 3_000_000_000, int(x.max()) * 3_000_000_000]
    assert scoped.tolist() == [n, 2 * n]


def test_vector_types_of_every_component():
    n = 1001
    rng = np.random.default_rng(12)
    pixels = rng.integers(0, 256, 4 * n).astype(np.uint8)
    pairs = rng.integers(-30000, 30000, 2 * n).astype(np.int16)
    out = np.zeros(2 * n, np.int64)
    load("intrinsics.cu").get_function("vectors")((ceil(n, 128),), (128,), (pixels, pairs, out, n))
    assert np.array_equal(out[0::2], pixels.reshape(n, 4).astype(np.int64).sum(axis=1))
    assert np.array_equal(out[1::2], pairs[0::2].astype(np.int64) * pairs[1::2])
    with pytest.raises(device.LaunchError, match=r"reads it as uchar4, so its size must be a multiple of 4"):
        load("intrinsics.cu").get_function("vectors")((1,), (32,), (pixels[:-1], pairs, out, 8))


def test_more_atomic_families_and_barrier_reductions():
    n, threads = 1003, 128
    blocks = ceil(n, threads)
    i = np.array([0, 0, -1, 2**31 - 1, -1, 0], np.int32)
    ull = np.array([0, 2**64 - 1, 0], np.uint64)
    ll = np.array([2**63 - 1, -(2**63)], np.int64)
    f, d, counts = np.zeros(2, np.float32), np.zeros(2, np.float64), np.zeros(blocks, np.int32)
    load("intrinsics.cu").get_function("more_atomics")((blocks,), (threads,), (i, ull, ll, f, d, counts, n))
    assert i[:2].tolist() == [n, -n] and 0 <= i[2] < n and i[3:].tolist() == [0, n - 1, 2 * n]
    assert ull.tolist() == [n << 33, 0, 2**64 - 1] and ll.tolist() == [-(n - 1) * 5_000_000_000, 0]
    assert f.tolist() == [n / 2, n / 4] and d.tolist() == [n / 2, n / 8]   # sums of powers of two: exact
    assert counts.tolist() == [ceil(threads, 3) * 100 + 11] * blocks


def test_16_bit_math_within_one_unit_of_the_last_place():
    n = 501
    rng = np.random.default_rng(13)
    h = rng.uniform(-4, 4, 2 * n).astype(np.float16)
    b = rng.uniform(-4, 4, n).astype(ml_dtypes.bfloat16)
    h[h == 0], b[b == 0] = 1, 1
    hout, bout = np.zeros(12 * n, np.float16), np.zeros(6 * n, ml_dtypes.bfloat16)
    load("half_precision.cu").get_function("half_math")((ceil(n, 64),), (64,), (h, b, hout, bout, n))
    functions = [np.exp, lambda v: np.log(np.abs(v)), lambda v: np.sqrt(np.abs(v)),
                 lambda v: 1 / np.sqrt(np.abs(v)), np.sin, np.cos]
    for name, x, got, dtype, per in (("half2", h.reshape(n, 2), hout.reshape(n, 6, 2), np.float16, 2),
                                     ("bfloat16", b.reshape(n, 1), bout.reshape(n, 6, 1), ml_dtypes.bfloat16, 1)):
        for k, f in enumerate(functions):
            ref = f(x.astype(np.float64))
            nearest = round_to(dtype, ref, "rn").astype(np.float64)
            ulp = np.abs(round_to(dtype, np.nextafter(np.abs(nearest), np.inf), "ru") - np.abs(nearest))
            err = np.abs(got[:, k].astype(np.float64) - ref)
            assert (err <= np.maximum(ulp, 2.0**-24)).all(), f"{name} function {k}: {err.max()} > an ulp"


def test_grid_wide_sync_needs_a_cooperative_launch(tmp_path):
    path = tmp_path / "grid_sync.cu"
    path.write_text('#include <cooperative_groups.h>\nnamespace cg = cooperative_groups;\n'
                    'extern "C" __global__ void two_phases(float* x) {\n'
                    '    x[blockIdx.x * blockDim.x + threadIdx.x] += 1.0f;\n    cg::this_grid().sync();\n}\n')
    fn = device.load_module(path, backend="cpu").get_function("two_phases")
    with pytest.raises(device.KernelError, match=r"this_grid\(\)\.sync\(\) needs a cooperative launch .* split the "
                                                 r"kernel in two launches"):
        fn((2,), (32,), (np.zeros(64, np.float32),))
    assert cuda_source.kernels_needing_fibers(path) == {"two_phases"}


def _parts(x, bits, signed):
    """The 32 // bits parts of each uint32 in x, low part first, as int64."""
    parts = np.stack([(x.astype(np.int64) >> (bits * k)) & ((1 << bits) - 1) for k in range(32 // bits)])
    return np.where(signed & (parts >> (bits - 1) == 1), parts - (1 << bits), parts)


def _pack(parts, bits):
    mask = (1 << bits) - 1
    return sum((parts[k] & mask) << (bits * k) for k in range(len(parts))).astype(np.uint32)


def _simd_reference(name, x, y, bits):
    """What the CUDA Math API defines for the SIMD intrinsic `name` on parts of `bits` bits."""
    sa, sb, ua, ub = _parts(x, bits, True), _parts(y, bits, True), _parts(x, bits, False), _parts(y, bits, False)
    lo, hi, top = -(1 << (bits - 1)), (1 << (bits - 1)) - 1, (1 << bits) - 1
    S, U = (lambda v: np.clip(v, lo, hi)), (lambda v: np.clip(v, 0, top))  # noqa: E731
    ones = lambda c: np.where(c, top, 0)  # noqa: E731
    table = {"__vabs": np.abs(sa), "__vabsss": S(np.abs(sa)), "__vneg": -sa, "__vnegss": S(-sa),
             "__vabsdiffs": np.abs(sa - sb), "__vabsdiffu": np.abs(ua - ub), "__vadd": ua + ub, "__vsub": ua - ub,
             "__vaddss": S(sa + sb), "__vsubss": S(sa - sb), "__vaddus": U(ua + ub), "__vsubus": U(ua - ub),
             "__vavgs": (sa + sb + 1) >> 1, "__vavgu": (ua + ub + 1) >> 1, "__vhaddu": (ua + ub) >> 1,
             "__vmaxs": np.maximum(sa, sb), "__vmaxu": np.maximum(ua, ub), "__vmins": np.minimum(sa, sb),
             "__vminu": np.minimum(ua, ub)}
    for cmp, (s_op, u_op) in {"eq": (np.equal, np.equal), "ne": (np.not_equal, np.not_equal),
                              "ge": (np.greater_equal,) * 2, "gt": (np.greater,) * 2,
                              "le": (np.less_equal,) * 2, "lt": (np.less,) * 2}.items():
        for suffix, args in (("s", (sa, sb)), ("u", (ua, ub))) if cmp not in ("eq", "ne") else (("", (ua, ub)),):
            table[f"__vcmp{cmp}{suffix}"] = ones(s_op(*args))
            table[f"__vset{cmp}{suffix}"] = s_op(*args).astype(np.int64)
    if name in ("__vsads", "__vsadu"):
        d = np.abs(sa - sb) if name == "__vsads" else np.abs(ua - ub)
        return d.sum(axis=0).astype(np.uint32)
    return _pack(table[name], bits)


SIMD = ["__vabs", "__vabsss", "__vneg", "__vnegss", "__vabsdiffs", "__vabsdiffu", "__vadd", "__vsub", "__vaddss",
        "__vsubss", "__vaddus", "__vsubus", "__vavgs", "__vavgu", "__vhaddu", "__vmaxs", "__vmaxu", "__vmins",
        "__vminu", "__vcmpeq", "__vcmpne", "__vcmpges", "__vcmpgeu", "__vcmpgts", "__vcmpgtu", "__vcmples",
        "__vcmpleu", "__vcmplts", "__vcmpltu", "__vseteq", "__vsetne", "__vsetges", "__vsetgeu", "__vsetgts",
        "__vsetgtu", "__vsetles", "__vsetleu", "__vsetlts", "__vsetltu", "__vsads", "__vsadu"]


def test_simd_in_a_word_and_packed_dot_products():
    n = 1001
    rng = np.random.default_rng(14)
    x = rng.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32)
    y = rng.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32)
    x[:6] = [0x80008000, 0x7F7F7F7F, 0, 0xFFFFFFFF, 0x80808080, 0x12345678]   # the parts' extremes
    y[:6] = [0x80008000, 0x01010101, 0, 0x00010001, 0x7F7F7F7F, 0x12345678]
    out = np.zeros((2 * len(SIMD) + 6, n), np.uint32)
    load("intrinsics.cu").get_function("simd_ops")((ceil(n, 128),), (128,), (x, y, out, n))
    for k, name in enumerate(SIMD):
        for j, bits in enumerate((16, 8)):
            want = _simd_reference(name, x, y, bits)
            got = out[2 * k + j]
            bad = np.flatnonzero(got != want)
            assert not bad.size, (f"{name}{2 if bits == 16 else 4}({x[bad[0]]:#010x}, {y[bad[0]]:#010x}) = "
                                  f"{got[bad[0]]:#010x}, want {want[bad[0]]:#010x}")
    s8x, s8y, u8x, u8y = _parts(x, 8, True), _parts(y, 8, True), _parts(x, 8, False), _parts(y, 8, False)
    s16x, u16x = _parts(x, 16, True), _parts(x, 16, False)
    dots = [(s8x * s8y).sum(axis=0) - 5, (u8x * u8y).sum(axis=0) + 5,
            (s16x * s8y[:2]).sum(axis=0) + 7, (s16x * s8y[2:]).sum(axis=0) + 7,
            (u16x * u8y[:2]).sum(axis=0) + 7, (u16x * u8y[2:]).sum(axis=0) + 7]
    for k, want in enumerate(dots):   # __dp4a (signed, unsigned), __dp2a_lo/_hi (signed, unsigned)
        assert np.array_equal(out[2 * len(SIMD) + k], (want & 0xFFFFFFFF).astype(np.uint32)), f"dot product {k}"


def test_saturated_half_arithmetic_and_bessel_functions():
    n = 1001
    x = np.linspace(-12, 12, n).astype(np.float32)
    out = np.zeros((n, 4), np.float32)
    load("intrinsics.cu").get_function("saturated_and_bessel")((ceil(n, 128),), (128,), (x, out, n))
    h = (x / np.float32(4)).astype(np.float16).astype(np.float64)
    assert np.array_equal(out[:, 0], np.clip(round_to(np.float16, h + 0.25, "rn"), 0, 1).astype(np.float32))
    assert np.array_equal(out[:, 1], np.clip(round_to(np.float16, h * h, "rn"), 0, 1).astype(np.float32))
    k = np.arange(60)[:, None]
    half = np.abs(x.astype(np.float64)) / 2
    lgamma = np.vectorize(__import__("math").lgamma)
    i0 = np.exp(2 * k * np.log(np.maximum(half, 1e-300)) - 2 * lgamma(k + 1)).sum(axis=0)
    i1 = np.sign(x) * np.exp((2 * k + 1) * np.log(np.maximum(half, 1e-300)) - lgamma(k + 1) - lgamma(k + 2)).sum(axis=0)
    np.testing.assert_allclose(out[:, 2], i0, rtol=6e-7)   # CUDA: within 6 and 7 ulps; here within 5
    np.testing.assert_allclose(out[:, 3], i1, rtol=6e-7, atol=1e-30)


def _dpx_reference(x, y, z, bits, signed, relu=False):
    """max, min, max3, min3, addmax, addmin (ReLU'd) on values of `bits` (32, or 16 per halfword)."""
    if bits == 32:
        parts = [v.astype(np.int64) if signed else v.view(np.uint32).astype(np.int64) for v in (x, y, z)]
        parts = [p[None] for p in parts]
    else:
        parts = [_parts(v.view(np.uint32), 16, signed) for v in (x, y, z)]
    a, b, c = parts
    width = 1 << bits
    wrap = (a + b) % width
    s = np.where(signed & (wrap >= width // 2), wrap - width, wrap)
    results = [np.maximum(a, b), np.minimum(a, b), np.maximum(np.maximum(a, b), c), np.minimum(np.minimum(a, b), c),
               np.maximum(s, c), np.minimum(s, c)]
    if relu:
        results = [np.maximum(r, 0) for r in results]
    return [(r[0] if bits == 32 else _pack(r, 16)).astype(np.int64).astype(np.uint32).view(np.int32) if bits == 16
            else (r[0] & 0xFFFFFFFF).astype(np.uint32).view(np.int32) for r in results]


def test_dpx_max_min_and_which_won():
    n = 1001
    rng = np.random.default_rng(15)
    x, y, z = (rng.integers(-2**31, 2**31, n).astype(np.int32) for _ in range(3))
    x[:3], y[:3], z[:3] = [2**31 - 1, -2**31, 0x7FFF7FFF], [1, -1, 0x00010001], [0, 0, 0]   # additions that wrap
    out, pred = np.zeros((38, n), np.int32), np.zeros((n, 4), np.int32)
    load("dpx.cu").get_function("dpx_ops")((ceil(n, 128),), (128,), (x, y, z, out, pred, n))
    want = (_dpx_reference(x, y, z, 32, True) + _dpx_reference(x, y, z, 32, True, relu=True) +
            _dpx_reference(x, y, z, 32, False) + _dpx_reference(x, y, z, 16, True) +
            _dpx_reference(x, y, z, 16, False) + _dpx_reference(x, y, z, 16, True, relu=True))
    names = [f"{op}_{kind}" for kind in ("s32", "s32_relu", "u32", "s16x2", "u16x2", "s16x2_relu")
             for op in ("vimax", "vimin", "vimax3", "vimin3", "viaddmax", "viaddmin")]
    for k, (name, w) in enumerate(zip(names, want)):
        bad = np.flatnonzero(out[k] != w)
        assert not bad.size, f"__{name}({x[bad[0]]}, {y[bad[0]]}, {z[bad[0]]}) = {out[k, bad[0]]}, want {w[bad[0]]}"
    assert np.array_equal(out[36], np.maximum(x, y)) and np.array_equal(pred[:, 0], x >= y)
    ux, uy = _parts(x.view(np.uint32), 16, False), _parts(y.view(np.uint32), 16, False)
    assert np.array_equal(out[37].view(np.uint32), _pack(np.minimum(ux, uy), 16))
    assert np.array_equal(pred[:, 1], ux[1] <= uy[1]) and np.array_equal(pred[:, 2], ux[0] <= uy[0])
    assert np.array_equal(pred[:, 3], x <= y)


def test_dynamic_shared_memory_through_a_header_template():
    n, threads = 1000, 128   # the last block is partly outside the array
    x = np.random.default_rng(16).standard_normal(n)
    y = np.zeros(n)
    fn = load("headers_and_signatures.cu").get_function("reverse_blocks")
    fn((ceil(n, threads),), (threads,), (x, y, n), shared_mem=threads * 8)
    padded = np.concatenate([x, np.zeros(ceil(n, threads) * threads - n)]).reshape(-1, threads)
    assert np.array_equal(y, padded[:, ::-1].reshape(-1)[:n])
    device.racecheck(fn, (ceil(n, threads),), (threads,), (x, y, n), shared_mem=threads * 8)


def test_cg_thread_group_holds_any_group():
    threads = 96
    out = np.zeros((2 * threads, 2), np.int32)
    load("cooperative_groups.cu").get_function("generic_groups")((2,), (threads,), (out,))
    t = np.arange(2 * threads) % threads
    assert np.array_equal(out[:, 0], t * 10000 + threads) and np.array_equal(out[:, 1], (t % 8) * 10000 + 8)
