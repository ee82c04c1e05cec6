"""Bugs that GPUs hide become clear Python errors on the CPU backend, and the process survives."""
import numpy as np
import pytest

from helpers.runtime import cpu_backend, device
from helpers.runtime.cuda_source import REPO_ROOT

KERNELS = REPO_ROOT / "tests" / "kernels"


@pytest.fixture(scope="module")
def faults():
    return device.load_module(KERNELS / "faults.cu", backend="cpu")


def still_works():
    """After any fault the next launch runs normally."""
    mod = device.load_module(KERNELS / "features.cu", backend="cpu")
    x = np.arange(1000, dtype=np.float32)
    out = np.zeros(1000, np.float32)
    mod.get_function("reverse_in_block")((8,), (128,), (x, out, 1000))
    assert np.array_equal(out[:128], x[:128][::-1])


def test_write_past_the_end_names_argument_thread_block_and_line(faults):
    out = np.zeros(1000, np.float32)
    with pytest.raises(device.KernelError) as e:
        faults.get_function("write_past_end")((4,), (256,), (out, 1000))
    msg = str(e.value)
    assert "out-of-bounds write of `out`" in msg
    assert "element 1000 of an array of 1000 float32" in msg
    assert "thread (232,0,0) of block (3,0,0)" in msg
    line = 1 + (KERNELS / "faults.cu").read_text().splitlines().index("    out[i] = 1.0f;  // no `if (i < n)`: the last block writes past the end")
    assert f"faults.cu:{line}" in msg
    assert not out.any(), "a failed launch must not copy partial results back"
    still_works()


def test_read_past_the_end(faults):
    x = np.ones(1000, np.float32)
    out = np.zeros(1000, np.float32)
    with pytest.raises(device.KernelError, match=r"out-of-bounds read of `in`.*thread \(231,0,0\) of block \(3,0,0\)"):
        faults.get_function("read_past_end")((4,), (256,), (x, out, 1000))
    still_works()


def test_read_before_the_start(faults):
    x = np.ones(100, np.float32)
    out = np.zeros(100, np.float32)
    with pytest.raises(device.KernelError, match=r"out-of-bounds read of `in`.*before its start"):
        faults.get_function("read_before_start")((1,), (128,), (x, out, 100))


def test_stack_overflow(faults):
    out = np.zeros(8, np.float32)
    with pytest.raises(device.KernelError, match=r"stack overflow in thread \(0,0,0\) of block \(0,0,0\)"):
        faults.get_function("huge_local_array")((1,), (4,), (out, 3))
    still_works()


def test_barrier_that_some_threads_never_reach(faults):
    x = np.ones(64, np.float32)
    out = np.zeros(64, np.float32)
    with pytest.raises(device.KernelError, match=r"reached by 40 of the 64 threads.*threads 40-63 exited"):
        faults.get_function("early_return_before_barrier")((1,), (64,), (x, out, 40))
    still_works()


def test_barriers_in_different_branches(faults):
    with pytest.raises(device.KernelError, match="different __syncthreads"):
        faults.get_function("barriers_in_branches")((1,), (32,), (np.zeros(32, np.float32),))


def test_shuffle_waiting_for_an_exited_lane(faults):
    x = np.ones(32, np.float32)
    with pytest.raises(device.KernelError, match=r"deadlock.*lane 5 .*exited"):
        faults.get_function("shuffle_with_exited_lane")((1,), (32,), (x, np.zeros(32, np.float32)))
    still_works()


def test_full_mask_in_a_partial_warp():
    mod = device.load_module(KERNELS / "features.cu", backend="cpu")
    with pytest.raises(device.KernelError, match="names lanes that do not exist"):
        mod.get_function("shuffles")((1,), (48,), (np.ones(48, np.float32), np.zeros(48 * 6, np.float32), 32))


def test_timeout_stops_an_endless_loop(faults, monkeypatch):
    monkeypatch.setattr(cpu_backend, "timeout_s", 1.0)
    with pytest.raises(device.KernelError, match="ran past the timeout of 1 s"):
        faults.get_function("spin_forever")((1,), (1,), (np.zeros(2, np.float32),))
    still_works()


def test_integer_division_by_zero(faults):
    with pytest.raises(device.KernelError, match="division by zero"):
        faults.get_function("divide_by_zero")((1,), (4,), (np.array([1, 2, 0, 4], np.int32), np.zeros(4, np.int32)))


