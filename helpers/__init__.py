"""The Python library the notebooks import, in layers that import only downward:

    runtime/   the device, the CPU backend, launch checks, reading .cu files, NVRTC   (layer 1)
    ops/       one module per op: NumPy reference + kernel wrappers                    (layer 2)
    model/     GPT-2 from the ops, its memory layout, checkpoints, the HF oracle       (layer 3)
    train/     token data, the training loop, data parallelism over MPI, loss plots    (layer 4)
    sample/    the sampling widget                                                     (layer 5)
    teaching/  checks, finite differences, benchmarks, the notebooks' shared helpers   (layer 6)

`from helpers import device` is the runtime's device module; `helpers.check` compares with a reference.
"""
import os

#: Tiny mode (GPT2_TINY=1, set by the tests): notebooks pick small sizes so CI runs them in seconds.
TINY = os.environ.get("GPT2_TINY", "0") not in ("", "0")

from .ops.common import ceil_div  # noqa: E402  (after TINY: the layers below read nothing from here)
from .runtime import device  # noqa: E402
from .teaching.checking import check  # noqa: E402

__all__ = ["TINY", "check", "ceil_div", "device"]
