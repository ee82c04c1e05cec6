"""The Colab set-up of the notebooks' first cell, run as on Colab (a stand-in `google.colab` module)
against a local clone of this repository; and that the cell does nothing anywhere else."""
import json
import os
import subprocess
import sys

from helpers import colab
from helpers.runtime.cuda_source import REPO_ROOT


def first_cell(notebook) -> str:
    cells = json.loads(notebook.read_text())["cells"]
    return "".join(cells[1]["source"])


def test_every_notebook_starts_with_the_same_colab_cell():
    notebooks = sorted((REPO_ROOT / "notebooks").glob("*.ipynb"))
    cells = {first_cell(nb) for nb in notebooks}
    assert len(cells) == 1, "the Colab cell differs between notebooks"
    assert 'if "google.colab" in sys.modules:' in cells.pop()


def test_the_cell_clones_installs_and_moves_into_the_notebooks_folder(tmp_path):
    root = tmp_path / "content" / "gpt2-cuda-notebooks"
    cell = first_cell(REPO_ROOT / "notebooks" / "00_first_kernels.ipynb")
    # on Colab the installer runs for real; here it prints its pip commands (the test's own venv stays as it is)
    cell = cell.replace('f"{root}/helpers/colab.py"]', 'f"{root}/helpers/colab.py", "--dry-run"]')
    script = ("import sys, types, os\nsys.modules['google'] = types.ModuleType('google')\n"
              "sys.modules['google.colab'] = types.ModuleType('google.colab')\n" + cell +
              "\nprint('cwd', os.getcwd())\nprint('path', sys.path[0])\n")
    env = {**os.environ, "GPT2_COLAB_ROOT": str(root), "GPT2_REPOSITORY": REPO_ROOT.as_uri()}
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (root / "helpers" / "runtime" / "device.py").is_file() and (root / "notebooks").is_dir()
    assert f"cwd {root / 'notebooks'}" in proc.stdout and f"path {root}" in proc.stdout
    assert f"--no-deps -e {root}" in proc.stdout and "ready:" in proc.stdout


def test_the_cell_does_nothing_outside_colab(tmp_path):
    cell = first_cell(REPO_ROOT / "notebooks" / "00_first_kernels.ipynb")
    proc = subprocess.run([sys.executable, "-c", cell + "\nimport os; print(os.getcwd())"], cwd=tmp_path,
                          capture_output=True, text=True, env={**os.environ, "GPT2_COLAB_ROOT": str(tmp_path / "x")})
    assert proc.returncode == 0 and proc.stdout.strip() == str(tmp_path) and not (tmp_path / "x").exists()


def test_colab_installs_only_what_is_missing_and_never_jupyterlab():
    reqs = colab.requirements()
    assert any(r.startswith("jupyterlab") for r in reqs)
    assert colab.missing(reqs) == [], "this test environment has every dependency"
    todo = colab.missing(reqs + ["jupyterlab>=99", "a-package-nobody-installed>=1", "numpy>=99"])
    assert todo == ["a-package-nobody-installed>=1", "numpy>=99"]
