"""Crop cache and semi-supervised split: every frame is preprocessed once into memory-mapped .npy
arrays, which are then served as labelled and unlabelled torch datasets.

Cache folder ``cache_root/<key>/``, where key = hash(source identity + source file fingerprint +
crop parameters + cache format version)::

    crops.npy        (N, S, S) float16   normalised depth crops in [-1, 1] (background = +1)
    joints_norm.npy  (N, J, 3) float32   normalised joints (labelled sources only)
    transform.npy    (N, 8)    float64   u px, v px, d mm, cube x, y, z mm, size, rotation deg
    frame_index.npy  (N,)      int64     the reader frame of each row (bad frames can be left out)
    manifest.json                        source, fingerprint, params, bad frames, checksums

Crops are float16 to halve the disk and page cache they take (NYU train at 128 x 128: 2.4 GB
instead of 4.7 GB). Below 1 the float16 step is at most 2^-11, so the rounding error is at most
2.4e-4 (0.04 mm for a 300 mm cube): far below the sensor's 1 mm depth step.

Building is atomic: the arrays are written into a hidden temp folder next to the cache, which is
renamed into place (``os.replace``) only once complete. An interrupted build therefore leaves no
cache, and a killed build's temp folder is removed by the next build.

Validity: :func:`load_or_build_cache` reuses a folder only if its manifest matches the source and
the parameters and its arrays pass the checksum test. ``verify="quick"`` (default) checks every
array file's size and .npy header and a sha256 of 64 evenly spaced 64 KiB blocks (all of any file
up to 4 MiB): a few milliseconds, and it catches truncation, replaced files and most corruption.
``verify="full"`` recomputes the sha256 of every byte (about a second per GB), e.g. after copying
a cache between machines. Both digests are written into the manifest at build time.

Semi-supervised split: :func:`split_labeled` draws a seeded labelled subset. The unlabelled part
(:class:`UnlabeledCrops`) is built from the crops array and its rows only: it never holds the
cache or the joints array, so labels cannot leak through it.
"""
from __future__ import annotations

import ctypes
import dataclasses
import hashlib
import json
import logging
import math
import mmap
import numbers
import os
import secrets
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from numpy.lib.format import open_memmap
from torch.utils.data import Dataset
from tqdm import tqdm

from handgan import __version__
from handgan.augment import AugmentConfig, augment_crop, augment_view, map_joints
from handgan.camera import Intrinsics
from handgan.data.icvl import ICVLSplit
from handgan.data.msra import JOINT_FILE, MSRADataset
from handgan.data.nyu import JOINT_DATA_NAME, NYUSplit
from handgan.errors import HandganError
from handgan.preprocess import BACKGROUND, CropTransform, centre_rays, crop_depth, localize_hand

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
CROP_SIZES = (64, 128)  # the sizes the networks take
CENTRES = ("gt", "com")
ON_BAD = ("stop", "skip")
VERIFY = ("quick", "full")
MANIFEST = "manifest.json"
TRANSFORM_COLUMNS = ("u_px", "v_px", "d_mm", "cube_x_mm", "cube_y_mm", "cube_z_mm", "size",
                     "rotation_deg")
CHUNK = 64  # frames per work item: ~2 MB of float16 crops to send back at S = 128
PARALLEL_MIN_FRAMES = 1000  # below this, starting processes costs more than it saves
_SAMPLE_BLOCKS, _SAMPLE_BLOCK_BYTES = 64, 1 << 16  # the quick checksum reads 4 MiB per file
_TMP_MARK = ".tmp-"  # temp build folders: .<key>.tmp-<pid>-<random>
_READER_FIELDS = ("split", "view", "joint_set", "subjects", "include_rotated", "skip_faulty",
                  "pattern", "centre_joint", "default_cube_mm")  # settings that change the crops


class FrameReader(Protocol):
    """What the cache needs from a reader (NYUSplit, ICVLSplit, MSRADataset, FolderFrames)."""

    root: Path
    intrinsics: Intrinsics
    joint_names: tuple[str, ...]
    centre_joint: int | None

    def __len__(self) -> int: ...
    def frame_path(self, i: int) -> Path: ...
    def depth(self, i: int) -> np.ndarray: ...
    def cube_mm(self, i: int) -> float: ...
    def joints_uvd(self) -> np.ndarray | None: ...
    def joints_xyz(self) -> np.ndarray | None: ...


@dataclass(frozen=True)
class CropParams:
    """How frames become crops.

    Attributes:
        size: S, side of the square crop in px (64 or 128).
        cube_mm: cube side in mm for every frame; None = the reader's ``cube_mm(i)`` (per subject
            for MSRA, 250 mm for NYU test_2).
        centre: "gt" = the reader's ground-truth ``centre_joint`` (as DeepPrior++ trains), "com" =
            :func:`~handgan.preprocess.localize_hand`. Unlabelled readers always use "com".
    """

    size: int = 128
    cube_mm: float | None = None
    centre: str = "gt"

    def __post_init__(self) -> None:
        if isinstance(self.size, bool) or self.size not in CROP_SIZES:
            raise HandganError(f"crop size must be one of {CROP_SIZES}, got {self.size!r}")
        object.__setattr__(self, "size", int(self.size))
        if self.cube_mm is not None:
            ok = isinstance(self.cube_mm, numbers.Real) and not isinstance(self.cube_mm, bool)
            if not (ok and math.isfinite(self.cube_mm) and self.cube_mm > 0):
                raise HandganError(f"cube size must be a number > 0 mm, got {self.cube_mm!r}")
            object.__setattr__(self, "cube_mm", float(self.cube_mm))
        if self.centre not in CENTRES:
            raise HandganError(f"crop centre must be one of {CENTRES}, got {self.centre!r}")


