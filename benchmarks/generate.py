"""Tokens per second of generation, with and without the key/value cache.

    python benchmarks/generate.py

The model of notebook 09's default run (L=4, H=4, C=128, context 64, GPT-2's vocabulary; random
weights: speed does not depend on them), greedy, from a 4-token prompt, on the numpy backend and on the
cuda backend (the kernels: on a GPU, or emulated by the CPU backend, where a smaller count is used).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from helpers.runtime import device  # noqa: E402
from helpers.model.gpt2 import GPT2, GPT2Config  # noqa: E402


def rate(model, n, use_cache):
    prompt = np.array([464, 1893, 286, 262])
    list(model.generate(prompt, 2, temperature=0, use_cache=use_cache))  # warm-up (compiles kernels)
    t0 = time.perf_counter()
    out = list(model.generate(prompt, n, temperature=0, use_cache=use_cache))
    return out, len(out) / (time.perf_counter() - t0)


def main():
    config = GPT2Config(vocab_size=50257, block_size=64, n_layer=4, n_head=4, n_embd=128)
    print(f"greedy generation, L={config.n_layer} C={config.n_embd} context {config.block_size}, "
          f"kernels on {device.name}")
    print(f"{'backend':<10}{'tokens':>8}{'with cache':>14}{'without':>12}{'speed-up':>10}")
    for backend in ("numpy", "cuda"):
        n = 60 if backend == "numpy" or device.name == "cupy" else 12
        model = GPT2(config, backend=backend, seed=0)
        a, fast = rate(model, n, True)
        b, slow = rate(model, n, False)
        assert a == b, "the cache must not change the tokens"
        print(f"{backend:<10}{n:>8}{fast:>10.1f} t/s{slow:>8.1f} t/s{fast / slow:>9.1f}x")


if __name__ == "__main__":
    main()
