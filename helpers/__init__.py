"""The Python library the notebooks import: the kernel runtime (`helpers.device`), checks against
NumPy (`helpers.check`), and, as the curriculum grows, references, the model, training and sampling."""
import os

#: Tiny mode (GPT2_TINY=1, set by the tests): notebooks pick small sizes so CI runs them in seconds.
TINY = os.environ.get("GPT2_TINY", "0") not in ("", "0")

from .checking import check  # noqa: E402


def ceil_div(a: int, b: int) -> int:
    """Blocks needed to cover a items with b per block."""
    return -(-int(a) // int(b))


__all__ = ["TINY", "check", "ceil_div"]
