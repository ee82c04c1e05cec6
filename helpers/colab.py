"""Prepare a Google Colab runtime for the curriculum (run by the first cell of every notebook there).

Colab already has most of what the notebooks need: a GPU (choose one: Runtime > Change runtime
type), CuPy for its CUDA 12 driver, PyTorch and transformers (the Hugging Face oracle of notebook
08), NumPy, matplotlib and ipywidgets. This installs the project without its dependencies (so that
nothing of Colab's is replaced) and then, of the dependencies in pyproject.toml, only those that are
missing or too old, leaving out JupyterLab (Colab is the notebook frontend). `helpers.device` then
picks the `cupy` backend by itself.

    python helpers/colab.py            # what the notebooks' first cell runs there
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOT_ON_COLAB = {"jupyterlab"}   # Colab is the frontend


def requirements() -> list[str]:
    """The project's dependencies as pyproject.toml lists them."""
    import tomllib  # Python 3.11+, as on Colab
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]


def missing(reqs: list[str]) -> list[str]:
    """The requirements not satisfied here (markers applied), JupyterLab left out."""
    from packaging.requirements import Requirement
    out = []
    for text in reqs:
        req = Requirement(text)
        if req.name in NOT_ON_COLAB or (req.marker and not req.marker.evaluate()):
            continue
        try:
            have = importlib.metadata.version(req.name)
        except importlib.metadata.PackageNotFoundError:
            out.append(text)
            continue
        if not req.specifier.contains(have, prereleases=True):
            out.append(text)
    return out


def main(argv=None) -> int:
    dry_run = "--dry-run" in (sys.argv[1:] if argv is None else argv)   # print the pip commands (tests)

    def pip(*args):
        command = [sys.executable, "-m", "pip", "install", "-q", *args]
        print("$", " ".join(command)) if dry_run else subprocess.run(command, check=True)

    pip("--no-deps", "-e", str(ROOT))
    todo = [r.split(";")[0].strip() for r in missing(requirements())]
    if todo:
        print("installing:", ", ".join(todo))
        pip(*todo)
    gpu = importlib.util.find_spec("cupy") is not None
    print(f"ready: {ROOT} is installed; the kernels run " + ("on the GPU through CuPy" if gpu else
          "on the CPU backend (CuPy is not installed: with a GPU runtime, pip install cupy-cuda12x, then "
          "Runtime > Restart session)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
