"""Benchmark tables for the kernel notebooks: time, achieved bandwidth and FLOP rate per version.

On a GPU the times come from CUDA events around many back-to-back launches with the L2 cache flushed
before each repeat (helpers.device.time_kernel), and each rate is also shown as a fraction of this
GPU's limits (memory bandwidth and fp32 FLOP/s from its properties, device.peak_rates), computed from
a bytes-and-FLOPs model of the kernel that the notebook states. On the CPU backend the times are
emulation times: they show the cost of running CUDA semantics on a CPU and say nothing about a GPU,
and the table says so.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ..runtime import device

@dataclass
class Measurement:
    name: str
    seconds: float
    bytes: float | None = None   # bytes the kernel must move at least (the model, not a counter)
    flops: float | None = None   # floating-point operations it must do

    @property
    def gbps(self):
        return None if self.bytes is None else self.bytes / self.seconds / 1e9

    @property
    def gflops(self):
        return None if self.flops is None else self.flops / self.seconds / 1e9


PROGRESS_AFTER_S = 1.0   # a measurement that takes longer prints a line as soon as it is done


def _progress(m: "Measurement", started: float) -> "Measurement":
    """Slow measurements (the CPU backend's emulation) say so as they finish, so that a benchmark
    cell is never a long silent wait; the table follows at the end."""
    wall = time.perf_counter() - started
    if wall >= PROGRESS_AFTER_S:
        print(f"  measured {m.name}: {m.seconds * 1e3:.3f} ms per run ({wall:.1f} s with its repeats)", flush=True)
    return m


def measure(name, fn, grid, block, args, shared_mem=0, *, bytes=None, flops=None, repeat=None) -> Measurement:
    """Time one kernel launch (median of `repeat`, fewer on the CPU backend, which is slow)."""
    repeat = repeat or (20 if device.name == "cupy" else 3)
    started = time.perf_counter()
    seconds = device.time_kernel(fn, grid, block, args, shared_mem, repeat=repeat)
    return _progress(Measurement(name, seconds, bytes, flops), started)


def measure_call(name, call, *, bytes=None, flops=None, repeat=None) -> Measurement:
    """Time a Python callable that launches GPU work (cupy.matmul, a sequence of launches...)."""
    repeat = repeat or (20 if device.name == "cupy" else 3)
    started = time.perf_counter()
    seconds = device.time_calls(call, repeat=repeat)
    return _progress(Measurement(name, seconds, bytes, flops), started)


def _fmt(v, spec):
    """format(v, spec), or a dash in the same width when there is no value."""
    return format("-", spec.split(".")[0]) if v is None else format(v, spec)


def table(measurements: list[Measurement], title: str = "") -> str:
    """Print (and return) the table. GPU: % of this GPU's limits; CPU backend: labelled as emulation."""
    peak = device.peak_rates()
    gpu = peak is not None and not peak["standin"]
    lines = [title] if title else []
    if peak is None:
        lines.append("CPU backend: EMULATION times (CUDA semantics on a CPU), not GPU performance")
    elif peak["standin"]:
        lines.append("the CuPy stand-in of the tests: CPU times of an emulation, not a GPU's")
    else:
        lines.append(f"{peak['name']} ({peak['sm']}), CUDA events; % of its limits: "
                     f"{peak['bandwidth'] / 1e12:.2f} TB/s, {peak['fp32'] / 1e12:.1f} TFLOP/s fp32")
    width = max([34] + [len(m.name) + 2 for m in measurements])
    head = f"{'version':<{width}}{'time':>12}{'GB/s':>10}{'GFLOP/s':>10}"
    if gpu:
        head += f"{'% BW':>8}{'% FP32':>8}"
    lines += [head, "-" * len(head)]
    for m in measurements:
        row = f"{m.name:<{width}}{m.seconds * 1e3:>9.3f} ms{_fmt(m.gbps, '>10.3g')}{_fmt(m.gflops, '>10.3g')}"
        if gpu:
            bw = None if m.bytes is None else 100 * m.bytes / m.seconds / peak["bandwidth"]
            fp = None if m.flops is None else 100 * m.flops / m.seconds / peak["fp32"]
            row += f"{_fmt(bw, '>8.1f')}{_fmt(fp, '>8.1f')}"
        lines.append(row)
    text = "\n".join(lines)
    print(text)
    return text
