"""The helpers every notebook shares: print a kernel from its `.cu` file, expect an error, pick the
learner's exercise file or the reference solution.

    from helpers.teaching.notebook import exercise, expect_error, show_kernel

    show_kernel("layernorm.cu", "layernorm_forward2")      # the function and the comment above it
    show_section("classifier.cu", "version 2")             # a section of a file, between rule lines
    with expect_error(ValueError, "multiple of 32"):       # prints the message; fails if nothing raised
        ln.forward(..., block_size=48)
    path = exercise("my_layernorm_welford.cu", "02_layernorm_welford.cu")
"""
from __future__ import annotations

import re
from contextlib import contextmanager
from pathlib import Path

from ..runtime import cuda_source

NOTEBOOKS_DIR = cuda_source.REPO_ROOT / "notebooks"
SOLUTIONS_DIR = NOTEBOOKS_DIR / "solutions"


def _resolve(path) -> Path:
    path = Path(path)
    if not path.is_absolute() and not path.exists():
        path = cuda_source.CUDA_DIR / path
    if not path.is_file():
        raise FileNotFoundError(f"no file {path}")
    return path


def kernel_text(path, name: str) -> str:
    """The definition of `name` (a __global__ or __device__ function, or a `#define`) in the `.cu`
    file `path` or a header it includes, with the comment lines, `template` line or `#define`s
    right above it."""
    for f in [_resolve(path), *cuda_source.local_includes(_resolve(path))]:
        lines = f.read_text().splitlines()
        if name.startswith("#define"):
            starts = [i for i, line in enumerate(lines) if line.startswith(name + " ")]
            if not starts:
                continue
            start = end = starts[0]
        else:
            starts = [i for i, line in enumerate(lines)
                      if re.search(rf"\b{re.escape(name)}\s*\(", line) and re.search(r"__global__|__device__", line)
                      and not line.lstrip().startswith("//")]
            if not starts:
                continue
            start = end = starts[0]
            depth, opened = 0, False
            while not (opened and depth == 0):
                depth += lines[end].count("{") - lines[end].count("}")
                opened = opened or "{" in lines[end]
                end += 1
            end -= 1
        while start > 0 and lines[start - 1].lstrip().startswith(("//", "template", "#define")):
            start -= 1
        return "\n".join(lines[start:end + 1])
    raise KeyError(f"{name!r} is defined neither in {Path(path).name} nor in the headers it includes")


def show_kernel(path, *names: str) -> None:
    """Print each named function of a `.cu` file (a bare name means cuda/<name>), searching the
    headers it includes too, with the comment just above it."""
    print("\n\n".join(kernel_text(path, name) for name in names))


def file_header(path) -> str:
    """A `.cu` file's top comment: its lines up to the first line that is not a comment."""
    lines = _resolve(path).read_text().splitlines()
    end = next((i for i, line in enumerate(lines) if not line.startswith("//")), len(lines))
    return "\n".join(lines[:end])


def show_section(path, heading: str) -> None:
    """Print the section of a `.cu` file whose heading starts with `heading`: files split into
    sections by a rule line (`// ------`), the heading the comment line after it."""
    parts = re.split(r"^// -{20,}\n", _resolve(path).read_text(), flags=re.M)
    sections = {parts[i].strip("/ \n"): parts[i + 1] for i in range(1, len(parts) - 1, 2)}
    found = [h for h in sections if h.startswith(heading)]
    if len(found) != 1:
        raise KeyError(f"{len(found)} sections of {Path(path).name} start with {heading!r}; its sections: "
                       f"{list(sections)}")
    print(f"// {found[0]}\n{sections[found[0]]}")


@contextmanager
def expect_error(kind: type[BaseException] = ValueError, match: str | None = None):
    """A block that must raise `kind` (with `match` in its message, when given): prints the
    message, and fails with an AssertionError if the block raised nothing."""
    try:
        yield
    except kind as e:
        if match is not None and not re.search(match, str(e)):
            raise AssertionError(f"expected {kind.__name__} matching {match!r}, got: {e}") from e
        print(f"{type(e).__name__}: {e}")
    else:
        raise AssertionError(f"expected a {kind.__name__}" + (f" matching {match!r}" if match else "") +
                             ", but nothing was raised")


def exercise(mine: str, solution: str) -> Path:
    """The learner's file notebooks/<mine> if it exists, else the reference solution
    notebooks/solutions/<solution>; says which it picked."""
    mine_path, solution_path = NOTEBOOKS_DIR / mine, SOLUTIONS_DIR / solution
    if mine_path.exists():
        print(f"checking your file {mine_path}")
        return mine_path
    print(f"{mine} not found: checking the reference solution "
          f"{solution_path.relative_to(cuda_source.REPO_ROOT)} instead")
    return solution_path
