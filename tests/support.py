"""What the op tests share (import it as `from support import f64, oversized`: pytest puts tests/ on
sys.path). Fixtures live in conftest.py; plain helpers here, so a reader sees where they come from."""
import ml_dtypes
import numpy as np

import helpers
from helpers import device, train

BF16 = np.dtype(ml_dtypes.bfloat16)
U_BF16 = 2.0**-8     # bf16's unit roundoff: 8 significant bits, round to nearest


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


def check_bf16(name, got, ref, atol, rtol):
    """A bf16 output against the float64 reference `ref` computed on the same (bf16) inputs.

    The kernel computes y32 in float32, within E = atol + rtol*|ref| of ref (the float32 versions'
    bound), and stores bf16(y32), rounded once to nearest: |bf16(y32) - y32| <= U_BF16*|y32| <=
    U_BF16*(|ref| + E). So |out - ref| <= (1 + U_BF16)*atol + (U_BF16 + (1 + U_BF16)*rtol)*|ref|.
    Tighter, as rounding is monotone: bf16(ref - E) <= out <= bf16(ref + E) (through float32, which
    is the same rounding for the float32 y32), i.e. out is one of the bf16 values y32 could round to."""
    helpers.check(name, got, ref, atol=(1 + U_BF16) * atol, rtol=U_BF16 + (1 + U_BF16) * rtol)
    out = device.asnumpy(got).astype(np.float64)
    err = atol + rtol * np.abs(ref)
    low, high = ((ref + sign * err).astype(np.float32).astype(BF16).astype(np.float64) for sign in (-1, 1))
    assert np.all((low <= out) & (out <= high)), f"{name}: outside the bf16 roundings of ref -+ E"
