"""Read the MSRA 2015 hand dataset (Sun et al., CVPR 2015): cropped .bin depth and joint.txt.

On disk: ``ROOT/P0 ... P8/<gesture>/`` (9 subjects; 17 gestures ``1 ... 9, I, IP, L, MP, RP, T,
TIP, Y``), each gesture folder holding

* ``joint.txt``: line 1 is the frame count N, then N lines of 63 numbers = 21 joints x (x, y, z)
  mm in the order of ``MSRA_JOINT_NAMES``. z is stored **negative**; like DeepPrior++ we negate it,
  which gives the y-up camera frame of ``camera.MSRA``, and project to uvd with that camera.
* ``000000_depth.bin`` ... (6 digits, 0-based, frame k = line k + 2 of joint.txt): a header of six
  little-endian int32 ``width height left top right bottom``, then (bottom - top) * (right - left)
  float32 depths in mm, row-major, for the box rows [top, bottom) x cols [left, right) of a zero
  image of height x width.

Gesture folders are taken in sorted order, whatever of the 17 exist. The DeepPrior++ cube is per
subject (``MSRA_CUBES_MM``); the field evaluates leave-one-subject-out (``msra_fold``), each frame
cropped with its own subject's cube.
"""
from __future__ import annotations

import os
import re
import struct
from pathlib import Path

import numpy as np

from handgan.camera import MSRA, Intrinsics
from handgan.data.files import Reader, parse_numbers, read_bytes, read_text
from handgan.errors import HandganError
from handgan.joints import MSRA_JOINT_NAMES  # wrist, then index .. thumb, knuckle to tip

N_JOINTS = len(MSRA_JOINT_NAMES)
assert N_JOINTS == 21

# DeepPrior++'s cube side per subject (mm): smaller hands, smaller cubes.
MSRA_CUBES_MM: dict[int, float] = {
    0: 200.0, 1: 200.0, 2: 200.0, 3: 180.0, 4: 180.0, 5: 180.0, 6: 170.0, 7: 160.0, 8: 150.0,
}
# Frames DeepPrior++'s importer documents as faulty (it does not drop them), as
# (subject, gesture) -> 0-based frame numbers, i.e. the number in ``<frame>_depth.bin``.
MSRA_FAULTY_FRAMES: dict[tuple[int, str], tuple[int, ...]] = {
    (2, "TIP"): (172, 173, 174),
    (2, "MP"): (173, 174, 175, *range(345, 355), 356, 359, 360),
    (3, "T"): (120, 489),
    (8, "4"): (168,),
}

JOINT_FILE = "joint.txt"
_HEADER = struct.Struct("<6i")  # width, height, left, top, right, bottom
_BIN_NAME = re.compile(r"(\d{6})_depth\.bin")
_SUBJECT_NAME = re.compile(r"P(\d)")


def bin_name(frame: int) -> str:
    """File name of 0-based frame ``frame`` of a gesture folder."""
    return f"{frame:06d}_depth.bin"


def read_depth_bin(path: str | Path) -> np.ndarray:
    """Read one MSRA .bin frame -> (height, width) float32 depth mm, zero outside the box."""
    path = Path(path)
    data = read_bytes(path, "depth .bin")
    if len(data) < _HEADER.size:
        raise HandganError(f"{path}: truncated .bin: {len(data)} bytes, shorter than the "
                           f"{_HEADER.size}-byte header")
    width, height, left, top, right, bottom = _HEADER.unpack_from(data)
    box_text = f"box left={left} top={top} right={right} bottom={bottom}"
    if min(width, height, left, top, right, bottom) < 0 or width == 0 or height == 0:
        raise HandganError(f"{path}: bad .bin header: negative or zero value in image "
                           f"{width}x{height}, {box_text}")
    if not (left <= right <= width and top <= bottom <= height):
        raise HandganError(f"{path}: bad .bin header: {box_text} is outside the {width}x{height} "
                           "image or inverted")
    box_h, box_w = bottom - top, right - left
    expected = box_h * box_w * 4
    payload = len(data) - _HEADER.size
    if payload != expected:
        problem = "truncated .bin" if payload < expected else "trailing bytes in .bin"
        raise HandganError(f"{path}: {problem}: the header's {box_w}x{box_h} box needs {expected} "
                           f"bytes of float32 depth, the file has {payload}")
    box = np.frombuffer(data, dtype="<f4", count=box_h * box_w, offset=_HEADER.size)
    if not np.all(np.isfinite(box)):
        raise HandganError(f"{path}: depth has NaN or inf values")
    depth = np.zeros((height, width), dtype=np.float32)
    depth[top:bottom, left:right] = box.reshape(box_h, box_w)
    return depth


