"""The CPU backend never returns wrong data: every situation below once gave a wrong answer with no
error, and each is now either right or a clear error, after which the next launch works.

Large launches, interrupts at any moment, launches from several threads, recursion, out-of-bounds
accesses of shared memory and of global memory far from the array, races between blocks, alignment
as on a GPU, module globals that live as long as the module, __activemask, and clear messages for
the launch mistakes that used to crash or mislead.
"""
import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

from helpers.runtime import cpu_backend, device
from helpers.runtime.cuda_source import REPO_ROOT
from helpers.runtime.errors import CompileError, KernelError, LaunchError, RaceError

KERNELS = REPO_ROOT / "tests" / "kernels"


@pytest.fixture(scope="module")
def hz():
    return device.load_module(KERNELS / "hazards.cu", backend="cpu")


def empty(n):
    """Uninitialised host memory, as device.empty gives on the CPU (these kernels run on the CPU backend
    whatever the active backend is)."""
    return np.full(n, np.nan, np.float32)


def still_works(hz):
    x = np.arange(1000, dtype=np.float32)
    y = empty(1000)
    hz.get_function("affine")((4,), (256,), (x, y, 1000))
    assert np.array_equal(y, 2 * x + 1)


def run_python(code: str, timeout=300) -> subprocess.CompletedProcess:
    """Run code in a fresh interpreter (signals and threads of its own, away from pytest's)."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "GPT2_DEVICE": "cpu"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


# ------------------------------------------------------------------------------------------------
# 1. Launches of any size
# ------------------------------------------------------------------------------------------------
def test_a_launch_staging_400_mib_returns_every_element(hz):
    n = 52_428_803                     # 200 MiB in and 200 MiB out, well past what the arena keeps
    x = np.arange(n, dtype=np.float32) % 1000
    y = empty(n)
    hz.get_function("affine")((-(-n // 256),), (256,), (x, y, n))
    assert np.array_equal(y, 2 * x + 1), f"{int((y != 2 * x + 1).sum())} of {n} elements wrong"
    z = empty(n + 13_000_000)   # ~250 MiB out: once a false out-of-bounds error
    x2 = np.ones(n + 13_000_000, np.float32)
    hz.get_function("affine")((-(-(n + 13_000_000) // 256),), (256,), (x2, z, n + 13_000_000))
    assert np.all(z == 3.0)


@pytest.mark.parametrize("version", [1, 2])
def test_adamw_on_gpt2_124m_wte_equals_the_reference(version):
    """AdamW over GPT-2 124M's padded token embedding (four 148 MiB arrays): once a false out-of-bounds error."""
    from helpers.ops import adamw
    rng = np.random.default_rng(0)
    shape = (50304, 768)
    p = (0.02 * rng.standard_normal(shape)).astype(np.float32)
    g = (0.01 * rng.standard_normal(shape)).astype(np.float32)
    m, v = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
    settings = dict(t=1, lr=1e-3, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1)
    ref = [a.copy() for a in (p, m, v)]
    adamw.adamw_update(ref[0], g, ref[1], ref[2], **settings)
    p, g, m, v = (device.asarray(a) for a in (p, g, m, v))
    adamw.update(p, g, m, v, **settings, version=version)
    np.testing.assert_allclose(device.asnumpy(m), ref[1], rtol=1e-6, atol=0)
    np.testing.assert_allclose(device.asnumpy(v), ref[2], rtol=1e-6, atol=0)
    np.testing.assert_allclose(device.asnumpy(p), ref[0], rtol=0, atol=1e-7)


# ------------------------------------------------------------------------------------------------
# 2. Interrupts at any moment
# ------------------------------------------------------------------------------------------------
def test_200_interrupts_at_random_moments_never_give_a_wrong_result():
    proc = run_python("""
        import os, random, signal, threading, time
        import numpy as np
        from helpers.runtime import device
        hz = device.load_module("tests/kernels/hazards.cu")
        affine = hz.get_function("affine")
        n = 20_000
        x = np.arange(n, dtype=np.float32)
        want = 2 * x + 1
        interrupts, checked, wrong = 0, 0, 0
        stop = threading.Event()
        def pester():
            rng = random.Random(0)
            while not stop.is_set():
                time.sleep(rng.uniform(0.0, 0.015))
                os.kill(os.getpid(), signal.SIGINT)
        t0 = time.time()
        pest = threading.Thread(target=pester, daemon=True)
        while True:
            try:
                if not pest.is_alive() and not stop.is_set():
                    pest.start()
                # (until both counts are reached: a loaded machine finishes fewer launches between interrupts)
                if (interrupts >= 200 and checked >= 50) or time.time() - t0 > 50:
                    break
                y = device.empty(n)
                affine((-(-n // 256),), (256,), (x, y, n))
                ok = np.array_equal(y, want)
                checked += 1
                wrong += not ok
            except KeyboardInterrupt:
                interrupts += 1
            except device.KernelError as e:
                print("error:", e); wrong += 1
        while True:   # no more interrupts from here on (one may still land while this runs)
            try:
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                stop.set()
                break
            except KeyboardInterrupt:
                pass
        y = device.empty(n)
        affine((-(-n // 256),), (256,), (x, y, n))
        print(f"interrupts={interrupts} checked={checked} wrong={wrong} final_ok={np.array_equal(y, want)}")
    """, timeout=120)
    line = proc.stdout.strip().splitlines()[-1]
    stats = dict(kv.split("=") for kv in line.split())
    assert int(stats["interrupts"]) >= 200 and int(stats["checked"]) >= 50, line
    assert stats["wrong"] == "0" and stats["final_ok"] == "True", proc.stdout[-3000:]


