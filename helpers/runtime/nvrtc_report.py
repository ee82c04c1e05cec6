"""A GPU compile check that needs no GPU: what each kernel costs on real hardware.

Every `.cu` file is compiled with NVRTC (the CUDA runtime compiler, a plain library) for the GPUs
learners meet, from sm_75 (T4, Colab's free GPU) to sm_120, as far as the installed NVRTC knows them
(notebooks show sm_75, sm_80 (A100) and sm_90 (H100)), and ptxas's own report is turned into a table,
one row per kernel and architecture:

- registers: each SM has 65536 of them, shared by all its threads. A kernel that uses 64 per thread
  can keep at most 1024 threads on an SM, one that uses 32 can keep 2048; fewer resident threads
  means less latency hidden (lower occupancy).
- spill stores / loads: bytes the compiler could not keep in registers and moved to "local" memory,
  which lives in slow device memory. A kernel that spills is almost always slower than it should be.
- shared: static `__shared__` memory per block (dynamic shared memory is chosen at launch).
- stack: the per-thread stack frame (local arrays indexed with run-time values, calls that were not
  inlined); it also lives in local memory.

The check runs on any machine: NVRTC compiles without a driver or a GPU. It also catches code that
only compiles on the CPU backend: NVRTC has no `cuda_runtime.h` and no `M_PI`.

    from helpers.runtime import nvrtc_report
    nvrtc_report.show("vector_add.cu")          # in a notebook
    python -m helpers.runtime.nvrtc_report --include-tests   # every kernel; exit status 1 on errors or spills
"""
from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from . import cuda_source, nvrtc
from .errors import CompileError

ALL_ARCHS = ("sm_75", "sm_80", "sm_86", "sm_89", "sm_90", "sm_100", "sm_120")
ARCHS = ("sm_75", "sm_80", "sm_90")   # what the notebooks show: T4, A100, H100


def supported(archs=ALL_ARCHS) -> tuple[str, ...]:
    """The architectures of `archs` this NVRTC compiles for."""
    have = set(nvrtc.supported_archs())
    return tuple(a for a in archs if a in have)
TESTS_KERNEL_DIR = cuda_source.REPO_ROOT / "tests" / "kernels"


@dataclass
class KernelResources:
    file: str
    kernel: str          # the name expression (templates) or the function's name
    arch: str
    registers: int
    spill_stores: int    # bytes
    spill_loads: int     # bytes
    shared_bytes: int    # static shared memory per block
    stack_bytes: int     # stack frame per thread

    @property
    def spills(self) -> bool:
        return self.spill_stores > 0 or self.spill_loads > 0


# ptxas --verbose, per kernel:
#   ptxas info    : Compiling entry function '_Z5scaleIfEvPT_S0_i' for 'sm_90'
#   ptxas info    : Function properties for _Z5scaleIfEvPT_S0_i
#   ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
#   ptxas info    : Used 8 registers, used 0 barriers, 1024 bytes smem, 368 bytes cmem[0]
_ENTRY = re.compile(r"Compiling entry function '([^']+)'")
_PROPERTIES = re.compile(r"Function properties for (\S+)\s*\n[^\n]*?(\d+) bytes stack frame, (\d+) bytes spill stores, "
                         r"(\d+) bytes spill loads")
_REGISTERS = re.compile(r"Used (\d+) registers")
_SMEM = re.compile(r"(\d+) bytes smem")


def _plain_name(mangled: str) -> str:
    """`_Z3addPfS_i` -> `add` (non-template C++ kernels); other names are returned as they are."""
    rest = mangled[2:] if mangled.startswith("_Z") else ""
    nested = rest.startswith("N")
    rest, parts = rest[nested:], []
    while m := re.match(r"\d+", rest):
        n = int(m.group())
        parts.append(rest[m.end() : m.end() + n])
        rest = rest[m.end() + n :]
        if not nested:
            break
    return "::".join(parts) or mangled


def parse_ptxas_log(log: str, names: dict[str, str] | None = None) -> list[dict]:
    """The kernels of one compilation: [{kernel, registers, spill_stores, ...}] in the log's order.

    `names` maps mangled names back to the name expressions they came from."""
    names = names or {}
    properties = {m.group(1): tuple(int(g) for g in m.groups()[1:]) for m in _PROPERTIES.finditer(log)}
    entries = list(_ENTRY.finditer(log))
    rows = []
    for k, m in enumerate(entries):
        mangled = m.group(1)
        block = log[m.end() : entries[k + 1].start() if k + 1 < len(entries) else len(log)]
        used = next((line for line in block.splitlines() if _REGISTERS.search(line)), "")
        regs, smem = _REGISTERS.search(used), _SMEM.search(used)
        stack, stores, loads = properties.get(mangled, (0, 0, 0))
        rows.append(dict(kernel=names.get(mangled, _plain_name(mangled)), registers=int(regs.group(1)) if regs else 0,
                         spill_stores=stores, spill_loads=loads, shared_bytes=int(smem.group(1)) if smem else 0,
                         stack_bytes=stack))
    return rows


def _display_name(path: Path) -> str:
    try:
        return str(path.relative_to(cuda_source.REPO_ROOT))
    except ValueError:
        return path.name


