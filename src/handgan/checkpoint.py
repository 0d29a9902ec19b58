"""Checkpoints: atomic writes, safe reads, a format version, and exact RNG state for resume.

A checkpoint is one ``torch.save``d dict of plain data only (tensors, numbers, strings, None, and
lists / tuples / dicts of those): what ``torch.load(weights_only=True)`` reads, so loading a
checkpoint never runs code from the file. Writes go through :func:`handgan.atomic.atomic_write`:
a crash or kill mid-write leaves the previous checkpoint as it was (and at worst a hidden
``.NAME.*.tmp`` file, safe to delete).
"""
from __future__ import annotations

import os
import pickle
import random
import re
import secrets
import shutil
import warnings
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from handgan import __version__
from handgan.atomic import _fsync_dir, atomic_write  # noqa: F401  (atomic_write re-exported)
from handgan.errors import HandganError

FORMAT_VERSION = 1  # bump when the layout of the saved dict changes incompatibly
# What torch.load(weights_only=True) reads back (checked before each save). Exact types: numpy
# scalars subclass float and int but are refused on load, as is a defaultdict.
_LEAVES = (int, float, bool, str, bytes, type(None), torch.dtype, torch.device)
_MAPPINGS = (dict, OrderedDict)
_SEQUENCES = (list, tuple, torch.Size)


def save_checkpoint(path: str | os.PathLike, state: Mapping[str, Any]) -> None:
    """Write ``state`` (plain data only, else a TypeError naming the key before the file is
    touched) to ``path`` atomically, stamped with ``format_version`` and ``handgan_version``."""
    path = Path(path)
    state = {**state, "format_version": FORMAT_VERSION, "handgan_version": __version__}
    _check_plain(state, "state")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: _torch_save(state, f, path))


def _torch_save(state: Mapping[str, Any], f, path: Path) -> None:
    """torch.save, with a failed write (disk full) raised as that OSError: torch reports it
    as "unexpected pos ..." and loses the cause."""
    sink = _WriteErrors(f)
    try:
        torch.save(state, sink)
    except RuntimeError:
        if sink.error is not None:
            raise OSError(sink.error.errno, sink.error.strerror, str(path)) from None
        raise


