"""GPT-2 in mixed precision (dtype="bf16", the cuda backend): bf16 weights and activations, float32 master
weights, gradients, optimizer state and sums. Against the float32 model and against PyTorch's own bf16
(Hugging Face's GPT-2 under torch.autocast(dtype=torch.bfloat16) on the CPU).

Tolerances. bf16 keeps 8 significant bits: every stored activation is within u = 2^-8 (relative) of the
float32 value it rounds, and a chain of L layers of such roundings has no useful worst-case bound. What
can be said, and is tested:
- PyTorch's bf16 autocast makes the same trade (bf16 matmul inputs and outputs, float32 accumulation), so
  its error against float32 is the yardstick: ours must stay within twice it, plus one bf16 rounding of
  the largest value (u * max|ref|: the logits themselves are stored in bf16 here, not in PyTorch). A
  kernel that lost precision (a bf16 accumulator, a sum rounded twice) is off by several times more
  (notebook 13, section 3: 28x for one dot product of 768).
- The loss follows rigorously from the logits: loss = mean over positions of logsumexp(z) - z[target];
  shifting every logit by at most e shifts each term by at most 2e, so |loss - loss_fp32| <= 2 max|dz|.
"""
import warnings

import ml_dtypes
import numpy as np
import pytest

from helpers import device, train
from helpers.model import hf
from helpers.model.base import AdamW
from helpers.model.gpt2 import GPT2, GPT2Config
from helpers.model.llama import Llama, LlamaConfig
from support import tiny_train_config

torch, transformers = hf.require()

U = 2.0 ** -8
CONFIGS = {"odd": (GPT2Config(vocab_size=101, block_size=16, n_layer=2, n_head=3, n_embd=48), 3, 13),
           "C128": (GPT2Config(vocab_size=512, block_size=64, n_layer=4, n_head=4, n_embd=128), 2, 64)}


@pytest.fixture(autouse=True)
def bf16_gpu(monkeypatch):
    """Through the CuPy stand-in, a GPU with bf16 (the default stand-in is a T4, sm_75, where the model falls
    back to fp32: tested below)."""
    monkeypatch.setenv("GPT2_STANDIN_GPU", "h100")


def make_inputs(cfg, B, T, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.integers(0, cfg.vocab_size, (B, T)).astype(np.int32),
            rng.integers(0, cfg.vocab_size, (B, T)).astype(np.int32))


