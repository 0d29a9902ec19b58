"""The crop cache on disk: one folder per source and crop parameters, written once, durably and
atomically, then opened read-only as memory maps.

Folder ``cache_root/<key>/`` (the key: :class:`~handgan.cachesource.CacheSource`)::

    crops.npy        (N, S, S) float16   normalised depth crops in [-1, 1] (background = +1)
    joints_norm.npy  (N, J, 3) float32   normalised joints (labelled sources only)
    transform.npy    (N, 8)    float64   u px, v px, d mm, cube x, y, z mm, size, rotation deg
    frame_index.npy  (N,)      int64     the reader frame of each row (bad frames can be left out)
    manifest.json                        source, fingerprint, params, bad frames, checksums

Crops are float16 to halve the disk and page cache they take (NYU train at 128 x 128: 2.4 GB
instead of 4.7 GB); below 1 its rounding error is at most 2.4e-4 (0.04 mm for a 300 mm cube).

A build (:mod:`handgan.cachebuild`) writes into a hidden temp folder (:func:`build_folder`),
renamed into place (:func:`install`) only once complete and fsynced: an interrupted build leaves
no cache, and the next build removes a killed build's temp folder.

:func:`cache_problem` accepts a folder only if its manifest matches what is expected and its
arrays pass the checksum test: ``verify="quick"`` checks every array file's size, .npy header and
a sha256 of 64 evenly spaced 64 KiB blocks (a few milliseconds: it catches truncation, replaced
files and most corruption); ``verify="full"`` the sha256 of every byte (about a second per GB).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.lib.format import open_memmap

from handgan.atomic import _fsync_dir, atomic_write
from handgan.camera import Intrinsics
from handgan.errors import HandganError
from handgan.preprocess import CropTransform

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
VERIFY = ("quick", "full")
MANIFEST = "manifest.json"
TRANSFORM_COLUMNS = ("u_px", "v_px", "d_mm", "cube_x_mm", "cube_y_mm", "cube_z_mm", "size",
                     "rotation_deg")
_SAMPLE_BLOCKS, _SAMPLE_BLOCK_BYTES = 64, 1 << 16  # the quick checksum reads 4 MiB per file
_TMP_MARK = ".tmp-"  # temp build folders: .<key>.tmp-<pid>-<random>


@dataclass(frozen=True)
class BadFrame:
    """A frame left out of (or stopping) a cache build: reader index, file and what is wrong."""

    index: int
    file: str
    reason: str


class CropCache:
    """A built cache folder, opened read-only: the arrays of the module docstring (crops and
    joints_norm memory-mapped, so opening is instant and DataLoader workers share the page
    cache), ``manifest``, ``intrinsics`` (the source camera), ``labeled`` (joints_norm is not
    None) and ``bad_frames`` (left out by ``on_bad="skip"``)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.manifest: dict = json.loads((self.path / MANIFEST).read_text())
            arrays = self.manifest["arrays"]
            self.crops: np.ndarray = open_array(self.path / arrays["crops"]["file"], mmap=True)
            self.joints_norm: np.ndarray | None = (
                open_array(self.path / arrays["joints_norm"]["file"], mmap=True)
                if "joints_norm" in arrays else None)
            self.transforms: np.ndarray = open_array(self.path / arrays["transform"]["file"])
            self.frame_index: np.ndarray = open_array(self.path / arrays["frame_index"]["file"])
            self.intrinsics = Intrinsics(**self.manifest["intrinsics"])
            self.bad_frames = [BadFrame(**b) for b in self.manifest["bad_frames"]]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise HandganError(f"{self.path}: not a readable handgan crop cache ({e})") from None
        self.labeled = self.joints_norm is not None
        self.size = int(self.crops.shape[1])
        self.joint_names: tuple[str, ...] = tuple(self.manifest["joint_names"])

    def __len__(self) -> int:
        return len(self.crops)

    def __repr__(self) -> str:
        return (f"CropCache({str(self.path)!r}, n={len(self)}, size={self.size}, "
                f"labeled={self.labeled}, bad_frames={len(self.bad_frames)})")

    def transform(self, i: int) -> CropTransform:
        """The exact :class:`CropTransform` of row ``i`` (rebuilt from its stored parameters)."""
        return transform_from_row(self.transforms[i], self.intrinsics)

    def verify(self, full: bool = False) -> None:
        """A HandganError naming what does not match the manifest (quick or full sha256)."""
        if problem := _array_problem(self.path, self.manifest, full):
            raise HandganError(f"{self.path}: {problem}")


def transform_row(t: CropTransform) -> np.ndarray:
    """A crop transform as one row of transform.npy (``TRANSFORM_COLUMNS``)."""
    return np.concatenate([t.centre_uvd, t.cube_mm, [t.size, t.rotation_deg]])


def transform_from_row(row: np.ndarray, intr: Intrinsics) -> CropTransform:
    return CropTransform(row[0:3], row[3:6], int(row[6]), intr, float(row[7]))


def open_array(path: Path, mmap: bool = False) -> np.ndarray:
    return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)


@contextmanager
def build_folder(cache_root: Path, key: str) -> Iterator[Path]:
    """A new hidden temp folder beside ``cache_root/key`` to build into; removed again if the
    build fails (and, for a killed build, by the next build: :func:`remove_abandoned`)."""
    try:
        cache_root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise HandganError(f"{cache_root}: cannot create the cache folder ({e.strerror or e})"
                           ) from None
    remove_abandoned(cache_root)
    tmp = cache_root / f".{key}{_TMP_MARK}{os.getpid()}-{secrets.token_hex(3)}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def keep_first_rows(path: Path, rows: int) -> None:
    """Shrink a .npy file to its first ``rows`` rows (after skipped frames), in blocks."""
    big = np.load(path, mmap_mode="r")
    part = path.with_name(path.stem + ".part.npy")
    small = open_memmap(part, "w+", big.dtype, (rows,) + big.shape[1:])
    for s in range(0, rows, 4096):
        e = min(s + 4096, rows)
        small[s:e] = big[s:e]
    small.flush()
    del small, big
    os.replace(part, path)


