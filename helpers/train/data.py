"""Data for training: tiny Shakespeare, GPT-2's tokenizer, llm.c's token files, and a batch loader.

Where tiny Shakespeare comes from, in order: a path given as an argument (the file, or a directory
holding `input.txt`), the environment variable GPT2_DATA_DIR (likewise), the cache directory
(~/.cache/gpt2-cuda-notebooks/data), else a download (progress bar, sha256 checked, written
atomically). Tokens follow llm.c's dev/data/tinyshakespeare.py: every blank-line-separated speech
is a document starting with <|endoftext|>, and the first 32,768 tokens are the validation split.
"""
from __future__ import annotations

import hashlib
import os
import urllib.request
from pathlib import Path

import numpy as np

from ..model.checkpoints import atomic_write, read_llmc_header

TINY_SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
TINY_SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
VAL_TOKENS = 32_768
TOKEN_MAGIC, TOKEN_VERSION = 20240520, 1
EOT = 50256  # <|endoftext|>


def data_dir() -> Path:
    d = os.environ.get("GPT2_CACHE_DIR")
    base = Path(d) if d else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "gpt2-cuda-notebooks"
    return base / "data"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _candidate(p) -> Path:
    p = Path(p)
    return p / "input.txt" if p.is_dir() else p


def tiny_shakespeare_path(path=None, download: bool = True) -> Path:
    """The local tiny Shakespeare file, found or downloaded (see the module docstring)."""
    for source in (path, os.environ.get("GPT2_DATA_DIR")):
        if source:
            f = _candidate(source)
            if not f.is_file():
                raise FileNotFoundError(f"no tiny Shakespeare at {f} (given as {'argument' if source is path else 'GPT2_DATA_DIR'})")
            return f
    cached = data_dir() / "tinyshakespeare" / "input.txt"
    if cached.is_file() and _sha256(cached) == TINY_SHAKESPEARE_SHA256:
        return cached
    if not download:
        raise FileNotFoundError(f"tiny Shakespeare is not in {cached}")
    try:
        _download(TINY_SHAKESPEARE_URL, cached, TINY_SHAKESPEARE_SHA256)
    except OSError as e:
        raise FileNotFoundError(
            f"could not download tiny Shakespeare ({e}). Offline? Put the file (input.txt from the char-rnn "
            f"repository, {TINY_SHAKESPEARE_URL}) at {cached}, or point GPT2_DATA_DIR at a directory holding it") from e
    return cached


def _download(url: str, dest: Path, sha256: str):
    from tqdm.auto import tqdm
    with urllib.request.urlopen(url, timeout=30) as response:
        total = int(response.headers.get("Content-Length") or 0)
        chunks = []
        with tqdm(total=total or None, unit="B", unit_scale=True, desc=dest.name) as bar:
            while chunk := response.read(1 << 16):
                chunks.append(chunk)
                bar.update(len(chunk))
    data = b"".join(chunks)
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise OSError(f"{url} has sha256 {digest}, expected {sha256}: a different or corrupted file")
    atomic_write(dest, lambda p: p.write_bytes(data))


def tokenizer():
    """GPT-2's BPE from tiktoken. Offline it needs its cache (TIKTOKEN_CACHE_DIR)."""
    import tiktoken
    try:
        return tiktoken.get_encoding("gpt2")
    except Exception as e:
        raise RuntimeError(f"could not load GPT-2's tokenizer ({type(e).__name__}: {e}). Offline, point "
                           f"TIKTOKEN_CACHE_DIR at a directory holding tiktoken's cached gpt2 files") from e


def encode_documents(text: str) -> np.ndarray:
    """llm.c's tokenisation of tiny Shakespeare: <|endoftext|> before every speech."""
    enc = tokenizer()
    text = "<|endoftext|>" + text.replace("\n\n", "\n\n<|endoftext|>")
    return np.array(enc.encode(text, allowed_special={"<|endoftext|>"}), dtype=np.uint16)