def test_interrupted_model_forwards_never_spoil_the_next_one():
    proc = run_python("""
        import os, random, signal, threading, time
        import numpy as np
        from helpers.model.gpt2 import GPT2, GPT2Config
        cfg = GPT2Config(vocab_size=101, block_size=16, n_layer=2, n_head=2, n_embd=32)
        cuda, ref = GPT2(cfg, backend="cuda", seed=0), GPT2(cfg, backend="numpy", seed=0)
        idx = np.random.default_rng(0).integers(0, 101, (2, 16)).astype(np.int32)
        want = ref.forward(idx, idx)[1]
        rng, broke, interrupted = random.Random(1), 0, 0
        handled = threading.Event()

        def on_sigint(signum, frame):
            handled.set()
            raise KeyboardInterrupt
        signal.signal(signal.SIGINT, on_sigint)
        for run in range(15):
            handled.clear()
            timer = threading.Timer(rng.uniform(0.0, 0.05), lambda: os.kill(os.getpid(), signal.SIGINT))
            try:
                timer.start()      # in the try: a loaded machine may fire it before start returns
                cuda.forward(idx, idx)
                timer.join()       # however late a loaded machine runs the timer, it interrupts in here:
                for _ in range(1000):   # the handler of a signal may run a while after it was sent
                    if handled.is_set():
                        break
                    time.sleep(0.005)
            except KeyboardInterrupt:
                interrupted += 1
                timer.join()
            assert handled.is_set(), "the interrupt was never handled"
            loss = cuda.forward(idx, idx)[1]   # the next forward, after whatever the interrupt hit
            broke += abs(loss - want) > 1e-5
        print(f"interrupted={interrupted} broke={broke}")
    """)
    line = proc.stdout.strip().splitlines()[-1]
    assert line.endswith("broke=0") and int(line.split()[0].split("=")[1]) >= 5, line


# ------------------------------------------------------------------------------------------------
# 3. Threads
# ------------------------------------------------------------------------------------------------
def test_launches_after_the_starting_thread_exited_and_from_four_threads_at_once():
    proc = run_python("""
        import threading
        import numpy as np
        from helpers.runtime import device
        hz = device.load_module("tests/kernels/hazards.cu")
        affine = hz.get_function("affine")
        def launch(n, results, k):
            x = np.arange(n, dtype=np.float32) + k
            y = device.empty(n)
            affine((-(-n // 128),), (128,), (x, y, n))
            results[k] = np.array_equal(y, 2 * x + 1)
        first = {}
        t = threading.Thread(target=launch, args=(1000, first, 0)); t.start(); t.join()   # starts the launcher, exits
        results = {}
        threads = [threading.Thread(target=lambda k=k: [launch(5000 + k, results, 10 * k + j) for j in range(10)])
                   for k in range(4)]
        for t in threads: t.start()
        for t in threads: t.join()
        launch(777, results, 999)   # and from the main thread
        print("ok", first[0], len(results), all(results.values()))
    """)
    assert proc.stdout.split()[-4:] == ["ok", "True", "41", "True"], proc.stdout


# ------------------------------------------------------------------------------------------------
# 4. Recursion
# ------------------------------------------------------------------------------------------------
def test_recursion_is_right_or_a_stack_overflow_never_corrupts_a_neighbour(hz):
    depth = 1300
    out = np.zeros(2, np.int32)
    hz.get_function("recurse")((1,), (2,), (out, depth))
    expected = sum(j % 16 for j in range(1, depth + 1))
    assert out.tolist() == [expected, expected + 1000]
    with pytest.raises(KernelError, match=r"stack overflow in thread \(\d,0,0\)"):
        hz.get_function("recurse")((1,), (2,), (out, 200_000))
    still_works(hz)


