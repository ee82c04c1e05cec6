"""The NVRTC compile check (helpers/runtime/nvrtc_report.py): every kernel compiles for real GPUs, without a GPU."""
import sys

import pytest

from helpers.runtime import nvrtc, nvrtc_report
from helpers.runtime.errors import CompileError

ARCHS = nvrtc_report.supported(nvrtc_report.ALL_ARCHS)


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_the_installed_nvrtc_covers_t4_to_blackwell():
    assert {"sm_75", "sm_80", "sm_86", "sm_89", "sm_90", "sm_100", "sm_120"} <= set(ARCHS)


def test_every_kernel_compiles_for_every_architecture_without_spills():
    paths = nvrtc_report.default_paths(include_tests=True)  # found now: the folders grow with the curriculum
    rows, errors = [], []
    for path in paths:
        try:
            rows += nvrtc_report.compile_report([path], ARCHS)
        except CompileError as e:
            errors.append(str(e))
    assert not errors, "\n\n".join(errors)
    assert rows, f"no kernel compiled from {[str(p) for p in paths]}"
    for r in rows:
        assert r.spill_stores == r.spill_loads == 0, (
            f"{r.file}: {r.kernel} spills on {r.arch}: {r.spill_stores} bytes stored, {r.spill_loads} bytes loaded")


@pytest.mark.parametrize("name, text", [
    ("uses_m_pi.cu", 'extern "C" __global__ void k(float* x) { x[threadIdx.x] *= M_PI; }\n'),
    ("includes_runtime.cu", '#include <cuda_runtime.h>\nextern "C" __global__ void k(float* x) { x[0] = 1.0f; }\n'),
])
def test_a_broken_source_raises_compile_error_naming_the_file(tmp_path, name, text):
    with pytest.raises(CompileError, match=name) as info:
        nvrtc_report.compile_report([write(tmp_path, name, text)], ["sm_80"])
    assert "sm_80" in str(info.value) and "hint:" in str(info.value)


def test_templates_are_reported_under_their_name_expressions(tmp_path):
    path = write(tmp_path, "templates.cu", """\
// name_expressions: scale<float>, scale<int>
template <typename T>
__global__ void scale(T* x, T s, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] *= s;
}
__global__ void plain_cpp(float* x) { x[threadIdx.x] = 0.0f; }
""")
    rows = nvrtc_report.compile_report([path])
    assert sorted({r.kernel for r in rows}) == ["plain_cpp", "scale<float>", "scale<int>"]
    assert sorted((r.kernel, r.arch) for r in rows) == sorted((k, a) for k in ("plain_cpp", "scale<float>", "scale<int>")
                                                             for a in ARCHS)
    assert all(r.registers > 0 for r in rows)


def test_a_file_with_only_uninstantiated_templates_has_no_kernels(tmp_path):
    path = write(tmp_path, "bare_template.cu", "template <typename T> __global__ void k(T* x) { x[0] = T(1); }\n")
    assert nvrtc_report.compile_report([path]) == []


def test_static_shared_memory_and_stack_are_reported(tmp_path):
    write(tmp_path, "common.cuh", "#define TILE 256\n")  # found through -I<the file's folder>
    path = write(tmp_path, "resources.cu", """\
#include "common.cuh"
extern "C" __global__ void shared_tile(float* x) {
    __shared__ float buf[TILE];
    buf[threadIdx.x] = x[threadIdx.x];
    __syncthreads();
    x[threadIdx.x] = buf[TILE - 1 - threadIdx.x];
}
extern "C" __global__ void big_local_array(float* x, int k) {
    float scratch[4096];  // indexed with a run-time value: it cannot live in registers
    for (int i = 0; i < 4096; i++) scratch[i] = x[i];
    x[0] = scratch[k];
}
""")
    rows = {(r.kernel, r.arch): r for r in nvrtc_report.compile_report([path])}
    for arch in ARCHS:
        assert rows["shared_tile", arch].shared_bytes == 1024
        assert rows["shared_tile", arch].stack_bytes == 0
        assert rows["big_local_array", arch].stack_bytes >= 4096 * 4
        assert rows["big_local_array", arch].shared_bytes == 0


