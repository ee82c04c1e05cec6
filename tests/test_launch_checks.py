"""Launches are validated against the kernel's C signature before anything runs; every error names
the parameter. (The same checks run before CuPy launches on a GPU.)"""
import numpy as np
import pytest

from helpers.runtime import cuda_source, device
from helpers.runtime.launch_checks import check_config, convert_args

KERNELS = cuda_source.REPO_ROOT / "tests" / "kernels"


@pytest.fixture(scope="module")
def all_params():
    return device.load_module(KERNELS / "faults.cu", backend="cpu").get_function("all_params")


def good_args():
    return [np.zeros(4, np.float32), np.zeros(4, np.float64), np.zeros(4, np.int32), np.zeros(4, np.uint32),
            -5, 2**40, 1.5, 2.5, 7, 3, True, np.zeros(3, np.uint8)]


def test_parser_reads_every_parameter(all_params):
    assert [p.ctype for p in all_params.kernel.params] == [
        "const float*", "const double*", "const int*", "unsigned int*", "long long", "unsigned long long",
        "float", "double", "int", "unsigned int", "bool", "void*"]
    assert [p.name for p in all_params.kernel.params][:3] == ["f", "d", "i"]


def test_a_good_launch_runs(all_params):
    all_params((1,), (1,), tuple(good_args()))


def test_scalars_become_exact_c_types(all_params):
    values = convert_args(all_params.kernel, good_args(), "cpu", (np.ndarray,), ())
    assert [type(v) for v in values[4:11]] == [np.int64, np.uint64, np.float32, np.float64, np.int32, np.uint32,
                                               np.bool_]
    assert convert_args(all_params.kernel, good_args()[:8] + [np.int64(7)] + good_args()[9:], "cpu",
                        (np.ndarray,), ())[8] == np.int32(7)


@pytest.mark.parametrize("index,value,pattern", [
    (0, np.zeros(4, np.float64), r"argument 0 `f` \(const float\*\): expects a float32 array, got float64"),
    (0, [1.0, 2.0], r"argument 0 `f`.*expects an array \(or None for a null pointer\), got list"),
    (0, 3.0, r"argument 0 `f`.*expects an array"),
    (2, np.zeros((4, 4), np.int32)[:, 1], r"argument 2 `i`.*not contiguous"),
    (3, np.zeros(4, np.int32), r"argument 3 `u`.*expects a uint32 array, got int32"),
    (8, 7.0, r"argument 8 `k` \(int\): expects an integer, got float 7.0"),
    (8, np.float32(7), r"argument 8 `k` \(int\): expects an integer"),
    (8, 2**31, r"argument 8 `k` \(int\): 2147483648 does not fit; it must be in \[-2147483648, 2147483647\]"),
    (9, -1, r"argument 9 `uk` \(unsigned int\): -1 does not fit"),
    (4, 2**63, r"argument 4 `ll` \(long long\): .* does not fit"),
    (6, "1.5", r"argument 6 `x` \(float\): expects a number, got str"),
    (6, 1e39, r"argument 6 `x` \(float\): 1e\+39 is too large for a float"),
    (6, np.zeros(1, np.float32), r"argument 6 `x` \(float\): expects a single float value, got an array"),
    (10, 2, r"argument 10 `flag` \(bool\): expects a bool"),
])
def test_bad_arguments_name_the_parameter(all_params, index, value, pattern):
    args = good_args()
    args[index] = value
    with pytest.raises(device.LaunchError, match=pattern):
        all_params((1,), (1,), tuple(args))


def test_read_only_array_for_a_writable_pointer(all_params):
    args = good_args()
    args[3] = np.zeros(4, np.uint32)
    args[3].flags.writeable = False
    with pytest.raises(device.LaunchError, match=r"argument 3 `u`.*read-only"):
        all_params((1,), (1,), tuple(args))


def test_wrong_number_of_arguments(all_params):
    with pytest.raises(device.LaunchError, match=r"takes 12 arguments but 11 were given; signature: all_params\("):
        all_params((1,), (1,), tuple(good_args()[:11]))
    with pytest.raises(device.LaunchError, match="args must be a tuple"):
        all_params((1,), (1,), np.zeros(3))


@pytest.mark.parametrize("grid,block,smem,pattern", [
    ((1,), (1025,), 0, r"block.x = 1025 exceeds the limit of 1024"),
    ((1,), (32, 32, 2), 0, r"has 2048 threads; at most 1024"),
    ((1,), (1, 1, 65), 0, r"block.z = 65 exceeds the limit of 64"),
    ((1, 65536), (32,), 0, r"grid.y = 65536 exceeds the limit of 65535"),
    ((2**31,), (32,), 0, r"grid.x = 2147483648 exceeds"),
    ((0,), (32,), 0, r"at least 1"),
    ((2.0,), (32,), 0, r"grid must hold ints"),
    ((1,), (32,), 49153, r"shared_mem = 49153 bytes; dynamic shared memory must be between 0 and 49152"),
    ((1,), (32,), -1, r"shared_mem = -1"),
    ((1,), (1, 2, 3, 4), 0, r"block must be an int or a tuple of 1 to 3 ints"),
])
def test_bad_launch_configurations(all_params, grid, block, smem, pattern):
    with pytest.raises(device.LaunchError, match=pattern):
        all_params(grid, block, tuple(good_args()), shared_mem=smem)


def test_float4_pointer_needs_a_multiple_of_four():
    mod = device.load_module(KERNELS / "features.cu", backend="cpu")
    with pytest.raises(device.LaunchError, match=r"`in4` \(const float4\*\).*multiple of 4; got 10"):
        mod.get_function("vector_types")((1,), (32,), (np.zeros(10, np.float32), np.zeros(10, np.float32),
                                                       np.zeros(12, np.float32), np.zeros(10, np.float32), 2))


def test_cupy_arrays_are_refused_on_the_cpu_backend(all_params):
    class GpuArray:  # stands in for cupy.ndarray, which cannot be created without a GPU
        pass
    with pytest.raises(device.LaunchError, match="CuPy array on the GPU, but the active backend is the CPU"):
        convert_args(all_params.kernel, [GpuArray()] + good_args()[1:], "cpu", (np.ndarray,), (GpuArray,))


def test_numpy_arrays_are_refused_on_the_cupy_backend(all_params):
    with pytest.raises(device.LaunchError, match="NumPy array in host memory, but kernels run on the GPU"):
        convert_args(all_params.kernel, good_args(), "cupy", (), (np.ndarray,))


def test_check_config_normalises_dims(all_params):
    assert check_config(all_params.kernel, 5, (32, 2), 0) == ((5, 1, 1), (32, 2, 1), 0)


def test_unknown_kernel_and_missing_file():
    mod = device.load_module(KERNELS / "features.cu", backend="cpu")
    with pytest.raises(KeyError, match="no __global__ function 'nope'.*it has:.*coordinates"):
        mod.get_function("nope")
    with pytest.raises(FileNotFoundError, match="no kernel file 'does_not_exist.cu'"):
        device.load_module("does_not_exist.cu")