def load_tiny_shakespeare(path=None) -> tuple[np.ndarray, np.ndarray]:
    """(train tokens, val tokens) as uint16; val is the first 32,768 tokens, as in llm.c."""
    tokens = encode_documents(tiny_shakespeare_path(path).read_text(encoding="utf-8"))
    return tokens[VAL_TOKENS:], tokens[:VAL_TOKENS]


# ------------------------------------------------------------------------------------------------
# llm.c token files: 256 int32 header [20240520, 1, ntokens, 0...], then uint16 tokens
# ------------------------------------------------------------------------------------------------
def write_token_file(path, tokens) -> Path:
    tokens = np.asarray(tokens)
    if tokens.ndim != 1 or (tokens.size and (tokens.min() < 0 or tokens.max() >= 2**16)):
        raise ValueError("token files hold a 1-D sequence of ids in [0, 65536)")
    header = np.zeros(256, np.int32)
    header[:3] = [TOKEN_MAGIC, TOKEN_VERSION, tokens.size]
    return atomic_write(Path(path), lambda p: p.write_bytes(header.tobytes() + tokens.astype(np.uint16).tobytes()))


def read_token_file(path) -> np.ndarray:
    header, data = read_llmc_header(path, TOKEN_MAGIC, {TOKEN_VERSION: "uint16 tokens"}, "llm.c token file")
    n = int(header[2])
    if len(data) != 1024 + 2 * n:
        raise ValueError(f"{path}: header says {n} tokens ({2 * n} bytes) but {len(data) - 1024} bytes follow it")
    return np.frombuffer(data, np.uint16, offset=1024).copy()


# ------------------------------------------------------------------------------------------------
# Batches
# ------------------------------------------------------------------------------------------------
class DataLoader:
    """(B, T) inputs and next-token targets from a token sequence.

    The sequence is cut into chunks of B*T+1 tokens at multiples of B*T (llm.c's loader); every epoch
    visits all chunks once, in an order shuffled by `seed` (or in order with shuffle=False). The
    position is part of `state()`, so a resumed run continues with exactly the next batch."""

    def __init__(self, tokens, B: int, T: int, seed: int = 0, shuffle: bool = True):
        self.tokens = np.asarray(tokens)
        if B < 1 or T < 1:
            raise ValueError(f"B and T must be positive, got B={B}, T={T}")
        if self.tokens.size < B * T + 1:
            raise ValueError(f"the dataset has {self.tokens.size} tokens, fewer than one batch needs "
                             f"(B*T+1 = {B * T + 1}); use a smaller B or T, or more data")
        self.B, self.T, self.seed, self.shuffle = B, T, seed, shuffle
        self.n_chunks = (self.tokens.size - 1) // (B * T)
        self.epoch, self.index = 0, 0
        self._order = self._epoch_order()

    def _epoch_order(self):
        if not self.shuffle:
            return np.arange(self.n_chunks)
        return np.random.default_rng([self.seed, self.epoch]).permutation(self.n_chunks)

    def next_batch(self) -> tuple[np.ndarray, np.ndarray]:
        if self.index >= self.n_chunks:
            self.epoch, self.index = self.epoch + 1, 0
            self._order = self._epoch_order()
        start = int(self._order[self.index]) * self.B * self.T
        self.index += 1
        chunk = self.tokens[start:start + self.B * self.T + 1].astype(np.int32)
        return chunk[:-1].reshape(self.B, self.T), chunk[1:].reshape(self.B, self.T)

    def __iter__(self):
        while True:
            yield self.next_batch()

    def state(self) -> dict:
        return {"epoch": self.epoch, "index": self.index, "seed": self.seed}

    def load_state(self, state: dict):
        self.seed, self.epoch, self.index = int(state["seed"]), int(state["epoch"]), int(state["index"])
        self._order = self._epoch_order()
