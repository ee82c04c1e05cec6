"""The measuring and gradient-checking helpers the layer notebooks rely on."""
import numpy as np
import pytest

from helpers import device
from helpers.runtime.cuda_source import REPO_ROOT
from helpers.teaching import bench, gradcheck


def test_numerical_gradient_of_a_known_function():
    x = np.linspace(-1, 1, 7)
    dout = np.arange(7, dtype=np.float64)
    grad = gradcheck.numerical_gradient(lambda v: v**3, x, dout)
    np.testing.assert_allclose(grad, 3 * x**2 * dout, rtol=1e-7, atol=1e-9)
    gradcheck.assert_gradient("cube", 3 * x**2 * dout, grad)
    with pytest.raises(AssertionError, match=r"square: backward differs .* at \(6,\)"):
        gradcheck.assert_gradient("square", 3 * x**2 * dout + np.eye(7)[6], grad)


def test_numerical_gradient_refuses_float32():
    with pytest.raises(TypeError, match="float64"):
        gradcheck.numerical_gradient(lambda v: v, np.zeros(3, np.float32), np.zeros(3, np.float32))


def test_bench_table_measures_and_labels_emulation(capsys):
    fn = device.load_module(REPO_ROOT / "tests" / "kernels" / "features.cu", backend="cpu").get_function(
        "block_sum_dynamic")
    x = np.ones(2048, np.float32)
    m = bench.measure("block sum", fn, (8,), (256,), (x, np.zeros(8, np.float32), 2048), 1024,
                      bytes=4 * 2048, flops=2048, repeat=2)
    assert m.seconds > 0 and m.gbps == pytest.approx(4 * 2048 / m.seconds / 1e9)
    c = bench.measure_call("numpy sum", lambda: x.sum(), bytes=4 * 2048, repeat=2)
    text = bench.table([m, c], title="sums")
    assert ("EMULATION" in text) == (device.name == "cpu") and "block sum" in text and "numpy sum" in text
    assert capsys.readouterr().out.startswith("sums")


def test_slow_measurements_report_as_they_finish(capsys, monkeypatch):
    import time
    bench.measure_call("quick", lambda: None, repeat=2)
    assert capsys.readouterr().out == "", "fast measurements stay quiet"
    monkeypatch.setattr(bench, "PROGRESS_AFTER_S", 0.05)
    bench.measure_call("slow", lambda: time.sleep(0.02), repeat=2)
    line = capsys.readouterr().out
    assert line.startswith("  measured slow: ") and "ms per run" in line


def test_gpu_limits_come_from_the_device_properties(monkeypatch):
    if device.name != "cupy":
        assert device.peak_rates() is None
        return
    import cupy
    for gpu, bandwidth, fp32 in (("t4", 320.06e9, 8.14e12), ("h100", 3.352e12, 66.9e12)):
        monkeypatch.setenv("GPT2_STANDIN_GPU", gpu)
        if not getattr(cupy, "__standin__", False):
            break   # a real GPU: its own figures
        peak = device.peak_rates()
        assert peak["bandwidth"] == pytest.approx(bandwidth, rel=1e-3) and peak["fp32"] == pytest.approx(fp32, rel=1e-3)


def test_timing_checks_a_launch_once_and_then_launches_back_to_back(monkeypatch):
    fn = device.load_module(REPO_ROOT / "tests" / "kernels" / "features.cu").get_function("coordinates")
    out = device.zeros(8 * 64, np.int32)
    checks = []
    real = device.convert_args
    monkeypatch.setattr(device, "convert_args", lambda *a, **k: checks.append(1) or real(*a, **k))
    seconds = device.time_kernel(fn, (2,), (32,), (out, 64), repeat=3, warmup=1)
    assert seconds > 0 and len(checks) == 1
    assert device.asnumpy(out)[6] == 32 * 10000 + 100 + 1   # blockDim written by the launches