def seal_arrays(folder: Path, names: list[str]) -> dict:
    """fsync the finished arrays ``folder/<name>.npy`` (data on disk before the folder is renamed
    in, so a power cut cannot leave a "valid" cache with holes) and checksum them: their
    manifest ``arrays`` entries."""
    entries = {}
    for name in names:
        path = folder / f"{name}.npy"
        array = np.load(path, mmap_mode="r")
        with open(path, "rb+") as f:
            os.fsync(f.fileno())
        entries[name] = {"file": path.name, "dtype": array.dtype.str, "shape": list(array.shape),
                         "bytes": path.stat().st_size, "sha256": _full_digest(path),
                         "sample_sha256": _sample_digest(path)}
    return entries


def write_manifest(folder: Path, manifest: dict) -> dict:
    """Write ``manifest`` (with its ``arrays`` entries) and one digest of them all
    (``checksum``) durably into a build folder; returns it."""
    # one digest of the whole cache: sha256 over the per-array sha256s, in this order
    digests = "".join(a["sha256"] for a in manifest["arrays"].values())
    manifest = {**manifest, "checksum": hashlib.sha256(digests.encode()).hexdigest()}
    atomic_write(folder / MANIFEST, lambda f: f.write(json.dumps(manifest, indent=1).encode()))
    return manifest


def install(tmp: Path, final: Path, expected: dict) -> None:
    """Rename the finished temp folder into place. A valid cache that appeared meanwhile (another
    process built the same key) wins; an invalid one is replaced."""
    if final.exists():
        if cache_problem(final, expected, full=False) is None:
            shutil.rmtree(tmp)
            return
        shutil.rmtree(final)
    try:
        os.replace(tmp, final)
    except OSError:
        if cache_problem(final, expected, full=False) is not None:
            raise
        shutil.rmtree(tmp)  # lost the race to an identical, valid cache
    _fsync_dir(final.parent)


def remove_abandoned(cache_root: Path) -> None:
    """Delete temp folders of builds whose process is gone (killed mid-build)."""
    for tmp in cache_root.glob(f".*{_TMP_MARK}*"):
        try:
            pid = int(tmp.name.split(_TMP_MARK)[1].split("-")[0])
        except (IndexError, ValueError):
            continue
        if not _pid_alive(pid):
            shutil.rmtree(tmp, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    if os.name != "posix":  # os.kill(pid, 0) would terminate the process on Windows
        return True
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists (or is not ours)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def remove_stale(cache_root: Path, manifest: dict) -> None:
    """Delete caches of the same source and parameters built from older source files: their
    crops no longer match the files, and each can be gigabytes."""
    for folder in cache_root.iterdir():
        if folder.name == manifest["key"] or folder.name.startswith(".") or not folder.is_dir():
            continue
        try:
            other = json.loads((folder / MANIFEST).read_text())
        except (OSError, ValueError):
            continue
        if (isinstance(other, dict) and other.get("source") == manifest["source"]
                and other.get("params") == manifest["params"]):
            log.info("%s: removing the crop cache of older source files", folder)
            shutil.rmtree(folder, ignore_errors=True)


def cache_problem(path: Path, expected: dict, full: bool) -> str | None:
    """None if ``path`` holds a valid cache whose manifest has the ``expected`` entries (key,
    source, fingerprint, params) in this format version, else what is wrong (for the log)."""
    if not (path / MANIFEST).is_file():
        return "no cache yet"
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError) as e:
        return f"unreadable manifest ({e})"
    for name, value in {"version": FORMAT_VERSION, **expected}.items():
        if not isinstance(manifest, dict) or manifest.get(name) != value:
            return f"manifest {name} does not match"
    return _array_problem(path, manifest, full)


def _array_problem(path: Path, manifest: dict, full: bool) -> str | None:
    try:
        for entry in manifest["arrays"].values():
            file = path / entry["file"]
            if not file.is_file():
                return f"{entry['file']} is missing"
            if file.stat().st_size != entry["bytes"]:
                return f"{entry['file']} has {file.stat().st_size} bytes, expected {entry['bytes']}"
            array = open_array(file, mmap=True)  # reads the .npy header only
            if list(array.shape) != entry["shape"] or array.dtype.str != entry["dtype"]:
                return f"{entry['file']} header does not match the manifest"
            del array
            if _sample_digest(file) != entry["sample_sha256"]:
                return f"{entry['file']} checksum (sampled) does not match"
            if full and _full_digest(file) != entry["sha256"]:
                return f"{entry['file']} checksum does not match"
    except (KeyError, TypeError, ValueError, OSError) as e:
        return f"cannot check the arrays ({type(e).__name__}: {e})"
    return None


def _full_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 23):
            digest.update(block)
    return digest.hexdigest()


def _sample_digest(path: Path) -> str:
    """sha256 of the file size and 64 evenly spaced 64 KiB blocks (the whole file up to 4 MiB)."""
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        if size <= _SAMPLE_BLOCKS * _SAMPLE_BLOCK_BYTES:
            digest.update(f.read())
        else:
            last = size - _SAMPLE_BLOCK_BYTES
            for offset in np.linspace(0, last, _SAMPLE_BLOCKS, dtype=np.int64):
                f.seek(int(offset))
                digest.update(f.read(_SAMPLE_BLOCK_BYTES))
    return digest.hexdigest()

