"""Read a plain folder of depth frames from any camera: unlabelled, with user-given intrinsics.

The folder holds frames directly (sub-folders are ignored), taken in sorted file-name order:

* ``*.png``: single-channel 16-bit PNG, depth in mm (the ICVL encoding; 0 = no depth, and with
  the ICVL camera its "no depth" code 32001);
* ``*.npy``: a 2-D integer or float array of depth in mm (no NaN/inf, no negative values).

Other files are ignored unless ``pattern`` selects them, in which case they are an error. Every
frame must match the intrinsics' width x height. Intrinsics come from ``parse_intrinsics``:
``nyu``, ``icvl``, ``msra`` or ``fx,fy,cx,cy[,width,height]``. A pure parser cannot look at the
frames, so when width and height are left out they default to 640x480 (VGA, the size of most
depth cameras); a folder of other-sized frames then fails on its first frame with a message that
says to pass them. Custom cameras get y up (the NYU/MSRA convention of camera.py).
"""
from __future__ import annotations

import fnmatch
import math
import os
from pathlib import Path

import numpy as np

from handgan.camera import CAMERAS, Intrinsics
from handgan.data.files import MAX_FRAME_PIXELS, Reader, check_frame_pixels, one_line
from handgan.data.icvl import ICVL_INVALID_DEPTH, read_depth_png16
from handgan.errors import HandganError
from handgan.preprocess import DEFAULT_CUBE_MM

FRAME_SUFFIXES = (".png", ".npy")
# Focal lengths of real depth cameras are a few hundred px; these bounds only catch unit mistakes.
MIN_FOCAL_PX, MAX_FOCAL_PX = 1.0, 1e5
DEFAULT_SIZE = (640, 480)  # width, height when parse_intrinsics is given only fx,fy,cx,cy
_INTRINSICS_HELP = "expected nyu, icvl, msra or fx,fy,cx,cy[,width,height]"


def parse_intrinsics(text: str) -> Intrinsics:
    """``"nyu"``/``"icvl"``/``"msra"`` or ``"fx,fy,cx,cy[,width,height]"`` -> Intrinsics."""
    name = text.strip().lower()
    if name in CAMERAS:
        return CAMERAS[name]
    fields = [f.strip() for f in text.split(",")]
    if len(fields) not in (4, 6):
        raise HandganError(f"bad intrinsics {text!r}: {_INTRINSICS_HELP}")
    try:
        fx, fy, cx, cy = (float(f) for f in fields[:4])
    except ValueError:
        raise HandganError(f"bad intrinsics {text!r}: fx,fy,cx,cy must be numbers") from None
    if not all(math.isfinite(v) for v in (fx, fy, cx, cy)) or fx <= 0 or fy <= 0:
        raise HandganError(f"bad intrinsics {text!r}: fx and fy must be > 0, all values finite")
    if not (MIN_FOCAL_PX <= fx <= MAX_FOCAL_PX and MIN_FOCAL_PX <= fy <= MAX_FOCAL_PX):
        raise HandganError(f"bad intrinsics {text!r}: fx and fy must be {MIN_FOCAL_PX:g} to "
                           f"{MAX_FOCAL_PX:g} px")
    width, height = DEFAULT_SIZE
    if len(fields) == 6:
        try:
            width, height = int(fields[4]), int(fields[5])
        except ValueError:
            raise HandganError(f"bad intrinsics {text!r}: width and height must be whole "
                               "pixels") from None
        if width <= 0 or height <= 0:
            raise HandganError(f"bad intrinsics {text!r}: width and height must be > 0")
        if width * height > MAX_FRAME_PIXELS:
            raise HandganError(f"bad intrinsics {text!r}: {width}x{height} is larger than any "
                               "depth camera")
    if not (0 <= cx <= width and 0 <= cy <= height):
        raise HandganError(f"bad intrinsics {text!r}: the principal point (cx, cy) must lie "
                           f"in the {width}x{height} image")
    return Intrinsics(fx=fx, fy=fy, cx=cx, cy=cy, width=width, height=height, y_up=True)