def read_joint_txt(path: str | Path) -> np.ndarray:
    """Read a gesture's joint.txt -> (N, 21, 3) float64 x, y, z mm **as stored** (z negative).

    The first line must be the frame count and exactly that many lines of 63 numbers must follow
    (blank lines at the end are allowed). Errors name the file and line.
    """
    path = Path(path)
    lines = read_text(path, "joint.txt").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    head = lines[0].split() if lines else []
    if len(head) != 1 or not head[0].isdigit():
        shown = lines[0].strip()[:40] if lines else ""
        raise HandganError(f"{path}:1: expected the frame count, got {shown!r}")
    count = int(head[0])
    if len(lines) - 1 != count:
        raise HandganError(f"{path}: line 1 says {count} frames but {len(lines) - 1} label lines "
                           "follow")
    values = np.empty((count, 3 * N_JOINTS), dtype=np.float64)
    for k, line in enumerate(lines[1:]):  # line by line: the first bad line is the one reported
        parts = line.split()
        if len(parts) != 3 * N_JOINTS:
            raise HandganError(f"{path}:{k + 2}: expected {3 * N_JOINTS} numbers (21 joints x, y, "
                               f"z), got {len(parts)}")
        values[k] = parse_numbers(path, [parts], [k + 2])[0]
    return values.reshape(count, N_JOINTS, 3)


def list_subjects(root: str | Path) -> list[int]:
    """Subject numbers (0-8) with a ``P<k>`` folder under ``root``, sorted."""
    root = Path(root)
    if not root.is_dir():
        raise HandganError(f"{root}: MSRA dataset folder not found")
    found = [int(m[1]) for e in os.scandir(root)
             if (m := _SUBJECT_NAME.fullmatch(e.name)) and e.is_dir()]
    return sorted(s for s in found if s in MSRA_CUBES_MM)


def _check_subject(root: Path, subject: int, available: list[int]) -> None:
    if subject not in MSRA_CUBES_MM:
        raise HandganError(f"unknown MSRA subject {subject!r} (expected 0 ... 8)")
    if subject not in available:
        raise HandganError(f"{root / f'P{subject}'}: MSRA subject folder not found; found "
                           f"{available}")


