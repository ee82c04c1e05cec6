"""Generation: the KV cache changes nothing but speed, greedy decoding equals Hugging Face's, seeds
reproduce, and bad settings are refused."""
import numpy as np
import pytest

from helpers import device
from helpers.model import generate, hf
from helpers.model.generate import KVCache, probabilities
from helpers.model.gpt2 import GPT2, GPT2Config

torch, transformers = hf.require()
CFG = GPT2Config(vocab_size=101, block_size=16, n_layer=2, n_head=3, n_embd=48)


@pytest.fixture(scope="module", params=["numpy", "cuda"])
def model(request):
    return GPT2(CFG, backend=request.param, seed=3)


def test_logits_with_the_cache_equal_logits_without(model):
    tokens = [5, 7, 9, 11, 3, 2, 1, 0, 99, 45, 6, 7, 8, 9, 10, 11]
    full = device.asnumpy(model.forward(np.array([tokens]))[0])[0]
    cache = KVCache(model)
    for pos, t in enumerate(tokens):
        np.testing.assert_allclose(cache.step(t), full[pos], atol=2e-5, rtol=1e-5, err_msg=f"position {pos}")


def test_greedy_equals_hugging_face(model, tmp_path):
    ref = hf.model_like(model, tmp_path / "hf")
    prompt = np.array([[5, 7, 9, 11]])
    theirs = ref.generate(torch.from_numpy(prompt.astype(np.int64)), max_new_tokens=10, do_sample=False,
                          eos_token_id=None, pad_token_id=0).numpy()[0, 4:].tolist()
    ours = list(model.generate(prompt, 10, temperature=0))
    assert ours == theirs
    assert list(model.generate(prompt, 10, temperature=0, use_cache=False)) == theirs


def test_seed_makes_samples_reproducible(model):
    a = list(model.generate(np.array([1, 2]), 8, temperature=1.0, seed=123))
    b = list(model.generate(np.array([1, 2]), 8, temperature=1.0, seed=123))
    c = [list(model.generate(np.array([1, 2]), 8, temperature=1.0, seed=s)) for s in range(5)]
    assert a == b and len(a) == 8 and any(x != a for x in c)


def test_streams_one_token_at_a_time_and_stops_at_endoftext(monkeypatch):
    m = GPT2(CFG, seed=0)
    stream = m.generate(np.array([1, 2, 3]), 10)
    assert isinstance(next(stream), int)  # a generator: tokens come as they are made
    calls = iter([4, 5, generate.EOT, 6])
    monkeypatch.setattr(generate, "next_token", lambda *a, **k: next(calls))
    assert list(m.generate(np.array([1, 2, 3]), 10)) == [4, 5]


def test_long_prompts_are_cropped_and_long_generations_slide():
    m = GPT2(CFG, seed=0)
    with pytest.warns(UserWarning, match="the prompt has 20 tokens, more than the model's context of 16"):
        first = list(m.generate(np.arange(20) % 101, 3, temperature=0))
    assert first == list(m.generate(np.arange(4, 20), 3, temperature=0))
    assert len(list(m.generate(np.array([1, 2, 3]), 40, temperature=0))) == 40  # past the context


@pytest.mark.parametrize("kw,pattern", [
    (dict(temperature=-1), "temperature must be a number >= 0"),
    (dict(top_k=0), "top_k must be None or an int >= 1"),
    (dict(top_p=1.5), r"top_p must be None or a number in \(0, 1\]"),
    (dict(top_p=0), r"top_p must be None or a number in \(0, 1\]"),
    (dict(max_new_tokens=-1), "max_new_tokens must be an int >= 0"),
])
def test_bad_settings(kw, pattern):
    m = GPT2(CFG, seed=0)
    args = {"max_new_tokens": 3, **kw}
    with pytest.raises(ValueError, match=pattern):
        list(m.generate(np.array([1]), **args))


def test_bad_prompts():
    m = GPT2(CFG, seed=0)
    with pytest.raises(ValueError, match="the prompt is empty"):
        list(m.generate(np.array([], np.int32), 3))
    with pytest.raises(ValueError, match="token id 500, outside the vocabulary"):
        list(m.generate(np.array([500]), 3))
    with pytest.raises(ValueError, match="one sequence"):
        list(m.generate(np.zeros((2, 3), np.int32), 3))


def test_probabilities_temperature_top_k_top_p():
    logits = np.log(np.array([0.5, 0.25, 0.15, 0.1]))
    np.testing.assert_allclose(probabilities(logits), [0.5, 0.25, 0.15, 0.1])
    assert probabilities(logits, temperature=0).tolist() == [1, 0, 0, 0]
    np.testing.assert_allclose(probabilities(logits, top_k=2), [2 / 3, 1 / 3, 0, 0])
    np.testing.assert_allclose(probabilities(logits, top_p=0.7), [2 / 3, 1 / 3, 0, 0])   # 0.5 + 0.25 >= 0.7
    np.testing.assert_allclose(probabilities(logits, top_p=0.5), [1, 0, 0, 0])
    hot = probabilities(logits, temperature=2.0)
    assert hot[0] < 0.5 and hot[3] > 0.1 and abs(hot.sum() - 1) < 1e-12
