"""The CPU backend on macOS, Intel and Apple Silicon: every piece of it built for both by a cross
compiler with macOS's own headers and libraries (zig's bundled C++ toolchain, the `ziglang` wheel).

What this proves: the runtime header (the Mach-O variant of the hand-written fiber switch, macOS's
signal context for faults, POSIX shared memory), a kernel module with the faults test kernels, the
aarch64 test harness and the launcher process compile and link into Mach-O binaries of the right
architecture, exporting what the Python side loads. What it cannot: run them (no macOS here). The
switch's instructions are the same as on Linux, where they run (natively on x86-64; under qemu on
aarch64, tests/test_aarch64.py); on macOS only the assembler's directives differ.
"""
import os
import struct
import subprocess
import sys

import pytest

from helpers.runtime import cpu_backend
from helpers.runtime.cuda_source import REPO_ROOT

TARGETS = {"aarch64-macos": 0x0100000C, "x86_64-macos": 0x01000007}  # Mach-O CPU_TYPE_ARM64, CPU_TYPE_X86_64
KERNELS = REPO_ROOT / "tests" / "kernels"


def zig_or_skip() -> list[str]:
    try:
        import ziglang  # noqa: F401
    except ImportError:
        message = "the macOS build check needs the ziglang package (pip install -e '.[test]')"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return [sys.executable, "-m", "ziglang", "c++"]


def macho(path, cputype: int, filetype: int) -> bytes:
    data = path.read_bytes()
    magic, cpu, _, kind = struct.unpack("<IiiI", data[:16])
    assert magic == 0xFEEDFACF, f"{path.name} is not a 64-bit Mach-O file"
    assert cpu == cputype and kind == filetype, (hex(cpu), kind)
    return data


def build(command, tmp_path):
    proc = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]


@pytest.mark.parametrize("target", TARGETS)
def test_a_kernel_module_and_the_launcher_build_for_macos(target, tmp_path):
    zig = zig_or_skip()
    for name in ("features.cu", "faults.cu"):
        body, entries = cpu_backend.module_source(KERNELS / name)
        (tmp_path / "module.cpp").write_text(body)
        flags = [f for f in cpu_backend.module_flags(KERNELS / name) if f != "-pthread"]
        build([*zig, "-target", target, *flags, "-x", "c++", "module.cpp", "-o", "module.dylib"], tmp_path)
        data = macho(tmp_path / "module.dylib", TARGETS[target], 6)  # MH_DYLIB
        assert b"_gpt2cpu_launch\0" in data and b"_gpt2cpu_entry_signature\0" in data
    launcher = cpu_backend.HEADER.with_name("launcher.cpp")
    build([*zig, "-target", target, "-std=c++17", "-O2", f"-I{launcher.parent}", str(launcher), "-o", "launcher"],
          tmp_path)
    macho(tmp_path / "launcher", TARGETS[target], 2)  # MH_EXECUTE


def test_the_aarch64_harness_links_for_apple_silicon(tmp_path):
    """The program tests/test_aarch64.py runs under qemu, built for macOS on Apple Silicon instead."""
    zig = zig_or_skip()
    entries = ["block_sum_dynamic", "shuffles", "reverse_in_block"]
    source = (f'#line 1 "{KERNELS / "features.cu"}"\n' + cpu_backend.rewrite_shared((KERNELS / "features.cu").read_text())
              + cpu_backend._generated_tail(entries) + (REPO_ROOT / "tests" / "aarch64_harness.cpp").read_text())
    (tmp_path / "test.cpp").write_text(source)
    build([*zig, "-target", "aarch64-macos", "-std=c++17", "-O2", "-fno-strict-aliasing", "-fvisibility=hidden",
           f"-I{KERNELS}", "-include", str(cpu_backend.HEADER), "test.cpp", "-o", "test"], tmp_path)
    data = macho(tmp_path / "test", TARGETS["aarch64-macos"], 2)
    # the Mach-O spelling of the switch: a leading underscore, private to the image
    assert b"_gpt2cpu_ctx_switch\0" in data and b"_gpt2cpu_fiber_trampoline\0" in data
