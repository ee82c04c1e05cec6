"""The assembled Llama against Hugging Face's LlamaForCausalLM (transformers on PyTorch's CPU build), with
random weights at an odd config (vocabulary 101, 48 channels, 6 query heads sharing 2 key/value heads,
intermediate 136, T = 13): logits, loss, every parameter's gradient, 10 AdamW steps and greedy generation
with the cache, on both backends; checkpoints in Hugging Face's layout both ways, sharded too.

Tolerances: the same as GPT-2's (tests/test_gpt2.py): float32 throughout on both sides, the sums in a
different order; logits within 1e-4 absolute (|logit| ~ 1, a few hundred float32 roundings of ~6e-8
each), gradients within 1e-4 of each tensor's largest entry."""
import json
import tempfile

import numpy as np
import pytest

from helpers import device
from helpers.model import hf
from helpers.model.base import AdamW
from helpers.model.checkpoints import INDEX
from helpers.model.llama import Llama, LlamaConfig, parameter_shapes
from helpers.ops.global_norm import clip_coefficient

torch, transformers = hf.require()  # the reference extra: missing, every test here fails saying how to install it

ODD = LlamaConfig(vocab_size=101, block_size=16, n_layer=2, n_head=6, n_kv_head=2, n_embd=48, intermediate_size=136,
                  rope_theta=50000.0, rms_norm_eps=1e-5)   # not the defaults: they must reach transformers
B, T = 3, 13


def make_inputs(cfg, B, T, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.integers(0, cfg.vocab_size, (B, T)).astype(np.int32),
            rng.integers(0, cfg.vocab_size, (B, T)).astype(np.int32))


def random_model(cfg, backend, seed):
    """A model whose RMSNorm weights are not all 1 (so that their use and their gradients are tested)."""
    model = Llama(cfg, backend=backend, seed=seed)
    state = model.state()
    rng = np.random.default_rng(seed + 100)
    for k in ("rms1w", "rms2w", "rmsfw"):
        state[k] = (1 + 0.2 * rng.standard_normal(state[k].shape)).astype(np.float32)
    model.load_state(state)
    return model


@pytest.mark.parametrize("backend", ["numpy", "cuda"])
@pytest.mark.parametrize("tied", [False, True], ids=["own-head", "tied"])
def test_logits_loss_and_every_gradient_match_hugging_face(backend, tied, tmp_path):
    cfg = LlamaConfig(**{**ODD.__dict__, "tie_embeddings": tied})
    model = random_model(cfg, backend, seed=1)
    idx, targets = make_inputs(cfg, B, T)
    hf_net = hf.model_like(model, tmp_path / "hf")
    assert hf_net.config.num_key_value_heads == 2 and hf_net.config.tie_word_embeddings == tied
    assert hf_net.config.rms_norm_eps == 1e-5
    logits, loss = model.forward(idx, targets)
    model.zero_grad()
    model.backward()
    ref_logits, ref_loss = hf.logits_and_loss(hf_net, idx, targets)
    ref_loss.backward()
    logit_err = np.abs(device.asnumpy(logits) - ref_logits.detach().numpy()).max()
    assert logit_err <= 1e-4, f"logits differ by {logit_err}"
    assert abs(loss - ref_loss.item()) <= 1e-5, (loss, ref_loss.item())
    assert not device.asnumpy(model.grads["wte"])[cfg.vocab_size:].any(), "padded vocabulary rows get no gradient"
    ours = {k: device.asnumpy(v) for k, v in model.grads.views.items()}
    theirs = hf.gradients(hf_net, cfg)
    assert set(theirs) == set(parameter_shapes(cfg)), "every parameter is compared"
    for k, rel in hf.relative_errors(ours, theirs).items():
        assert rel <= 1e-4, f"gradient of {k}: relative error {rel:.2e}"


