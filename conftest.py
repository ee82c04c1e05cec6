"""Test-wide settings: tiny mode for the notebooks, offline data, a private kernel cache."""
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent
SHARED_DATA = ROOT.parent / "shared" / "data"

os.environ.setdefault("GPT2_TINY", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
if (SHARED_DATA / "tiktoken-cache").is_dir():
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(SHARED_DATA / "tiktoken-cache"))
if (SHARED_DATA / "tinyshakespeare" / "input.txt").is_file():
    os.environ.setdefault("GPT2_DATA_DIR", str(SHARED_DATA / "tinyshakespeare"))