@dataclass(frozen=True)
class LocatedCentres:
    """Crop centres a learned hand localiser found for every frame of a reader.

    Attributes:
        centres: (N, 3) uvd; NaN rows where no hand was found.
        not_found: {frame: why} for the NaN rows.
        localizer: identity of the localiser (e.g. a hash of its weights), part of the cache key.
    """

    centres: np.ndarray
    not_found: dict[int, str]
    localizer: str

    def key(self) -> str:
        return hashlib.sha256(self.localizer.encode() + np.ascontiguousarray(
            self.centres, dtype=np.float64).tobytes()).hexdigest()


@dataclass(frozen=True)
class BadFrame:
    """A frame left out of (or stopping) a cache build: reader index, file and what is wrong."""

    index: int
    file: str
    reason: str


# --------------------------------------------------------------------------------------------
# The cache
# --------------------------------------------------------------------------------------------

class CropCache:
    """A built cache folder, opened read-only. Arrays are memory-mapped, so opening is instant and
    DataLoader workers share the page cache instead of copying the crops.

    Attributes:
        path: the cache folder.
        manifest: the parsed manifest.json.
        crops: (N, S, S) float16 memmap in [-1, 1].
        joints_norm: (N, J, 3) float32 memmap, or None for an unlabelled source.
        transforms: (N, 8) float64 crop transform parameters (``TRANSFORM_COLUMNS``).
        frame_index: (N,) int64 reader frame of each row.
        intrinsics: the source camera.
        labeled: whether joints_norm exists.
        bad_frames: frames left out by ``on_bad="skip"`` (their count is ``len(bad_frames)``).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.manifest: dict = json.loads((self.path / MANIFEST).read_text())
            arrays = self.manifest["arrays"]
            self.crops: np.ndarray = _open_array(self.path / arrays["crops"]["file"], mmap=True)
            self.joints_norm: np.ndarray | None = None
            if "joints_norm" in arrays:
                self.joints_norm = _open_array(self.path / arrays["joints_norm"]["file"], mmap=True)
            self.transforms: np.ndarray = _open_array(self.path / arrays["transform"]["file"])
            self.frame_index: np.ndarray = _open_array(self.path / arrays["frame_index"]["file"])
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
        return _transform_from_row(self.transforms[i], self.intrinsics)

    def verify(self, full: bool = False) -> None:
        """Check the array files against the manifest (quick or full sha256, see the module doc);
        raise HandganError naming what does not match."""
        problem = _array_problem(self.path, self.manifest, full)
        if problem:
            raise HandganError(f"{self.path}: {problem}")


def build_cache(reader: FrameReader, cache_root: str | Path, params: CropParams = CropParams(),
                *, progress: bool = True, on_bad: str = "stop",
                workers: int | None = None) -> CropCache:
    """Preprocess every frame of ``reader`` once (no augmentation) into ``cache_root/<key>``,
    replacing any cache already there.

    Args:
        reader: a dataset reader (NYUSplit, ICVLSplit, MSRADataset, FolderFrames).
        cache_root: folder holding caches; created if missing.
        params: crop size, cube and centre.
        progress: show a tqdm progress bar.
        on_bad: "stop" = raise HandganError naming the first bad frame and the number found;
            "skip" = leave bad frames out and record them in the manifest.
        workers: processes to crop with; None = every core when there are at least
            ``PARALLEL_MIN_FRAMES`` frames, else 1.

    Returns:
        The new :class:`CropCache`.
    """
    if on_bad not in ON_BAD:
        raise HandganError(f"on_bad must be one of {ON_BAD}, got {on_bad!r}")
    return _build(_Source.plan(reader, params), Path(cache_root), progress, on_bad, workers)


def load_or_build_cache(reader: FrameReader, cache_root: str | Path,
                        params: CropParams = CropParams(), *, progress: bool = True,
                        on_bad: str = "stop", verify: str = "quick",
                        workers: int | None = None,
                        located: LocatedCentres | None = None) -> CropCache:
    """The cache of ``reader`` with ``params``: reused when valid, else (re)built.

    A cache is reused when its manifest matches the source (reader settings, the names, sizes and
    mtimes of its depth and label files, the labels) and the parameters, and its arrays pass the
    ``verify`` check ("quick" or "full", see the module doc). Any change of a source file or a
    parameter gives another key, so it is rebuilt; an older cache of the same source and
    parameters is then deleted. A reused cache with bad frames recorded raises like a build does
    when ``on_bad="stop"``. ``located``: with ``params.centre == "com"``, the centres a learned
    localiser found (part of the key), instead of :func:`~handgan.preprocess.localize_hand` in
    the workers. Other arguments: see :func:`build_cache`.
    """
    if on_bad not in ON_BAD:
        raise HandganError(f"on_bad must be one of {ON_BAD}, got {on_bad!r}")
    if verify not in VERIFY:
        raise HandganError(f"verify must be one of {VERIFY}, got {verify!r}")
    source = _Source.plan(reader, params, located)
    if Path(cache_root).is_dir():
        _remove_abandoned(Path(cache_root))  # killed builds' temp folders can be gigabytes
    path = Path(cache_root) / source.key
    problem = _cache_problem(path, source, full=verify == "full")
    if problem is None:
        cache = CropCache(path)
        if cache.bad_frames and on_bad == "stop":
            raise _bad_frames_error(cache.bad_frames, source)
        return cache
    if path.exists():
        log.warning("%s: rebuilding the crop cache (%s)", path, problem)
    return _build(source, Path(cache_root), progress, on_bad, workers)


# --------------------------------------------------------------------------------------------
# Source identity and fingerprint
# --------------------------------------------------------------------------------------------

@dataclass
class _Source:
    """A reader with its labels read once, the effective parameters and the cache key."""

    reader: FrameReader
    params: CropParams  # effective: centre "com" for unlabelled readers
    description: dict  # JSON-ready reader identity
    fingerprint: dict  # {"sha256", "files", "label_files"}
    key: str
    centres: np.ndarray | None  # (N, 3) centre uvd: ground truth ("gt") or located, else None
    xyz: np.ndarray | None  # (N, J, 3) joints mm, None when unlabelled
    labels_ok: np.ndarray  # (N,) bool: labels finite (all True when unlabelled)
    cubes: np.ndarray  # (N,) cube side mm per frame
    not_found: dict[int, str] = dataclasses.field(default_factory=dict)  # located: no hand

    @classmethod
    def plan(cls, reader: FrameReader, params: CropParams,
             located: LocatedCentres | None = None) -> _Source:
        uvd, xyz = reader.joints_uvd(), reader.joints_xyz()  # each a full copy: read them once
        n = len(reader)
        if uvd is None:
            params = dataclasses.replace(params, centre="com")  # no labels: "gt" cannot exist
            labels_ok = np.ones(n, dtype=bool)
        else:
            labels_ok = np.isfinite(uvd).all(axis=(1, 2)) & np.isfinite(xyz).all(axis=(1, 2))
        centres = None
        if params.centre == "gt":
            joint = getattr(reader, "centre_joint", None)
            if joint is None:
                raise HandganError(f"{reader.root}: {type(reader).__name__} has no centre joint "
                                   "for centre='gt'; use centre='com'")
            centres = uvd[:, joint]
        elif located is not None:
            if len(located.centres) != n:
                raise ValueError(f"{len(located.centres)} located centres for {n} frames")
            centres = located.centres
        if params.cube_mm is not None:
            cubes = np.full(n, params.cube_mm)
        else:
            cubes = np.array([reader.cube_mm(i) for i in range(n)], dtype=np.float64)
        description = describe_source(reader)
        fingerprint = source_fingerprint(reader, uvd, xyz)
        key_input = {"format": FORMAT_VERSION, "source": description,
                     "fingerprint": fingerprint["sha256"], "params": dataclasses.asdict(params),
                     # per-frame cubes come from the reader (per subject for MSRA)
                     "cubes": hashlib.sha256(cubes.tobytes()).hexdigest()}
        if located is not None and params.centre == "com":
            key_input["located"] = located.key()
        key = hashlib.sha256(json.dumps(key_input, sort_keys=True).encode()).hexdigest()[:24]
        return cls(reader, params, description, fingerprint, key, centres, xyz, labels_ok, cubes,
                   dict(located.not_found) if located is not None else {})


def describe_source(reader: FrameReader) -> dict:
    """JSON-ready identity of a reader: kind, root, the settings that choose frames and labels,
    joint names and camera. (The frame count and files are in the fingerprint.)"""
    description = {"kind": type(reader).__name__, "root": str(Path(reader.root).resolve())}
    for name in _READER_FIELDS:
        if hasattr(reader, name):
            description[name] = getattr(reader, name)
    description["joint_names"] = list(reader.joint_names)
    description["intrinsics"] = dataclasses.asdict(reader.intrinsics)
    return json.loads(json.dumps(description, default=str))  # tuples -> lists, Paths -> str


def label_files(reader: FrameReader) -> list[Path]:
    """The label files a reader parsed (none for unlabelled folders or unknown readers)."""
    if isinstance(reader, NYUSplit):
        return [reader.folder / JOINT_DATA_NAME]
    if isinstance(reader, ICVLSplit):
        return list(reader.label_paths)
    if isinstance(reader, MSRADataset):
        return sorted({reader.frame_path(i).parent / JOINT_FILE for i in range(len(reader))})
    return []


def source_fingerprint(reader: FrameReader, uvd: np.ndarray | None,
                       xyz: np.ndarray | None) -> dict:
    """sha256 of every depth and label file's name (relative to the root), size and mtime (ns),
    plus the label values themselves (which covers readers whose label files we do not know).
    One stat per file: about 0.3 s for NYU's 72k training frames."""
    root = Path(reader.root)
    labels = label_files(reader)
    digest = hashlib.sha256()
    files = [reader.frame_path(i) for i in range(len(reader))] + labels
    for path in files:
        try:
            st = os.stat(path)
            size, mtime = st.st_size, st.st_mtime_ns
        except OSError:  # vanished since the reader listed it: a bad frame at build time
            size = mtime = -1
        digest.update(f"{_relative(path, root)}\0{size}\0{mtime}\n".encode())
    for array in (uvd, xyz):
        if array is not None:
            digest.update(np.ascontiguousarray(array, dtype=np.float64).tobytes())
    return {"sha256": digest.hexdigest(), "files": len(files),
            "label_files": [_relative(p, root) for p in labels]}


