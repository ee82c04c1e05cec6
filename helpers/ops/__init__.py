"""The operations of GPT-2, one module per op: each holds the NumPy reference (forward and backward,
readable, dtype-generic so finite differences can run it in float64) and the launch wrappers of the
op's kernel versions in `cuda/<op>.cu`.

Conventions (shared by all ops, used by the model in helpers.model.gpt2):
- activations are C-contiguous float32, shaped like llm.c: B (batch), T (time), C (channels),
  NH (heads), V (vocabulary); weights use PyTorch's (out, in) layout;
- backward functions and kernels ACCUMULATE (+=) into every gradient they produce, as llm.c's
  train_gpt2.c does: the caller zeroes gradients first;
- a kernel wrapper takes device arrays (helpers.device), checks the shape assumptions of the
  chosen version with a clear ValueError before launching, and returns nothing;
- `VERSIONS` in each module lists the kernel versions, numbered like llm.c's dev/cuda.
"""

import numpy as np


def check_array(fname: str, argname: str, a, ndim: int, dtype) -> None:
    """A clear ValueError unless `a` has ndim dimensions, the dtype, and C-contiguous memory."""
    if a.ndim != ndim:
        raise ValueError(f"{fname}: `{argname}` must have {ndim} dimensions, got shape {tuple(int(s) for s in a.shape)}")
    if a.dtype != dtype:
        raise ValueError(f"{fname}: `{argname}` must be {np.dtype(dtype).name}, got {a.dtype}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{fname}: `{argname}` must be C-contiguous (xp.ascontiguousarray)")
