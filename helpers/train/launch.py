"""Starting a data-parallel run from Python (notebook 14): `mpirun -np N python -m helpers.train FLAGS` in a
subprocess, a progress bar that follows the run's log, and a clear error with the ranks' last words if it
fails.

    records = launch(2, TrainConfig(steps=40, out_dir="runs/two"))
"""
from __future__ import annotations

import dataclasses
import os
import subprocess
import time
from pathlib import Path

from .loop import TrainConfig, TrainingError, read_log
from .parallel import mpirun_command


def config_flags(cfg: TrainConfig) -> list[str]:
    """The command-line flags of python -m helpers.train that make `cfg` (its settings that are not None)."""
    out = []
    for f in dataclasses.fields(cfg):
        value, flag = getattr(cfg, f.name), "--" + f.name.replace("_", "-")
        if isinstance(value, bool):
            out.append(flag if value else "--no-" + f.name.replace("_", "-"))
        elif value is not None:
            out += [flag, str(value)]
    return out


def launch(ranks: int, cfg: TrainConfig, progress: bool = True, timeout: float | None = None,
           script: list[str] | None = None) -> list[dict]:
    """Train `cfg` on `ranks` MPI processes and return the log's records (rank 0 writes them). `script`
    replaces `-m helpers.train` (tests run a wrapper with failure hooks). A failed run is a TrainingError
    holding the end of the ranks' output."""
    cfg.validate()
    cmd = mpirun_command(ranks, config_flags(cfg))
    if script is not None:
        cmd = cmd[:cmd.index("-m")] + list(script) + ["--"] + config_flags(cfg)
    log_path = Path(cfg.out_dir) / "log.jsonl"
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=cfg.steps, desc=f"{ranks} ranks (mpirun)", unit="step")
    started = time.monotonic()
    with open(os.devnull, "rb") as stdin:
        proc = subprocess.Popen(cmd, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        output = _follow(proc, log_path, bar, started, timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if bar is not None:
            bar.close()
    if proc.returncode != 0:
        tail = "\n".join(line for line in output.splitlines() if line.strip())[-3000:]
        raise TrainingError(f"the {ranks}-rank run failed (mpirun exited with {proc.returncode}); its output ends "
                            f"with:\n{tail}")
    return read_log(log_path)


def _follow(proc, log_path: Path, bar, started: float, timeout: float | None) -> str:
    """The run's output (read in chunks as it comes: tqdm's lines end in a carriage return, not a newline),
    while the bar follows the log's lines."""
    import selectors
    chunks, done_steps = [], 0
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    while True:
        if timeout is not None and time.monotonic() - started > timeout:
            proc.kill()
            raise TrainingError(f"the run took longer than {timeout} s and was stopped; output so far:\n"
                                f"{b''.join(chunks).decode(errors='replace')[-2000:]}")
        for key, _ in sel.select(timeout=0.5):
            chunks.append(os.read(key.fileobj.fileno(), 1 << 16))
        if bar is not None and log_path.exists():
            try:
                steps = sum(1 for line in log_path.read_text().splitlines() if line.strip())
            except OSError:
                steps = done_steps
            if steps > done_steps:
                bar.update(steps - done_steps)
                done_steps = steps
        if proc.poll() is not None:
            chunks.append(proc.stdout.read() or b"")
            return b"".join(chunks).decode(errors="replace").replace("\r", "\n")