@pytest.mark.parametrize("backend", ["numpy", "cuda"])
def test_ten_adamw_steps_match_pytorch(backend, tmp_path):
    model = random_model(ODD, backend, seed=2)
    hf_net = hf.model_like(model, tmp_path / "hf")
    idx, targets = make_inputs(ODD, B, T, seed=3)
    lr, wd = 1e-3, 0.1
    opt = AdamW(model, lr=lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=wd)
    decay = [p for n, p in hf_net.named_parameters() if p.dim() == 2]      # our DECAYED: the 2-D weights
    no_decay = [p for n, p in hf_net.named_parameters() if p.dim() < 2]    # the RMSNorm weights
    ref_opt = torch.optim.AdamW([{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}],
                                lr=lr, betas=(0.9, 0.95), eps=1e-8)
    ours, theirs = [], []
    for step in range(10):
        _, loss = model.forward(idx, targets)
        model.zero_grad()
        model.backward()
        norm = model.grad_norm()
        opt.step(grad_scale=clip_coefficient(norm, max_norm=1.0))
        ours.append(loss)
        ref_opt.zero_grad()
        _, ref_loss = hf.logits_and_loss(hf_net, idx, targets)
        ref_loss.backward()
        ref_norm = torch.nn.utils.clip_grad_norm_(hf_net.parameters(), 1.0).item()
        assert abs(norm - ref_norm) <= 1e-4 * ref_norm, (step, norm, ref_norm)
        ref_opt.step()
        theirs.append(ref_loss.item())
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=2e-5)
    assert ours[-1] < ours[0] - 0.5, "the loss on a repeated batch must fall"
    hf_net.save_pretrained(tmp_path / "after")       # and the weights themselves after 10 steps
    after = Llama.from_pretrained(tmp_path / "after").state()
    for k, v in model.state().items():
        rows = ODD.vocab_size if k in ("wte", "lm_head") else None
        np.testing.assert_allclose(v[:rows], after[k][:rows], atol=1e-5, rtol=0, err_msg=k)


@pytest.mark.parametrize("backend", ["numpy", "cuda"])
def test_greedy_generation_with_the_cache_matches_hugging_face_token_for_token(backend, tmp_path):
    model = random_model(ODD, backend, seed=4)
    hf_net = hf.model_like(model, tmp_path / "hf")
    hf_net.generation_config.eos_token_id = None     # never stop early: compare every token
    hf_net.generation_config.pad_token_id = 0
    prompt = np.array([5, 17, 99, 3], np.int32)
    n_new = ODD.block_size - len(prompt)              # up to the end of the context (no cache restart)
    ours = list(model.generate(prompt, n_new, temperature=0, stop_token=None))
    ref = hf_net.generate(torch.from_numpy(prompt[None].astype(np.int64)), max_new_tokens=n_new, do_sample=False,
                          use_cache=True)[0, len(prompt):].tolist()
    assert ours == ref
    # and the cached decode gives the same tokens as full forward passes (no cache)
    assert list(model.generate(prompt, n_new, temperature=0, stop_token=None, use_cache=False)) == ours


def test_both_backends_agree():
    idx, targets = make_inputs(ODD, B, T)
    a, b = random_model(ODD, "numpy", 5), random_model(ODD, "cuda", 5)
    la, lossa = a.forward(idx, targets)
    lb, lossb = b.forward(idx, targets)
    assert np.abs(device.asnumpy(la) - device.asnumpy(lb)).max() <= 1e-5
    assert abs(lossa - lossb) <= 1e-6


def test_multi_head_attention_is_the_case_n_kv_head_equals_n_head(tmp_path):
    # and sizes the fast versions refuse: head size 10 (RoPE version 1), MLP width 50 (% 4 != 0: SwiGLU
    # version 1, matmul version 2)
    cfg = LlamaConfig(**{**ODD.__dict__, "n_embd": 60, "n_kv_head": 6, "intermediate_size": 50})
    model = random_model(cfg, "cuda", seed=6)
    idx, targets = make_inputs(cfg, 2, 7)
    logits, loss = model.forward(idx, targets)
    ref_logits, ref_loss = hf.logits_and_loss(hf.model_like(model, tmp_path / "hf"), idx, targets)
    assert np.abs(device.asnumpy(logits) - ref_logits.detach().numpy()).max() <= 1e-4


