"""Frame sources: where ``handgan predict`` reads depth frames from, behind one small interface.

A source is an iterable of :class:`Frame` with a ``length`` (None for a live camera) and the
``files`` it reads (outputs must never replace them). Every frame carries its camera and, for a
labelled dataset, its true joints. The depth itself is read when the frame is used
(``Frame.depth()``), so a damaged file is one failed frame, not the end of the sequence.

    FileFrames(paths)             depth files: NYU PNG, 16-bit PNG, MSRA .bin, .npy
    DatasetFrames(reader)         a labelled split (data/: NYUSplit, ICVLSplit, MSRADataset, ...)
    realsense.RealSenseFrames(path)   a RealSense recording (.bag, .db3), played with pyrealsense2
    realsense.RealSenseFrames(None)   a live RealSense camera (pyrealsense2)

``sequence.open_sources(inputs)`` maps command-line inputs to sources. Another camera (Azure
Kinect, Orbbec, ...) plugs in as one more class with ``length``, ``files`` and ``__iter__``
yielding frames of depth in mm with the camera's ``Intrinsics``, and one more line in
``sequence.open_sources``.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from handgan.camera import Intrinsics
from handgan.errors import HandganError

FRAME_SUFFIXES = (".png", ".npy", ".bin")  # .bin: MSRA 2015 frames (data.msra.read_depth_bin)
RECORDING_SUFFIXES = (".bag", ".db3")  # librealsense: ROS1 bags (up to 2.58), ROS2 .db3 (2.59+)
LIVE_PREFIX = "realsense"  # input "realsense" or "realsense:SERIAL" = a live camera


@dataclass(frozen=True, eq=False)
class Frame:
    """One depth frame of a source: its output stem ``name`` (unique within its source), its
    ``origin`` for records and messages (the file, or ``REC.db3#17``), ``read`` returning the
    (H, W) depth in mm (HandganError for a bad frame), its camera (None = the checkpoint's) and
    a labelled frame's (J, 3) true joints ``truth_uvd`` (rows: ``joint_names``)."""

    name: str
    origin: str
    read: Callable[[], np.ndarray]
    intrinsics: Intrinsics | None = None
    truth_uvd: np.ndarray | None = None
    joint_names: tuple[str, ...] = ()

    def depth(self) -> np.ndarray:
        return self.read()


class FrameSource(Protocol):
    """What predict iterates. ``length``: frame count, None when unknown (live); ``files``: the
    files the source reads."""

    length: int | None
    files: Sequence[Path]

    def __iter__(self) -> Iterator[Frame]: ...

def read_depth_frame(path: str | os.PathLike) -> np.ndarray:
    """Read one depth frame -> (H, W) float32 mm; a bad file is a one-line HandganError.

    Formats: NYU's 8-bit RGB PNG (mm = G * 256 + B), a single-channel 16-bit PNG of mm (ICVL),
    MSRA 2015's ``*_depth.bin`` (float32 mm of the hand's box), or a 2-D integer/float ``.npy``
    of mm (read without pickle).
    """
    from handgan.data.files import PNG_COLOR_TYPES, decode_png, png_header, read_bytes
    from handgan.data.folder import read_depth_npy
    from handgan.data.nyu import decode_nyu_depth

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return read_depth_npy(path)
    if suffix == ".bin":
        from handgan.data.msra import read_depth_bin

        return read_depth_bin(path)
    if suffix != ".png":
        raise HandganError(f"{path}: not a depth frame file (expected .png, .npy or MSRA .bin)")
    data = read_bytes(path, "depth PNG")
    expected = "an NYU 8-bit RGB or a 16-bit greyscale depth PNG"
    bit_depth, colour = png_header(data, path, expected)
    # The same decoding as data.nyu.read_depth_png / data.icvl.read_depth_png16, on the bytes
    # already read for the header.
    if colour == 2 and bit_depth == 8:
        return decode_nyu_depth(decode_png(data, path))
    if colour == 0 and bit_depth == 16:
        return decode_png(data, path).astype(np.float32)
    kind = PNG_COLOR_TYPES.get(colour, f"colour type {colour}")
    raise HandganError(f"{path}: not a depth image (expected {expected}, got {bit_depth}-bit "
                       f"{kind})")


class FileFrames:
    """Depth frame files, in the order given, with one camera (None = the checkpoint's)."""

    def __init__(self, paths: Sequence[Path], intrinsics: Intrinsics | None = None) -> None:
        self.files = list(paths)
        self.length: int | None = len(self.files)
        self.intrinsics = intrinsics
        seen: dict[str, int] = {}
        self.names = [unique_name(p.stem, seen) for p in self.files]

    def __iter__(self) -> Iterator[Frame]:
        for path, name in zip(self.files, self.names):
            yield Frame(name, str(path), lambda p=path: read_depth_frame(p), self.intrinsics)


class DatasetFrames:
    """The frames of a labelled split reader (``data/``: ``depth(i)``, ``frame_path(i)``,
    ``joints_uvd()``, ``joint_names``, ``intrinsics``), each with its true joints. The reader's
    camera is used: its labels are in that camera."""

    def __init__(self, reader: Any) -> None:
        self.reader = reader
        self.length: int | None = len(reader)
        self.files = [Path(reader.frame_path(i)) for i in range(len(reader))]
        seen: dict[str, int] = {}
        self.names = [unique_name(p.stem, seen) for p in self.files]
        labels = reader.joints_uvd()
        self.truth = None if labels is None else np.asarray(labels, dtype=np.float64)

    def __iter__(self) -> Iterator[Frame]:
        names = tuple(self.reader.joint_names)
        for i, (path, name) in enumerate(zip(self.files, self.names)):
            yield Frame(name, str(path), lambda i=i: self.reader.depth(i),
                        self.reader.intrinsics, None if self.truth is None else self.truth[i],
                        names)


def is_nyu_split(folder: Path) -> bool:
    """A folder in NYU's format (``joint_data.mat`` beside the depth PNGs): what ``handgan
    synth`` writes and NYU ships."""
    from handgan.data.nyu import JOINT_DATA_NAME

    return (folder / JOINT_DATA_NAME).is_file()


def list_depth_files(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    """Files and folders -> frame files in order: a folder contributes its ``*.png`` / ``*.npy``
    / ``*.bin`` files (not sub-folders) in sorted name order; a file is taken as given."""
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.iterdir()
                           if p.is_file() and p.suffix.lower() in FRAME_SUFFIXES)
            if not found:
                raise HandganError(f"{item}: no depth frames (*.png, *.npy, *.bin) in the folder")
            files.extend(found)
        elif item.exists():
            files.append(item)
        else:
            raise HandganError(f"{item}: no such file or folder")
    return files


def unique_name(stem: str, seen: dict[str, int]) -> str:
    """An output name: ``stem``, with ``-2``, ``-3``... when it was ``seen`` before (the same
    frame name in two folders)."""
    count = seen[stem] = seen.get(stem, 0) + 1
    return stem if count == 1 else f"{stem}-{count}"