# ------------------------------------------------------------------------------------------------
# 5. Shared memory out of bounds
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("write", [1, 0])
def test_static_shared_array_one_past_the_end(hz, write):
    out = np.zeros(3, np.float32)
    with pytest.raises(KernelError, match=r"out-of-bounds (write|read) of shared memory `first`.*element 64 .*64 float"):
        hz.get_function("static_shared_index")((1,), (32,), (out, 64, write))
    out = np.zeros(3, np.float32)
    hz.get_function("static_shared_index")((1,), (32,), (out, 63, 0))
    assert out.tolist() == [63.0, 100.0, 63.0]


def test_static_shared_far_out_of_bounds(hz):
    out = np.zeros(3, np.float32)
    with pytest.raises(KernelError, match=r"out-of-bounds read of shared memory `first`"):
        hz.get_function("static_shared_index")((1,), (32,), (out, 20_000, 0))


def test_dynamic_shared_memory_past_its_size(hz):
    out = np.zeros(1, np.float32)
    hz.get_function("dynamic_shared_index")((1,), (32,), (out, 31), 32 * 4)
    assert out[0] == 1.0
    with pytest.raises(KernelError, match=r"out-of-bounds read of dynamic shared memory.*128 bytes"):
        hz.get_function("dynamic_shared_index")((1,), (32,), (out, 32), 32 * 4)
    with pytest.raises(KernelError, match=r"out-of-bounds read of dynamic shared memory"):
        hz.get_function("dynamic_shared_index")((1,), (32,), (out, 20_000), 32 * 4)


# ------------------------------------------------------------------------------------------------
# 6. Global memory far out of bounds
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("elements", [16_400, 40_000, 10_000_000, 100_000_000, 2**31 - 1, -(2**31)])
@pytest.mark.parametrize("write", [1, 0])
def test_any_32_bit_index_out_of_bounds_faults_and_names_its_argument(hz, elements, write):
    a = np.zeros(1000, np.float32)
    b = np.zeros(1000, np.float32)
    offset = 1000 + elements if elements > 0 else elements
    with pytest.raises(KernelError, match=rf"out-of-bounds {'write' if write else 'read'} of `a`"):
        hz.get_function("access_at_offset")((1,), (1,), (a, b, offset, write))
    assert not b.any(), "nothing may land in another argument"


