"""Frames -> crop cache: every frame of a reader preprocessed once (no augmentation), in
parallel, into a cache folder (:mod:`handgan.cachestore`).

:func:`load_or_build_cache` reuses a valid cache of the same source and parameters
(:class:`~handgan.cachesource.CacheSource` gives its key) and builds it otherwise. A build crops
chunks of ``CHUNK`` frames in a process pool (each worker gets the reader once, then frame ranges
and their labels; a worker ends with the building process), packs the good frames in reader
order and stops at, or records, the bad ones (``on_bad``).
"""
from __future__ import annotations

import ctypes
import dataclasses
import logging
import os
import signal
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from numpy.lib.format import open_memmap
from tqdm import tqdm

from handgan import __version__
from handgan.cachesource import CacheSource, CropParams, FrameReader, LocatedCentres
from handgan.cachestore import (
    FORMAT_VERSION,
    MANIFEST,
    TRANSFORM_COLUMNS,
    VERIFY,
    BadFrame,
    CropCache,
    build_folder,
    cache_problem,
    install,
    keep_first_rows,
    remove_abandoned,
    remove_stale,
    seal_arrays,
    transform_row,
    write_manifest,
)
from handgan.device import cores
from handgan.errors import HandganError
from handgan.preprocess import BACKGROUND, CropTransform, crop_depth, localize_hand

log = logging.getLogger(__name__)

ON_BAD = ("stop", "skip")  # a bad frame stops the build, or is left out and listed
CHUNK = 64  # frames per work item: ~2 MB of float16 crops to send back at S = 128
PARALLEL_MIN_FRAMES = 1000  # below this, starting processes costs more than it saves


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
    return _build(CacheSource.plan(reader, params), Path(cache_root), progress, on_bad, workers)


def load_or_build_cache(reader: FrameReader, cache_root: str | Path,
                        params: CropParams = CropParams(), *, progress: bool = True,
                        on_bad: str = "stop", verify: str = "quick",
                        workers: int | None = None,
                        located: LocatedCentres | None = None) -> CropCache:
    """The cache of ``reader`` with ``params``: reused when valid, else (re)built.

    A cache is reused when its manifest matches the source (reader settings, the names, sizes and
    mtimes of its depth and label files, the labels) and the parameters, and its arrays pass the
    ``verify`` check ("quick" or "full", see :mod:`handgan.cachestore`). Any change of a source
    file or a parameter gives another key, so it is rebuilt; an older cache of the same source
    and parameters is then deleted. A reused cache with bad frames recorded raises like a build
    does when ``on_bad="stop"``. ``located``: with ``params.centre == "com"``, the centres a
    learned localiser found (part of the key), instead of
    :func:`~handgan.preprocess.localize_hand` in the workers. Other arguments: see
    :func:`build_cache`.
    """
    if on_bad not in ON_BAD:
        raise HandganError(f"on_bad must be one of {ON_BAD}, got {on_bad!r}")
    if verify not in VERIFY:
        raise HandganError(f"verify must be one of {VERIFY}, got {verify!r}")
    source = CacheSource.plan(reader, params, located)
    if Path(cache_root).is_dir():
        remove_abandoned(Path(cache_root))  # killed builds' temp folders can be gigabytes
    path = Path(cache_root) / source.key
    problem = cache_problem(path, source.expected(), full=verify == "full")
    if problem is None:
        cache = CropCache(path)
        if cache.bad_frames and on_bad == "stop":
            raise _bad_frames_error(cache.bad_frames, source)
        return cache
    if path.exists():
        log.warning("%s: rebuilding the crop cache (%s)", path, problem)
    return _build(source, Path(cache_root), progress, on_bad, workers)


# --------------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------------

def _build(source: CacheSource, cache_root: Path, progress: bool, on_bad: str,
           workers: int | None) -> CropCache:
    """Write the cache into a temp folder next to its final place, then rename it in."""
    final = cache_root / source.key
    with build_folder(cache_root, source.key) as tmp:
        manifest = _write_cache(source, tmp, progress, on_bad, workers)
        install(tmp, final, source.expected())
    remove_stale(cache_root, manifest)
    cache = CropCache(final)
    if cache.bad_frames:
        log.warning("%s: left out %d bad frame(s) of %d (listed in %s)", source.reader.root,
                    len(cache.bad_frames), len(source.reader), final / MANIFEST)
    return cache


def _write_cache(source: CacheSource, tmp: Path, progress: bool, on_bad: str,
                 workers: int | None) -> dict:
    """Crop every frame into tmp/*.npy, then write the manifest; returns the manifest."""
    started = time.perf_counter()
    reader = source.reader
    n = len(reader)
    labeled = source.xyz is not None
    rows, transforms, frame_index, bad = _crop_all(source, tmp, progress, workers)
    if bad and on_bad == "stop":
        raise _bad_frames_error(bad, source)
    if rows == 0:
        raise HandganError(f"{reader.root}: all {n} frames are bad, e.g. "
                           f"{bad[0].file}: {bad[0].reason}")

    names = ["crops"] + (["joints_norm"] if labeled else [])
    for name in names:
        if rows < n:
            keep_first_rows(tmp / f"{name}.npy", rows)
    np.save(tmp / "transform.npy", transforms[:rows])
    np.save(tmp / "frame_index.npy", frame_index[:rows])
    arrays = seal_arrays(tmp, names + ["transform", "frame_index"])
    return write_manifest(tmp, {
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
    })


def _crop_all(source: CacheSource, tmp: Path, progress: bool, workers: int | None
              ) -> tuple[int, np.ndarray, np.ndarray, list[BadFrame]]:
    """Crop every frame into tmp/crops.npy (and joints_norm.npy), good frames packed in reader
    order. Returns (rows written, (N, 8) transforms, (N,) frame index, bad frames)."""
    n, size = len(source.reader), source.params.size
    crops = open_memmap(tmp / "crops.npy", "w+", np.float16, (n, size, size))
    joints = None
    if source.xyz is not None:
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
    del crops, joints  # flush and unmap before the files are shrunk and hashed
    return rows, transforms, frame_index, bad


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
def _chunk_results(source: CacheSource, workers: int | None) -> Iterator[Iterator[_ChunkResult]]:
    """The chunks' results in frame order, from this process or a process pool."""
    n = len(source.reader)
    jobs = (_Job(start, min(start + CHUNK, n), source.params.size,
                 None if source.centres is None else source.centres[start:start + CHUNK],
                 None if source.xyz is None else source.xyz[start:start + CHUNK],
                 source.labels_ok[start:start + CHUNK], source.cubes[start:start + CHUNK],
                 {i: why for i, why in source.not_found.items() if start <= i < start + CHUNK})
            for start in range(0, n, CHUNK))
    if workers is None:
        workers = cores() if n >= PARALLEL_MIN_FRAMES else 1
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
        transforms.append(transform_row(t))
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


def _bad_frames_error(bad: list[BadFrame], source: CacheSource) -> HandganError:
    n = len(bad)
    others = ""
    if n > 1:
        names = ", ".join(Path(b.file).name for b in bad[1:4])
        others = f" (also {names}{f' and {n - 4} more' if n > 4 else ''})"
    return HandganError(
        f"{bad[0].file}: {bad[0].reason}; {n} bad frame{'s' if n != 1 else ''} of "
        f"{len(source.reader)} in {source.reader.root}{others}; fix or remove them, or use "
        "on_bad='skip' to leave them out (they are then listed in the cache manifest)")