def _relative(path: Path, root: Path) -> str:
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return str(path)


# --------------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------------

def _build(source: _Source, cache_root: Path, progress: bool, on_bad: str,
           workers: int | None) -> CropCache:
    """Write the cache into a temp folder next to its final place, then rename it in."""
    try:
        cache_root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise HandganError(f"{cache_root}: cannot create the cache folder ({e.strerror or e})"
                           ) from None
    _remove_abandoned(cache_root)
    final = cache_root / source.key
    tmp = cache_root / f".{source.key}{_TMP_MARK}{os.getpid()}-{secrets.token_hex(3)}"
    tmp.mkdir()
    try:
        manifest = _write_cache(source, tmp, progress, on_bad, workers)
        _install(tmp, final, source)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _remove_stale(cache_root, manifest)
    cache = CropCache(final)
    if cache.bad_frames:
        log.warning("%s: left out %d bad frame(s) of %d (listed in %s)", source.reader.root,
                    len(cache.bad_frames), len(source.reader), final / MANIFEST)
    return cache


def _write_cache(source: _Source, tmp: Path, progress: bool, on_bad: str,
                 workers: int | None) -> dict:
    """Crop every frame into tmp/*.npy, then write the manifest; returns the manifest."""
    started = time.perf_counter()
    reader, size = source.reader, source.params.size
    n = len(reader)
    labeled = source.xyz is not None
    crops = open_memmap(tmp / "crops.npy", "w+", np.float16, (n, size, size))
    joints = None
    if labeled:
        joints = open_memmap(tmp / "joints_norm.npy", "w+", np.float32, source.xyz.shape)
    transforms = np.empty((n, len(TRANSFORM_COLUMNS)))
    frame_index = np.empty(n, dtype=np.int64)
    bad: list[BadFrame] = []
    rows = 0  # rows written so far: good frames are packed in reader order
    bar = tqdm(total=n, unit="frame", desc="crop cache", disable=not progress, dynamic_ncols=True)
    with _chunk_results(source, workers) as results:
        for chunk in results:
            m = len(chunk.frames)
            crops[rows:rows + m] = chunk.crops
            if joints is not None:
                joints[rows:rows + m] = chunk.joints
            transforms[rows:rows + m] = chunk.transforms
            frame_index[rows:rows + m] = chunk.frames
            rows += m
            bad.extend(chunk.bad)
            bar.update(m + len(chunk.bad))
            if bad:
                bar.set_postfix(bad=len(bad))
    bar.close()
    if bad and on_bad == "stop":
        raise _bad_frames_error(bad, source)
    if rows == 0:
        raise HandganError(f"{reader.root}: all {n} frames are bad, e.g. "
                           f"{bad[0].file}: {bad[0].reason}")

    del crops, joints  # flush and unmap before the files are shrunk and hashed
    names = ["crops"] + (["joints_norm"] if labeled else [])
    for name in names:
        if rows < n:
            _keep_first_rows(tmp / f"{name}.npy", rows)
    np.save(tmp / "transform.npy", transforms[:rows])
    np.save(tmp / "frame_index.npy", frame_index[:rows])
    arrays = {name: _array_entry(tmp / f"{name}.npy")
              for name in names + ["transform", "frame_index"]}
    manifest = {
        "format": "handgan-crop-cache",
        "version": FORMAT_VERSION,
        "key": source.key,
        "handgan_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "build_seconds": round(time.perf_counter() - started, 2),
        "source": source.description,
        "fingerprint": source.fingerprint,
        "params": dataclasses.asdict(source.params),
        "n": rows,
        "n_source_frames": n,
        "labeled": labeled,
        "joint_names": list(reader.joint_names) if labeled else [],
        "intrinsics": dataclasses.asdict(reader.intrinsics),
        "transform_columns": list(TRANSFORM_COLUMNS),
        "bad_frames": [dataclasses.asdict(b) for b in bad],
        "arrays": arrays,
        # one digest of the whole cache: sha256 over the per-array sha256s, in this order
        "checksum": hashlib.sha256("".join(a["sha256"] for a in arrays.values()).encode()
                                   ).hexdigest(),
    }
    _write_synced(tmp / MANIFEST, json.dumps(manifest, indent=1).encode())
    return manifest