def test_a_wild_64_bit_offset_is_an_illegal_address_not_a_misaligned_access(hz):
    a, b = np.zeros(10, np.float32), np.zeros(10, np.float32)
    with pytest.raises(KernelError, match=r"out-of-bounds|illegal memory") as e:
        hz.get_function("access_at_offset")((1,), (1,), (a, b, 2**40 // 4, 0))
    assert "misaligned" not in str(e.value)


# ------------------------------------------------------------------------------------------------
# 7. Races between blocks
# ------------------------------------------------------------------------------------------------
def test_racecheck_finds_a_location_written_by_two_blocks(hz):
    with pytest.raises(RaceError, match=r"`racy_counter`: element 0 of `total`.*blocks \(\d+,0,0\) and \(\d+,0,0\)"):
        device.racecheck(hz.get_function("racy_counter"), (1000,), (32,), (np.zeros(1, np.float32),))
    device.racecheck(hz.get_function("atomic_counter"), (1000,), (32,), (np.zeros(1, np.float32),))
    device.racecheck(hz.get_function("disjoint_blocks"), (8,), (64,), (np.zeros(500, np.float32), 500))


def test_racecheck_finds_a_block_reading_what_another_writes(hz):
    with pytest.raises(RaceError, match=r"`reads_neighbours_output`.*`data`"):
        device.racecheck(hz.get_function("reads_neighbours_output"), (8,), (64,), (np.ones(512, np.float32), 512))


def test_racecheck_of_a_kernel_waiting_on_other_blocks_says_why_quickly(hz):
    import time
    t0 = time.perf_counter()
    with pytest.raises(RaceError, match=r"`look_back`.*waits? for other blocks"):
        device.racecheck(hz.get_function("look_back"), (16,), (32,), (np.zeros(16, np.int32), np.zeros(16, np.int32)))
    assert time.perf_counter() - t0 < 30


# ------------------------------------------------------------------------------------------------
# 8. Alignment as on a GPU
# ------------------------------------------------------------------------------------------------
def test_a_misaligned_float4_load_is_reported_as_a_gpu_would(hz):
    x = np.arange(64, dtype=np.float32)
    out = np.zeros(1, np.float32)
    hz.get_function("load_float4_at")((1,), (1,), (x, out, 4))
    assert out[0] == 4 + 5 + 6 + 7
    with pytest.raises(KernelError, match=r"misaligned float4 (read|access) of `x`.*element 1.*16"):
        hz.get_function("load_float4_at")((1,), (1,), (x, out, 1))


@pytest.mark.parametrize("n", [5, 6, 7, 9, 13])
def test_a_legal_float4_load_from_an_array_of_any_size(hz, n):
    x = np.arange(1, n + 1, dtype=np.float32)
    out = np.zeros(1, np.float32)
    hz.get_function("first_float4")((1,), (1,), (x, out))
    assert out[0] == 1 + 2 + 3 + 4


@pytest.mark.parametrize("count", [1, 3])
def test_writes_just_past_the_end_are_reported(hz, count):
    x = np.zeros(7, np.float32)
    with pytest.raises(KernelError, match=r"out-of-bounds write .*`x`"):
        hz.get_function("write_tail")((1,), (32,), (x, 7, count))
    assert not x.any()


# ------------------------------------------------------------------------------------------------
# 9. Module globals
# ------------------------------------------------------------------------------------------------
def test_device_variables_keep_their_value_between_launches():
    mod = device.load_module(KERNELS / "hazards.cu", backend="cpu", options=("-DFRESH_MODULE_FOR_GLOBALS",))
    out = np.zeros(1, np.int32)
    for _ in range(3):
        mod.get_function("count_launch")((1,), (128,), (out,))
    assert out[0] == 384
    assert int(mod.get_global("launches_seen")) == 384
    scale = mod.get_global("scale_by")
    assert scale.dtype == np.float32 and scale.shape == () and float(scale) == 3.0
    scale[...] = 0.5
    x = np.full(10, 4.0, np.float32)
    mod.get_function("scale_with_global")((1,), (32,), (x, 10))
    assert np.all(x == 2.0)
    with pytest.raises(KeyError, match="no __device__ variable `nope`.*launches_seen, scale_by"):
        mod.get_global("nope")


# ------------------------------------------------------------------------------------------------
# 10. __activemask
# ------------------------------------------------------------------------------------------------
def test_activemask_is_the_lanes_running_together(hz):
    out = np.zeros(32, np.uint32)
    hz.get_function("active_mask")((1,), (32,), (out,))
    assert out[:5].tolist() == [0x1F] * 5 and out[5:].tolist() == [0xDEADBEEF] * 27


# ------------------------------------------------------------------------------------------------
# 11. Clear errors
# ------------------------------------------------------------------------------------------------
def test_a_failing_assert_shows_its_expression_and_line(hz):
    x = np.array([1, 2, -3, 4], np.int32)
    with pytest.raises(KernelError, match=r"assertion `x\[threadIdx.x\] >= 0 && \"inputs are counts\"` failed at "
                                          r"hazards.cu:\d+ in thread \(2,0,0\) of block \(0,0,0\)"):
        hz.get_function("failing_assert")((1,), (4,), (x,))


def test_an_undefined_device_function_is_a_compile_error(tmp_path):
    src = tmp_path / "undefined.cu"
    src.write_text('__device__ float helper(float x);\n'
                   'extern "C" __global__ void k(float* x) { x[0] = helper(x[0]); }\n')
    with pytest.raises(CompileError, match=r"undefined\.cu.*`helper\(float\)` is declared but never defined"):
        device.load_module(src, backend="cpu")


def test_many_parameters_work_up_to_cudas_4_kib_and_then_are_a_launch_error(tmp_path):
    src = tmp_path / "many.cu"
    params = ", ".join(f"int p{i}" for i in range(300))
    total = " + ".join(f"p{i}" for i in range(300))
    wide = ", ".join(f"int q{i}" for i in range(1100))
    src.write_text(f'extern "C" __global__ void many(int* out, {params}) {{ out[0] = {total}; }}\n'
                   f'extern "C" __global__ void too_many({wide}) {{ }}\n')
    mod = device.load_module(src, backend="cpu")
    out = np.zeros(1, np.int32)
    mod.get_function("many")((1,), (1,), (out, *range(300)))
    assert out[0] == sum(range(300))
    with pytest.raises(LaunchError, match=r"1100 parameters \(4400 bytes\).*4 KiB"):
        mod.get_function("too_many")((1,), (1,), tuple(range(1100)))


def test_a_printf_line_of_any_length_arrives_whole(hz, capfd):
    hz.get_function("long_printf")((1,), (1,), (2000,))
    out = capfd.readouterr().out
    line = next(l for l in out.splitlines() if l.endswith("|end"))
    assert len(line) == 2000 + 4


@pytest.mark.parametrize("bad, pattern", [
    (np.array([object(), object()], dtype=object), r"object.*numbers"),
    (np.zeros(4, ">f4"), r"big-endian float32.*astype"),
])
def test_bad_arrays_are_refused(hz, bad, pattern):
    with pytest.raises(LaunchError, match=pattern):
        hz.get_function("affine")((1,), (1,), (bad, np.zeros(4, np.float32), 4))


def test_a_0d_array_is_a_one_element_buffer_as_in_cupy(hz):
    """(As CuPy passes a 0-d array's pointer; layernorm over a single row writes a 0-d mean.)"""
    x, y = np.full((), 2.0, np.float32), np.zeros((), np.float32)
    hz.get_function("affine")((1,), (1,), (x, y, 1))
    assert y == 5.0
    with pytest.raises(KernelError, match=r"out-of-bounds read of `x`.*element 1 of an array of 1 float32"):
        hz.get_function("affine")((1,), (2,), (x, np.zeros(2, np.float32), 2))


def test_bad_scalars_are_refused(hz):
    with pytest.raises(LaunchError, match=r"argument 2 `n`.*bool"):
        hz.get_function("affine")((1,), (1,), (np.zeros(4, np.float32), np.zeros(4, np.float32), True))
    x = np.zeros(64, np.float32)
    with pytest.raises(LaunchError, match=r"argument 1 `k`.*too large for a float"):
        hz.get_function("scale_by_value")((1,), (32,), (x, 10**400, 64))
    with pytest.raises(LaunchError, match=r"argument 1 `k`.*too large for a float"):
        hz.get_function("scale_by_value")((1,), (32,), (x, 1e39, 64))


@pytest.mark.parametrize("var, value", [("GPT2_KERNEL_TIMEOUT", "abc"), ("GPT2_KERNEL_TIMEOUT", "0"),
                                        ("GPT2_CPU_WORKERS", "abc"), ("GPT2_CPU_WORKERS", "-2")])
def test_bad_settings_say_which_and_how(var, value):
    proc = subprocess.run([sys.executable, "-c", "from helpers import device"], cwd=REPO_ROOT, capture_output=True,
                          text=True, env={**os.environ, var: value})
    assert proc.returncode != 0
    assert f"{var}={value!r}" in proc.stderr and "Traceback" in proc.stderr
    assert ("seconds" if "TIMEOUT" in var else "worker threads") in proc.stderr


# ------------------------------------------------------------------------------------------------
# 12. The compiled-kernel cache
# ------------------------------------------------------------------------------------------------
def test_the_cache_is_private_and_refuses_what_others_can_write(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("GPT2_CACHE_DIR", str(cache))
    src = tmp_path / "k.cu"
    src.write_text('extern "C" __global__ void k(float* x) { x[threadIdx.x] = 1.0f; }\n')
    device.load_module(src, backend="cpu")
    assert (cache.stat().st_mode & 0o777) == 0o700 and (cpu_backend.cache_dir().stat().st_mode & 0o077) == 0
    private = cpu_backend.cache_dir()
    os.chmod(private, 0o777)
    with pytest.raises(CompileError, match=r"writable by other users.*chmod 700"):
        cpu_backend.compile_module(src)
    os.chmod(private, 0o700)
    cpu_backend.compile_module(src)


def test_a_planted_or_changed_binary_is_rebuilt_not_run(tmp_path, monkeypatch):
    monkeypatch.setenv("GPT2_CACHE_DIR", str(tmp_path / "cache"))
    src = tmp_path / "k.cu"
    src.write_text('extern "C" __global__ void k(float* x) { x[threadIdx.x] = 1.0f; }\n')
    from helpers.runtime.cpu_backend import cache
    compiled = cpu_backend.compile_module(src)
    assert cache.trusted(compiled.library)
    tampered = compiled.library.read_bytes()[:-100] + b"\0" * 100
    compiled.library.write_bytes(tampered)                          # changed (or torn) in the cache
    assert not cache.trusted(compiled.library)
    again = cpu_backend.compile_module(src)
    assert again.library.read_bytes() != tampered and cache.trusted(again.library), "it must be rebuilt"
    planted = cpu_backend.launcher.build(cpu_backend.find_compiler(), cpu_backend.cache_dir())
    planted.with_name(planted.name + ".sha256").unlink()            # a launcher nobody recorded
    assert cpu_backend.launcher.build(cpu_backend.find_compiler(), cpu_backend.cache_dir()) == planted
    assert cache.trusted(planted)
