"""What the op tests share (import it as `from support import f64, oversized`: pytest puts tests/ on
sys.path). Fixtures live in conftest.py; plain helpers here, so a reader sees where they come from."""
import numpy as np

from helpers import device


def f64(a):
    """A float64 host copy of one array (device or host): what the NumPy references run in for
    finite differences and for the tolerances the tests derive."""
    return device.asnumpy(a).astype(np.float64)


def oversized(shape):
    """A float32 device array that CLAIMS `shape` (rows of shape[1] floats) over one float of memory:
    what the 32-bit size checks see, without allocating gigabytes. Never launch a kernel on it."""
    base = device.zeros(1)
    strides = (shape[1] * 4, 4) if len(shape) == 2 else (4,)
    return device.xp.lib.stride_tricks.as_strided(base, shape=shape, strides=strides)