class _WriteErrors:
    """A file wrapper that remembers the OSError of a failed write."""

    def __init__(self, f):
        self._f, self.error = f, None

    def write(self, data) -> int:
        try:
            return self._f.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self._f.flush()


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`, with ``weights_only=True``; a
    one-line HandganError naming the file when it is missing, not a torch checkpoint, would run
    code when unpickled, or has another ``format_version``."""
    path = Path(path)
    if path.is_dir():
        hint = f" (did you mean {path / 'last.pt'}?)" if (path / "last.pt").is_file() else ""
        raise HandganError(f"{path}: is a folder, not a checkpoint file{hint}")
    if not path.is_file():
        raise HandganError(f"{path}: no such checkpoint file")
    _check_container(path)
    try:
        with warnings.catch_warnings():  # a plain pickle (protocol > 2) warns before it fails
            warnings.filterwarnings("ignore", message=".*pickle protocol", category=UserWarning)
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only load failed" not in str(e).lower():
            raise HandganError(f"{path}: not a torch checkpoint ({_one_line(e)})") from e
        found = re.search(r"GLOBAL (\S+)", str(e))
        names = f"; it names {found.group(1)}" if found else ""
        raise HandganError(f"{path}: refused: not a plain-weights checkpoint (it would run code "
                           f"when loaded{names})") from None
    except PermissionError:
        raise HandganError(f"{path}: cannot read checkpoint (permission denied)") from None
    except Exception as e:  # torch.load's many ways of saying "not a checkpoint"
        raise HandganError(f"{path}: not a torch checkpoint, or corrupt or truncated "
                           f"({type(e).__name__}: {_one_line(e)})") from e
    if not isinstance(ckpt, dict):
        raise HandganError(f"{path}: not a handgan checkpoint (holds a {type(ckpt).__name__}, "
                           "not a dict)")
    version = ckpt.get("format_version")
    if version is None:
        raise HandganError(f"{path}: not a handgan checkpoint (no format_version)")
    if version != FORMAT_VERSION:
        raise HandganError(f"{path}: checkpoint format {version}, this handgan reads "
                           f"{FORMAT_VERSION}")
    return ckpt


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A run folder -> its ``checkpoints/best.pt`` (else ``last.pt``); a file -> itself (what
    ``handgan evaluate``, ``predict``, ``generate`` and ``export`` take as a checkpoint)."""
    path = Path(path)
    if path.is_dir():
        for folder in (path / "checkpoints", path):
            for name in ("best.pt", "last.pt"):
                if (folder / name).is_file():
                    return folder / name
        raise HandganError(f"{path}: no checkpoints/best.pt or last.pt (not a run folder?)")
    if not path.exists():
        raise HandganError(f"{path}: no such run folder or checkpoint")
    return path


def _check_container(path: Path) -> None:
    """Say what a file is when it is not a torch.save zip archive (torch.load's own message for
    random bytes is "would run code", which is wrong)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError as e:
        raise HandganError(f"{path}: cannot read checkpoint ({e.strerror or e})") from None
    if head.startswith(b"PK\x03\x04") or head.startswith(b"\x80"):  # zip, or legacy pickle
        return
    if not head:
        raise HandganError(f"{path}: not a torch checkpoint (an empty file)")
    if head[:1] == b"\x08" and (b"pytorch" in head or b"onnx" in head.lower()):
        raise HandganError(f"{path}: an ONNX model, not a checkpoint (give the .pt file it was "
                           "exported from)")
    if head.startswith(b"\x89PNG"):
        raise HandganError(f"{path}: a PNG image, not a checkpoint")
    try:
        what = "a text file" if head.decode("utf-8").isprintable() or b"\n" in head else None
    except UnicodeDecodeError:
        what = None
    what = what or f"not a zip archive; it starts with bytes {head[:8].hex(' ')}"
    raise HandganError(f"{path}: not a torch checkpoint ({what})")


def check_networks(ckpt: Mapping[str, Any], path: str | os.PathLike,
                   keys: tuple[str, ...] = ("generator", "discriminator")) -> None:
    """A one-line HandganError unless the checkpoint holds its config and finite ``keys``
    weights (NaN weights would give NaN joints, and NaN is not valid JSON)."""
    for key in ("config", *keys):
        if not isinstance(ckpt.get(key), dict):
            raise HandganError(f"{path}: not a training checkpoint (no {key!r} dict)")
    for key in keys:
        for name, t in ckpt[key].items():
            if isinstance(t, torch.Tensor) and t.is_floating_point() and not t.isfinite().all():
                raise HandganError(f"{path}: the {key} weights hold NaN or inf ({name}); the "
                                   "run diverged, use an earlier checkpoint")


def _check_plain(value: Any, where: str) -> None:
    """TypeError if ``value`` holds anything torch.load(weights_only=True) would refuse."""
    if type(value) in _MAPPINGS:
        for k, v in value.items():
            if type(k) not in (str, int):
                raise TypeError(f"{where} has a key of type {type(k).__name__}: use str or int")
            _check_plain(v, f"{where}[{k!r}]")
    elif type(value) in _SEQUENCES:
        for i, v in enumerate(value):
            _check_plain(v, f"{where}[{i}]")
    elif not (type(value) in _LEAVES or isinstance(value, torch.Tensor)):
        raise TypeError(f"{where} is a {type(value).__module__}.{type(value).__qualname__}, which "
                        "torch.load(weights_only=True) cannot read back; store a tensor, number, "
                        "string or list instead")


def _one_line(e: BaseException) -> str:
    """The first sentence of an exception's message, on one line."""
    text = " ".join(str(e).split()).split(". ")[0]
    return (text[:160] + "...") if len(text) > 160 else text or "empty or unreadable file"


def capture_rng_state(numpy_generators: Mapping[str, np.random.Generator] | None = None
                      ) -> dict[str, Any]:
    """The state of python ``random``, numpy's global RNG, torch's CPU and CUDA generators and
    the named numpy ``Generator`` objects, as plain data (round-trips through a checkpoint)."""
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
        "numpy": _plain_numpy(np.random.get_state(legacy=False)),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if numpy_generators:
        state["numpy_generators"] = {name: _plain_numpy(g.bit_generator.state)
                                     for name, g in numpy_generators.items()}
    return state


def restore_rng_state(state: Mapping[str, Any],
                      numpy_generators: Mapping[str, np.random.Generator] | None = None) -> None:
    """Put back what :func:`capture_rng_state` captured: CUDA states for the devices present,
    ``numpy_generators`` by name (a KeyError if one was not captured)."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss_next"]))
    legacy = dict(state["numpy"])
    legacy["state"] = {**legacy["state"], "key": np.asarray(legacy["state"]["key"], np.uint32)}
    np.random.set_state(legacy)
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        for device, cuda_state in enumerate(state["cuda"][:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state.cpu(), device)
    for name, g in (numpy_generators or {}).items():
        g.bit_generator.state = state["numpy_generators"][name]  # numpy converts lists back


def _plain_numpy(value: Any) -> Any:
    """A numpy RNG state dict with its arrays and numpy scalars as lists and Python numbers."""
    if isinstance(value, dict):
        return {k: _plain_numpy(v) for k, v in value.items()}
    return value.tolist() if isinstance(value, (np.ndarray, np.generic)) else value


class CheckpointManager:
    """``RUN/last.pt`` after every save, and ``RUN/best.pt`` for the best one so far: a hard link
    to the ``last.pt`` just written, swapped in atomically (no second copy on disk; the next save
    replaces ``last.pt`` with a new file), or where there are no hard links an atomic copy."""

    def __init__(self, run_dir: str | os.PathLike):
        self.run_dir = Path(run_dir)
        self.last_path = self.run_dir / "last.pt"
        self.best_path = self.run_dir / "best.pt"

    def latest(self) -> Path | None:
        return self.last_path if self.last_path.is_file() else None

    def best(self) -> Path | None:
        return self.best_path if self.best_path.is_file() else None

    def save(self, state: Mapping[str, Any], is_best: bool) -> Path:
        """Write ``last.pt`` (and with ``is_best`` make ``best.pt`` the same); returns last.pt."""
        save_checkpoint(self.last_path, state)
        if is_best:
            tmp = self.run_dir / f".best.pt.{os.getpid()}.{secrets.token_hex(4)}.tmp"
            try:
                os.link(self.last_path, tmp)
                os.replace(tmp, self.best_path)
            except OSError:  # no hard links here (some network / FAT file systems): copy instead
                tmp.unlink(missing_ok=True)
                with open(self.last_path, "rb") as src:
                    atomic_write(self.best_path, lambda f: shutil.copyfileobj(src, f))
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            else:
                _fsync_dir(self.run_dir)
        return self.last_path
