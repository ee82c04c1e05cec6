"""The CPU backend on aarch64 (64-bit Arm): the hand-written fiber switch for that architecture,
cross-compiled and run under qemu's user-mode emulation. CI installs the cross compiler and qemu."""
import os
import shutil
import subprocess

import pytest

from helpers.runtime import cpu_backend
from helpers.runtime.cuda_source import REPO_ROOT

CXX = "aarch64-linux-gnu-g++"
QEMU = "qemu-aarch64"


def tools_or_skip():
    missing = [t for t in (CXX, QEMU) if not shutil.which(t)]
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"CI must install {missing}: apt-get install g++-aarch64-linux-gnu qemu-user")
        pytest.skip(f"needs {missing} (apt-get install g++-aarch64-linux-gnu qemu-user)")


def test_barriers_and_shuffles_on_aarch64(tmp_path):
    tools_or_skip()
    kernels = REPO_ROOT / "tests" / "kernels" / "features.cu"
    entries = ["block_sum_dynamic", "shuffles", "reverse_in_block"]
    source = (f'#line 1 "{kernels}"\n' + cpu_backend.rewrite_shared(kernels.read_text())
              + cpu_backend._generated_tail(entries) + (REPO_ROOT / "tests" / "aarch64_harness.cpp").read_text())
    (tmp_path / "test.cpp").write_text(source)
    subprocess.run([CXX, "-std=c++17", "-O2", "-fno-strict-aliasing", "-pthread", "-fvisibility=hidden",
                    f"-I{kernels.parent}", "-include", str(cpu_backend.HEADER), str(tmp_path / "test.cpp"),
                    "-o", str(tmp_path / "test"), "-ldl"], check=True)
    header = (tmp_path / "test").read_bytes()[:20]
    assert header[:4] == b"\x7fELF" and int.from_bytes(header[18:20], "little") == 183  # EM_AARCH64
    run = subprocess.run([QEMU, "-L", "/usr/aarch64-linux-gnu", str(tmp_path / "test")], capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0 and run.stdout.strip().endswith("ALL OK"), run.stdout + run.stderr
    assert run.stdout.count("rc=0 status=0") == 6
