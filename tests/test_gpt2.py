"""The assembled GPT-2 against Hugging Face's GPT-2 (transformers on PyTorch's CPU build): logits,
loss, every gradient and 10 AdamW steps, on both backends, at a normal tiny and an odd config."""
import json

import numpy as np
import pytest

from helpers import device
from helpers.model import hf
from helpers.model.gpt2 import AdamW, GPT2, GPT2Config, parameter_shapes
from helpers.ops.global_norm import clip_coefficient

torch, transformers = hf.require()  # the reference extra: missing, every test here fails saying how to install it

CONFIGS = {
    "tiny": (GPT2Config(vocab_size=512, block_size=32, n_layer=2, n_head=4, n_embd=64), 2, 16),
    "odd": (GPT2Config(vocab_size=101, block_size=16, n_layer=2, n_head=3, n_embd=48), 3, 13),
}


def make_inputs(cfg, B, T, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.integers(0, cfg.vocab_size, (B, T)).astype(np.int32),
            rng.integers(0, cfg.vocab_size, (B, T)).astype(np.int32))


def hf_model(model, tmp_path):
    return hf.model_like(model, tmp_path / "hf")


hf_loss = hf.logits_and_loss


@pytest.mark.parametrize("backend", ["numpy", "cuda"])
@pytest.mark.parametrize("which", ["tiny", "odd"])
def test_logits_loss_and_every_gradient_match_hugging_face(backend, which, tmp_path):
    cfg, B, T = CONFIGS[which]
    model = GPT2(cfg, backend=backend, seed=1)
    idx, targets = make_inputs(cfg, B, T)
    hf_net = hf_model(model, tmp_path)
    logits, loss = model.forward(idx, targets)
    model.zero_grad()
    model.backward()
    ref_logits, ref_loss = hf_loss(hf_net, idx, targets)
    ref_loss.backward()
    logit_err = np.abs(device.asnumpy(logits) - ref_logits.detach().numpy()).max()
    assert logit_err <= 1e-4, f"logits differ by {logit_err}"
    assert abs(loss - ref_loss.item()) <= 1e-5, (loss, ref_loss.item())
    assert not device.asnumpy(model.grads["wte"])[cfg.vocab_size:].any(), "padded vocabulary rows get no gradient"
    ours = {k: device.asnumpy(v) for k, v in model.grads.views.items()}
    for k, rel in hf.relative_errors(ours, hf.gradients(hf_net, cfg)).items():
        assert rel <= 1e-4, f"gradient of {k}: relative error {rel:.2e}"


@pytest.mark.parametrize("backend", ["numpy", "cuda"])
def test_ten_adamw_steps_match_pytorch(backend, tmp_path):
    cfg, B, T = CONFIGS["odd"]
    model = GPT2(cfg, backend=backend, seed=2)
    hf_net = hf_model(model, tmp_path)
    idx, targets = make_inputs(cfg, B, T, seed=3)
    lr, wd = 1e-3, 0.1
    opt = AdamW(model, lr=lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=wd)
    decay = [p for n, p in hf_net.named_parameters() if p.dim() == 2]
    no_decay = [p for n, p in hf_net.named_parameters() if p.dim() < 2]
    ref_opt = torch.optim.AdamW([{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}],
                                lr=lr, betas=(0.9, 0.95), eps=1e-8)
    ours, theirs = [], []
    for step in range(10):
        _, loss = model.forward(idx, targets)
        model.zero_grad()
        model.backward()
        norm = model.grad_norm()
        coef = clip_coefficient(norm, max_norm=1.0)
        opt.step(grad_scale=coef)
        ours.append(loss)
        ref_opt.zero_grad()
        _, ref_loss = hf_loss(hf_net, idx, targets)
        ref_loss.backward()
        ref_norm = torch.nn.utils.clip_grad_norm_(hf_net.parameters(), 1.0).item()
        assert abs(norm - ref_norm) <= 1e-4 * ref_norm, (step, norm, ref_norm)
        ref_opt.step()
        theirs.append(ref_loss.item())
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=2e-5)
    assert ours[-1] < ours[0] - 0.5, "the loss on a repeated batch must fall"


def test_both_backends_agree(tmp_path):
    cfg, B, T = CONFIGS["odd"]
    idx, targets = make_inputs(cfg, B, T)
    a, b = GPT2(cfg, backend="numpy", seed=5), GPT2(cfg, backend="cuda", seed=5)
    la, lossa = a.forward(idx, targets)
    lb, lossb = b.forward(idx, targets)
    assert np.abs(device.asnumpy(la) - device.asnumpy(lb)).max() <= 1e-5
    assert abs(lossa - lossb) <= 1e-6


def test_save_pretrained_loads_in_transformers_with_identical_logits(tmp_path):
    cfg, B, T = CONFIGS["tiny"]
    model = GPT2(cfg, seed=4)
    idx, _ = make_inputs(cfg, B, T)
    logits, _ = model.forward(idx)
    hf_net = hf_model(model, tmp_path)
    np.testing.assert_allclose(hf_loss(hf_net, idx, idx)[0].detach().numpy(), logits, atol=1e-5, rtol=0)
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["model_type"] == "gpt2"


