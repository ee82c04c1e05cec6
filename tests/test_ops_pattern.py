"""Every op in helpers/ops has the one shape helpers/ops/__init__.py describes, so that the next op
can copy any of them: VERSIONS per step, the highest version by default, references in the wrappers'
argument order, one `launches`, one `module`, and files that name each other."""
import importlib
import inspect
import re

import pytest

from helpers.runtime.cuda_source import CUDA_DIR, REPO_ROOT

OPS = ["encoder", "layernorm", "matmul", "attention", "gelu", "residual", "classifier", "adamw", "global_norm",
       "kv_cache", "rmsnorm", "rope", "swiglu", "gqa"]
STEP_NAMES = {"forward", "backward", "update", "decode"}


def op_module(name):
    return importlib.import_module(f"helpers.ops.{name}")


def positional(fn):
    """The names of fn's positional parameters, up to `version` (the wrappers') or all (the references')."""
    names = []
    for p in inspect.signature(fn).parameters.values():
        if p.kind not in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) or p.name == "version":
            break
        names.append(p.name)
    return names


def test_every_op_module_is_listed():
    found = {p.stem for p in (REPO_ROOT / "helpers" / "ops").glob("*.py")} - {"__init__", "common"}
    assert found == set(OPS)


@pytest.mark.parametrize("name", OPS)
def test_versions_are_per_step_one_line_each(name):
    versions = op_module(name).VERSIONS
    assert versions and set(versions) <= STEP_NAMES, versions
    for step, table in versions.items():
        assert table and sorted(table) == list(range(1, len(table) + 1)), f"{name}.{step}: versions count from 1"
        assert all(isinstance(line, str) and line and "\n" not in line for line in table.values())


def float32_versions(table):
    """The versions of a step that take float32 arrays: all but those whose line starts with "bf16:"."""
    return [v for v, line in table.items() if not line.startswith("bf16:")]


@pytest.mark.parametrize("name", OPS)
def test_wrappers_default_to_the_highest_version(name):
    """The highest float32 version is the default; bf16 versions (lines "bf16: ...") are asked for by
    number (the model's bf16 mode does), as their arrays are another type."""
    op = op_module(name)
    for step, table in op.VERSIONS.items():
        wrapper = getattr(op, step)
        default = inspect.signature(wrapper).parameters["version"].default
        highest = max(float32_versions(table))
        assert default == highest, f"{name}.{step} defaults to version {default}, not the highest, {highest}"
        assert inspect.signature(op.launches).parameters["version"].kind == inspect.Parameter.KEYWORD_ONLY


@pytest.mark.parametrize("name", OPS)
def test_references_take_the_wrappers_arguments_in_their_order(name):
    op = op_module(name)
    for step in op.VERSIONS:
        wrapper, reference = getattr(op, step), getattr(op, f"{name}_{step}")
        ours, theirs = positional(wrapper), positional(reference)
        if step in ("forward", "decode"):   # the wrapper's outputs first, then the reference's inputs, in order
            inputs = [p for p in theirs if p in ours]   # (options such as layernorm's eps are keywords there)
            assert inputs and ours[len(ours) - len(inputs):] == inputs, (ours, theirs)
        else:                   # in place: the same arguments
            assert ours == theirs, (ours, theirs)


@pytest.mark.parametrize("name", OPS)
def test_files_name_each_other(name):
    op = op_module(name)
    doc = op.__doc__
    match = re.search(r"Kernels: cuda/(\w+\.cu).*·\s*notebook:\s*(notebooks/[\w.]+)\s*·\s*tests:\s*(tests/[\w.]+)", doc, re.S)
    assert match, f"helpers/ops/{name}.py's docstring must end with its Kernels · notebook · tests line"
    cu, notebook, tests = match.groups()
    assert cu == f"{name}.cu" and (REPO_ROOT / notebook).is_file() and (REPO_ROOT / tests).is_file()
    assert tests == f"tests/test_op_{name}.py"
    header = "\n".join(line for line in (CUDA_DIR / cu).read_text().splitlines() if line.startswith("//"))
    for named in (f"helpers/ops/{name}.py", notebook, tests):
        assert named in header.replace("\n// ", " ").replace("\n//", " "), f"cuda/{cu}'s top comment must name {named}"
    assert op.module().path.name == cu