@dataclass
class _Job:
    start: int
    stop: int
    size: int
    centres: np.ndarray | None  # (m, 3) (NaN: no hand found) or None (``localize_hand``)
    xyz: np.ndarray | None  # (m, J, 3) or None
    labels_ok: np.ndarray  # (m,)
    cubes: np.ndarray  # (m,)
    not_found: dict[int, str]  # frame -> why the localiser found no hand there


@dataclass
class _ChunkResult:
    frames: np.ndarray  # (m,) reader indices of the good frames
    crops: np.ndarray  # (m, S, S) float16
    joints: np.ndarray | None  # (m, J, 3) float32
    transforms: np.ndarray  # (m, 8)
    bad: list[BadFrame]


_WORKER_READER: FrameReader | None = None  # set once per worker process


def _init_worker(reader: FrameReader, parent_pid: int) -> None:
    global _WORKER_READER
    _WORKER_READER = reader
    _exit_with_parent(parent_pid)


def _exit_with_parent(parent_pid: int) -> None:
    """Linux: end this worker when the building process dies. A pool worker whose parent was
    killed (SIGKILL, the OOM killer) would otherwise wait for work forever."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not glibc: nothing to set
        return
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def _run_job_in_worker(job: _Job) -> _ChunkResult:
    return _run_job(_WORKER_READER, job)


@contextmanager
def _chunk_results(source: _Source, workers: int | None) -> Iterator[Iterator[_ChunkResult]]:
    """The chunks' results in frame order, from this process or a process pool."""
    n = len(source.reader)
    jobs = (_Job(start, min(start + CHUNK, n), source.params.size,
                 None if source.centres is None else source.centres[start:start + CHUNK],
                 None if source.xyz is None else source.xyz[start:start + CHUNK],
                 source.labels_ok[start:start + CHUNK], source.cubes[start:start + CHUNK],
                 {i: why for i, why in source.not_found.items() if start <= i < start + CHUNK})
            for start in range(0, n, CHUNK))
    if workers is None:
        workers = _available_cores() if n >= PARALLEL_MIN_FRAMES else 1
    if workers <= 1:
        yield (_run_job(source.reader, job) for job in jobs)
        return
    # Workers get the reader once (initializer), then only frame ranges and their labels.
    pool = ProcessPoolExecutor(workers, initializer=_init_worker,
                               initargs=(source.reader, os.getpid()))
    try:
        yield pool.map(_run_job_in_worker, jobs)
    finally:
        # on an error or Ctrl-C, drop the queued chunks instead of cropping them all first
        pool.shutdown(wait=True, cancel_futures=True)


