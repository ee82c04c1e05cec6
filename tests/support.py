"""What the op tests share (import it as `from support import f64, oversized`: pytest puts tests/ on
sys.path). Fixtures live in conftest.py; plain helpers here, so a reader sees where they come from."""
import numpy as np

from helpers import device


def f64(a):
    """A float64 host copy of one array (device or host): what the NumPy references run in for
    finite differences and for the tolerances the tests derive."""
    return device.asnumpy(a).astype(np.float64)


def oversized(shape):
    """A C-contiguous float32 device array that CLAIMS `shape` over one float of memory: what the
    size checks see, without allocating gigabytes. Never launch a kernel on it."""
    strides, step = [], 4
    for n in reversed(shape):
        strides.insert(0, step)
        step *= n
    return device.xp.lib.stride_tricks.as_strided(device.zeros(1), shape=tuple(shape), strides=tuple(strides))
