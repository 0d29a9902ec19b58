"""One writer per output folder: ``FOLDER/.handgan.lock`` names the process that owns it.

    with FolderLock(run_dir):        # HandganError if another live process holds it
        ...write the run...

The lock is an advisory ``flock`` on the file, so the kernel drops it when its owner dies: a lock
file left by a killed run is stale by construction and the next run takes it over. Where
``fcntl`` is missing (Windows) the file is created exclusively and a lock whose pid no longer
runs is taken over instead.
"""
from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path

from handgan.errors import HandganError

try:
    import fcntl
except ImportError:  # pragma: no cover (Windows)
    fcntl = None

LOCK_NAME = ".handgan.lock"
_HELD: set[int] = set()  # this process's lock fds


def _close_in_child() -> None:
    """A forked child (a DataLoader or synth worker) must not keep its parent's lock alive: a
    flock lasts while any process holds the file open, so a killed run's orphaned worker would
    keep the folder locked."""
    for fd in _HELD:
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_in_child)


class FolderLock:
    """Hold ``folder/.handgan.lock`` (the folder is created) until :meth:`release`."""

    def __init__(self, folder: str | os.PathLike, what: str = "run folder"):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.what = what
        self._fd: int | None = None

    def __enter__(self) -> FolderLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._fd = self._flock() if fcntl is not None else self._exclusive()
        except OSError as e:
            raise HandganError(f"{e.filename or self.path}: cannot write here "
                               f"({e.strerror or e})") from None
        _HELD.add(self._fd)
        os.ftruncate(self._fd, 0)
        os.write(self._fd, f"{os.getpid()} {socket.gethostname()}\n".encode())

    def release(self) -> None:
        if self._fd is None:
            return
        self.path.unlink(missing_ok=True)  # while still holding it: nobody can take a dead file
        _HELD.discard(self._fd)
        os.close(self._fd)
        self._fd = None

    def _busy(self, owner: str) -> HandganError:
        pid, _, host = owner.strip().partition(" ")
        who = f"pid {pid}" + (f" on {host}" if host and host != socket.gethostname() else "")
        return HandganError(f"{self.folder}: {self.what} in use by another handgan process "
                            f"({who}; lock {self.path}); wait for it to end or choose another "
                            "output folder")

    def _flock(self) -> int:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = os.read(fd, 200).decode("utf-8", "replace")
                os.close(fd)
                raise self._busy(owner) from None
            # The owner before us may have unlinked the file between our open and our flock:
            # then we hold a lock nobody else can see; start again on the path's current file.
            with contextlib.suppress(FileNotFoundError):
                if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                    return fd
            os.close(fd)

    def _exclusive(self) -> int:  # pragma: no cover (no fcntl)
        while True:
            try:
                return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                owner = self.path.read_text(errors="replace")
                if _alive(owner.split(" ")[0]):
                    raise self._busy(owner) from None
                self.path.unlink(missing_ok=True)  # stale: its owner is gone


def _alive(pid_text: str) -> bool:  # pragma: no cover (no fcntl)
    try:
        os.kill(int(pid_text), 0)
    except (ValueError, ProcessLookupError):
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True
