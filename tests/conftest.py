"""Fixtures the test files share (plain helpers are in support.py)."""
import numpy as np
import pytest

from helpers.train import data


@pytest.fixture(scope="session")
def tokens():
    """Tiny Shakespeare as GPT-2 tokens (offline: GPT2_DATA_DIR and TIKTOKEN_CACHE_DIR, see README)."""
    return data.load_tiny_shakespeare()


@pytest.fixture
def rng():
    """A fresh, seeded generator per test: each test draws the same numbers whatever runs before it."""
    return np.random.default_rng(1234)
