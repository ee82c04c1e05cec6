"""The CPU backend runs CUDA kernels with CUDA semantics: every feature, at sizes that are not
multiples of the block size, against NumPy."""
import math
import subprocess
import sys

import numpy as np
import pytest

from helpers.runtime import cpu_backend, device
from helpers.runtime.cuda_source import REPO_ROOT

KERNELS = REPO_ROOT / "tests" / "kernels"
rng = np.random.default_rng(1234)


def features(**kw):
    return device.load_module(KERNELS / "features.cu", backend="cpu",
                              name_expressions=("scale_template<float>", "scale_template<int>",
                                                "block_sum_template<float, 64>"), **kw)


@pytest.mark.parametrize("grid,block", [((3, 2, 2), (5, 3, 2)), ((7,), (33,)), ((2, 3), (4, 4, 4)), (5, 64)])
def test_grid_and_block_coordinates_in_3d(grid, block):
    fn = features().get_function("coordinates")
    g = tuple(grid) if isinstance(grid, tuple) else (grid,)
    b = tuple(block) if isinstance(block, tuple) else (block,)
    g, b = g + (1,) * (3 - len(g)), b + (1,) * (3 - len(b))
    total = math.prod(g) * math.prod(b)
    out = np.full(total * 8, -1, np.int32)
    fn(grid, block, (out, total))
    out = out.reshape(total, 8)
    expected = []
    for bz in range(g[2]):
        for by in range(g[1]):
            for bx in range(g[0]):
                for tz in range(b[2]):
                    for ty in range(b[1]):
                        for tx in range(b[0]):
                            expected.append([tx, ty, tz, bx, by, bz, b[0] * 10000 + b[1] * 100 + b[2],
                                             g[0] * 10000 + g[1] * 100 + g[2]])
    np.testing.assert_array_equal(out, np.array(expected, np.int32))