def torch_bf16(model, idx, targets):
    """Hugging Face's GPT-2 with our float32 weights, under bf16 autocast: logits, loss and gradients."""
    net = hf.model_like(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, loss = hf.logits_and_loss(net, idx, targets)
    loss.backward()
    return logits.float().detach().numpy().astype(np.float64), loss.item(), hf.gradients(net, model.config)


@pytest.mark.parametrize("which", ["odd", "C128"])
def test_logits_loss_and_gradients_within_pytorchs_own_bf16_error(which):
    cfg, B, T = CONFIGS[which]
    idx, targets = make_inputs(cfg, B, T)
    fp32 = GPT2(cfg, backend="numpy", seed=1)
    bf16 = GPT2.from_tensors(cfg, fp32.state(), backend="cuda", dtype="bf16")
    assert bf16.dtype == "bf16" and bf16.params["qkvw"].dtype == ml_dtypes.bfloat16
    z32, loss32 = fp32.forward(idx, targets)
    z16, loss16 = bf16.forward(idx, targets)
    z32, z16 = np.asarray(z32, np.float64), device.asnumpy(z16).astype(np.float64)
    zt, loss_t, grads_t = torch_bf16(fp32, idx, targets)
    ours, theirs = np.abs(z16 - z32).max(), np.abs(zt - z32).max()
    assert 0 < ours <= 2 * theirs + U * np.abs(z32).max(), (ours, theirs)
    assert abs(loss16 - loss32) <= 2 * ours, (loss16, loss32)
    fp32.zero_grad(); fp32.backward()
    bf16.zero_grad(); bf16.backward()
    for k, g_t in grads_t.items():
        g32 = np.asarray(fp32.grads[k])[:g_t.shape[0]]
        g16 = device.asnumpy(bf16.grads[k])[:g_t.shape[0]]
        assert g16.dtype == np.float32                    # parameter gradients stay float32
        scale = np.abs(g32).max()
        ours, theirs = np.abs(g16 - g32).max(), np.abs(g_t - g32).max()
        assert ours <= 2 * theirs + U * scale, (k, ours / scale, theirs / scale)


def test_the_memory_plan_shows_the_saving():
    cfg, B, T = CONFIGS["C128"]
    fp32, bf16 = GPT2(cfg, backend="cuda", seed=0), GPT2(cfg, backend="cuda", seed=0, dtype="bf16")
    fp32.forward(*make_inputs(cfg, B, T))
    bf16.forward(*make_inputs(cfg, B, T))
    assert bf16.params.nbytes * 2 == fp32.params.nbytes and bf16.master.nbytes == fp32.params.nbytes
    ratio = bf16.acts.nbytes / fp32.acts.nbytes
    assert 0.5 <= ratio < 0.52, ratio                      # all bf16 but the small statistics and losses
    text = bf16.memory_plan(B, T)
    assert "master weights                fp32" in text and "activations (B=2, T=64)       bf16" in text
    total = lambda t: float(t.splitlines()[-1].split()[-2])  # noqa: E731
    assert total(text) < total(fp32.memory_plan(B, T))


def test_ten_adamw_steps_follow_the_fp32_run_and_resume_exactly():
    cfg, B, T = CONFIGS["odd"]
    idx, targets = make_inputs(cfg, B, T, seed=3)
    runs = {}
    for dtype in ("fp32", "bf16"):
        model = GPT2(cfg, backend="cuda", seed=2, dtype=dtype)
        opt = AdamW(model, lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
        runs[dtype] = []
        for _ in range(10):
            _, loss = model.forward(idx, targets)
            model.zero_grad()
            model.backward()
            opt.step()
            runs[dtype].append(loss)
    # each step's loss moves by 2 max|dz| at most from the logits' error (module docstring), which the
    # first test bounds by ~1e-2 here; the trajectories then stay within that of each other
    assert np.abs(np.array(runs["bf16"]) - runs["fp32"]).max() <= 1e-2
    assert runs["bf16"][-1] < runs["bf16"][0] - 0.5
    # the optimizer's state restores the bf16 weights bit for bit (the same stochastic rounding seeds)
    again = GPT2.from_tensors(cfg, model.state(), backend="cuda", dtype="bf16")
    opt2 = AdamW(again, lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    opt2.load_state(opt.state())
    for k in model.params.views:
        assert np.array_equal(device.asnumpy(model.params[k]).view(np.uint16),
                              device.asnumpy(again.params[k]).view(np.uint16)), k


def test_generation_with_the_cache_equals_without():
    cfg, _, _ = CONFIGS["odd"]
    model = GPT2(cfg, backend="cuda", seed=4, dtype="bf16")
    prompt = np.array([3, 1, 4, 1, 5], np.int32)
    with_cache = list(model.generate(prompt, 8, temperature=0, stop_token=None))
    assert with_cache == list(model.generate(prompt, 8, temperature=0, stop_token=None, use_cache=False))


def test_training_in_bf16_resumes_bit_for_bit(tmp_path, tokens):
    settings = dict(backend="cuda", dtype="bf16", steps=4, checkpoint_every=2, val_every=2)
    whole = train.train(tiny_train_config(tmp_path / "a", **settings), tokens=tokens, progress=False)

    class Stop(Exception):
        pass

    def crash(record, model):
        if record["step"] == 2:
            raise Stop
    cfg = tiny_train_config(tmp_path / "b", **settings)
    with pytest.raises(Stop):
        train.train(cfg, on_step=crash, tokens=tokens, progress=False)
    resumed = train.train(cfg, tokens=tokens, progress=False)
    for a, b in zip(whole[2:], resumed):
        assert a["loss"] == b["loss"] and a["grad_norm"] == b["grad_norm"], (a, b)


def test_what_bf16_refuses_and_where_it_falls_back(monkeypatch):
    cfg, _, _ = CONFIGS["odd"]
    with pytest.raises(ValueError, match="needs backend='cuda'"):
        GPT2(cfg, backend="numpy", dtype="bf16")
    with pytest.raises(ValueError, match="dtype must be 'fp32' or 'bf16'"):
        GPT2(cfg, backend="cuda", dtype="fp16")
    with pytest.raises(ValueError, match="Llama has no bf16 kernels"):
        Llama(LlamaConfig(vocab_size=101, block_size=16, n_layer=1, n_head=2, n_kv_head=1, n_embd=32,
                          intermediate_size=64), backend="cuda", dtype="bf16")
    with pytest.raises(ValueError, match="dtype must be fp32 or bf16"):
        train.TrainConfig(dtype="fp8").validate()
    monkeypatch.setattr(device, "compute_capability", lambda: (7, 5))     # a T4
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = GPT2(cfg, backend="cuda", dtype="bf16")
    assert model.dtype == "fp32" and model.params["wte"].dtype == np.float32
    assert any("sm_75" in str(w.message) and "runs in fp32" in str(w.message) for w in caught)


def test_a_bf16_training_run_stays_within_its_band_of_the_fp32_run(tmp_path, tokens):
    """Tiny Shakespeare, the same seed, data and schedule; the band: at every validation, |val_bf16 -
    val_fp32| <= 0.02 nats, twice the loss difference the logits' error allows for the same weights at these
    sizes (2 max|dz| ~ 1e-2: the first test) rounded up. Measured: within 1e-3 over 40 steps."""
    curves = {}
    for dtype in ("fp32", "bf16"):
        records = train.train(tiny_train_config(tmp_path / dtype, backend="cuda", dtype=dtype, steps=20, val_every=5,
                                                checkpoint_every=0, lr=3e-3), tokens=tokens, progress=False)
        curves[dtype] = np.array([r["val_loss"] for r in records if r["val_loss"] is not None])
    assert len(curves["fp32"]) == 4 and curves["fp32"][-1] < curves["fp32"][0] - 0.5
    assert np.abs(curves["bf16"] - curves["fp32"]).max() <= 0.02, curves
