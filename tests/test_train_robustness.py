"""Training never resumes into something else silently: stale temporaries, torn logs, truncated,
corrupt or tampered checkpoints, a full disk, a changed configuration and an exploded model are each
repaired with a message or refused with a TrainingError naming the file and what to do."""
import errno
import json

import numpy as np
import pytest

from helpers import train
from helpers.train import TrainingError, data
from support import tiny_train_config


def tiny(tmp_path, **kw):
    """Six steps, a checkpoint every three (so a resume has one to start from)."""
    return tiny_train_config(tmp_path, **{"steps": 6, "val_every": 3, "checkpoint_every": 3, **kw})


class Halt(Exception):
    pass


def halt_at(step):
    def on_step(record, model):
        if record["step"] == step:
            raise Halt
    return on_step


@pytest.fixture
def run(tmp_path, tokens):
    """A run of 6 steps stopped after its checkpoint at step 3."""
    with pytest.raises(Halt):
        train.train(tiny(tmp_path), on_step=halt_at(3), tokens=tokens, progress=False)
    return tmp_path / "run"


def resume(tmp_path, tokens, **kw):
    return train.train(tiny(tmp_path, **kw), tokens=tokens, progress=False)


def test_stale_temporaries_of_a_crashed_save_are_removed(run, tmp_path, tokens, capsys):
    stale = [run / ".checkpoint.safetensors.abc123.tmp", run / ".log.jsonl.x1.tmp"]
    for s in stale:
        s.write_bytes(b"")
    records = resume(tmp_path, tokens)
    assert [r["step"] for r in records] == [3, 4, 5]
    assert not any(s.exists() for s in stale)
    assert "removed 2 unfinished temporary files" in capsys.readouterr().out


def test_a_torn_last_log_line_is_dropped_and_said(run, tmp_path, tokens, capsys):
    with open(run / "log.jsonl", "a") as f:
        f.write('{"step": 3, "loss": 7.1')   # the disk filled up in the middle of a line
    resume(tmp_path, tokens)
    out = capsys.readouterr().out
    assert "log.jsonl" in out and "incomplete last line" in out
    assert [r["step"] for r in train.read_log(run / "log.jsonl")] == list(range(6))