def test_save_pretrained_and_from_pretrained_both_ways_sharded_too(tmp_path):
    model = random_model(ODD, "numpy", seed=7)
    idx, _ = make_inputs(ODD, B, T)
    logits = np.array(model.forward(idx)[0])
    # ours -> transformers, in shards of at most 40 kB
    model.save_pretrained(tmp_path / "ours", max_shard_size=40_000)
    index = json.loads((tmp_path / "ours" / INDEX).read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and not (tmp_path / "ours" / "model.safetensors").exists()
    assert all((tmp_path / "ours" / s).stat().st_size <= 40_000 + 4_096 or len(
        [k for k, v in index["weight_map"].items() if v == s]) == 1 for s in shards)
    hf_net = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "ours", attn_implementation="eager").eval()
    ref = hf_net(torch.from_numpy(idx.astype(np.int64))).logits.detach().numpy()
    np.testing.assert_allclose(ref, logits, atol=1e-5, rtol=0)
    # transformers -> ours, sharded by transformers
    hf_net.save_pretrained(tmp_path / "theirs", max_shard_size="30KB")
    assert (tmp_path / "theirs" / INDEX).is_file()
    again = Llama.from_pretrained(tmp_path / "theirs")
    assert again.config == ODD
    for k, v in model.state().items():
        assert np.array_equal(v, again.state()[k]), k
    # saving again unsharded replaces the shards (no stale files a loader could pick up)
    model.save_pretrained(tmp_path / "ours")
    assert sorted(p.name for p in (tmp_path / "ours").iterdir()) == ["config.json", "model.safetensors"]


def test_a_model_transformers_made_loads_with_the_same_logits():
    hf_cfg = transformers.LlamaConfig(vocab_size=101, hidden_size=48, intermediate_size=136, num_hidden_layers=2,
                                      num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=16,
                                      rope_theta=500000.0, rms_norm_eps=1e-6, tie_word_embeddings=False)
    torch.manual_seed(0)
    hf_net = transformers.LlamaForCausalLM(hf_cfg).eval()
    with torch.no_grad():
        for name, p in hf_net.named_parameters():
            if "norm" in name:
                p.add_(0.2 * torch.randn_like(p))
    with tempfile.TemporaryDirectory() as d:
        hf_net.save_pretrained(d)
        for backend in ("numpy", "cuda"):
            model = Llama.from_pretrained(d, backend=backend)
            assert model.config.rope_theta == 500000.0 and model.config.n_kv_head == 2
            idx, _ = make_inputs(model.config, B, T)
            ref = hf_net(torch.from_numpy(idx.astype(np.int64))).logits.detach().numpy()
            assert np.abs(device.asnumpy(model.forward(idx)[0]) - ref).max() <= 1e-4


@pytest.mark.parametrize("change, message", [
    ({"hidden_act": "gelu"}, "hidden_act 'gelu'"),
    ({"attention_bias": True}, "attention_bias"),
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "only plain RoPE"),
    ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}}, "only plain RoPE"),
    ({"model_type": "gpt2"}, "not llama"),
])
def test_configs_this_model_does_not_implement_are_refused(tmp_path, change, message):
    Llama(ODD, seed=0).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(ValueError, match=message):
        Llama.from_pretrained(tmp_path)


@pytest.mark.parametrize("kwargs, message", [
    ({"n_head": 6, "n_kv_head": 4}, "must divide n_head"),
    ({"n_embd": 42, "n_head": 6, "head_dim": 7}, "even int"),
    ({"n_kv_head": 0}, "positive int"),
    ({"rope_theta": 1.0}, "rope_theta"),
])
def test_bad_configs_say_what_is_wrong(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LlamaConfig(**{**ODD.__dict__, **kwargs})


def test_grouped_query_attention_shrinks_the_kv_cache():
    mha = Llama(LlamaConfig(**{**ODD.__dict__, "n_kv_head": 6}), seed=None)
    gqa = Llama(ODD, seed=None)
    size = lambda m: sum(int(np.prod(s)) for s in m.kv_cache_shapes().values())
    assert size(mha) == 3 * size(gqa)     # n_head / n_kv_head = 6 / 2
