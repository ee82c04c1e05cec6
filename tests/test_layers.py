"""helpers/ is in layers that import only downward (helpers/__init__.py lists them): runtime, ops,
model, train, sample, teaching. No module imports a higher layer, no import hides in a function
(where it would hide a cycle), and no two modules import each other, directly or around a loop."""
import ast

import pytest

from helpers.runtime.cuda_source import REPO_ROOT

HELPERS = REPO_ROOT / "helpers"
LAYERS = ["runtime", "ops", "model", "train", "sample", "teaching"]


def module_name(path):
    parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path):
    """(helpers modules imported at the top level, helpers modules imported inside a function)."""
    tree = ast.parse(path.read_text())
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    top, local = set(), set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names = [f"{base}.{a.name}" for a in node.names]   # a module, or a name in the module `base`
        names = [n for n in names if n == "helpers" or n.startswith("helpers.")]
        if not names:
            continue
        inside_function = any(isinstance(parent, (ast.FunctionDef, ast.AsyncFunctionDef))
                              for parent in ast.walk(tree) if node in ast.walk(parent) and parent is not node)
        (local if inside_function else top).update(names)
    return top, local


def known(name, modules):
    """The module a dotted import names (a module, or a module's attribute)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name


def layer_of(module):
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else None


MODULES = {module_name(p): p for p in HELPERS.rglob("*.py")}
GRAPH = {m: {known(n, MODULES) for n in imported_modules(p)[0]} - {m, "helpers", ""} for m, p in MODULES.items()}


def test_every_module_is_in_a_layer():
    loose = [m for m in MODULES if layer_of(m) is None and m not in ("helpers", "helpers.colab")]
    assert not loose, f"modules outside the layers {LAYERS}: {loose}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if layer_of(m) is not None))
def test_imports_point_down(module):
    upward = [n for n in GRAPH[module] if layer_of(n) is not None and layer_of(n) > layer_of(module)]
    assert not upward, f"{module} (layer {LAYERS[layer_of(module)]}) imports from higher layers: {upward}"
    local = imported_modules(MODULES[module])[1]
    assert not local, f"{module} imports {sorted(local)} inside a function: import at the top"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if layer_of(m) is not None))
def test_layers_do_not_import_the_top_package(module):
    """helpers/__init__.py imports the layers: a layer that imports it back would see it half-initialised."""
    names = imported_modules(MODULES[module])[0]
    assert not {n for n in names if known(n, MODULES) == "helpers"}, f"{module} imports from helpers/__init__.py"


def test_no_import_cycles():
    done, stack = set(), []

    def visit(m):
        if m in stack:
            raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(m):] + [m]))
        if m in done:
            return
        stack.append(m)
        for n in sorted(GRAPH.get(m, ())):
            visit(n)
        stack.pop()
        done.add(m)

    for m in sorted(GRAPH):
        visit(m)


def test_the_checker_sees_what_it_must():
    """The checker itself: an upward import and a function-local one, in a scratch module."""
    import tempfile
    from pathlib import Path
    with tempfile.TemporaryDirectory(dir=HELPERS / "ops") as tmp:
        probe = Path(tmp) / "probe.py"
        probe.write_text("from ...model import gpt2\n\ndef f():\n    from ...runtime import device\n")
        top, local = imported_modules(probe)
    assert "helpers.model.gpt2" in top and "helpers.runtime.device" in local


def test_device_is_importable_from_the_top():
    from helpers import device
    from helpers.runtime import device as runtime_device
    assert device is runtime_device
