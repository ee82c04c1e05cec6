"""Training: the loss falls, a resumed run is bit-identical to an uninterrupted one, checkpoints are
atomic, a NaN stops the run, and the command line works."""
import dataclasses
import subprocess
import sys

import numpy as np
import pytest

from helpers import train
from helpers.model.gpt2 import GPT2
from helpers.runtime.cuda_source import REPO_ROOT
from helpers.train import data
from support import tiny_train_config


tiny = tiny_train_config


def test_learning_rate_schedule():
    cfg = train.TrainConfig(steps=100, lr=1e-3, min_lr=1e-4, warmup_steps=10)
    lrs = [train.learning_rate(s, cfg) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert lrs[-1] == pytest.approx(1e-4) and all(a >= b for a, b in zip(lrs[9:], lrs[10:]))


def test_loss_goes_down(tmp_path, tokens):
    records = train.train(tiny(tmp_path, steps=30, val_every=30, checkpoint_every=0), tokens=tokens, progress=False)
    assert np.mean([r["loss"] for r in records[-5:]]) < records[0]["loss"] - 1.0
    assert records[-1]["val_loss"] < records[0]["loss"]
    log = train.read_log(tmp_path / "run" / "log.jsonl")
    assert [r["step"] for r in log] == list(range(30))
    assert set(log[0]) == {"step", "loss", "val_loss", "lr", "grad_norm", "tokens_per_s", "ms_per_step"}


class Interrupt(Exception):
    pass


@pytest.mark.parametrize("backend", ["numpy", "cuda"])
def test_resume_is_bit_identical(tmp_path, tokens, backend):
    steps = 8 if backend == "numpy" else 4
    every = steps // 2
    whole = train.train(tiny(tmp_path / "a", backend=backend, steps=steps, checkpoint_every=every, val_every=every),
                        tokens=tokens, progress=False)

    def crash(record, model):
        if record["step"] == every:  # the step after the checkpoint (taken after `every` steps)
            raise Interrupt
    cfg = tiny(tmp_path / "b", backend=backend, steps=steps, checkpoint_every=every, val_every=every)
    with pytest.raises(Interrupt):
        train.train(cfg, on_step=crash, tokens=tokens, progress=False)
    resumed = train.train(cfg, tokens=tokens, progress=False)
    assert [r["step"] for r in resumed] == list(range(every, steps))
    for a, b in zip(whole[every:], resumed):
        assert a["loss"] == b["loss"] and a["grad_norm"] == b["grad_norm"] and a["val_loss"] == b["val_loss"], (a, b)
    assert [r["loss"] for r in train.read_log(tmp_path / "b" / "run" / "log.jsonl")] == [r["loss"] for r in whole]


def test_a_crash_while_saving_keeps_the_previous_checkpoint(tmp_path, tokens, monkeypatch):
    def halt(record, model):
        if record["step"] == 4:
            raise Interrupt
    with pytest.raises(Interrupt):  # a run of 6 steps stopped after its checkpoint at step 4
        train.train(tiny(tmp_path, steps=6, checkpoint_every=2), on_step=halt, tokens=tokens, progress=False)
    path = tmp_path / "run" / "checkpoint.safetensors"
    before = path.read_bytes()

    import safetensors.numpy

    def dying_save(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half a checkpoint")
        raise KeyboardInterrupt  # the machine "crashes" while writing
    monkeypatch.setattr(safetensors.numpy, "save_file", dying_save)
    with pytest.raises(KeyboardInterrupt):
        train.train(tiny(tmp_path, steps=6, checkpoint_every=2), tokens=tokens, progress=False)
    assert path.read_bytes() == before
    meta, _ = train.load_checkpoint(path)
    assert meta["step"] == 4
    assert not list((tmp_path / "run").glob("*.tmp")), "the temporary file is removed"


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_checkpoint(tmp_path, tokens, monkeypatch):
    cfg = tiny(tmp_path, steps=10, checkpoint_every=2)
    real_forward = GPT2.forward
    calls = {"n": 0}

    def poisoned(self, idx, targets=None):
        logits, loss = real_forward(self, idx, targets)
        if targets is not None:
            calls["n"] += 1  # steps 0 and 1, the check of step 2's checkpoint, steps 2 and 3
            if calls["n"] == 5:
                loss = float("nan")
        return logits, loss
    monkeypatch.setattr(GPT2, "forward", poisoned)
    with pytest.raises(train.TrainingError, match=r"loss became nan .* at step 3: training diverged.*last good "
                                                  r"checkpoint is .*checkpoint.safetensors"):
        train.train(cfg, tokens=tokens, progress=False)
    meta, _ = train.load_checkpoint(tmp_path / "run" / "checkpoint.safetensors")
    assert meta["step"] == 2


def test_gradient_accumulation_averages(tmp_path, tokens):
    one = train.train(tiny(tmp_path / "1", steps=1, B=4, val_every=0, checkpoint_every=0), tokens=tokens,
                      progress=False)
    two = train.train(tiny(tmp_path / "2", steps=1, B=2, grad_accum=2, val_every=0, checkpoint_every=0), tokens=tokens,
                      progress=False)
    assert abs(one[0]["loss"] - two[0]["loss"]) < 0.5 and two[0]["grad_norm"] > 0


def test_resume_refuses_a_different_model(tmp_path, tokens):
    train.train(tiny(tmp_path, steps=2, checkpoint_every=2), tokens=tokens, progress=False)
    with pytest.raises(train.TrainingError, match=r"other settings \(n_embd: 32 in the checkpoint, 64 now"):
        train.train(tiny(tmp_path, steps=2, n_embd=64), tokens=tokens, progress=False)


def test_trains_from_llmc_token_files(tmp_path, tokens):
    train_bin = data.write_token_file(tmp_path / "tiny_train.bin", tokens[0][:20000])
    val_bin = data.write_token_file(tmp_path / "tiny_val.bin", tokens[1][:4000])
    records = train.train(tiny(tmp_path, steps=3, train_bin=str(train_bin), val_bin=str(val_bin), val_every=3,
                               checkpoint_every=0), progress=False)
    assert len(records) == 3 and records[-1]["val_loss"] is not None
    with pytest.raises(ValueError, match="give both train_bin and val_bin"):
        train.train(tiny(tmp_path, train_bin=str(train_bin)), progress=False)


def test_bad_settings():
    with pytest.raises(ValueError, match="min_lr <= lr"):
        train.TrainConfig(lr=1e-4, min_lr=1e-3).validate()
    with pytest.raises(ValueError, match="backend must be"):
        train.TrainConfig(backend="torch").validate()


def test_command_line(tmp_path):
    help_text = subprocess.run([sys.executable, "-m", "helpers.train", "--help"], cwd=REPO_ROOT, capture_output=True,
                               text=True, check=True).stdout
    for f in dataclasses.fields(train.TrainConfig):   # every flag: its help text and its default
        flag = "--" + f.name.replace("_", "-")
        assert flag in help_text, flag
        words = " ".join(f.metadata["help"].split()[:3])
        assert words in " ".join(help_text.split()), f"{flag}: its help text is missing"
        assert f"(default: {f.default})" in " ".join(help_text.split()), f"{flag}: its default is not shown"
    out = tmp_path / "cli"
    proc = subprocess.run([sys.executable, "-m", "helpers.train", "--steps", "3", "--n-layer", "1", "--n-embd", "32",
                           "--n-head", "2", "--B", "2", "--T", "16", "--val-every", "3", "--sample-every", "3",
                           "--sample-tokens", "8", "--out-dir", str(out)], cwd=REPO_ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "step 2: train loss" in proc.stdout and (out / "checkpoint.safetensors").is_file()
    assert len((out / "log.jsonl").read_text().splitlines()) == 3
    bad = subprocess.run([sys.executable, "-m", "helpers.train", "--lr", "1e-5", "--min-lr", "1e-3", "--out-dir",
                          str(out)], cwd=REPO_ROOT, capture_output=True, text=True)
    assert bad.returncode == 1 and "min_lr <= lr" in bad.stderr


# ------------------------------------------------------------------------------------------------
# The same loop trains the Llama-family model (--model llama)
# ------------------------------------------------------------------------------------------------
def test_llama_trains_and_its_checkpoint_loads_back(tmp_path, tokens):
    # (lr 1e-2: without biases, a Llama this small (C = 32) learns the tokens' frequencies more slowly than
    # GPT-2, whose final layernorm bias gives it a direction for them: at GPT-2's 3e-3 its loss falls 0.8 in 30
    # steps, at 1e-2 by 3)
    cfg = tiny(tmp_path, model="llama", steps=30, val_every=30, checkpoint_every=30, lr=1e-2)
    records = train.train(cfg, tokens=tokens, progress=False)
    assert np.mean([r["loss"] for r in records[-5:]]) < records[0]["loss"] - 1.0
    model = train.load_trained(tmp_path / "run")
    assert type(model).__name__ == "Llama" and model.config.n_kv_head == 2 and model.config.tie_embeddings
    assert model.config.intermediate_size == train.matching_intermediate_size(32, 2, 2)
    assert train.evaluate(model, tokens[1], cfg) == records[-1]["val_loss"]   # the same weights, the same loss


@pytest.mark.parametrize("backend", ["numpy", "cuda"])
def test_llama_resume_is_bit_identical(tmp_path, tokens, backend):
    steps, every = 4, 2
    settings = dict(model="llama", backend=backend, steps=steps, checkpoint_every=every, val_every=every)
    whole = train.train(tiny(tmp_path / "a", **settings), tokens=tokens, progress=False)

    def crash(record, model):
        if record["step"] == every:
            raise Interrupt
    cfg = tiny(tmp_path / "b", **settings)
    with pytest.raises(Interrupt):
        train.train(cfg, on_step=crash, tokens=tokens, progress=False)
    resumed = train.train(cfg, tokens=tokens, progress=False)
    for a, b in zip(whole[every:], resumed):
        assert a["loss"] == b["loss"] and a["grad_norm"] == b["grad_norm"] and a["val_loss"] == b["val_loss"], (a, b)


def test_resume_refuses_the_other_model(tmp_path, tokens):
    train.train(tiny(tmp_path, steps=2, checkpoint_every=2), tokens=tokens, progress=False)
    with pytest.raises(train.TrainingError, match=r"other settings \(model: 'gpt2' in the checkpoint, 'llama' now"):
        train.train(tiny(tmp_path, steps=2, model="llama"), tokens=tokens, progress=False)


def test_matching_intermediate_size_equalises_the_parameter_count():
    """The default Llama of the CLI has (nearly) GPT-2's parameter count: the embeddings are the same and
    tied, a Llama block loses GPT-2's biases and position table and gains nothing else."""
    gpt2 = train.build_model(train.TrainConfig(), "numpy")
    llama = train.build_model(train.TrainConfig(model="llama"), "numpy")
    assert llama.config.intermediate_size == 384
    assert abs(llama.num_parameters() - gpt2.num_parameters()) / gpt2.num_parameters() < 0.01


def test_command_line_trains_llama(tmp_path):
    out = tmp_path / "cli"
    proc = subprocess.run([sys.executable, "-m", "helpers.train", "--model", "llama", "--steps", "2", "--n-layer", "1",
                           "--n-embd", "32", "--n-head", "4", "--n-kv-head", "1", "--no-tie-embeddings", "--B", "2",
                           "--T", "16", "--val-every", "2", "--sample-every", "2", "--sample-tokens", "8",
                           "--out-dir", str(out)], cwd=REPO_ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    model = train.load_trained(out)
    assert model.config.n_kv_head == 1 and "lm_head" in model.params.views
    bad = subprocess.run([sys.executable, "-m", "helpers.train", "--model", "llama", "--n-head", "4", "--n-kv-head", "3",
                          "--out-dir", str(tmp_path / "bad")], cwd=REPO_ROOT, capture_output=True, text=True)
    assert bad.returncode == 1 and "must divide n_head" in bad.stderr
