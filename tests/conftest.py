"""Fixtures the test files share (plain helpers are in support.py)."""
import pytest

from helpers.train import data


@pytest.fixture(scope="session")
def tokens():
    """Tiny Shakespeare as GPT-2 tokens (offline: GPT2_DATA_DIR and TIKTOKEN_CACHE_DIR, see README)."""
    return data.load_tiny_shakespeare()
