"""What the op tests share (import it as `from support import f64, oversized`: pytest puts tests/ on
sys.path). Fixtures live in conftest.py; plain helpers here, so a reader sees where they come from."""
import numpy as np

from helpers import device, train


def f64(a):
    """A float64 host copy of one array (device or host): what the NumPy references run in for
    finite differences and for the tolerances the tests derive."""
    return device.asnumpy(a).astype(np.float64)


def randn(rng, *shape):
    """Standard normal float32 values of `shape` from the generator `rng`."""
    return rng.standard_normal(shape).astype(np.float32)


def oversized(shape):
    """A C-contiguous float32 device array that CLAIMS `shape` over one float of memory: what the
    size checks see, without allocating gigabytes. Never launch a kernel on it."""
    strides, step = [], 4
    for n in reversed(shape):
        strides.insert(0, step)
        step *= n
    return device.xp.lib.stride_tricks.as_strided(device.zeros(1), shape=tuple(shape), strides=tuple(strides))


def tiny_train_config(tmp_path, **overrides):
    """A training run that takes seconds on the NumPy backend: one layer, 32 channels, 8 steps."""
    base = dict(n_layer=1, n_head=2, n_embd=32, B=4, T=16, steps=8, lr=3e-3, min_lr=3e-4, warmup_steps=2,
                val_every=4, val_batches=2, sample_every=0, checkpoint_every=4, out_dir=str(tmp_path / "run"),
                backend="numpy")
    return train.TrainConfig(**{**base, **overrides})