def _available_cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def _run_job(reader: FrameReader, job: _Job) -> _ChunkResult:
    frames, crops, joints, transforms, bad = [], [], [], [], []
    for k, i in enumerate(range(job.start, job.stop)):
        try:
            if not job.labels_ok[k]:
                raise HandganError("labels have NaN or inf values")
            centre = None if job.centres is None else job.centres[k]
            if centre is not None and not np.isfinite(centre).all():
                raise HandganError(job.not_found.get(job.start + k, "no hand found"))
            xyz = None if job.xyz is None else job.xyz[k]
            crop, t, joints_norm = _crop_frame(reader, i, centre, xyz, job.cubes[k], job.size)
        except HandganError as e:
            bad.append(_bad_frame(reader, i, e))
            continue
        frames.append(i)
        crops.append(crop.astype(np.float16))
        joints.append(joints_norm)
        transforms.append(_transform_row(t))
        # (S, S) float32 -> float16 here, so workers send half the bytes back
    m, size = len(frames), job.size
    return _ChunkResult(
        frames=np.array(frames, dtype=np.int64),
        crops=np.stack(crops) if m else np.empty((0, size, size), np.float16),
        joints=None if job.xyz is None else (
            np.stack(joints).astype(np.float32) if m else np.empty((0,) + job.xyz.shape[1:],
                                                                   np.float32)),
        transforms=np.stack(transforms) if m else np.empty((0, len(TRANSFORM_COLUMNS))),
        bad=bad,
    )


def _crop_frame(reader: FrameReader, i: int, centre_uvd: np.ndarray | None,
                xyz: np.ndarray | None, cube_mm: float, size: int
                ) -> tuple[np.ndarray, CropTransform, np.ndarray | None]:
    """Frame i -> (crop, transform, joints_norm); HandganError says why a frame is bad."""
    depth = reader.depth(i)  # unreadable or wrong-size files raise HandganError with the path
    if not (depth > 0).any():  # NaN compares False: all-NaN frames land here too
        raise HandganError("no depth: every pixel is 0 or NaN")
    what = "ground-truth centre joint"
    if centre_uvd is None:
        centre_uvd = localize_hand(depth, reader.intrinsics, cube_mm=cube_mm)  # "no hand found"
        what = "hand centre"
    crop, t = crop_depth(depth, centre_uvd, cube_mm, size, intr=reader.intrinsics)
    if not (crop < BACKGROUND).any():
        raise HandganError(f"no depth inside the {cube_mm:g} mm cube around the {what}")
    joints_norm = None if xyz is None else t.xyz_to_norm(xyz)
    return crop, t, joints_norm


def _bad_frame(reader: FrameReader, i: int, error: HandganError) -> BadFrame:
    path = str(reader.frame_path(i))
    reason = str(error)
    if reason.startswith(f"{path}: "):  # readers prefix the path; the record keeps it apart
        reason = reason[len(path) + 2:]
    return BadFrame(i, path, reason)


def _bad_frames_error(bad: list[BadFrame], source: _Source) -> HandganError:
    n = len(bad)
    others = ""
    if n > 1:
        names = ", ".join(Path(b.file).name for b in bad[1:4])
        others = f" (also {names}{f' and {n - 4} more' if n > 4 else ''})"
    return HandganError(
        f"{bad[0].file}: {bad[0].reason}; {n} bad frame{'s' if n != 1 else ''} of "
        f"{len(source.reader)} in {source.reader.root}{others}; fix or remove them, or use "
        "on_bad='skip' to leave them out (they are then listed in the cache manifest)")


def _transform_row(t: CropTransform) -> np.ndarray:
    return np.concatenate([t.centre_uvd, t.cube_mm, [t.size, t.rotation_deg]])


