"""How fast is the CPU backend? Run: python benchmarks/cpu_backend.py

Prints, for 1 and 2 cores (worker threads):
0. the fixed cost of a launch (the forked child, the copies of the arrays);
1. the cost of one fiber switch (a kernel that does nothing but __syncthreads());
2. a 16x16 shared-memory tiled matmul, M=256 K=128 N=384 (benchmarks/matmul_tiled16.cu), against
   numpy.matmul and against the same arithmetic as a plain C loop compiled with the same flags;
3. the same kernel at 64x64x96 against numba's CUDA simulator, measured in this run when numba is
   installed (pip install numba); without it that comparison is not printed: every figure printed is
   measured in the run that prints it.
Each figure is the best of several runs (the machine is shared and noisy).
"""
from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from helpers.runtime import cpu_backend, device  # noqa: E402

HERE = Path(__file__).resolve().parent

C_LOOP = r"""
// The kernel's arithmetic as a plain loop: the same float accumulation order over k.
extern "C" void matmul_loop(const float* A, const float* B, float* C, int M, int K, int N) {
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            float acc = 0.0f;
            for (int k = 0; k < K; k++) acc += A[i * K + k] * B[k * N + j];
            C[i * N + j] = acc;
        }
}
"""


def best_of(fn, repeat=7) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def c_loop():
    d = Path(tempfile.mkdtemp())
    (d / "loop.cpp").write_text(C_LOOP)
    subprocess.run([cpu_backend.find_compiler(), "-O2", "-ffp-contract=off", "-shared", "-fPIC",
                    str(d / "loop.cpp"), "-o", str(d / "loop.so")], check=True)
    lib = ctypes.CDLL(str(d / "loop.so"))
    fp = ctypes.POINTER(ctypes.c_float)
    lib.matmul_loop.argtypes = [fp, fp, fp, ctypes.c_int, ctypes.c_int, ctypes.c_int]
    return lambda A, B, C, M, K, N: lib.matmul_loop(A.ctypes.data_as(fp), B.ctypes.data_as(fp),
                                                    C.ctypes.data_as(fp), M, K, N)


NUMBA_SCRIPT = r"""
import sys, time
import numpy as np
from numba import cuda, float32

@cuda.jit
def matmul_tiled16(A, B, C):
    As = cuda.shared.array((16, 16), float32)
    Bs = cuda.shared.array((16, 16), float32)
    tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
    row, col = cuda.blockIdx.y * 16 + ty, cuda.blockIdx.x * 16 + tx
    acc = float32(0.0)
    for k0 in range(0, A.shape[1], 16):
        As[ty, tx] = A[row, k0 + tx]
        Bs[ty, tx] = B[k0 + ty, col]
        cuda.syncthreads()
        for k in range(16):
            acc += As[ty, k] * Bs[k, tx]
        cuda.syncthreads()
    C[row, col] = acc

M, K, N = map(int, sys.argv[1:4])
A = np.random.randn(M, K).astype(np.float32)
B = np.random.randn(K, N).astype(np.float32)
C = np.zeros((M, N), np.float32)
t0 = time.perf_counter()
matmul_tiled16[(N // 16, M // 16), (16, 16)](A, B, C)
seconds = time.perf_counter() - t0
assert np.allclose(C, A @ B, atol=1e-3)
print(seconds)
"""


def numba_simulator_seconds(M, K, N) -> float | None:
    """The same tiled kernel in numba's CUDA simulator (a Python thread per CUDA thread), if installed."""
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1"}  # must be set before numba is imported
    proc = subprocess.run([sys.executable, "-c", NUMBA_SCRIPT, str(M), str(K), str(N)], env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        if "No module named" in proc.stderr:
            return None
        raise RuntimeError(f"numba's simulator failed:\n{proc.stderr[-2000:]}")
    return float(proc.stdout.split()[-1])


def main():
    print(f"CPU backend benchmark, {os.cpu_count()} cores, context switch: {cpu_backend.context_switch()}, "
          f"launches isolated in a child process: {cpu_backend.isolate}\n")
    switch = device.load_module(HERE / "context_switch.cu", backend="cpu").get_function("barriers_only")
    mm = device.load_module(HERE / "matmul_tiled16.cu", backend="cpu").get_function("matmul_tiled16")
    out = np.zeros(64, np.float32)
    rng = np.random.default_rng(0)

    cpu_backend.workers = 1
    fixed = best_of(lambda: switch((1,), (1,), (out, 0)), repeat=20)
    print(f"0. fixed cost of a launch (1 block of 1 thread: fork, copies, exit): {fixed * 1e3:.2f} ms\n")
    print("1. fiber switch: a kernel that only calls __syncthreads() 200 times, 16 blocks")
    for workers in (1, 2):
        cpu_backend.workers = workers
        for threads in (32, 256, 1024):
            base = best_of(lambda: switch((16,), (threads,), (out, 0)))
            t = best_of(lambda: switch((16,), (threads,), (out, 200)))
            switches = 16 * threads * 200
            print(f"   {workers} core(s), {threads:4d} threads/block: {(t - base) / switches * 1e9 * workers:5.1f} ns "
                  f"per switch (core time)")

    def matrices(M, K, N):
        return (rng.standard_normal((M, K)).astype(np.float32), rng.standard_normal((K, N)).astype(np.float32),
                np.zeros((M, N), np.float32))

    M, K, N = 256, 128, 384
    A, B, C = matrices(M, K, N)
    t_numpy = best_of(lambda: A @ B, repeat=300)
    loop = c_loop()
    t_loop = best_of(lambda: loop(A, B, C, M, K, N))
    print(f"\n2. tiled matmul M={M} K={K} N={N} ({M // 16 * N // 16} blocks of 16x16 threads)")
    print(f"   numpy.matmul:          {t_numpy * 1e3:8.2f} ms")
    print(f"   plain C loop (1 core): {t_loop * 1e3:8.2f} ms")
    for workers in (1, 2):
        cpu_backend.workers = workers
        t = best_of(lambda: mm((N // 16, M // 16), (16, 16), (A, B, C, M, K, N)))
        assert np.allclose(C, A @ B, atol=1e-3)
        print(f"   CPU backend, {workers} core(s): {t * 1e3:8.2f} ms = {t / t_numpy:6.0f}x numpy.matmul, "
              f"{t / t_loop:5.1f}x the C loop ({cpu_backend.last_launch.switches:,} switches)")

    M, K, N = 64, 96, 64
    A, B, C = matrices(M, K, N)
    t = best_of(lambda: mm((N // 16, M // 16), (16, 16), (A, B, C, M, K, N)))
    numba_s = numba_simulator_seconds(M, K, N)
    if numba_s is None:
        print(f"\n3. the same kernel, 64x64 output, K=96: CPU backend {t * 1e3:.2f} ms; numba is not installed, "
              f"so its CUDA simulator is not measured (pip install numba, then run this again)")
    else:
        print(f"\n3. the same kernel, 64x64 output, K=96: CPU backend {t * 1e3:.2f} ms, numba CUDA simulator "
              f"{numba_s:.1f} s (measured now): {numba_s / t:,.0f}x faster")


if __name__ == "__main__":
    main()
