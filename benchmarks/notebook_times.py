"""Wall time of every notebook, cell by cell, executed as JupyterLab's "Run All" would (nbclient).

    python benchmarks/notebook_times.py                       # every notebook, normal mode
    python benchmarks/notebook_times.py notebooks/03_matmul.ipynb --slow 5
    GPT2_TINY=1 python benchmarks/notebook_times.py           # tiny mode, as the tests run them

Prints, per notebook, its total and the cells slower than --slow seconds (with their first line), so
that every long cell can be checked to show progress and to say beforehand how long it takes.
Nothing is written back: the notebooks stay without outputs.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]


def time_notebook(path: Path, timeout: float) -> tuple[float, list[tuple[int, float, str]]]:
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}})
    times: list[tuple[int, float, str]] = []
    start = time.perf_counter()
    with client.setup_kernel():
        for index, cell in enumerate(nb.cells):
            if cell.cell_type != "code":
                continue
            t0 = time.perf_counter()
            client.execute_cell(cell, index)
            first = next((l for l in cell.source.splitlines() if l.strip() and not l.startswith("#")), "")
            times.append((index, time.perf_counter() - t0, first[:70]))
    return time.perf_counter() - start, times


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: notebooks/*.ipynb")
    parser.add_argument("--slow", type=float, default=5.0, help="list cells slower than this many seconds (default 5)")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds a cell may run (default 3600)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    paths = args.notebooks or sorted((ROOT / "notebooks").glob("*.ipynb"))
    results = {}
    for path in paths:
        total, cells = time_notebook(path.resolve(), args.timeout)
        results[path.name] = {"total_s": round(total, 1), "cells": [[i, round(t, 2), s] for i, t, s in cells]}
        print(f"{path.name}: {total:7.1f} s", flush=True)
        for i, t, s in cells:
            if t >= args.slow:
                print(f"    cell {i:3d}: {t:7.1f} s  {s}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