def test_from_pretrained_reads_what_transformers_saved(tmp_path):
    cfg, B, T = CONFIGS["odd"]
    hf_cfg = transformers.GPT2Config(vocab_size=cfg.vocab_size, n_positions=cfg.block_size, n_embd=cfg.n_embd,
                                     n_layer=cfg.n_layer, n_head=cfg.n_head)
    torch.manual_seed(0)
    hf_net = transformers.GPT2LMHeadModel(hf_cfg).eval()
    hf_net.save_pretrained(tmp_path / "saved")
    for backend in ("numpy", "cuda"):
        model = GPT2.from_pretrained(tmp_path / "saved", backend=backend)
        assert model.config == cfg
        idx, _ = make_inputs(cfg, B, T)
        logits, _ = model.forward(idx)
        ref = hf_net(torch.from_numpy(idx.astype(np.int64))).logits.detach().numpy()
        assert np.abs(device.asnumpy(logits) - ref).max() <= 1e-4


def test_llmc_bin_round_trip(tmp_path):
    cfg, B, T = CONFIGS["odd"]
    model = GPT2(cfg, seed=7)
    path = model.save_llmc(tmp_path / "model.bin")
    header = np.fromfile(path, np.int32, 8)
    assert list(header) == [20240326, 3, 16, 101, 2, 3, 48, 128]
    again = GPT2.from_llmc(path)
    assert again.config == cfg
    for k, v in model.state().items():
        assert np.array_equal(v, again.state()[k]), k
    idx, _ = make_inputs(cfg, B, T)
    assert np.array_equal(model.forward(idx)[0], again.forward(idx)[0])


def test_parameter_count_of_gpt2_124m():
    shapes = parameter_shapes(GPT2Config())
    assert sum(int(np.prod(s)) for s in shapes.values()) == 124_475_904  # with the padded vocabulary (llm.c)
    model_params = sum(int(np.prod(s)) for s in shapes.values()) - (50304 - 50257) * 768
    assert model_params == 124_439_808  # PyTorch's count for GPT-2 124M


# ---------------------------------------------------------------------------------------------------
# Bad input: each a clear error naming what is wrong
# ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small():
    return GPT2(CONFIGS["odd"][0], seed=0)


@pytest.mark.parametrize("idx,error,pattern", [
    (np.array([[1, 2, 101]]), ValueError, r"token id 101, outside the vocabulary \[0, 101\)"),
    (np.array([[1, -1]]), ValueError, r"token id -1"),
    (np.zeros((1, 17), np.int32), ValueError, r"T=17 is longer than the model's block_size=16"),
    (np.zeros((1, 4), np.float32), TypeError, r"integer token ids, got dtype float32"),
    (np.zeros((1, 2, 3), np.int32), ValueError, r"shape \(B, T\), got \(1, 2, 3\)"),
])
def test_bad_token_input(small, idx, error, pattern):
    with pytest.raises(error, match=pattern):
        small.forward(idx)


def test_targets_must_match(small):
    with pytest.raises(ValueError, match=r"targets has shape \(1, 3\) but idx has \(1, 4\)"):
        small.forward(np.zeros((1, 4), np.int32), np.zeros((1, 3), np.int32))
    with pytest.raises(RuntimeError, match="needs a forward\\(idx, targets\\)"):
        GPT2(CONFIGS["odd"][0]).backward()


def test_bad_configs_and_backends():
    with pytest.raises(ValueError, match=r"n_embd \(50\) must be divisible by n_head \(3\)"):
        GPT2Config(n_embd=50, n_head=3)
    with pytest.raises(ValueError, match="n_layer must be a positive int"):
        GPT2Config(n_layer=0)
    with pytest.raises(ValueError, match="backend must be 'numpy' or 'cuda'"):
        GPT2(CONFIGS["odd"][0], backend="torch")


def test_missing_and_mismatched_checkpoints(tmp_path, small):
    with pytest.raises(FileNotFoundError, match="no llm.c model file"):
        GPT2.from_llmc(tmp_path / "nope.bin")
    with pytest.raises(FileNotFoundError, match="not a directory with config.json"):
        GPT2.from_pretrained(tmp_path / "nope")
    small.save_pretrained(tmp_path / "ckpt")
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    config["n_embd"] = 96
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"tensor wte has shape \(101, 48\), but config.json implies \(101, 96\)"):
        GPT2.from_pretrained(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="has no model.safetensors"):
        GPT2.from_pretrained(tmp_path / "ckpt")
    bad = tmp_path / "bad.bin"
    bad.write_bytes(np.zeros(256, np.int32).tobytes())
    with pytest.raises(ValueError, match="bad magic number 0"):
        GPT2.from_llmc(bad)
    small.save_llmc(tmp_path / "short.bin")
    data = (tmp_path / "short.bin").read_bytes()
    (tmp_path / "short.bin").write_bytes(data[:-4])
    with pytest.raises(ValueError, match="bytes of parameters, but its header describes"):
        GPT2.from_llmc(tmp_path / "short.bin")


def test_hub_name_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="could not get 'gpt2' from the Hugging Face hub"):
        GPT2.from_pretrained("gpt2")


def test_memory_plan_lists_the_buffers(small, capsys):
    text = small.memory_plan(B=3, T=13)
    assert "parameters" in text and "activations (B=3, T=13)" in text and "AdamW m" in text