class MSRADataset(Reader):
    """The frames of some MSRA subjects: labels in memory, depth frames read on demand.

    Frames are ordered by subject, then gesture folder (sorted), then frame number. ``subjects``
    defaults to every ``P0``-``P8`` folder present. With ``skip_faulty`` the frames listed in
    ``MSRA_FAULTY_FRAMES`` are left out. Per frame: ``subject_ids`` and
    ``frame_numbers`` (the number in the .bin name). ``default_cube_mm`` is the largest cube of
    the subjects (one crop size that holds every hand); ``cube_mm(i)`` is DeepPrior++'s cube for
    frame i's subject. uvd is projected from xyz with camera.MSRA (y up, z > 0).
    """

    intrinsics: Intrinsics = MSRA
    joint_names: tuple[str, ...] = MSRA_JOINT_NAMES
    # MSRA has no palm-centre joint; DeepPrior++ crops around the middle finger's MCP (index 5).
    centre_joint: int = MSRA_JOINT_NAMES.index("middle_mcp")
    _read = staticmethod(read_depth_bin)

    def __init__(self, root: str | Path, subjects: list[int] | None = None,
                 skip_faulty: bool = False) -> None:
        self.root, self.skip_faulty = Path(root), skip_faulty
        available = list_subjects(self.root)
        if subjects is None:
            if not available:
                raise HandganError(f"{self.root}: no MSRA subject folders P0 ... P8 found")
            subjects = available
        for s in subjects:
            _check_subject(self.root, s, available)
        self.subjects: tuple[int, ...] = tuple(sorted(set(subjects)))
        if not self.subjects:
            raise HandganError(f"{self.root}: no MSRA subjects selected (subjects=[])")

        self._folders: list[Path] = []  # one per (subject, gesture)
        folder_subjects, numbers, xyz_parts = [], [], []
        for s in self.subjects:
            subject_dir = self.root / f"P{s}"
            gestures = sorted(e.name for e in os.scandir(subject_dir) if e.is_dir())
            if not gestures:
                raise HandganError(f"{subject_dir}: no gesture folders")
            for gesture in gestures:
                folder = subject_dir / gesture
                xyz_file = read_joint_txt(folder / JOINT_FILE)
                _check_bin_files(folder, len(xyz_file))
                keep = np.ones(len(xyz_file), dtype=bool)
                if skip_faulty:
                    faulty = [k for k in MSRA_FAULTY_FRAMES.get((s, gesture), ()) if k < len(keep)]
                    keep[faulty] = False
                numbers.append(np.flatnonzero(keep))
                xyz_parts.append(xyz_file[keep])
                folder_subjects.append(s)
                self._folders.append(folder)

        counts = [len(n) for n in numbers]
        self._folder_ids = np.repeat(np.arange(len(self._folders), dtype=np.int64), counts)
        self.subject_ids = np.repeat(np.array(folder_subjects, dtype=np.int64), counts)
        self.frame_numbers = np.concatenate(numbers).astype(np.int64)
        if len(self.frame_numbers) == 0:
            raise HandganError(f"{self.root}: the selected MSRA subjects {list(self.subjects)} "
                               "have no frames")
        self._xyz = np.concatenate(xyz_parts)
        self._xyz[..., 2] *= -1.0  # joint.txt stores -z; DeepPrior++ negates it to get depth
        self._uvd = self.intrinsics.xyz_to_uvd(self._xyz)
        self.default_cube_mm: float = max(MSRA_CUBES_MM[s] for s in self.subjects)

    def __repr__(self) -> str:
        return (f"MSRADataset({str(self.root)!r}, subjects={list(self.subjects)}, "
                f"skip_faulty={self.skip_faulty}, n={len(self)})")

    def frame_path(self, i: int) -> Path:
        return self._folders[self._folder_ids[i]] / bin_name(int(self.frame_numbers[i]))

    def cube_mm(self, i: int) -> float:
        return MSRA_CUBES_MM[int(self.subject_ids[i])]


def _check_bin_files(folder: Path, count: int) -> None:
    """The folder must hold exactly frames 000000 ... count-1 (one listing, no stat calls)."""
    numbers = sorted(int(m[1]) for m in map(_BIN_NAME.fullmatch, os.listdir(folder)) if m)
    if numbers != list(range(count)):
        missing = sorted(set(range(count)) - set(numbers))
        detail = f"; first missing: {bin_name(missing[0])}" if missing else ""
        raise HandganError(f"{folder / JOINT_FILE}: says {count} frames but the folder has "
                           f"{len(numbers)} *_depth.bin files{detail}")


def msra_fold(root: str | Path, test_subject: int) -> tuple[MSRADataset, MSRADataset]:
    """Leave-one-subject-out split: (every other subject present, ``test_subject``)."""
    available = list_subjects(root)
    _check_subject(Path(root), test_subject, available)
    train_subjects = [s for s in available if s != test_subject]
    if not train_subjects:
        raise HandganError(f"{root}: only subject P{test_subject} is present; nothing to train on")
    return MSRADataset(root, train_subjects), MSRADataset(root, [test_subject])
