"""What adding a model took, layer by layer: lines added and removed per layer of the project between two
commits, from `git diff --numstat` (the numbers `git diff --stat` shows, grouped), and within the op
modules the lines of the NumPy references apart from the launch wrappers.

    python benchmarks/model_diff.py 64a8712 HEAD      # issue 14: the Llama family (cuda/README.md's recipe)
    python benchmarks/model_diff.py BASE HEAD --exclude cuda/bf16.cuh      # leave out files of other work

Notebooks are counted twice: as the JSON lines git sees, and as the lines of their cells' sources.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYERS = [("kernels", r"^cuda/"), ("ops: references and wrappers", r"^helpers/ops/"),
          ("model", r"^helpers/model/"), ("training", r"^helpers/train/"), ("sampling", r"^helpers/sample/"),
          ("notebooks", r"^notebooks/"), ("tests", r"^tests/"), ("benchmarks", r"^benchmarks/"), ("other", r"")]


def git(*args) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout


def reference_lines(text: str) -> int:
    """Lines between an op module's NumPy-reference banner and its kernel-wrapper banner."""
    lines = text.splitlines()
    start = next((i for i, l in enumerate(lines) if re.match(r"# (The )?(NumPy )?[Rr]eference", l)), None)
    end = next((i for i, l in enumerate(lines) if l.startswith("# Kernel wrappers")), None)
    return 0 if start is None or end is None else end - start


def main(argv=None):
    import argparse
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("base", nargs="?", default="HEAD~1")
    parser.add_argument("head", nargs="?", default="HEAD")
    parser.add_argument("--exclude", nargs="*", default=[], help="paths to leave out")
    args = parser.parse_args(argv)
    base, head = args.base, args.head
    rows = defaultdict(lambda: [0, 0, 0])   # layer -> files, added, removed
    new_ops, notebook_cells = [], 0
    new_files = set(git("diff", "--name-only", "--diff-filter=A", base, head).split())
    for line in git("diff", "--numstat", base, head).splitlines():
        added, removed, path = line.split("\t")
        if path in args.exclude:
            continue
        layer = next(name for name, pattern in LAYERS if re.match(pattern, path))
        row = rows[layer]
        row[0] += 1
        row[1] += int(added) if added != "-" else 0
        row[2] += int(removed) if removed != "-" else 0
        if path.startswith("helpers/ops/") and path in new_files:
            new_ops.append(path)
        if path.endswith(".ipynb") and path in new_files:
            cells = json.loads(git("show", f"{head}:{path}"))["cells"]
            notebook_cells += sum(len(c["source"]) for c in cells)
    excluded = f" (leaving out {', '.join(args.exclude)})" if args.exclude else ""
    print(f"git diff --numstat {base} {head}, by layer{excluded}")
    print(f"{'layer':<32}{'files':>6}{'added':>8}{'removed':>9}")
    for name, _ in LAYERS:
        if name in rows:
            files, added, removed = rows[name]
            print(f"{name:<32}{files:>6}{added:>8}{removed:>9}")
    total = [sum(r[i] for r in rows.values()) for i in range(3)]
    print(f"{'total':<32}{total[0]:>6}{total[1]:>8}{total[2]:>9}")
    refs = sum(reference_lines(git("show", f"{head}:{p}")) for p in new_ops)
    print(f"of the new op modules ({', '.join(Path(p).stem for p in new_ops)}): {refs} lines of NumPy references")
    print(f"the new notebooks' cells: {notebook_cells} lines of prose and code")


if __name__ == "__main__":
    main()