def _transform_from_row(row: np.ndarray, intr: Intrinsics) -> CropTransform:
    return CropTransform(row[0:3], row[3:6], int(row[6]), intr, float(row[7]))


def _keep_first_rows(path: Path, rows: int) -> None:
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


def _install(tmp: Path, final: Path, source: _Source) -> None:
    """Rename the finished temp folder into place. A valid cache that appeared meanwhile (another
    process built the same key) wins; an invalid one is replaced."""
    if final.exists():
        if _cache_problem(final, source, full=False) is None:
            shutil.rmtree(tmp)
            return
        shutil.rmtree(final)
    try:
        os.replace(tmp, final)
    except OSError:
        if _cache_problem(final, source, full=False) is not None:
            raise
        shutil.rmtree(tmp)  # lost the race to an identical, valid cache
    _fsync_dir(final.parent)


def _remove_abandoned(cache_root: Path) -> None:
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
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale(cache_root: Path, manifest: dict) -> None:
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


# --------------------------------------------------------------------------------------------
# Checking
# --------------------------------------------------------------------------------------------

def _cache_problem(path: Path, source: _Source, full: bool) -> str | None:
    """None if ``path`` holds a valid cache of ``source``, else what is wrong (for the log)."""
    if not (path / MANIFEST).is_file():
        return "no cache yet"
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError) as e:
        return f"unreadable manifest ({e})"
    expected = {"version": FORMAT_VERSION, "key": source.key, "source": source.description,
                "fingerprint": source.fingerprint, "params": dataclasses.asdict(source.params)}
    for name, value in expected.items():
        if not isinstance(manifest, dict) or manifest.get(name) != value:
            return f"manifest {name} does not match"
    return _array_problem(path, manifest, full)


def _array_problem(path: Path, manifest: dict, full: bool) -> str | None:
    try:
        arrays = manifest["arrays"]
        for _name, entry in arrays.items():
            file = path / entry["file"]
            if not file.is_file():
                return f"{entry['file']} is missing"
            if file.stat().st_size != entry["bytes"]:
                return f"{entry['file']} has {file.stat().st_size} bytes, expected {entry['bytes']}"
            array = _open_array(file, mmap=True)  # reads the .npy header only
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


def _array_entry(path: Path) -> dict:
    array = np.load(path, mmap_mode="r")
    _fsync_file(path)
    return {"file": path.name, "dtype": array.dtype.str, "shape": list(array.shape),
            "bytes": path.stat().st_size, "sha256": _full_digest(path),
            "sample_sha256": _sample_digest(path)}


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


def _open_array(path: Path, mmap: bool = False) -> np.ndarray:
    return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_file(path: Path) -> None:
    """Data on disk before the folder is renamed in, so a power cut cannot leave a "valid"
    cache with holes."""
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    if os.name == "posix":
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# --------------------------------------------------------------------------------------------
# Datasets and the semi-supervised split
# --------------------------------------------------------------------------------------------

