"""Backend selection, the array helpers, helpers.check, and the repository's hygiene."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import helpers
from helpers import device
from helpers.runtime.cuda_source import REPO_ROOT


def backend_in_subprocess(value):
    env = {k: v for k, v in os.environ.items() if k != "GPT2_DEVICE"}
    if value is not None:
        env["GPT2_DEVICE"] = value
    return subprocess.run([sys.executable, "-c", "from helpers import device; print(device.name)"],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True)


def test_cpu_can_be_forced():
    proc = backend_in_subprocess("cpu")
    assert proc.returncode == 0 and proc.stdout.strip() == "cpu"


def test_auto_picks_cpu_without_a_gpu():
    proc = backend_in_subprocess(None)
    expected = "cpu" if device._cupy_problem() else "cupy"
    assert proc.returncode == 0 and proc.stdout.strip() == expected


def test_asking_for_cupy_without_a_gpu_says_why(monkeypatch):
    if device._cupy_problem() is None:
        import cupy
        if not getattr(cupy, "__standin__", False):
            pytest.skip("this machine has a usable GPU")  # never the case in CI
        monkeypatch.setenv("GPT2_STANDIN_DEVICES", "0")  # the CuPy stand-in, as on a machine without a GPU
    proc = backend_in_subprocess("cupy")
    assert proc.returncode != 0
    assert "DeviceUnavailableError: GPT2_DEVICE=cupy was asked for, but CuPy" in proc.stderr
    assert "GPT2_DEVICE" in proc.stderr and "cpu" in proc.stderr


def test_a_misspelt_backend_is_an_error():
    proc = backend_in_subprocess("gpu")
    assert proc.returncode != 0 and "GPT2_DEVICE='gpu': use 'cpu', 'cupy' or 'auto'" in proc.stderr


def test_array_helpers_round_trip():
    a = device.asarray([[1, 2], [3, 4]], dtype=np.float32)
    assert isinstance(a, device.xp.ndarray) and a.dtype == np.float32 and a.flags.c_contiguous
    assert np.array_equal(device.asnumpy(a), [[1, 2], [3, 4]])
    assert device.asarray(np.ones((3, 4)).T).flags.c_contiguous
    assert device.zeros((2, 3)).dtype == np.float32 and not device.asnumpy(device.zeros(5)).any()
    assert device.empty((2, 3), dtype=np.int32).shape == (2, 3)
    device.synchronize()


def test_time_kernel_measures_a_launch():
    mod = device.load_module(REPO_ROOT / "tests" / "kernels" / "features.cu", backend="cpu")
    fn = mod.get_function("block_sum_dynamic")
    x = np.ones(4096, np.float32)
    t = device.time_kernel(fn, (16,), (256,), (x, np.zeros(16, np.float32), 4096), 1024, repeat=3)
    assert 0 < t < 10


def test_set_timeout_rejects_nonsense():
    with pytest.raises(ValueError, match="positive number of seconds"):
        device.set_timeout(0)


def test_check_passes_and_prints_one_line(capsys):
    ref = np.linspace(-1, 1, 101).astype(np.float32)
    err = helpers.check("same", ref + 1e-7, ref, atol=1e-6)
    assert err <= 2e-7
    assert capsys.readouterr().out.startswith("same: max abs error ")


def test_check_names_the_worst_index():
    ref = np.zeros((3, 4), np.float32)
    out = ref.copy()
    out[1, 2] = 0.5
    out[2, 3] = 1e-6
    with pytest.raises(AssertionError, match=r"bad: 1 of 12 elements.*worst at index \(1, 2\): out=0.5, ref=0.0"):
        helpers.check("bad", out, ref, atol=1e-5)


def test_check_uses_the_relative_part_and_catches_nan_and_shapes():
    helpers.check("relative", np.array([1000.001]), np.array([1000.0]), atol=0, rtol=1e-5)
    with pytest.raises(AssertionError, match="nan"):
        helpers.check("nan", np.array([np.nan, 1.0]), np.array([1.0, 1.0]))
    with pytest.raises(AssertionError, match=r"shape \(3,\) does not match the reference's \(4,\)"):
        helpers.check("shape", np.zeros(3), np.zeros(4))


def committed_notebooks() -> dict[str, str]:
    """path -> text of every notebook as committed (HEAD), not as in the working copy: a learner's
    notebooks hold outputs once JupyterLab has saved them, and that must not fail their test run."""
    git = subprocess.run(["git", "ls-files", "-z", "*.ipynb"], cwd=REPO_ROOT, capture_output=True, text=True)
    if git.returncode != 0:
        if os.environ.get("CI"):
            pytest.fail(f"CI runs in a git checkout, but git ls-files failed: {git.stderr.strip()}")
        pytest.skip("not a git checkout: there is no committed version to check")
    paths = [p for p in git.stdout.split("\0") if p]
    blobs = {p: subprocess.run(["git", "show", f"HEAD:{p}"], cwd=REPO_ROOT, capture_output=True, text=True)
             for p in paths}
    return {p: b.stdout for p, b in blobs.items() if b.returncode == 0}  # (a notebook added but not committed yet)


def test_notebooks_are_committed_without_outputs():
    notebooks = committed_notebooks()
    assert notebooks, "no committed notebooks found"
    for path, text in notebooks.items():
        cells = json.loads(text)["cells"]
        dirty = [i for i, c in enumerate(cells) if c["cell_type"] == "code" and (c.get("outputs") or c.get("execution_count"))]
        assert not dirty, (f"{path} is committed with outputs in cells {dirty}: strip them with `nbstripout {path}` "
                           f"(or once: `nbstripout --install`, which strips every notebook as it is committed)")


def test_notebook_sources_hold_no_control_characters():
    for path, text in committed_notebooks().items():
        for i, cell in enumerate(json.loads(text)["cells"]):
            source = "".join(cell["source"])
            bad = sorted({f"{ord(ch):#04x}" for ch in source if ord(ch) < 32 and ch not in "\n\t"})
            assert not bad, f"{path} cell {i} contains control characters {bad} (a LaTeX \\a written as a BEL?)"


def test_notebook_code_lines_fit_a_1280px_window():
    # a longer line runs off the right edge of a code cell in a JupyterLab window 1280 px wide
    limit = 100
    for path, text in committed_notebooks().items():
        for i, cell in enumerate(json.loads(text)["cells"]):
            if cell["cell_type"] != "code":
                continue
            for n, line in enumerate("".join(cell["source"]).split("\n"), 1):
                assert len(line) <= limit, (f"{path} cell {i} line {n} has {len(line)} characters, "
                                            f"more than {limit}: wrap it\n{line}")


def test_no_kernel_uses_what_nvrtc_lacks():
    """No cuda_runtime.h, M_PI or INFINITY; of the system headers, only CUDA's own that both backends
    provide (the CPU backend's include/ folder: cooperative groups, cuda_fp16.h, cuda_bf16.h)."""
    import re

    from helpers.runtime.cpu_backend import INCLUDE_DIR
    from helpers.runtime.cuda_source import strip_comments
    provided = {str(p.relative_to(INCLUDE_DIR)) for p in INCLUDE_DIR.rglob("*.h") if not p.name.startswith("gpt2cpu")}
    assert {"cooperative_groups.h", "cooperative_groups/reduce.h", "cuda_fp16.h", "cuda_bf16.h"} <= provided
    for cu in sorted((REPO_ROOT / "cuda").glob("*.cu")) + sorted((REPO_ROOT / "tests" / "kernels").glob("*.cu")):
        text = strip_comments(cu.read_text())
        for banned in ("cuda_runtime.h", "M_PI", "INFINITY"):
            assert banned not in text, f"{cu.name} uses {banned}, which NVRTC does not provide"
        for header in re.findall(r"#\s*include\s*<([^>]+)>", text):
            assert header in provided, f"{cu.name} includes <{header}>, which the CPU backend does not provide"


def test_racecheck_copies_keep_aliasing_on_both_backends():
    """An in-place kernel given (buf, buf), or x and x[1:], must see one memory under racecheck too."""
    buf = device.asarray(np.arange(12, dtype=np.float32))
    other = device.zeros(3)
    images = device._host_images([buf, buf, buf[1:], other, 7])
    a, b, c, d, scalar = images
    assert all(isinstance(x, np.ndarray) for x in (a, b, c, d)) and scalar == 7
    assert np.shares_memory(a, b) and np.shares_memory(a, c) and not np.shares_memory(a, d)
    a[1] = -1.0
    assert b[1] == -1.0 and c[0] == -1.0, "views of one copy"
    assert device.asnumpy(buf)[1] == 1.0, "and copies: the caller's array is untouched"


def test_a_kernel_that_does_not_compile_fails_at_load_on_both_backends(tmp_path):
    src = tmp_path / "broken.cu"
    src.write_text('extern "C" __global__ void k(float* x) { x[threadIdx.x] = undeclared_thing; }\n')
    with pytest.raises(device.CompileError, match=r"(?s)broken\.cu does not compile.*undeclared_thing"):
        device.load_module(src)   # the active backend: the GPU path compiles with NVRTC at once too


def test_memory_info_peak_and_fit_batch(capsys):
    free, total = device.memory_info()
    assert 0 < free <= total
    before = device.peak_memory(reset=True)
    big = device.zeros(4 << 20)   # 16 MiB
    if device.name == "cupy":
        assert device.peak_memory() >= big.nbytes and before is not None
    else:
        assert device.peak_memory() is None
    B = device.fit_batch(8, bytes_per_item=free // 4, what="B")
    assert B == 2 and "halved from 8" in capsys.readouterr().out   # 2 * free/4 <= 0.6 * free < 4 * free/4
    with pytest.raises(MemoryError, match="even B=1 needs"):
        device.fit_batch(8, bytes_per_item=free)
