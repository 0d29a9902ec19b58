"""Read the ICVL hand dataset (Tang et al. 2014): 16-bit depth PNGs and text label files.

Two on-disk layouts are accepted; each split uses the first one whose label file exists:

* the official archive: ``ROOT/Training/labels.txt`` with frames under ``ROOT/Training/Depth/``,
  and ``ROOT/Testing/test_seq_{1,2}.txt`` with frames under ``ROOT/Testing/Depth/``;
* DeepPrior++'s renamed layout: ``ROOT/train.txt``, ``ROOT/test_seq_{1,2}.txt`` and one
  ``ROOT/Depth/`` folder holding every frame.

A label line is ``<relpath> u1 v1 d1 ... u16 v16 d16``: the frame's path under the Depth folder,
then 16 joints as (u px, v px, d mm) in the order of ``ICVL_JOINT_NAMES``. Blank lines are skipped
and any whitespace separates fields (so CRLF line ends and trailing spaces are harmless).

Training folders whose first path component has at most 6 characters hold in-plane-rotated copies
of the originals (which live in timestamp folders such as ``201403121135/``). DeepPrior++ trains
on the originals only, and so does ``ICVLSplit`` unless ``include_rotated=True``.

Depth is single-channel 16-bit PNG in mm; 32001 marks "no depth" and is read as 0, the convention
of every handgan reader (DeepPrior++ gets the same effect from its 1500 mm far clip).

Camera: ``camera.ICVL`` (fx = fy = 241.42, DeepPrior++'s value, used for cropping) with y **down**,
so ``joints_xyz`` is in ICVL's own convention. The field's evaluator back-projects ICVL with
fx 240.99, fy 240.96 instead (shared eval-data README); metrics against published ICVL numbers
must use those, so do not compare xyz from this module with the evaluator's xyz directly.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np

from handgan.camera import ICVL, Intrinsics
from handgan.data.files import (
    PNG_COLOR_TYPES,
    Reader,
    decode_png,
    parse_numbers,
    png_header,
    read_bytes,
    read_text,
)
from handgan.errors import HandganError
from handgan.joints import ICVL_JOINT_NAMES  # C, T1 .. P3: file order (readable: joints.ICVL16)

N_JOINTS = len(ICVL_JOINT_NAMES)
ICVL_CUBE_MM = 250.0  # DeepPrior++ uses 250 mm for every ICVL sequence
ICVL_INVALID_DEPTH = 32001  # the sensor's "no depth" code in ICVL frames

# sequence -> (label file, Depth folder) relative to ROOT, in the two layouts, archive first.
_LAYOUTS: dict[str, tuple[tuple[str, str], ...]] = {
    "train": (("Training/labels.txt", "Training/Depth"), ("train.txt", "Depth")),
    "test_seq_1": (("Testing/test_seq_1.txt", "Testing/Depth"), ("test_seq_1.txt", "Depth")),
    "test_seq_2": (("Testing/test_seq_2.txt", "Testing/Depth"), ("test_seq_2.txt", "Depth")),
}
# A split is one or more label sequences read back to back; "test" is the order of the field's
# 1596-line ground-truth file (test_seq_1 then test_seq_2).
SPLITS: dict[str, tuple[str, ...]] = {q: (q,) for q in _LAYOUTS} | {
    "test": ("test_seq_1", "test_seq_2")}
_ROTATED_MAX_CHARS = 6  # DeepPrior++'s rule: a first path component this short is a rotated copy


def is_rotated_copy(relpath: str) -> bool:
    """True for a training frame that is an in-plane-rotated copy (short first folder name)."""
    parts = relpath.split("/")
    return len(parts) > 1 and len(parts[0]) <= _ROTATED_MAX_CHARS


def find_sequence(root: str | Path, sequence: str) -> tuple[Path, Path]:
    """(label file, Depth folder) of ``sequence`` under ``root``, in whichever layout exists."""
    root = Path(root)
    candidates = [(root / labels, root / depth) for labels, depth in _LAYOUTS[sequence]]
    for labels, depth in candidates:
        if labels.is_file():
            return labels, depth
    tried = " or ".join(str(labels) for labels, _ in candidates)
    raise HandganError(f"{root}: ICVL {sequence} labels not found (looked for {tried})")


def available_splits(root: str | Path) -> list[str]:
    """The splits whose label files exist under ``root``: "train", then "test" when both test
    sequences are there, else whichever one is (DeepPrior++ evaluates on test_seq_1 alone)."""
    if not Path(root).is_dir():
        raise HandganError(f"{root}: ICVL dataset folder not found")

    def has(sequence: str) -> bool:
        return any((Path(root) / labels).is_file() for labels, _ in _LAYOUTS[sequence])

    tests = [q for q in ("test_seq_1", "test_seq_2") if has(q)]
    return (["train"] if has("train") else []) + (["test"] if len(tests) == 2 else tests)


def read_icvl_labels(path: str | Path,
                     include_rotated: bool = True) -> tuple[list[str], np.ndarray]:
    """Parse an ICVL label file -> (relpaths, uvd (N, 16, 3) float64 u px, v px, d mm), rows in
    file order. With ``include_rotated=False`` rotated training copies are dropped before their
    numbers are parsed (they are most of labels.txt). Errors name the file and line."""
    path = Path(path)
    text = read_text(path, "ICVL label file")
    relpaths: list[str] = []
    line_numbers: list[int] = []
    rows: list[list[str]] = []
    n_rotated = 0
    for number, line in enumerate(text.splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 1 + 3 * N_JOINTS:
            raise HandganError(f"{path}:{number}: expected a frame path and {3 * N_JOINTS} "
                               f"numbers, got {len(parts)} fields")
        if not include_rotated and is_rotated_copy(parts[0]):
            n_rotated += 1
            continue
        relpaths.append(parts[0])
        line_numbers.append(number)
        rows.append(parts[1:])
    if not relpaths:
        if n_rotated:
            raise HandganError(f"{path}: all {n_rotated} label lines are rotated copies "
                               "(include_rotated=False)")
        raise HandganError(f"{path}: no label lines")
    return relpaths, parse_numbers(path, rows, line_numbers).reshape(-1, N_JOINTS, 3)


def read_depth_png16(path: str | Path) -> np.ndarray:
    """Read a single-channel 16-bit PNG of depth in mm -> (H, W) float32, values as stored."""
    path = Path(path)
    data = read_bytes(path, "depth PNG")
    # Check the IHDR ourselves: Pillow would happily hand us 8-bit or RGB data as numbers too.
    bit_depth, color_type = png_header(data, path, "a 16-bit greyscale depth PNG")
    if color_type != 0 or bit_depth != 16:
        kind = PNG_COLOR_TYPES.get(color_type, f"colour type {color_type}")
        raise HandganError(f"{path}: not a depth PNG (expected 16-bit greyscale mm, got "
                           f"{bit_depth}-bit {kind})")
    # mode 'I;16' -> uint16 ('I' -> int32 on old Pillow)
    return decode_png(data, path).astype(np.float32)


class ICVLSplit(Reader):
    """One ICVL split: labels in memory, depth frames read on demand.

    ``split`` is "train", "test_seq_1", "test_seq_2" or "test" (= test_seq_1 + test_seq_2, the
    order of the field's 1596-line ground truth). Like DeepPrior++ (and ``NYUSplit``), label rows
    whose PNG is missing are skipped: ``len`` counts the frames present and frame ``i`` is row
    ``frame_ids[i]`` of the split's label rows (for "train" without rotated copies: of the
    original-frame rows). ``include_rotated`` only affects "train". ``joints_xyz`` is
    back-projected from uvd with camera.ICVL (y **down**).
    """

    intrinsics: Intrinsics = ICVL
    joint_names: tuple[str, ...] = ICVL_JOINT_NAMES
    default_cube_mm: float = ICVL_CUBE_MM
    # DeepPrior++ crops ICVL around the palm centre "C", the first joint of the file.
    centre_joint: int = 0
    _read = staticmethod(read_depth_png16)
    _no_depth = ICVL_INVALID_DEPTH

    def __init__(self, root: str | Path, split: str = "train",
                 include_rotated: bool = False) -> None:
        if split not in SPLITS:
            raise HandganError(f"unknown ICVL split {split!r} (expected one of {list(SPLITS)})")
        self.root, self.split, self.include_rotated = Path(root), split, include_rotated
        if not self.root.is_dir():
            raise HandganError(f"{self.root}: ICVL dataset folder not found")

        self.label_paths: list[Path] = []
        depth_dirs: list[Path] = []
        paths: list[Path] = []
        rows: list[np.ndarray] = []
        for sequence in SPLITS[split]:
            label_path, depth_dir = find_sequence(self.root, sequence)
            relpaths, uvd = read_icvl_labels(label_path, include_rotated or sequence != "train")
            self.label_paths.append(label_path)
            depth_dirs.append(depth_dir)
            paths.extend(depth_dir / relpath for relpath in relpaths)
            rows.append(uvd)

        self.frame_ids = np.flatnonzero(_existing(paths)).astype(np.int64)
        if len(self.frame_ids) == 0:
            listed = ", ".join(str(p) for p in self.label_paths)
            looked = ", ".join(sorted({str(d) for d in depth_dirs}))
            raise HandganError(f"{listed}: none of the {len(paths)} depth PNGs listed is present "
                               f"under {looked}")
        self._paths = [paths[k] for k in self.frame_ids]
        self._uvd = np.concatenate(rows)[self.frame_ids]  # (N, 16, 3) px, px, mm

    def __repr__(self) -> str:
        return (f"ICVLSplit({str(self.root)!r}, split={self.split!r}, "
                f"include_rotated={self.include_rotated}, n={len(self)})")

    def joints_xyz(self) -> np.ndarray:
        return self.intrinsics.uvd_to_xyz(self._uvd)  # on demand: labels.txt has 330k rows


def _existing(paths: list[Path]) -> np.ndarray:
    """Which of ``paths`` exist, with one listing per folder instead of one stat per file."""

    @functools.cache
    def listing(folder: Path) -> set[str]:
        try:
            return set(os.listdir(folder))
        except (FileNotFoundError, NotADirectoryError):
            return set()

    return np.array([path.name in listing(path.parent) for path in paths], dtype=bool)