def test_a_torn_log_line_elsewhere_names_the_file(run):
    (run / "log.jsonl").write_text('{"step": 0}\nnot json\n{"step": 2}\n')
    with pytest.raises(TrainingError, match=r"log\.jsonl, line 2"):
        train.read_log(run / "log.jsonl")


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_an_unreadable_checkpoint_is_a_training_error_naming_it(run, tmp_path, tokens, damage):
    ckpt = run / "checkpoint.safetensors"
    raw = ckpt.read_bytes()
    ckpt.write_bytes({"truncate": raw[: len(raw) // 2], "garbage": b"\x00" * 100 + raw[100:], "empty": b""}[damage])
    with pytest.raises(TrainingError, match=r"checkpoint\.safetensors.*(truncated|corrupt).*--no-resume"):
        resume(tmp_path, tokens)


def _rewrite(ckpt, change_meta=None, change_tensors=None, keep_checksum=False):
    """Write the checkpoint again with its metadata or tensors changed (as a bug or a bit flip would)."""
    from safetensors.numpy import save_file
    meta, tensors = train.load_checkpoint(ckpt, verify=False)
    digest = meta.get("tensors_sha256")
    if change_meta:
        change_meta(meta)
    if change_tensors:
        change_tensors(tensors)
    if keep_checksum:
        meta["tensors_sha256"] = digest
    else:
        meta["tensors_sha256"] = train.tensor_digest(tensors)
    save_file(tensors, str(ckpt), metadata={"meta": json.dumps(meta)})


def test_flipped_bytes_fail_the_checksum(run, tmp_path, tokens):
    def flip(t):
        t["param.wte"].reshape(-1).view(np.uint32)[123] ^= 1 << 20
    _rewrite(run / "checkpoint.safetensors", change_tensors=flip, keep_checksum=True)
    with pytest.raises(TrainingError, match=r"checkpoint\.safetensors.*checksum"):
        resume(tmp_path, tokens)


@pytest.mark.parametrize("what, change, pattern", [
    ("missing tensor", dict(change_tensors=lambda t: t.pop("param.ln1w")), r"lacks.*param\.ln1w"),
    ("inf in AdamW", dict(change_tensors=lambda t: t["adamw.v"].__setitem__(5, np.inf)), r"adamw\.v.*not finite"),
    ("negative v", dict(change_tensors=lambda t: t["adamw.v"].__setitem__(5, -1.0)), r"adamw\.v.*negative"),
    ("negative step", dict(change_meta=lambda m: m.__setitem__("step", -2)), r"step -2"),
    ("step past the end", dict(change_meta=lambda m: m.__setitem__("step", 99)), r"step 99.*6 steps"),
    ("loader position", dict(change_meta=lambda m: m["loader"].__setitem__("index", 10**9)), r"loader.*index"),
])
def test_impossible_contents_are_refused(run, tmp_path, tokens, what, change, pattern):
    _rewrite(run / "checkpoint.safetensors", **change)
    with pytest.raises(TrainingError, match=pattern):
        resume(tmp_path, tokens)


@pytest.mark.parametrize("change, named", [
    (dict(B=8), "B: 4 in the checkpoint, 8 now"),
    (dict(grad_accum=2), r"averaged 1 batches per step \(1 rank\(s\) x grad_accum 1\); this run averages 2"),
    (dict(steps=9), "steps: 6 in the checkpoint, 9 now"),
    (dict(lr=1e-3), "lr: 0.003 in the checkpoint, 0.001 now"),
])
def test_resuming_with_another_configuration_is_refused_naming_the_difference(tmp_path, tokens, change, named):
    with pytest.raises(Halt):
        train.train(tiny(tmp_path), on_step=halt_at(3), tokens=tokens, progress=False)
    with pytest.raises(TrainingError, match=rf"{named}.*--no-resume"):
        resume(tmp_path, tokens, **change)
    records = resume(tmp_path, tokens, resume=False, **change)  # --no-resume starts over
    assert records[0]["step"] == 0


def test_resuming_with_another_train_bin_is_refused(tmp_path, tokens):
    train_tokens, val_tokens = tokens
    a, b, v = tmp_path / "a.bin", tmp_path / "b.bin", tmp_path / "val.bin"
    data.write_token_file(a, train_tokens[:20000])
    data.write_token_file(b, train_tokens[20000:40000])
    data.write_token_file(v, val_tokens[:5000])
    with pytest.raises(Halt):
        train.train(tiny(tmp_path, train_bin=str(a), val_bin=str(v)), on_step=halt_at(3), progress=False)
    with pytest.raises(TrainingError, match=r"train_bin: '.*a\.bin' in the checkpoint, '.*b\.bin' now"):
        train.train(tiny(tmp_path, train_bin=str(b), val_bin=str(v)), progress=False)


def test_a_full_disk_while_saving_keeps_the_last_checkpoint(run, tmp_path, tokens, monkeypatch):
    before = (run / "checkpoint.safetensors").read_bytes()
    import safetensors.numpy

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(safetensors.numpy, "save_file", full)
    with pytest.raises(TrainingError, match=r"could not write .*checkpoint\.safetensors.*No space left.*intact"):
        resume(tmp_path, tokens)
    assert (run / "checkpoint.safetensors").read_bytes() == before
    assert not list(run.glob(".*.tmp"))


def test_the_nan_guard_never_leaves_a_checkpoint_whose_loss_is_not_finite(tmp_path, tokens):
    cfg = tiny(tmp_path, steps=60, lr=80.0, min_lr=80.0, warmup_steps=0, grad_clip=1e9, checkpoint_every=1,
               val_every=0)
    with pytest.raises(TrainingError, match=r"loss|not finite"):
        train.train(cfg, tokens=tokens, progress=False)
    ckpt = tmp_path / "run" / "checkpoint.safetensors"
    if ckpt.exists():   # the last checkpoint written must still give a finite loss
        model = train.load_trained(ckpt)
        x, y = data.DataLoader(tokens[1], cfg.B, cfg.T, shuffle=False).next_batch()
        assert np.isfinite(model.forward(x, y)[1])
