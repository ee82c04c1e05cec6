"""The Python library the notebooks import: kernel runtime, references, checks."""
import os

TINY = os.environ.get("GPT2_TINY", "0") not in ("", "0")