def test_null_pointer(faults):
    with pytest.raises(device.KernelError, match="null pointer"):
        faults.get_function("null_pointer")((1,), (4,), (np.zeros(4, np.float32),))


def test_dynamic_shared_memory_overrun(faults):
    with pytest.raises(device.KernelError, match="shared memory"):
        faults.get_function("dynamic_shared_overrun")((1,), (32,), (np.zeros(32, np.float32), 4096), shared_mem=1024)


def test_too_much_shared_memory(faults):
    out = np.zeros(32, np.float32)
    faults.get_function("too_much_shared")((1,), (32,), (out,), shared_mem=4096)
    assert (out == 3).all()
    with pytest.raises(device.KernelError, match=r"48 KiB.*40960 bytes of __shared__ variables plus 16384 bytes"):
        faults.get_function("too_much_shared")((1,), (32,), (out,), shared_mem=16384)


def test_write_through_const_pointer():
    import tempfile
    from pathlib import Path
    src = Path(tempfile.mkdtemp()) / "const_write.cu"
    src.write_text('extern "C" __global__ void k(const float* x, float* out) { ((float*)x)[threadIdx.x] = 1.0f; '
                   'out[threadIdx.x] = 0.0f; }\n')
    with pytest.raises(device.KernelError, match="declares const"):
        device.load_module(src, backend="cpu").get_function("k")((1,), (4,), (np.zeros(4, np.float32),
                                                                               np.zeros(4, np.float32)))


def test_racecheck_catches_missing_syncthreads(faults):
    x = np.arange(64, dtype=np.float32)
    with pytest.raises(device.RaceError, match=r"kernel `missing_syncthreads`: output `out`"):
        device.racecheck(faults.get_function("missing_syncthreads"), (1,), (64,), (x, np.zeros(64, np.float32)))


def test_racecheck_catches_warp_synchronous_code_without_syncwarp(faults):
    x = np.arange(32, dtype=np.float32)
    with pytest.raises(device.RaceError, match="warp_race"):
        device.racecheck(faults.get_function("warp_race"), (1,), (32,), (x, np.zeros(32, np.float32)))
    device.racecheck(faults.get_function("warp_race_fixed"), (1,), (32,), (x, np.zeros(32, np.float32)))


def test_racecheck_lets_one_warp_run_ahead(faults):
    """Only the depth-first order (a warp runs on after its shuffles) exposes this missing barrier."""
    x = np.arange(128, dtype=np.float32)
    with pytest.raises(device.RaceError, match="each warp running ahead"):
        device.racecheck(faults.get_function("warp_runs_ahead"), (1,), (128,), (x, np.zeros(128, np.float32)))


def test_racecheck_passes_correct_kernels_and_leaves_arguments_alone():
    mod = device.load_module(KERNELS / "features.cu", backend="cpu")
    x = np.random.default_rng(0).standard_normal(1000).astype(np.float32)
    out = np.zeros(16, np.float32)
    assert device.racecheck(mod.get_function("block_sum_dynamic"), (16,), (64,), (x, out, 1000), shared_mem=256) is None
    assert not out.any(), "racecheck works on copies"
    device.racecheck(mod.get_function("shuffles"), (1,), (64,), (x[:64].copy(), np.zeros(384, np.float32), 8))
    device.racecheck(mod.get_function("reverse_in_block"), (8,), (128,), (x, np.zeros(1000, np.float32), 1000))


def test_racecheck_with_float_atomics_needs_a_tolerance():
    mod = device.load_module(KERNELS / "features.cu", backend="cpu")
    x = np.random.default_rng(1).standard_normal(3000).astype(np.float32)
    k = np.ones(3000, np.int32)
    args = (x, k, np.zeros(1, np.float32), np.zeros(1, np.int32), np.zeros(1, np.int32), np.zeros(1, np.uint32),
            np.zeros(1, np.int32), 3000)
    device.racecheck(mod.get_function("atomics"), (12,), (256,), args, rtol=1e-4, atol=1e-4)


def test_racecheck_reports_faults_too(faults):
    with pytest.raises(device.KernelError, match="out-of-bounds write"):
        device.racecheck(faults.get_function("write_past_end"), (2,), (64,), (np.zeros(100, np.float32), 100))