class _CropRows(Dataset):
    """Rows ``indices`` of a crops array, with optional augmentation.

    Each item gets its own RNG seeded with (seed, epoch, cache row), so an augmented epoch is
    the same whatever the number of DataLoader workers or the order of the items. Call
    ``set_epoch`` before each epoch (with ``persistent_workers=True`` the workers keep the epoch
    they started with). Pickling keeps memmaps as file references, so spawned DataLoader workers
    reopen the file instead of receiving a copy of the crops.
    """

    def __init__(self, crops: np.ndarray, indices: np.ndarray, transforms: np.ndarray | None,
                 intrinsics: Intrinsics | None, augment: AugmentConfig | None,
                 seed: int) -> None:
        self.indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(self.indices) and not (0 <= self.indices.min() and self.indices.max() < len(crops)):
            raise IndexError(f"row indices must be in [0, {len(crops)})")
        if transforms is not None and len(transforms) != len(self.indices):
            raise ValueError(f"{len(transforms)} transform rows for {len(self.indices)} indices")
        if augment is not None and (transforms is None or intrinsics is None):
            raise ValueError("augmentation needs the rows' transforms and the intrinsics")
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
            raise HandganError(f"seed must be a whole number >= 0, got {seed!r}")
        self.crops = crops
        self.transforms = transforms  # (len(indices), 8): row k belongs to item k
        self.intrinsics = intrinsics
        self.augment = augment
        self.seed = int(seed)
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.indices)

    def set_epoch(self, epoch: int) -> None:
        """Draw another augmentation per item (reproducibly) for ``epoch``."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.epoch = int(epoch)

    def _rng(self, row: int) -> np.random.Generator:
        return np.random.default_rng((self.seed, self.epoch, int(row)))

    def _crop(self, k: int) -> np.ndarray:
        return np.asarray(self.crops[self.indices[k]], dtype=np.float32)  # (S, S), a copy

    def transform(self, k: int) -> CropTransform:
        """The crop transform of item ``k`` (maps its normalised joints back to mm)."""
        return _transform_from_row(self.transforms[k], self.intrinsics)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        for name, value in state.items():
            if isinstance(value, np.memmap) and isinstance(value.base, mmap.mmap):  # whole file
                state[name] = _MemmapFile(str(value.filename))
        return state

    def __setstate__(self, state: dict) -> None:
        for name, value in state.items():
            if isinstance(value, _MemmapFile):
                state[name] = _open_array(Path(value.path), mmap=True)
        self.__dict__.update(state)


@dataclass(frozen=True)
class _MemmapFile:
    path: str


class LabeledCrops(_CropRows):
    """Labelled rows of a cache: item k -> (crop (1, S, S) float32, joints_norm (J, 3) float32).

    With ``augment`` the crop and its joints are augmented together
    (:func:`~handgan.augment.augment_crop`); joints are then normalised by the augmented crop's
    transform. ``indices`` are rows of the cache.
    """

    def __init__(self, cache: CropCache, indices: np.ndarray | None = None, *,
                 augment: AugmentConfig | None = None, seed: int = 0) -> None:
        if not cache.labeled:
            raise HandganError(f"{cache.path}: the cache has no labels (unlabelled source)")
        indices = np.arange(len(cache)) if indices is None else np.asarray(indices, np.int64)
        super().__init__(cache.crops, indices, cache.transforms[indices], cache.intrinsics,
                         augment, seed)
        self.joints_norm = cache.joints_norm

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        crop, joints, _ = self._item(k)
        return crop, joints

    def _item(self, k: int, ray: bool = False
              ) -> tuple[torch.Tensor, torch.Tensor, np.ndarray | None]:
        """Item k's crop, joints and (``ray``) centre ray, else None."""
        row = self.indices[k]
        crop = self._crop(k)
        joints = np.asarray(self.joints_norm[row], dtype=np.float64)  # (J, 3)
        t = None
        if self.augment is not None:
            crop, t, joints = augment_crop(crop, self.transform(k), joints, self._rng(row),
                                           self.augment)
        elif ray:
            t = self.transform(k)
        return (torch.from_numpy(crop[None]), torch.from_numpy(joints.astype(np.float32)),
                t.ray if ray else None)

    def sample_batch(self, positions: np.ndarray, rays: bool = False
                     ) -> tuple[torch.Tensor, ...]:
        """Items ``positions`` as one batch: (B, 1, S, S) crops and (B, J, 3) joints, and with
        ``rays`` their (B, 3) centre rays (:func:`~handgan.preprocess.centre_rays`, after
        augmentation).

        Without augmentation the rows are gathered from the memmaps in one read each (in file
        order) instead of item by item: the fast path for a training loop.
        """
        positions = np.asarray(positions, dtype=np.int64).reshape(-1)
        if self.augment is not None:
            items = [self._item(int(k), rays) for k in positions]
            batch = torch.stack([c for c, _, _ in items]), torch.stack([j for _, j, _ in items])
            if rays:
                batch += (torch.from_numpy(np.stack([r for _, _, r in items])),)
            return batch
        rows = self.indices[positions]
        order = np.argsort(rows, kind="stable")
        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(order))
        crops = torch.from_numpy(self.crops[rows[order]])[inverse]  # (B, S, S) float16
        joints = torch.from_numpy(self.joints_norm[rows[order]])[inverse]  # (B, J, 3)
        if not rays:
            return crops.float().unsqueeze(1), joints
        t = self.transforms[positions]  # (B, 8): centre uvd, cube, size, rotation
        centre_ray = torch.from_numpy(centre_rays(t[:, 0:3], t[:, 5], self.intrinsics))
        return crops.float().unsqueeze(1), joints, centre_ray


class UnlabeledCrops(_CropRows):
    """Crops without labels: item k -> crop (1, S, S) float32, nothing else.

    Built from the crops array and its rows only (plus, for augmentation, those rows' crop
    transforms and the camera): it never receives the cache or the joints, so no label can be
    reached through it. With ``augment`` the crop is augmented image-only.
    """

    def __init__(self, crops: np.ndarray, indices: np.ndarray, *,
                 transforms: np.ndarray | None = None, intrinsics: Intrinsics | None = None,
                 augment: AugmentConfig | None = None, seed: int = 0) -> None:
        super().__init__(crops, indices, transforms, intrinsics, augment, seed)

    def __getitem__(self, k: int) -> torch.Tensor:
        crop = self._crop(k)
        if self.augment is not None:
            crop, _, _ = augment_crop(crop, self.transform(k), None,
                                      self._rng(self.indices[k]), self.augment)
        return torch.from_numpy(crop[None])

    def sample_views(self, positions: np.ndarray, view_augment: AugmentConfig
                     ) -> tuple[torch.Tensor, torch.Tensor, ViewMaps]:
        """Views of each crop, for consistency training without labels: A, the cached crop as it
        is, and B, a copy augmented by ``view_augment`` (its own seeded draw per epoch and row),
        plus the maps that carry a pose from A's normalised frame into B's.

        Returns:
            (B, 1, S, S) view A, (B, 1, S, S) view B, :class:`ViewMaps` of the B crops.
        """
        if self.transforms is None or self.intrinsics is None:
            raise ValueError("two-view sampling needs the rows' transforms and the intrinsics")
        positions = np.asarray(positions, dtype=np.int64).reshape(-1)
        views_a, views_b, pairs = [], [], []
        for k in positions:
            crop, t = self._crop(int(k)), self.transform(int(k))
            row = int(self.indices[k])
            rng = np.random.default_rng((self.seed, self.epoch, row, 1))
            crop_b, t_b = augment_view(crop, t, rng, view_augment)
            views_a.append(crop)
            views_b.append(crop_b)
            pairs.append((t, t_b))
        return (torch.from_numpy(np.stack(views_a))[:, None],
                torch.from_numpy(np.stack(views_b))[:, None], ViewMaps(pairs))

    def sample_batch(self, positions: np.ndarray) -> torch.Tensor:
        """Items ``positions`` as one (B, 1, S, S) batch (one memmap read without augmentation)."""
        positions = np.asarray(positions, dtype=np.int64).reshape(-1)
        if self.augment is not None:
            return torch.stack([self[int(k)] for k in positions])
        rows = self.indices[positions]
        order = np.argsort(rows, kind="stable")
        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(order))
        return torch.from_numpy(self.crops[rows[order]])[inverse].float().unsqueeze(1)


