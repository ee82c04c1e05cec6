"""The compiled-kernel cache: where the CPU backend keeps the modules and the launcher it builds.

A binary in the cache is loaded and run by name, so the cache must be as private as the user's own
files: its directories are created 0700, a directory or file that another user owns or that group or
others can write is refused with a clear error, and each binary is tied to the SHA-256 of its bytes,
recorded when it was built: a binary whose bytes no longer match (changed, replaced, torn by a full
disk) is rebuilt, never run.
"""
from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

from ..errors import CompileError


def root() -> Path:
    d = os.environ.get("GPT2_CACHE_DIR")
    return Path(d) if d else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "gpt2-cuda-notebooks"


def _refuse_unsafe(path: Path) -> None:
    if not hasattr(os, "getuid"):
        return
    st = path.stat()
    fix = f"make it private (chmod 700 {path}) or set GPT2_CACHE_DIR to a directory of your own"
    if st.st_uid != os.getuid():
        raise CompileError(f"the kernel cache {path} belongs to another user (uid {st.st_uid}): a binary placed "
                           f"there would run as you. Use a directory of your own: set GPT2_CACHE_DIR")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise CompileError(f"the kernel cache {path} is writable by other users (mode {stat.S_IMODE(st.st_mode):o}): "
                           f"a binary planted there would run as you; {fix}")


def directory() -> Path:
    """The CPU backend's cache directory (GPT2_CACHE_DIR/cpu), created private, checked safe."""
    base = root()
    d = base / "cpu"
    for p in (base, d):
        if not p.exists():
            try:
                p.mkdir(mode=0o700, parents=True)
            except FileExistsError:
                pass
            os.chmod(p, 0o700)
        _refuse_unsafe(p)
    return d


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def seal(built: Path, final: Path) -> None:
    """Move a freshly built binary to `final` and record its hash (both atomically)."""
    digest = _digest(built)
    os.chmod(built, 0o700)
    os.replace(built, final)
    tmp = final.with_name(final.name + ".sha256.tmp")
    tmp.write_text(digest)
    os.replace(tmp, final.with_name(final.name + ".sha256"))


def trusted(path: Path) -> bool:
    """True if `path` is a binary this user built: its own, not writable by others, its hash as recorded."""
    record = path.with_name(path.name + ".sha256")
    if not (path.is_file() and record.is_file()):
        return False
    for p in (path, record):
        st = p.stat()
        if (hasattr(os, "getuid") and st.st_uid != os.getuid()) or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            return False
    return record.read_text().strip() == _digest(path)
