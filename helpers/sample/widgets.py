"""An in-notebook sampling widget: type a prompt, set the knobs, press Generate, watch the text stream.

    from helpers.sample.widgets import sampling_widget
    sampling_widget(model)              # or sampling_widget({"trained": model, "GPT-2 124M": loader})

Generation runs in a background thread, so the notebook stays responsive and Stop can end it mid-way;
text is added to the output area with the widget's own `append_stdout`, which streams to the browser
(and is what tests read back). An empty prompt starts from <|endoftext|>.

By default generation goes on past <|endoftext|> (shown as a blank line: in tiny Shakespeare it ends
each speech, so a sample would otherwise stop after one short speech); "stop at <|endoftext|>" ends
it there. The status line always says why it ended: the token limit, <|endoftext|>, Stop, or an error.
"""
from __future__ import annotations

import threading
import time

import ipywidgets as W
import numpy as np

from ..model.generate import EOT, check_sampling
from ..train.data import tokenizer as gpt2_tokenizer


class SamplingWidget(W.VBox):
    def __init__(self, models: dict, tokenizer=None):
        if not models:
            raise ValueError("sampling_widget needs at least one model")
        if tokenizer is None:
            tokenizer = gpt2_tokenizer()
        self.models, self.tokenizer = dict(models), tokenizer
        self._loaded: dict = {}
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        style, wide = {"description_width": "110px"}, W.Layout(width="420px")
        self.model_choice = W.Dropdown(options=list(self.models), description="model", style=style, layout=wide)
        self.prompt = W.Textarea(value="", placeholder="a prompt (empty: start from <|endoftext|>)",
                                 description="prompt", style=style, layout=W.Layout(width="600px", height="70px"))
        self.max_new_tokens = W.IntSlider(value=60, min=1, max=500, description="max new tokens", style=style,
                                          layout=wide)
        self.temperature = W.FloatSlider(value=0.8, min=0.0, max=2.0, step=0.05, description="temperature",
                                         style=style, layout=wide)
        self.top_k = W.IntSlider(value=40, min=0, max=200, description="top-k (0: off)", style=style, layout=wide)
        self.top_p = W.FloatSlider(value=1.0, min=0.05, max=1.0, step=0.05, description="top-p (1: off)",
                                   style=style, layout=wide)
        self.seed = W.IntText(value=0, description="seed", style=style, layout=W.Layout(width="220px"))
        self.stop_at_eot = W.Checkbox(value=False, description="stop at <|endoftext|>", indent=False,
                                      layout=W.Layout(width="200px"))
        button = W.Layout(width="120px", min_width="120px")
        self.generate_button = W.Button(description="Generate", button_style="primary", icon="play", layout=button)
        self.stop_button = W.Button(description="Stop", button_style="warning", icon="stop", disabled=True,
                                    layout=button)
        # its own line, as wide as the output: a long message wraps instead of squeezing the buttons
        self.status = W.HTML(value="", layout=W.Layout(width="600px"))
        self.reason = ""  # why the last generation ended: "max_new_tokens", "endoftext", "stopped" or "error"
        self.output = W.Output(layout=W.Layout(border="1px solid #ccc", padding="6px", min_height="80px",
                                               width="600px"))
        self.generate_button.on_click(lambda _: self.start())
        self.stop_button.on_click(lambda _: self.stop())
        super().__init__([self.model_choice, self.prompt, self.max_new_tokens, self.temperature, self.top_k,
                          self.top_p, W.HBox([self.seed, self.stop_at_eot]),
                          W.HBox([self.generate_button, self.stop_button]), self.status, self.output])

    # -- the model ------------------------------------------------------------------------------------
    def model(self):
        """The chosen model; a callable entry (a loader, e.g. of pretrained GPT-2) is called once."""
        name = self.model_choice.value
        if name not in self._loaded:
            entry = self.models[name]
            self._loaded[name] = entry() if callable(entry) and not hasattr(entry, "generate") else entry
        return self._loaded[name]

    # -- running --------------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self):
        """What the Generate button does: check the settings, then generate in a background thread."""
        if self.running:
            return
        top_k = self.top_k.value or None
        top_p = None if self.top_p.value >= 1.0 else self.top_p.value
        try:
            check_sampling(self.temperature.value, top_k, top_p)
            ids = self.tokenizer.encode(self.prompt.value, allowed_special={"<|endoftext|>"}) if self.prompt.value \
                else [EOT]
        except ValueError as e:
            self.status.value = f"<span style='color:#b00'>{e}</span>"
            return
        self.output.outputs = ()  # (clear_output() would print terminal escapes outside a notebook)
        self.output.append_stdout(self.prompt.value)
        self._stop.clear()
        self.generate_button.disabled, self.stop_button.disabled = True, False
        self.status.value = "generating..."
        settings = dict(max_new_tokens=self.max_new_tokens.value, temperature=self.temperature.value, top_k=top_k,
                        top_p=top_p, seed=self.seed.value)
        self._thread = threading.Thread(target=self._run, args=(ids, settings), daemon=True)
        self._thread.start()

    def _run(self, ids, settings):
        n, t0, pending, speeches = 0, time.perf_counter(), [], 0
        self.reason = ""
        try:
            model = self.model()
            stop_token = EOT if self.stop_at_eot.value else None
            for token in model.generate(np.array(ids), stop_token=stop_token, **settings):
                n += 1
                if token == EOT:   # going on past the end of a document: a blank line, as in the text
                    speeches += 1
                    self.output.append_stdout(self.tokenizer.decode(pending) + "\n\n")
                    pending = []
                else:
                    pending.append(token)
                    text = self.tokenizer.decode(pending)
                    if not text.endswith("\ufffd") or len(pending) >= 4:  # a character split over tokens waits
                        self.output.append_stdout(text)
                        pending = []
                self.status.value = f"{n} tokens, {n / (time.perf_counter() - t0):.1f} tokens/s"
                if self._stop.is_set():
                    break
            if pending:
                self.output.append_stdout(self.tokenizer.decode(pending))
            rate = n / max(time.perf_counter() - t0, 1e-9)
            if self._stop.is_set():
                self.reason, why = "stopped", "by the Stop button"
            elif n < settings["max_new_tokens"]:
                self.reason, why = "endoftext", ("the model wrote <|endoftext|> (the end of a speech); untick "
                                                 "'stop at <|endoftext|>' to go on past it")
            else:
                self.reason, why = "max_new_tokens", "reached max new tokens"
            crossed = f", past {speeches} <|endoftext|>" if speeches else ""
            ending = "stopped" if self.reason == "stopped" else "done"
            self.status.value = f"{ending}: {n} tokens, {rate:.1f} tokens/s{crossed}: {why}"
        except Exception as e:  # shown in the widget, never raised into a thread nobody watches
            self.reason = "error"
            self.status.value = f"<span style='color:#b00'>{type(e).__name__}: {e}</span>"
        finally:
            self.generate_button.disabled, self.stop_button.disabled = False, True

    def stop(self):
        """What the Stop button does: the generation ends after the token being made."""
        self._stop.set()

    def wait(self, timeout: float = 60.0) -> bool:
        """Block until the current generation ends (for tests and scripts); True if it did."""
        if self._thread is not None:
            self._thread.join(timeout)
        return not self.running

    def text(self) -> str:
        """Everything the output area shows."""
        return "".join(o.get("text", "") for o in self.output.outputs)


def sampling_widget(model, tokenizer=None) -> SamplingWidget:
    """The sampling UI for `model`, or for a dict of named models (values may be models, or functions
    that load one the first time it is chosen, such as pretrained GPT-2)."""
    models = model if isinstance(model, dict) else {"model": model}
    return SamplingWidget(models, tokenizer)