def test_static_shared_memory_and_barrier_at_odd_size():
    fn = features().get_function("reverse_in_block")
    n = 1000  # 8 blocks of 128; the last one is partial
    x = rng.standard_normal(n).astype(np.float32)
    out = np.zeros(n, np.float32)
    fn(((n + 127) // 128,), (128,), (x, out, n))
    expected = np.zeros(n, np.float32)
    for b in range(8):
        lo = b * 128
        for t in range(128):
            j = lo + 127 - t
            if j < n:
                expected[j] = x[lo + t] if lo + t < n else -1.0
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("n,block", [(1000, 64), (77, 32), (4099, 256)])
def test_dynamic_shared_memory(n, block):
    fn = features().get_function("block_sum_dynamic")
    x = rng.standard_normal(n).astype(np.float32)
    blocks = (n + block - 1) // block
    out = np.zeros(blocks, np.float32)
    fn((blocks,), (block,), (x, out, n), shared_mem=block * 4)
    padded = np.zeros(blocks * block, np.float32)
    padded[:n] = x
    np.testing.assert_allclose(out, padded.reshape(blocks, block).sum(1), rtol=1e-5, atol=1e-5)


def test_shared_memory_is_poisoned_with_nan():
    fn = features().get_function("read_uninitialised_shared")
    out = np.zeros(32, np.float32)
    fn((1,), (32,), (out,))
    assert np.isnan(out).all()


def test_device_empty_is_poisoned_on_cpu():
    if device.name != "cpu":
        pytest.skip("poisoning is a CPU-backend feature; this run uses the GPU")
    assert np.isnan(device.empty(10)).all()
    assert (device.empty(4, dtype=np.int32) == -1).all()
    assert np.isnan(device.empty(())) and device.empty((0, 3)).shape == (0, 3)


@pytest.mark.parametrize("width", [32, 16, 8, 4])
def test_warp_shuffles_with_width(width):
    fn = features().get_function("shuffles")
    n = 64
    x = rng.standard_normal(n).astype(np.float32)
    out = np.zeros(n * 6, np.float32)
    fn((1,), (n,), (x, out, width))
    out = out.reshape(n, 6)
    for t in range(n):
        lane = t % 32
        base = t - (lane % width)
        pos = lane % width
        assert out[t, 0] == x[base + (3 % width)]
        assert out[t, 1] == x[base + ((pos ^ 1) if (pos ^ 1) < width else pos)]
        assert out[t, 2] == (x[t + 2] if pos + 2 < width else x[t])
        assert out[t, 3] == (x[t - 2] if pos - 2 >= 0 else x[t])
        warp = x[(t // 32) * 32:(t // 32) * 32 + 32]
        assert out[t, 4] == pytest.approx(float(warp.sum(dtype=np.float64)), rel=1e-5, abs=1e-5)
        assert out[t, 5] == ((t // 32) * 32 + 31 - lane) * 7


def test_votes():
    fn = features().get_function("votes")
    pred = np.zeros(96, np.int32)
    pred[[0, 5, 31]] = 1     # warp 0: some
    pred[32:64] = 1          # warp 1: all
    ballot, any_, all_ = np.zeros(3, np.uint32), np.zeros(3, np.int32), np.zeros(3, np.int32)
    fn((1,), (96,), (pred, ballot, any_, all_))
    assert list(ballot) == [(1 << 0) | (1 << 5) | (1 << 31), 0xFFFFFFFF, 0]
    assert list(any_) == [1, 1, 0]
    assert list(all_) == [0, 1, 0]


def test_barrier_votes():
    fn = features().get_function("barrier_votes")
    pred = (np.arange(50) % 3 == 0).astype(np.int32)
    out = np.zeros(3, np.int32)
    fn((1,), (50,), (pred, out))
    assert list(out) == [int(pred.sum()), 0, 1]


def test_atomics_from_parallel_blocks():
    fn = features().get_function("atomics")
    n = 5001
    x = rng.integers(-8, 8, n).astype(np.float32)  # small integers: the float sum is exact in any order
    k = rng.integers(0, 1000, n).astype(np.int32)
    fsum, isum, imax = np.zeros(1, np.float32), np.zeros(1, np.int32), np.full(1, -1, np.int32)
    umax, cas = np.zeros(1, np.uint32), np.zeros(1, np.int32)
    fn(((n + 127) // 128,), (128,), (x, k, fsum, isum, imax, umax, cas, n))
    assert fsum[0] == x.sum() and isum[0] == k.sum() and imax[0] == k.max() and umax[0] == k.max()
    assert cas[0] == n


def test_float_atomic_max_through_atomic_cas():
    fn = features().get_function("atomic_max_float")
    x = rng.random(999).astype(np.float32)
    out = np.zeros(1, np.float32)
    fn((4,), (256,), (x, out, 999))
    assert out[0] == x.max()


def test_float2_float4_and_make():
    fn = features().get_function("vector_types")
    n4 = 37
    a4 = rng.standard_normal(n4 * 4).astype(np.float32)
    a2 = rng.standard_normal(n4 * 2).astype(np.float32)
    o4, o2 = np.zeros_like(a4), np.zeros_like(a2)
    fn((2,), (32,), (a4, a2, o4, o2, n4))
    np.testing.assert_array_equal(o4.reshape(-1, 4), a4.reshape(-1, 4)[:, ::-1])
    p = a2.reshape(-1, 2)
    np.testing.assert_array_equal(o2.reshape(-1, 2), np.stack([p[:, 0] + p[:, 1], p[:, 0] - p[:, 1]], 1))


def test_math_functions_and_intrinsics():
    fn = features().get_function("math_functions")
    n = 301
    x = rng.uniform(-3, 3, n).astype(np.float32)
    out = np.zeros(n * 12, np.float32)
    fn((3,), (128,), (x, out, n))
    out = out.reshape(n, 12).astype(np.float64)
    v = x.astype(np.float64)
    erf = np.vectorize(math.erf)
    expected = [np.exp(v), np.exp(v), np.log(abs(v) + 1), 1 / np.sqrt(abs(v) + 1), np.sqrt(abs(v)), np.tanh(v),
                erf(v), np.maximum(v, 0.25), v / 3, np.minimum(v, -0.25), abs(v) ** 1.5,
                0.5 * v * (1 + np.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v**3)))]
    for j, e in enumerate(expected):
        np.testing.assert_allclose(out[:, j], e, rtol=2e-6, atol=1e-6, err_msg=f"result {j}")


def test_launch_bounds_before_the_name_with_a_barrier():
    fn = features().get_function("bounded_block_sum")
    x = np.arange(64, dtype=np.float32)
    out = np.zeros(1, np.float32)
    fn((1,), (64,), (x, out))
    assert out[0] == x.sum()
    with pytest.raises(device.LaunchError, match=r"__launch_bounds__\(64\)"):
        fn((1,), (128,), (np.zeros(128, np.float32), out))


def test_launch_bounds_are_enforced():
    fn = features().get_function("math_functions")
    with pytest.raises(device.LaunchError, match=r"__launch_bounds__\(128\)"):
        fn((1,), (256,), (np.zeros(4, np.float32), np.zeros(48, np.float32), 4))


def test_templates_through_name_expressions():
    mod = features()
    x = np.arange(10, dtype=np.float32)
    mod.get_function("scale_template<float>")((1,), (16,), (x, 2.5, 10))
    np.testing.assert_array_equal(x, np.arange(10, dtype=np.float32) * 2.5)
    k = np.arange(10, dtype=np.int32)
    mod.get_function("scale_template<int>")((1,), (16,), (k, 3, 10))
    np.testing.assert_array_equal(k, np.arange(10) * 3)
    with pytest.raises(device.LaunchError, match="expects an integer"):
        mod.get_function("scale_template<int>")((1,), (16,), (k, 3.5, 10))
    n = 200
    v = rng.standard_normal(n).astype(np.float32)
    out = np.zeros(4, np.float32)
    mod.get_function("block_sum_template<float, 64>")((4,), (64,), (v, out, n))
    padded = np.concatenate([v, np.zeros(56, np.float32)])
    np.testing.assert_allclose(out, padded.reshape(4, 64).sum(1), rtol=1e-5, atol=1e-5)


def test_template_kernel_needs_its_name_expression():
    mod = device.load_module(KERNELS / "features.cu", backend="cpu")
    with pytest.raises(KeyError, match="name_expressions"):
        mod.get_function("scale_template<double>")
    with pytest.raises(KeyError, match="template kernel"):
        mod.get_function("scale_template")


def test_kernel_printf_appears_in_order(capsys):
    features().get_function("hello")((5,), (64,), (7,))
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"hello from block {b} of 5 (n=7)" for b in range(5)]


def test_blocks_run_in_parallel_and_plain_kernels_skip_fibers():
    mod = features()
    fn = mod.get_function("scale_template<float>")
    x = np.ones(4096, np.float32)
    fn((16,), (256,), (x, 2.0, 4096))
    assert cpu_backend.last_launch.switches <= 2 * 16  # a plain loop: one switch in and out per block
    fn = mod.get_function("block_sum_dynamic")
    out = np.zeros(16, np.float32)
    fn((16,), (256,), (x, out, 4096), shared_mem=1024)
    assert cpu_backend.last_launch.switches > 16 * 256  # fibers: every thread parks at each barrier


def test_compiled_signatures_agree_with_the_parser():
    """The Python parser of kernel signatures (used to validate launches on both backends) must read
    every kernel exactly as the C++ compiler does."""
    import re

    from helpers.runtime.cuda_source import kernel_signature
    for path in sorted(KERNELS.glob("*.cu")) + sorted((REPO_ROOT / "cuda").glob("*.cu")):
        from helpers.runtime.cuda_source import declared_name_expressions
        mod = device.load_module(path, backend="cpu", name_expressions=declared_name_expressions(path))
        for entry in mod._library.compiled.entries:
            parsed = ",".join(p.ctype for p in kernel_signature(mod.expanded_source, entry).params)
            compiled = re.sub(r"\bunsigned long long\b", "unsigned long long", mod._library.signature(entry))
            assert parsed == compiled, f"{path.name}:{entry}: parser says {parsed}, compiler says {compiled}"


def test_ucontext_fallback_gives_the_same_results(monkeypatch):
    """Machines without the hand-written switch (not x86-64 or aarch64) use ucontext."""
    monkeypatch.setenv("GPT2_CPU_CONTEXT", "ucontext")
    test_warp_shuffles_with_width(16)
    test_dynamic_shared_memory(1000, 64)
    lib = features()._library.compiled.library
    assert "swapcontext" in subprocess.run(["nm", "-D", str(lib)], capture_output=True, text=True).stdout


def test_missing_compiler_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(cpu_backend.shutil, "which", lambda name: None)
    with pytest.raises(device.CompileError, match="apt install g\\+\\+"):
        cpu_backend.find_compiler()


def test_compile_error_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.cu"
    bad.write_text('extern "C" __global__ void k(float* x) {\n    x[0] = undefined_name;\n}\n')
    with pytest.raises(device.CompileError, match=r"bad.cu:2"):
        device.load_module(bad, backend="cpu")


def test_module_cache_recompiles_on_edit(tmp_path, monkeypatch):
    monkeypatch.setenv("GPT2_CACHE_DIR", str(tmp_path / "cache"))
    src = tmp_path / "edit_me.cu"
    src.write_text('extern "C" __global__ void k(float* x) { x[threadIdx.x] = 1.0f; }\n')
    m1 = device.load_module(src, backend="cpu")
    assert device.load_module(src, backend="cpu") is m1  # same content: cached
    x = np.zeros(4, np.float32)
    m1.get_function("k")((1,), (4,), (x,))
    assert (x == 1).all()
    libs = set((tmp_path / "cache" / "cpu").glob("*.so"))
    src.write_text('extern "C" __global__ void k(float* x) { x[threadIdx.x] = 2.0f; }\n')
    m2 = device.load_module(src, backend="cpu")
    assert m2 is not m1
    m2.get_function("k")((1,), (4,), (x,))
    assert (x == 2).all()
    assert len(set((tmp_path / "cache" / "cpu").glob("*.so")) - libs) == 1


def test_a_fresh_process_reuses_the_compiled_module(tmp_path):
    env_code = ("import os, time; from helpers import device; t = time.perf_counter(); "
                f"device.load_module(r'{KERNELS / 'features.cu'}', backend='cpu'); print(time.perf_counter() - t)")
    env = {**__import__("os").environ, "GPT2_CACHE_DIR": str(tmp_path)}
    first = float(subprocess.run([sys.executable, "-c", env_code], env=env, capture_output=True, text=True,
                                 check=True, cwd=REPO_ROOT).stdout)
    second = float(subprocess.run([sys.executable, "-c", env_code], env=env, capture_output=True, text=True,
                                  check=True, cwd=REPO_ROOT).stdout)
    assert second < first / 3, (first, second)


def test_python_reads_the_abi_header_as_the_compiler_does(tmp_path):
    """gpt2cpu/abi.h is the one definition of what modules, the launcher and Python share: every field's
    offset and every constant as Python parsed them must be what the C++ compiler computes."""
    import ctypes
    import subprocess
    from helpers.runtime.cpu_backend import abi
    lines = ['#include "abi.h"', "#include <cstddef>", "#include <cstdio>", "using namespace gpt2cpu;", "int main() {"]
    expected = []
    for name, struct in abi.STRUCTS.items():
        lines.append(f'printf("{name} %zu\\n", sizeof({name}));')
        expected.append(f"{name} {ctypes.sizeof(struct)}")
        for field, _ in struct._fields_:
            lines.append(f'printf("{name}.{field} %zu\\n", offsetof({name}, {field}));')
            expected.append(f"{name}.{field} {getattr(struct, field).offset}")
    for name, value in abi.CONSTANTS.items():
        lines.append(f'printf("{name} %lld\\n", (long long){name});')
        expected.append(f"{name} {value}")
    lines.append("}")
    (tmp_path / "abi.cpp").write_text("\n".join(lines))
    exe = tmp_path / "abi"
    subprocess.run([cpu_backend.find_compiler(), "-std=c++17", f"-I{abi.HEADER.parent}", str(tmp_path / "abi.cpp"),
                    "-o", str(exe)], check=True)
    got = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout.split("\n")[:-1]
    assert got == expected
