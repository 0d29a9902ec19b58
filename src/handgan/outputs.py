"""Output paths are checked before any work: no command writes over its own input, over a
checkpoint, or where a file stands in for a folder (or a folder for a file).

    check_outputs([Path(onnx)], inputs=[checkpoint])        # export
    check_output_folder(out)                                 # evaluate, generate, ...
"""
from __future__ import annotations

import os
import zipfile
from collections.abc import Iterable
from pathlib import Path

from handgan.errors import HandganError


def is_checkpoint(path: Path) -> bool:
    """A torch.save file (a zip archive holding ``data.pkl``)."""
    try:
        with open(path, "rb") as f:
            if f.read(4) != b"PK\x03\x04":
                return False
        with zipfile.ZipFile(path) as z:
            return any(n == "data.pkl" or n.endswith("/data.pkl") for n in z.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def _same(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


def check_output_folder(folder: str | os.PathLike, option: str = "--out",
                        for_file: Path | None = None) -> Path:
    """``folder`` if it is a folder or can be made one (an existing file cannot); ``for_file``:
    the output file that would be written there (named in the error)."""
    folder = Path(folder)
    for p in (folder, *folder.parents):
        if p.exists():
            if not p.is_dir():
                raise HandganError(f"{p}: is a file, not a folder ({option} names an output "
                                   "folder)" if for_file is None else
                                   f"{for_file}: {p} is a file, not a folder")
            break
    return folder


def check_outputs(outputs: Iterable[str | os.PathLike],
                  inputs: Iterable[str | os.PathLike] = (), option: str = "--out") -> None:
    """Refuse (one line) an output that is a folder, an input of the command, or a checkpoint;
    nothing has been written when this raises."""
    inputs = [Path(i) for i in inputs]
    for out in map(Path, outputs):
        check_output_folder(out.parent, option, for_file=out)
        if not out.exists():
            continue
        if out.is_dir():
            raise HandganError(f"{out}: is a folder ({option} names an output file)")
        for i in inputs:
            if i.exists() and _same(out, i):
                raise HandganError(f"{out}: is also an input of this command; it would be "
                                   f"written over (choose another {option})")
        if is_checkpoint(out):
            raise HandganError(f"{out}: is a checkpoint; handgan never writes over one "
                               f"(choose another {option})")