def test_format_report_has_one_line_per_kernel_and_arch(tmp_path):
    path = write(tmp_path, "one.cu", 'extern "C" __global__ void only(float* x) { x[0] = 1.0f; }\n')
    table = nvrtc_report.format_report(nvrtc_report.compile_report([path]))
    lines = table.splitlines()
    assert "registers" in lines[0] and len(lines) == 2 + len(ARCHS)
    assert all("only" in line for line in lines[2:])


def test_parse_ptxas_log_maps_mangled_names_and_reads_spills():
    log = """\
ptxas info    : Compiling entry function '_Z5scaleIfEvPT_S0_i' for 'sm_90'
ptxas info    : Function properties for _Z5scaleIfEvPT_S0_i
ptxas         .     48 bytes stack frame, 40 bytes spill stores, 36 bytes spill loads
ptxas info    : Used 255 registers, used 1 barriers, 2048 bytes smem, 368 bytes cmem[0]
ptxas info    : Compiling entry function '_Z3addPfS_i' for 'sm_90'
ptxas info    : Function properties for _Z3addPfS_i
ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 8 registers, used 0 barriers
"""
    scale, add = nvrtc_report.parse_ptxas_log(log, {"_Z5scaleIfEvPT_S0_i": "scale<float>"})
    assert scale == dict(kernel="scale<float>", registers=255, spill_stores=40, spill_loads=36,
                         shared_bytes=2048, stack_bytes=48)
    assert add["kernel"] == "add" and add["registers"] == 8 and add["shared_bytes"] == 0


def test_main_exit_status(tmp_path, capsys):
    good = write(tmp_path, "good.cu", 'extern "C" __global__ void fine(float* x) { x[0] = 1.0f; }\n')
    bad = write(tmp_path, "bad.cu", 'extern "C" __global__ void k(float* x) { x[0] = M_PI; }\n')
    assert nvrtc_report.main([str(good)]) == 0
    assert "fine" in capsys.readouterr().out
    assert nvrtc_report.main([str(good), str(bad), "--arch", "sm_90"]) == 1
    assert "bad.cu" in capsys.readouterr().err


def test_show_prints_the_table(tmp_path, capsys):
    nvrtc_report.show(write(tmp_path, "shown.cu", 'extern "C" __global__ void shown(int* x) { x[0] = 2; }\n'))
    assert "shown" in capsys.readouterr().out


def test_missing_nvrtc_says_what_to_install_and_show_goes_on(monkeypatch, tmp_path, capsys):
    path = write(tmp_path, "x.cu", 'extern "C" __global__ void k() {}\n')
    monkeypatch.setattr(nvrtc, "_library", None)
    monkeypatch.setattr(nvrtc, "_problem", None)
    monkeypatch.setattr(nvrtc, "_candidates", lambda: [str(tmp_path / "libnvrtc.so.12")])  # as if not installed
    with pytest.raises(RuntimeError, match=r"NVRTC library is not installed.*pip install nvidia-cuda-nvrtc-cu12"):
        nvrtc_report.compile_report([path])
    nvrtc_report.show(path)  # a notebook's report cell: a note, not a traceback
    assert "no NVRTC report here: the NVRTC library is not installed" in capsys.readouterr().out


def test_macos_has_no_nvrtc_and_says_so(monkeypatch):
    monkeypatch.setattr(nvrtc, "_library", None)
    monkeypatch.setattr(nvrtc, "_problem", None)
    monkeypatch.setattr(sys, "platform", "darwin")
    assert not nvrtc.available() and "no NVRTC" in nvrtc.problem() and "macOS" in nvrtc.problem()


def test_the_binding_reports_what_this_nvrtc_supports():
    assert nvrtc.version() >= (12, 0)
    archs = nvrtc.supported_archs()
    assert {"sm_75", "sm_80", "sm_90"} <= set(archs)
    compiled = nvrtc.compile_program('template <int N> __global__ void k(float* x) { x[threadIdx.x] *= N; }',
                                     "k.cu", ["-arch=sm_80"], ["k<3>"])
    assert compiled.lowered_names == {"k<3>": "_Z1kILi3EEvPf"} and compiled.cubin[:4] == b"\x7fELF"