def compile_file(path, arch: str = "sm_90") -> list[KernelResources]:
    """Compile one file for one architecture; raise CompileError with NVRTC's messages if it fails."""
    path = cuda_source.resolve(path)
    for f in [path, *cuda_source.local_includes(path)]:
        # (NVRTC finds it among CUDA's headers here, but a GPU's CuPy often does not, and no kernel needs it)
        if re.search(r'#\s*include\s*[<"]cuda_runtime(_api)?\.h[>"]', cuda_source.strip_comments(f.read_text())):
            raise CompileError(f"{_display_name(path)} does not compile for {arch} with NVRTC as CuPy runs it: {f.name} "
                               f"includes cuda_runtime.h, the CUDA runtime's host header, which NVRTC programs lack."
                               f"\nhint: kernels need nothing from it: remove the #include.")
    expressions = cuda_source.declared_name_expressions(path)
    options = [f"-arch={arch}", "--ptxas-options=--verbose", "-std=c++17",
               f"-I{path.parent}", f"-I{cuda_source.CUDA_DIR}"]
    try:
        result = nvrtc.compile_program(path.read_text(), path.name, options, expressions)
    except nvrtc.NVRTCError as e:
        # ptxas's per-kernel info lines would bury the error: keep the rest
        log = "\n".join(line for line in e.log.splitlines()
                        if line.strip() and not re.match(r"\s*ptxas\s+(info|\.)", line))
        hints = []
        if "cuda_runtime.h" in log:
            hints.append("NVRTC has no cuda_runtime.h: kernels do not need it, remove the #include.")
        if "M_PI" in log:
            hints.append("NVRTC has no M_PI: write the constant, e.g. 3.14159265358979f.")
        raise CompileError(f"{_display_name(path)} does not compile for {arch} with NVRTC ({e}):\n{log}"
                           + "".join(f"\nhint: {h}" for h in hints)) from None
    names = {mangled: expr for expr, mangled in result.lowered_names.items()}
    return [KernelResources(file=_display_name(path), arch=arch, **row) for row in parse_ptxas_log(result.log, names)]


def default_paths(include_tests: bool = False) -> list[Path]:
    """Every `.cu` file in cuda/ (and tests/kernels/), sorted."""
    dirs = [cuda_source.CUDA_DIR] + ([TESTS_KERNEL_DIR] if include_tests else [])
    return [p for d in dirs for p in sorted(d.glob("*.cu"))]


def _report_file(path: Path, archs) -> list[KernelResources]:
    """All architectures of one file, in source order (ptxas reports kernels in reverse)."""
    rows = [row for arch in archs for row in compile_file(path, arch)]  # first: it reports syntax errors
    lines = {name: k["line"] for name, k in cuda_source.parse_kernels(path.read_text()).items()}
    expressions = cuda_source.declared_name_expressions(path)

    def order(r):
        base = r.kernel.partition("<")[0].strip()
        return lines.get(base, 0), expressions.index(r.kernel) if r.kernel in expressions else -1, archs.index(r.arch)

    return sorted(rows, key=order)


def compile_report(paths=None, archs=None) -> list[KernelResources]:
    """One row per kernel and architecture for `paths` (default: every `.cu` file in cuda/) and `archs`
    (default: every architecture of ALL_ARCHS this NVRTC supports)."""
    archs = archs or supported(ALL_ARCHS)
    paths = default_paths() if paths is None else [cuda_source.resolve(p) for p in paths]
    return [row for p in paths for row in _report_file(p, tuple(archs))]


def format_report(rows: list[KernelResources]) -> str:
    """A fixed-width table; kernels that spill are marked."""
    header = ("file", "kernel", "arch", "registers", "spill stores", "spill loads", "shared", "stack")
    table = [header] + [(r.file, r.kernel, r.arch, str(r.registers), f"{r.spill_stores} B", f"{r.spill_loads} B",
                         f"{r.shared_bytes} B", f"{r.stack_bytes} B") for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]

    def fmt(line, mark=""):
        cells = [c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths))]
        return "  ".join(cells) + mark

    lines = [fmt(header), "  ".join("-" * w for w in widths)]
    lines += [fmt(line, "  <- spills" if r.spills else "") for line, r in zip(table[1:], rows)]
    return "\n".join(lines)


def show(*names, archs=ARCHS) -> None:
    """Print the table for the given files (bare names are looked up in cuda/); all of cuda/ if none.

    Where NVRTC cannot run (macOS, or the library missing) it prints why instead of the table: the
    report is a look at GPU costs, and a notebook goes on without it."""
    if not nvrtc.available():
        print(f"(no NVRTC report here: {nvrtc.problem()}.)")
        return
    rows = compile_report(names or None, archs)
    print(format_report(rows) if rows else "no kernels compiled")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.runtime.nvrtc_report", description=__doc__.split("\n")[0])
    parser.add_argument("files", nargs="*", help="files to compile (default: every .cu file in cuda/)")
    parser.add_argument("--arch", nargs="+", default=None,
                        help=f"architectures (default: those of {' '.join(ALL_ARCHS)} this NVRTC supports)")
    parser.add_argument("--include-tests", action="store_true", help="also compile tests/kernels/*.cu")
    args = parser.parse_args(argv)
    args.arch = args.arch or list(supported(ALL_ARCHS))
    paths = [cuda_source.resolve(f) for f in args.files] if args.files else default_paths()
    if args.include_tests:
        paths += sorted(TESTS_KERNEL_DIR.glob("*.cu"))
    rows, problems = [], []
    for path in paths:
        try:
            found = _report_file(path, tuple(args.arch))
        except CompileError as e:
            problems.append(str(e))
            continue
        if not found:
            print(f"note: {_display_name(path)} has no kernels (a template kernel needs a '// name_expressions:' line)")
        rows += found
    print(format_report(rows) if rows else "no kernels compiled")
    problems += [f"{r.file}: {r.kernel} spills on {r.arch} ({r.spill_stores} bytes stored, {r.spill_loads} bytes "
                 f"loaded)" for r in rows if r.spills]
    for p in problems:
        print(f"\nFAILED: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