class ViewMaps:
    """Per crop, its two views' crop transforms (A, B; see :meth:`UnlabeledCrops.sample_views`),
    and the map of normalised joints from A to B. Not a sequence, so a DataLoader passes it
    through."""

    def __init__(self, pairs: list[tuple[CropTransform, CropTransform]]) -> None:
        self.pairs = pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def apply(self, joints_a: np.ndarray) -> np.ndarray:
        """(B, J, 3) joints in view A's normalised frame -> (B, J, 3) in view B's."""
        if len(joints_a) != len(self.pairs):
            raise ValueError(f"{len(joints_a)} poses for {len(self.pairs)} view pairs")
        return np.stack([map_joints(j, a, b) for j, (a, b) in zip(joints_a, self.pairs)])

    @staticmethod
    def concat(parts: list[ViewMaps], order: np.ndarray) -> ViewMaps:
        """The pairs of ``parts`` laid end to end, then taken in ``order``."""
        pairs = [p for part in parts for p in part.pairs]
        return ViewMaps([pairs[int(k)] for k in order])


def split_labeled(cache: CropCache, labeled_fraction: float | None = None,
                  labeled_count: int | None = None, seed: int = 0, *,
                  augment: AugmentConfig | None = None, rows: np.ndarray | None = None
                  ) -> tuple[LabeledCrops, UnlabeledCrops]:
    """Split a labelled cache (or its ``rows``) into a seeded random labelled subset and the
    unlabelled rest.

    The subset is the first ``count`` rows of one seeded permutation, so for a given seed a
    smaller labelled set is contained in every larger one (a label-efficiency study adds labels
    rather than redrawing them).

    Args:
        cache: a labelled :class:`CropCache`.
        labeled_fraction: share of rows in (0, 1] that keep their labels; count =
            round(fraction * N) (halves round up), at least 1.
        labeled_count: number of labelled rows in [1, N] instead of a fraction.
        seed: seed of the draw (and of both datasets' augmentation).
        augment: augmentation for both datasets (None = none).
        rows: the cache rows to split (default all; e.g. all but a validation hold-out). The
            fraction and count refer to these rows.

    Returns:
        (LabeledCrops, UnlabeledCrops), with disjoint row sets that together cover ``rows``.
    """
    if not cache.labeled:
        raise HandganError(f"{cache.path}: the cache has no labels (unlabelled source); "
                           "use all_unlabeled(cache)")
    rows = np.arange(len(cache)) if rows is None else np.sort(np.asarray(rows, np.int64))
    n = len(rows)
    if n == 0:
        raise HandganError(f"{cache.path}: no rows to split")
    if (labeled_fraction is None) == (labeled_count is None):
        raise HandganError("give either labeled_fraction or labeled_count, not "
                           f"{'both' if labeled_count is not None else 'neither'}")
    if labeled_fraction is not None:
        f = labeled_fraction
        if isinstance(f, bool) or not isinstance(f, numbers.Real) or not 0 < f <= 1:
            raise HandganError(f"labeled_fraction must be in (0, 1], got {f!r}")
        count = max(1, math.floor(f * n + 0.5))
    else:
        count = labeled_count
        if isinstance(count, bool) or not isinstance(count, numbers.Integral) or \
                not 1 <= count <= n:
            raise HandganError(f"labeled_count must be a whole number in [1, {n}] (the cache has "
                               f"{n} crops), got {count!r}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise HandganError(f"seed must be a whole number >= 0, got {seed!r}")
    order = rows[np.random.default_rng(seed).permutation(n)]
    labeled_rows, unlabeled_rows = np.sort(order[:count]), np.sort(order[count:])
    labeled = LabeledCrops(cache, labeled_rows, augment=augment, seed=seed)
    unlabeled = UnlabeledCrops(cache.crops, unlabeled_rows,
                               transforms=cache.transforms[unlabeled_rows],
                               intrinsics=cache.intrinsics, augment=augment, seed=seed)
    return labeled, unlabeled


def all_labeled(cache: CropCache, *, augment: AugmentConfig | None = None,
                seed: int = 0) -> LabeledCrops:
    """Every row with its labels: the supervised 100 % case and test sets."""
    return LabeledCrops(cache, np.arange(len(cache)), augment=augment, seed=seed)


def all_unlabeled(cache: CropCache, *, augment: AugmentConfig | None = None,
                  seed: int = 0) -> UnlabeledCrops:
    """Every row as an unlabelled crop (e.g. a folder of the user's own frames)."""
    rows = np.arange(len(cache))
    return UnlabeledCrops(cache.crops, rows, transforms=cache.transforms,
                          intrinsics=cache.intrinsics, augment=augment, seed=seed)
