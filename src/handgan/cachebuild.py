"""Frames -> crop cache: every frame of a reader preprocessed once (no augmentation), in
parallel, into a cache folder (:mod:`handgan.cachestore`).

:func:`load_or_build_cache` reuses a valid cache of the same source and parameters
(:class:`~handgan.cachesource.CacheSource` gives its key) and builds it otherwise. A build crops
chunks of ``CHUNK`` frames in a process pool (each worker gets the reader and its labels once,
then chunks; a worker ends with the building process), packs the good frames in reader
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
    """Preprocess every frame of ``reader`` into ``cache_root/<key>``, replacing any cache there.
    ``on_bad``: "stop" raises a HandganError naming the first bad frame and the number found;
    "skip" leaves bad frames out and records them in the manifest. ``workers``: processes to crop
    with; None = every core when there are at least ``PARALLEL_MIN_FRAMES`` frames, else 1."""
    if on_bad not in ON_BAD:
        raise HandganError(f"on_bad must be one of {ON_BAD}, got {on_bad!r}")
    return _build(CacheSource.plan(reader, params), Path(cache_root), progress, on_bad, workers)


def load_or_build_cache(reader: FrameReader, cache_root: str | Path,
                        params: CropParams = CropParams(), *, progress: bool = True,
                        on_bad: str = "stop", verify: str = "quick",
                        workers: int | None = None,
                        located: LocatedCentres | None = None) -> CropCache:
    """The cache of ``reader`` with ``params``: reused when valid, else (re)built.

    A cache is reused when its manifest matches the source (reader settings, its files' names,
    sizes and mtimes, the labels) and the parameters and its arrays pass the ``verify`` check
    ("quick" or "full"); else it is rebuilt and an older cache of the same source and parameters
    deleted. A reused cache with bad frames raises as a build does with ``on_bad="stop"``.
    ``located``: with ``params.centre == "com"``, the centres a learned localiser found (part of
    the key). See :func:`build_cache`.
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
    for name in names if rows < n else ():
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
        for frames, chunk_crops, chunk_joints, chunk_transforms, chunk_bad in results:
            m = len(frames)
            if m:
                crops[rows:rows + m] = np.stack(chunk_crops)
                if joints is not None:
                    joints[rows:rows + m] = np.stack(chunk_joints).astype(np.float32)
                transforms[rows:rows + m] = np.stack(chunk_transforms)
                frame_index[rows:rows + m] = frames
            rows += m
            bad.extend(chunk_bad)
            bar.update(m + len(chunk_bad))
            if bad:
                bar.set_postfix(bad=len(bad))
    bar.close()
    del crops, joints  # flush and unmap before the files are shrunk and hashed
    return rows, transforms, frame_index, bad


_WORKER_SOURCE: CacheSource | None = None  # set once per worker process


def _init_worker(source: CacheSource, parent_pid: int) -> None:
    """Keep the source, and on Linux end this worker when the building process dies: a pool
    worker whose parent was killed (SIGKILL, the OOM killer) would otherwise wait forever."""
    global _WORKER_SOURCE
    _WORKER_SOURCE = source
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not glibc: nothing to set
        return
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def _run_chunk_in_worker(start: int) -> tuple:
    return _run_chunk(_WORKER_SOURCE, start)


@contextmanager
def _chunk_results(source: CacheSource, workers: int | None) -> Iterator[Iterator[tuple]]:
    """The results of :func:`_run_chunk` in frame order, from this process or a process pool."""
    n = len(source.reader)
    if workers is None:
        workers = cores() if n >= PARALLEL_MIN_FRAMES else 1
    if workers <= 1:
        yield (_run_chunk(source, start) for start in range(0, n, CHUNK))
        return
    # Workers get the source (reader and labels) once, then only the chunks' first frames.
    pool = ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(source, os.getpid()))
    try:
        yield pool.map(_run_chunk_in_worker, range(0, n, CHUNK))
    finally:
        # on an error or Ctrl-C, drop the queued chunks instead of cropping them all first
        pool.shutdown(wait=True, cancel_futures=True)


def _run_chunk(source: CacheSource, start: int) -> tuple:
    """Frames ``start`` .. ``start + CHUNK`` -> (good frames, their float16 crops (sent back
    as half the bytes), joints_norm (None when unlabelled), transform rows, bad frames)."""
    reader = source.reader
    frames, crops, joints, transforms, bad = [], [], [], [], []
    for i in range(start, min(start + CHUNK, len(reader))):
        try:
            if not source.labels_ok[i]:
                raise HandganError("labels have NaN or inf values")
            centre = None if source.centres is None else source.centres[i]
            if centre is not None and not np.isfinite(centre).all():
                raise HandganError(source.not_found.get(i, "no hand found"))
            xyz = None if source.xyz is None else source.xyz[i]
            crop, t, joints_norm = _crop_frame(reader, i, centre, xyz, source.cubes[i],
                                               source.params.size)
        except HandganError as e:
            path = str(reader.frame_path(i))  # readers prefix it; the record keeps it apart
            bad.append(BadFrame(i, path, str(e).removeprefix(f"{path}: ")))
            continue
        frames.append(i)
        crops.append(crop.astype(np.float16))
        joints.append(joints_norm)
        transforms.append(transform_row(t))
    return frames, crops, joints, transforms, bad


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
    return crop, t, None if xyz is None else t.xyz_to_norm(xyz)


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
