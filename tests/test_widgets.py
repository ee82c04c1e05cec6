"""The sampling widget without a browser: set the prompt and knobs, click Generate, read the streamed
text; Stop mid-way; a seed reproduces; bad values are shown, not raised."""
import time

import numpy as np
import pytest

from helpers.model.gpt2 import GPT2, GPT2Config
from helpers.sample.widgets import sampling_widget

CFG = GPT2Config(vocab_size=50257, block_size=64, n_layer=1, n_head=2, n_embd=32)


@pytest.fixture(scope="module")
def model():
    return GPT2(CFG, seed=0)


def run(w, timeout=60):
    w.generate_button.click()
    assert w.wait(timeout), "generation did not finish"
    return w.text()


def test_generate_streams_text_through_the_output_widget(model):
    w = sampling_widget(model)
    w.prompt.value = "Hello there"
    w.max_new_tokens.value = 15
    text = run(w)
    assert text.startswith("Hello there") and len(text) > len("Hello there")
    assert len(w.output.outputs) > 2, "the text arrives in pieces, as it is generated"
    assert w.status.value.startswith("done: 15 tokens") and "tokens/s" in w.status.value
    assert w.reason == "max_new_tokens" and w.status.value.endswith("reached max new tokens")
    assert not w.generate_button.disabled and w.stop_button.disabled


class EndsSpeeches:
    """A model that writes <|endoftext|> every third token (as tiny Shakespeare's short speeches do)."""

    def generate(self, idx, max_new_tokens, stop_token=50256, **settings):
        for i in range(max_new_tokens):
            token = 50256 if i % 3 == 2 else 40 + i % 3
            if token == stop_token:
                return
            yield token


def test_generation_goes_on_past_endoftext_unless_asked_to_stop_there():
    w = sampling_widget(EndsSpeeches())
    w.prompt.value = "A"
    w.max_new_tokens.value = 9
    assert not w.stop_at_eot.value, "the default goes on, so that a sample is a paragraph, not one short speech"
    text = run(w)
    assert text == "A" + "IJ\n\n" * 3 and w.reason == "max_new_tokens"
    assert "9 tokens" in w.status.value and "past 3 <|endoftext|>" in w.status.value
    w.stop_at_eot.value = True
    text = run(w)
    assert text == "AIJ" and w.reason == "endoftext"
    assert w.status.value.startswith("done: 2 tokens") and "the model wrote <|endoftext|>" in w.status.value


def test_a_long_error_gets_its_own_line_and_leaves_the_buttons_alone():
    long_error = "offline: " + "the hub could not be reached " * 10
    w = sampling_widget({"hub": lambda: (_ for _ in ()).throw(OSError(long_error))})
    run(w)
    assert w.reason == "error" and long_error in w.status.value
    buttons = next(c for c in w.children if w.generate_button in getattr(c, "children", ()))
    assert w.status not in buttons.children, "the status line must not share the buttons' row"
    assert w.generate_button.layout.min_width == w.stop_button.layout.min_width == "120px"


def test_a_seed_reproduces_and_greedy_is_deterministic(model):
    w = sampling_widget(model)
    w.prompt.value = "Once"
    w.max_new_tokens.value = 12
    w.seed.value = 7
    a, b = run(w), run(w)
    w.seed.value = 8
    c = run(w)
    assert a == b and a != c
    w.temperature.value = 0.0
    assert run(w) == run(w)


def test_stop_ends_generation_mid_way(model):
    w = sampling_widget(model)
    w.max_new_tokens.value = 500
    w.generate_button.click()
    deadline = time.time() + 30
    while len(w.output.outputs) < 4 and time.time() < deadline:
        time.sleep(0.01)
    w.stop_button.click()
    assert w.wait(30)
    n = int(w.status.value.split()[1])
    assert w.status.value.startswith("stopped:") and 0 < n < 500
    assert w.reason == "stopped" and w.status.value.endswith("by the Stop button")


def test_empty_prompt_starts_from_endoftext(model):
    w = sampling_widget(model)
    w.prompt.value = ""
    w.max_new_tokens.value = 5
    w.temperature.value = 0.0
    text = run(w)
    expected = list(model.generate(np.array([50256]), 5, temperature=0))
    from helpers.train import data
    assert text == data.tokenizer().decode(expected)


def test_bad_values_are_reported_in_the_widget(model):
    w = sampling_widget(model)
    w.temperature.value = 0.5
    w.top_p.value = 0.5
    w.top_k.value = 0
    assert run(w)  # top-k off, top-p 0.5: fine
    w.temperature.max = 5
    w.temperature.value = -1  # the slider clamps it
    assert w.temperature.value == 0.0
    bad = sampling_widget({"broken": lambda: (_ for _ in ()).throw(FileNotFoundError("offline"))})
    bad.generate_button.click()
    assert bad.wait(10) and "FileNotFoundError: offline" in bad.status.value
    with pytest.raises(ValueError, match="at least one model"):
        sampling_widget({})


def test_model_choice_loads_lazily(model):
    loads = []

    def loader():
        loads.append(1)
        return model
    w = sampling_widget({"first": model, "lazy": loader})
    assert w.model_choice.options == ("first", "lazy") and not loads
    w.model_choice.value = "lazy"
    w.max_new_tokens.value = 3
    run(w)
    run(w)
    assert loads == [1]
