"""Atomic file writes: a reader (or a crash) sees the old file or the new one, never a part."""
from __future__ import annotations

import os
import re
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

# The temp files below: ".NAME.PID.HEX.tmp" (a kill mid-write leaves one; see train's clean-up).
ATOMIC_TMP = re.compile(r"\..+\.\d+\.[0-9a-f]{8}\.tmp")


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], Any], durable: bool = True) -> None:
    """Call ``write(file)`` on a temp file beside ``path``, then ``os.replace`` it over ``path``.

    With ``durable`` (checkpoints, manifests, labels) the data and the rename are fsynced, so they
    survive a power cut too; dataset frames skip that (thousands of small files, regenerable).
    On any failure (KeyboardInterrupt included) the temp file is removed and ``path`` is left
    as it was. The temp file is created with ``open(..., "xb")``, not mkstemp, so the result
    gets the usual umask permissions rather than mkstemp's 0600.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as f:
            write(f)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        _fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
