"""What a crop cache is of: a frame reader, the crop parameters and the source's identity and
file fingerprint, which together give the cache key (:class:`CacheSource`).

Any change of a source file (name, size, mtime), a label, a reader setting that chooses frames
or labels, a crop parameter or the cache format gives another key, so the cache is rebuilt
(:func:`~handgan.cachebuild.load_or_build_cache`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import numbers
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from handgan.cachestore import FORMAT_VERSION
from handgan.camera import Intrinsics
from handgan.data.icvl import ICVLSplit
from handgan.data.msra import JOINT_FILE, MSRADataset
from handgan.data.nyu import JOINT_DATA_NAME, NYUSplit
from handgan.errors import HandganError

CROP_SIZES = (64, 128)  # the sizes the networks take
CENTRES = ("gt", "com")  # crop centre: the labelled centre joint, or the localised hand
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
    """How frames become crops: ``size`` S px (64 or 128), ``cube_mm`` for every frame (None:
    the reader's ``cube_mm(i)``, per subject for MSRA, 250 mm for NYU test_2) and ``centre``:
    "gt" the reader's ground-truth ``centre_joint`` (as DeepPrior++ trains), "com"
    :func:`~handgan.preprocess.localize_hand` (what unlabelled readers always use)."""

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
    """Crop centres a learned hand localiser found for every frame of a reader."""

    centres: np.ndarray         # (N, 3) uvd; NaN rows where no hand was found
    not_found: dict[int, str]   # {frame: why} for the NaN rows
    localizer: str              # the localiser's identity (a hash of its weights): in the key

    def key(self) -> str:
        return hashlib.sha256(self.localizer.encode() + np.ascontiguousarray(
            self.centres, dtype=np.float64).tobytes()).hexdigest()


@dataclass
class CacheSource:
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
             located: LocatedCentres | None = None) -> CacheSource:
        """Read ``reader``'s labels and files once and work out the crop centres, the cubes and
        the key. ``located``: with ``params.centre == "com"``, centres a learned localiser found
        (part of the key)."""
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
        cubes = (np.full(n, params.cube_mm) if params.cube_mm is not None
                 else np.array([reader.cube_mm(i) for i in range(n)], dtype=np.float64))
        description, fingerprint = describe_source(reader), source_fingerprint(reader, uvd, xyz)
        key_input = {"format": FORMAT_VERSION, "source": description,
                     "fingerprint": fingerprint["sha256"], "params": dataclasses.asdict(params),
                     # per-frame cubes come from the reader (per subject for MSRA)
                     "cubes": hashlib.sha256(cubes.tobytes()).hexdigest()}
        if located is not None and params.centre == "com":
            key_input["located"] = located.key()
        key = hashlib.sha256(json.dumps(key_input, sort_keys=True).encode()).hexdigest()[:24]
        return cls(reader, params, description, fingerprint, key, centres, xyz, labels_ok, cubes,
                   dict(located.not_found) if located is not None else {})

    def expected(self) -> dict:
        """What the manifest of this source's cache must hold
        (:func:`~handgan.cachestore.cache_problem`)."""
        return {"key": self.key, "source": self.description, "fingerprint": self.fingerprint,
                "params": dataclasses.asdict(self.params)}


def describe_source(reader: FrameReader) -> dict:
    """JSON-ready identity of a reader: kind, root, the settings that choose frames and labels,
    joint names and camera. (The frame count and files are in the fingerprint.)"""
    description = {"kind": type(reader).__name__, "root": str(Path(reader.root).resolve()),
                   **{name: getattr(reader, name) for name in _READER_FIELDS
                      if hasattr(reader, name)}}
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
    root, labels = Path(reader.root), label_files(reader)
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