def read_depth_npy(path: str | Path) -> np.ndarray:
    """Read a 2-D integer/float .npy of depth mm -> (H, W) float32. Bad files raise HandganError."""
    path = Path(path)
    try:
        # Never unpickle objects from a data folder; map first, so a header that claims a huge
        # array costs nothing (a file too short for it fails here).
        array = np.load(path, allow_pickle=False, mmap_mode="r")
        if isinstance(array, np.ndarray):
            if array.ndim == 2:
                check_frame_pixels(array.shape[1], array.shape[0], path)
            elif array.size > MAX_FRAME_PIXELS:
                raise HandganError(f"{path}: depth must be a 2-D (H, W) array, got shape "
                                   f"{array.shape}")
            array = np.array(array)
    except FileNotFoundError:
        raise HandganError(f"{path}: depth .npy not found") from None
    except (OSError, ValueError, EOFError) as e:
        raise HandganError(f"{path}: not a readable .npy array ({one_line(e)})") from None
    if not isinstance(array, np.ndarray):  # np.load returns an NpzFile for .npz content
        raise HandganError(f"{path}: not a .npy array (an .npz archive?)")
    if array.ndim != 2:
        raise HandganError(f"{path}: depth must be a 2-D (H, W) array, got shape {array.shape}")
    if array.dtype.kind not in "iuf":  # signed, unsigned, float: bool or complex is a mistake
        raise HandganError(f"{path}: depth must be integer or float mm, got dtype {array.dtype}")
    depth = array.astype(np.float32)
    if not np.all(np.isfinite(depth)):
        raise HandganError(f"{path}: depth has NaN or inf values (use 0 for no depth)")
    if array.size and array.min() < 0:
        raise HandganError(f"{path}: depth has negative values (min {array.min()}); expected "
                           "mm >= 0")
    return depth


_READERS = {".png": read_depth_png16, ".npy": read_depth_npy}
PROBE_FRAMES = 8  # leading frames tried when a folder is opened


class FolderFrames(Reader):
    """Depth frames in one folder, read on demand; no labels (``joints_*`` return None)."""

    joint_names: tuple[str, ...] = ()
    centre_joint: int | None = None  # no labels: crops are centred by localize_hand
    _uvd = _xyz = None
    _size_hint = " by the intrinsics (give fx,fy,cx,cy,width,height)"

    def __init__(self, root: str | Path, intrinsics: Intrinsics, cube_mm: float = DEFAULT_CUBE_MM,
                 pattern: str | None = None) -> None:
        self.root, self.intrinsics, self.pattern = Path(root), intrinsics, pattern
        if not (cube_mm > 0 and math.isfinite(cube_mm)):
            raise HandganError(f"cube size must be > 0 mm, got {cube_mm}")
        self.default_cube_mm = float(cube_mm)
        # the ICVL camera's "no depth" code reads as 0, as the ICVL reader does
        self._no_depth = ICVL_INVALID_DEPTH if intrinsics == CAMERAS["icvl"] else None
        if not self.root.is_dir():
            raise HandganError(f"{self.root}: frame folder not found")

        names = sorted(e.name for e in os.scandir(self.root) if e.is_file())
        if pattern is None:
            names = [n for n in names if Path(n).suffix.lower() in FRAME_SUFFIXES]
        else:
            names = fnmatch.filter(names, pattern)
            wrong = [n for n in names if Path(n).suffix.lower() not in FRAME_SUFFIXES]
            if wrong:
                raise HandganError(f"{self.root / wrong[0]}: unsupported frame file (expected "
                                   ".png or .npy)")
        if not names:
            what = f"matching {pattern!r}" if pattern else "(*.png, *.npy)"
            raise HandganError(f"{self.root}: no depth frames {what} in the folder")
        self._paths = [self.root / n for n in names]
        # Reading one frame now catches the usual mistake (wrong camera/size) before any work.
        # A damaged first frame is a bad frame like any other (skipped with on_bad=skip), so
        # the check reads the first of the leading frames that can be read.
        first_error = None
        for i in range(min(len(self._paths), PROBE_FRAMES)):
            try:
                self.depth(i)
                break
            except HandganError as e:
                first_error = first_error or e
        else:
            raise first_error

    def __len__(self) -> int:
        return len(self._paths)

    def __repr__(self) -> str:
        return f"FolderFrames({str(self.root)!r}, n={len(self)}, cube_mm={self.default_cube_mm})"

    @staticmethod
    def _read(path: Path) -> np.ndarray:
        return _READERS[path.suffix.lower()](path)
