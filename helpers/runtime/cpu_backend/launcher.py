"""The client of launcher.cpp: a small helper process whose forks run the launches (see its top
comment for why and for the protocol). Started on first use, from any thread; replaced by a new one
(with a new arena) after any exchange that did not finish; it exits when this process exits."""
from __future__ import annotations

import ctypes
import hashlib
import os
import select
import signal
import socket
import subprocess
import tempfile
from pathlib import Path

from ..errors import CompileError, KernelError
from . import cache
from . import abi

SOURCE = Path(__file__).with_name("launcher.cpp")
ABI = Path(__file__).with_name("gpt2cpu") / "abi.h"
MAGIC = abi.kLauncherMagic
Request, Reply = abi.LauncherRequest, abi.LauncherReply
REPLY_PID, REPLY_STATUS = abi.REPLY_PID, abi.REPLY_STATUS


class LauncherLost(KernelError):
    """The launcher process went away or answered out of step; the next launch starts a new one."""


def build(compiler: str, out_dir: Path) -> Path:
    """Compile launcher.cpp once (cached by its content and the compiler; rebuilt if tampered with)."""
    digest = hashlib.sha256(SOURCE.read_bytes() + ABI.read_bytes() + compiler.encode()).hexdigest()[:16]
    exe = out_dir / f"launcher-{digest}"
    if cache.trusted(exe):
        return exe
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        tmp_exe = Path(tmp) / exe.name
        proc = subprocess.run([compiler, "-std=c++17", "-O2", f"-I{SOURCE.parent}", str(SOURCE), "-o", str(tmp_exe),
                               "-ldl"], capture_output=True, text=True)
        if proc.returncode != 0:
            raise CompileError(f"the CPU backend's launcher does not compile:\n{proc.stderr[-3000:]}")
        cache.seal(tmp_exe, exe)
    return exe


class Launcher:
    def __init__(self, exe: Path, arena):
        self.arena = arena
        ours, theirs = socket.socketpair()
        self.sock = ours
        # its own process group: killing the group also kills a launch it is running
        self.proc = subprocess.Popen([str(exe), str(theirs.fileno()), str(arena.fd), str(arena.SIZE)],
                                     pass_fds=(theirs.fileno(), arena.fd), stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        theirs.close()
        self.pid = os.getpid()
        self.request = Request()
        self.seq = 0

    def alive(self) -> bool:
        return self.proc.poll() is None and self.pid == os.getpid()

    def close(self):
        """Kill the launcher and anything it runs (idempotent, safe in any state)."""
        try:
            self.sock.close()
        except OSError:
            pass
        if self.pid != os.getpid():
            return  # a forked copy of this object: the process belongs to the parent
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError, OSError):
            pass
        try:
            self.proc.wait(timeout=5)
        except Exception:
            pass

    def _reply(self, kind: int, timeout: float | None) -> int | None:
        """The value of the next reply, which must be of `kind` for the current request; None on timeout."""
        data = b""
        size = ctypes.sizeof(Reply)
        while len(data) < size:
            if timeout is not None and not select.select([self.sock], [], [], timeout)[0]:
                return None
            try:
                chunk = self.sock.recv(size - len(data))
            except OSError as e:
                raise LauncherLost(f"the CPU backend's launcher process went away ({e}); the next launch starts "
                                   f"a new one") from None
            if not chunk:
                raise LauncherLost("the CPU backend's launcher process died; the next launch starts a new one")
            data += chunk
        r = Reply.from_buffer_copy(data)
        if r.seq != self.seq or r.kind != kind:
            raise LauncherLost(f"the CPU backend's launcher answered out of step (reply {r.seq}/{r.kind} to request "
                               f"{self.seq}/{kind}); it was replaced, the next launch starts a new one")
        return r.value

    def run(self, library: Path, cfg, pool_regions: int, timeout: float, kernel_name: str) -> int:
        """Run one launch (its tables already in the arena) in a fork of the launcher; returns its wait
        status. Any exception out of here (an interrupt included) leaves the exchange unfinished: the
        caller must close this launcher."""
        r = self.request
        self.seq += 1
        r.magic, r.quit, r.seq = MAGIC, 0, self.seq
        r.library = str(library).encode()
        r.cfg = cfg
        r.pool_regions = pool_regions
        try:
            self.sock.sendall(bytes(r))
        except OSError as e:
            raise LauncherLost(f"the CPU backend's launcher process went away ({e}); the next launch starts a new "
                               f"one") from None
        pid = self._reply(REPLY_PID, None)
        if pid < 0:
            raise KernelError(f"kernel `{kernel_name}`: the launcher could not start it: {os.strerror(-pid)}")
        status = self._reply(REPLY_STATUS, timeout)
        if status is None:
            os.kill(pid, signal.SIGKILL)
            self._reply(REPLY_STATUS, 10.0)
            raise LaunchTimeout(kernel_name, timeout)
        return int(status)


class LaunchTimeout(KernelError):
    """A launch that ran past its timeout and was stopped."""

    def __init__(self, kernel_name: str, timeout: float):
        self.kernel_name, self.timeout = kernel_name, timeout
        super().__init__(
            f"kernel `{kernel_name}` ran past the timeout of {timeout:g} s and was stopped: an endless loop "
            f"(a while loop whose condition never changes?), or a launch too large for the CPU backend. "
            f"helpers.device.set_timeout(seconds) raises the limit.")
