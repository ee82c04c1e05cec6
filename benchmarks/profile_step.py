"""Where one training step of the numpy backend spends its time: every op of the model timed, the forward,
the backward and the optimizer apart, at the sizes of benchmarks/train_step.py.

    python benchmarks/profile_step.py [--sizes tiny,tiny-T256,L6,124M] [--steps 4] [--markdown]

Each size runs in this process, one after the other: `--steps` steps (the first is not counted: it
allocates the buffers), each op's time is the median over the counted steps of its total in a step. The
model's ops are wrapped in a timer (one perf_counter pair per call: microseconds against ops of
milliseconds); "outside the ops" is the median of each step's time minus its ops' (the Python between them). The medians
of the parts need not add up to the median step on a machine whose speed varies. Every number printed is
measured in this run.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from helpers.model.gpt2 import GPT2, GPT2Config  # noqa: E402
from helpers.model.base import AdamW  # noqa: E402
from helpers.ops.global_norm import clip_coefficient  # noqa: E402

#: name: (n_layer, n_head, n_embd, B, T), issue 17's table
SIZES = {"tiny": (4, 4, 128, 12, 64), "tiny-T256": (4, 4, 128, 12, 256), "L6": (6, 6, 384, 4, 64),
         "124M": (12, 12, 768, 4, 64)}


class TimedOps:
    """The model's ops, each call timed and added to (phase, op)."""

    def __init__(self, ops):
        self._ops, self.phase, self.times = ops, "forward", defaultdict(float)

    def __getattr__(self, name):
        fn = getattr(self._ops, name)
        if not callable(fn):
            return fn

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            result = fn(*args, **kwargs)
            self.times[(self.phase, name)] += time.perf_counter() - t0
            return result
        return timed


def profile(size: str, steps: int) -> dict:
    """{(phase, op): median seconds per step}, and the step's median seconds under ("step", "total")."""
    L, H, C, B, T = SIZES[size]
    model = GPT2(GPT2Config(vocab_size=50257, block_size=T, n_layer=L, n_head=H, n_embd=C), seed=0)
    timed = TimedOps(model.ops)
    model.ops = timed
    opt = AdamW(model, lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
    rng = np.random.default_rng(0)
    per_step = []
    for s in range(steps):
        x, y = (rng.integers(0, 50257, (B, T)).astype(np.int32) for _ in range(2))
        timed.times.clear()
        t0 = time.perf_counter()
        timed.phase = "forward"
        model.forward(x, y)
        timed.phase = "backward"
        model.zero_grad()
        model.backward()
        timed.phase = "optimizer"
        norm = model.grad_norm()
        opt.step(grad_scale=clip_coefficient(norm, 1.0))
        total = time.perf_counter() - t0
        if s:
            outside = total - sum(timed.times.values())   # per step: medians of the parts need not add up
            per_step.append({**timed.times, ("step", "total"): total, ("-", "outside the ops"): outside})
    keys = set().union(*per_step)
    return {k: float(np.median([p.get(k, 0.0) for p in per_step])) for k in keys}


def table(size: str, times: dict, markdown: bool) -> str:
    L, H, C, B, T = SIZES[size]
    total = times[("step", "total")]
    rows = sorted(((ph, op, t) for (ph, op), t in times.items() if ph not in ("step", "-")), key=lambda r: -r[2])
    rows.append(("-", "outside the ops", times[("-", "outside the ops")]))
    head = (f"L{L} H{H} C{C}, B={B} T={T}: {1e3 * total:.0f} ms per step, {B * T / total:.0f} tokens/s "
            f"({os.cpu_count()} cores)")
    if markdown:
        lines = [f"**{head}**", "", "| phase | op | ms | share |", "|---|---|---:|---:|"]
        lines += [f"| {ph} | {op} | {1e3 * t:.1f} | {100 * t / total:.1f}% |" for ph, op, t in rows]
    else:
        lines = [head] + [f"  {ph:<10}{op:<22}{1e3 * t:9.1f} ms {100 * t / total:6.1f}%" for ph, op, t in rows]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default=",".join(SIZES), help=f"comma-separated, of {', '.join(SIZES)}")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)
    sizes = args.sizes.split(",")
    unknown = [s for s in sizes if s not in SIZES]
    if unknown:
        parser.error(f"unknown sizes {unknown}: choose from {', '.join(SIZES)}")
    if args.steps < 2:
        parser.error("--steps must be at least 2 (the first step is not counted)")
    for size in sizes:
        print(table(size, profile(size, args.steps), args.markdown), flush=True)
        print()


if __name__ == "__main__":
    main()
