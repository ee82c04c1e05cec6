"""Tiny Shakespeare, GPT-2's tokenizer, llm.c token files and the batch loader."""
import numpy as np
import pytest

from helpers.train import data


def test_tokenizer_round_trip():
    enc = data.tokenizer()
    assert enc.encode("Hello world") == [15496, 995]
    text = "First Citizen:\nBefore we proceed any further, hear me speak."
    assert enc.decode(enc.encode(text)) == text


def test_split_sizes_match_llm_c():
    train, val = data.load_tiny_shakespeare()
    assert (len(train), len(val)) == (305_260, 32_768)
    assert val[0] == data.EOT and train.dtype == np.uint16


def test_local_file_argument_and_env(tmp_path, monkeypatch):
    f = tmp_path / "input.txt"
    f.write_text("To be, or not to be.\n\nThat is the question.\n")
    assert data.tiny_shakespeare_path(tmp_path) == f
    assert data.tiny_shakespeare_path(f) == f
    monkeypatch.setenv("GPT2_DATA_DIR", str(tmp_path))
    assert data.tiny_shakespeare_path() == f
    tokens = data.encode_documents(f.read_text())
    assert list(tokens).count(data.EOT) == 2
    with pytest.raises(FileNotFoundError, match="no tiny Shakespeare at"):
        data.tiny_shakespeare_path(tmp_path / "missing")


def test_offline_without_a_copy_says_where_to_put_it(tmp_path, monkeypatch):
    monkeypatch.delenv("GPT2_DATA_DIR", raising=False)
    monkeypatch.setenv("GPT2_CACHE_DIR", str(tmp_path))

    def offline(*a, **k):
        raise OSError("network is unreachable")
    monkeypatch.setattr(data.urllib.request, "urlopen", offline)
    with pytest.raises(FileNotFoundError, match=r"Offline\? Put the file .* at .*tinyshakespeare/input.txt"):
        data.tiny_shakespeare_path()


def test_download_checks_the_hash(tmp_path, monkeypatch):
    import io
    monkeypatch.delenv("GPT2_DATA_DIR", raising=False)
    monkeypatch.setenv("GPT2_CACHE_DIR", str(tmp_path))

    class Response(io.BytesIO):
        headers = {"Content-Length": "5"}
        def __enter__(self): return self
        def __exit__(self, *a): pass
    monkeypatch.setattr(data.urllib.request, "urlopen", lambda *a, **k: Response(b"wrong"))
    with pytest.raises(FileNotFoundError, match="expected 86c4e6aa"):
        data.tiny_shakespeare_path()
    assert not (tmp_path / "data" / "tinyshakespeare" / "input.txt").exists()


def test_download_writes_the_checked_file(tmp_path, monkeypatch):
    import io
    real = data.tiny_shakespeare_path().read_bytes()  # the offline copy (GPT2_DATA_DIR, set by conftest)
    monkeypatch.delenv("GPT2_DATA_DIR", raising=False)
    monkeypatch.setenv("GPT2_CACHE_DIR", str(tmp_path))

    class Response(io.BytesIO):
        headers = {"Content-Length": str(len(real))}
        def __enter__(self): return self
        def __exit__(self, *a): pass
    monkeypatch.setattr(data.urllib.request, "urlopen", lambda *a, **k: Response(real))
    path = data.tiny_shakespeare_path()
    assert path == tmp_path / "data" / "tinyshakespeare" / "input.txt" and path.read_bytes() == real


def test_token_file_round_trip_and_errors(tmp_path):
    tokens = np.array([50256, 1, 2, 65535, 0], np.uint16)
    path = data.write_token_file(tmp_path / "t.bin", tokens)
    header = np.fromfile(path, np.int32, 3)
    assert list(header) == [20240520, 1, 5]
    assert np.array_equal(data.read_token_file(path), tokens)
    raw = path.read_bytes()
    path.write_bytes(raw[:-2])
    with pytest.raises(ValueError, match="header says 5 tokens"):
        data.read_token_file(path)
    path.write_bytes(b"\0" * 1024)
    with pytest.raises(ValueError, match="bad magic number 0"):
        data.read_token_file(path)
    with pytest.raises(ValueError, match=r"ids in \[0, 65536\)"):
        data.write_token_file(tmp_path / "x.bin", [70000])
    with pytest.raises(FileNotFoundError):
        data.read_token_file(tmp_path / "none.bin")


def test_loader_batches_targets_and_determinism():
    tokens = np.arange(1000, dtype=np.uint16)
    a = data.DataLoader(tokens, B=3, T=7, seed=1)
    x, y = a.next_batch()
    assert x.shape == y.shape == (3, 7) and x.dtype == np.int32
    assert np.array_equal(y.ravel()[:-1], x.ravel()[1:])  # targets are the next tokens
    b = data.DataLoader(tokens, B=3, T=7, seed=1)
    c = data.DataLoader(tokens, B=3, T=7, seed=2)
    first = [b.next_batch()[0] for _ in range(60)]  # crosses an epoch boundary (47 chunks)
    again = data.DataLoader(tokens, B=3, T=7, seed=1)
    assert all(np.array_equal(f, again.next_batch()[0]) for f in first)
    assert not all(np.array_equal(f, c.next_batch()[0]) for f in first)


def test_loader_resumes_exactly():
    tokens = np.arange(5000, dtype=np.uint16)
    a = data.DataLoader(tokens, B=2, T=16, seed=3)
    for _ in range(10):
        a.next_batch()
    state = a.state()
    expected = [a.next_batch()[0] for _ in range(200)]
    b = data.DataLoader(tokens, B=2, T=16, seed=3)
    b.load_state(state)
    assert all(np.array_equal(e, b.next_batch()[0]) for e in expected)


def test_loader_refuses_a_dataset_shorter_than_a_batch():
    with pytest.raises(ValueError, match=r"has 50 tokens, fewer than one batch needs \(B\*T\+1 = 65\)"):
        data.DataLoader(np.zeros(50, np.uint16), B=4, T=16)
