"""Solution of the exercise in notebooks/12_llama_model.ipynb: Llama 3.1's scaled RoPE frequencies.

Llama 3 was trained with a context of 8192 tokens; Llama 3.1 reaches 128k by changing only the
rotary frequencies, not the model. Think of each frequency as a wavelength, 2 pi / inv_freq: the
positions a pair needs for one full turn.

- Pairs whose wavelength is short compared with the original context (below
  original_context / high_freq_factor) turn many times within it: they encode local order and are
  kept as they are.
- Pairs whose wavelength is longer than original_context / low_freq_factor never completed a turn in
  training: stretched by `factor`, they turn `factor` times more slowly and so stay within the angles
  the model has seen, over a `factor` times longer context.
- In between, the new inverse frequency is a blend of the two, linear in original_context /
  wavelength (the number of turns within the original context): from all stretched where that number
  is low_freq_factor to unchanged where it is high_freq_factor.
"""
import numpy as np


def llama3_inverse_frequencies(inv_freq, factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                               original_context=8192):
    inv_freq = np.asarray(inv_freq, dtype=np.float64)
    turns = original_context * inv_freq / (2 * np.pi)      # full turns within the original context
    blend = np.clip((turns - low_freq_factor) / (high_freq_factor - low_freq_factor), 0.0, 1.0)
    scaled = blend * inv_freq + (1 - blend) * inv_freq / factor
    return scaled.astype(np.float32)
