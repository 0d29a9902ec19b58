"""Frame sources: where ``handgan predict`` reads depth frames from, behind one small interface.

A source is an iterable of :class:`Frame` with a ``length`` (None for a live camera) and the
``files`` it reads (outputs must never replace them). Every frame carries its camera and, for a
labelled dataset, its true joints. The depth itself is read when the frame is used
(``Frame.depth()``), so a damaged file is one failed frame, not the end of the sequence.

    FileFrames(paths)             depth files: NYU PNG, 16-bit PNG, .npy (what predict always read)
    DatasetFrames(reader)         a labelled split (data/: NYUSplit, ICVLSplit, MSRADataset, ...)
    RealSenseFrames(path)         a RealSense recording (.bag, .db3), played back with pyrealsense2
    RealSenseFrames(None)         a live RealSense camera (pyrealsense2)

``open_sources(inputs)`` maps command-line inputs to sources. Another camera (Azure Kinect,
Orbbec, ...) plugs in as one more class with ``length``, ``files`` and ``__iter__`` yielding
frames of depth in mm with the camera's ``Intrinsics``, and one more line in ``open_sources``.
"""
from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from handgan.camera import Intrinsics
from handgan.data.folder import FRAME_SUFFIXES
from handgan.errors import HandganError

RECORDING_SUFFIXES = (".bag", ".db3")  # librealsense: ROS1 bags (up to 2.58), ROS2 .db3 (2.59+)
LIVE_PREFIX = "realsense"  # input "realsense" or "realsense:SERIAL" = a live camera
LIVE_TIMEOUT_MS = 5000  # a live camera that sends nothing for this long is an error
PLAYBACK_TIMEOUT_MS = 200  # how often a recording's player is asked whether it has ended
PLAYBACK_STALL_MS = 30000  # a player that neither ends nor gives a frame for this long is stuck
REALSENSE_MISSING = "RealSense input needs pyrealsense2: pip install 'handgan[realsense]'"


@dataclass(frozen=True, eq=False)
class Frame:
    """One depth frame of a source.

    Attributes:
        name: output stem (``NAME.json``, ``NAME.overlay.png``), unique within its source.
        origin: where it came from, for records and messages: the file, or ``REC.db3#17``.
        read: returns the (H, W) depth in mm; raises HandganError for a bad frame.
        intrinsics: the frame's camera; None = the checkpoint's training camera.
        truth_uvd: (J, 3) true joints (u, v px, d mm) of a labelled frame, else None.
        joint_names: names of the ``truth_uvd`` rows.
    """

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


# --------------------------------------------------------------------------------------------
# Files and labelled datasets
# --------------------------------------------------------------------------------------------

class FileFrames:
    """Depth frame files, in the order given, with one camera (None = the checkpoint's)."""

    def __init__(self, paths: Sequence[Path], intrinsics: Intrinsics | None = None) -> None:
        self.files = list(paths)
        self.length: int | None = len(self.files)
        self.intrinsics = intrinsics
        self.names = unique_names([p.stem for p in self.files])

    def __iter__(self) -> Iterator[Frame]:
        from handgan.inference import read_depth_frame

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
        self.names = unique_names([p.stem for p in self.files])
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
    files (not sub-folders) in sorted name order; a file is taken as given.

    Raises:
        HandganError: an input that does not exist, or a folder without frames.
    """
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.iterdir()
                           if p.is_file() and p.suffix.lower() in FRAME_SUFFIXES)
            if not found:
                raise HandganError(f"{item}: no depth frames (*.png, *.npy) in the folder")
            files.extend(found)
        elif item.exists():
            files.append(item)
        else:
            raise HandganError(f"{item}: no such file or folder")
    return files


def unique_names(stems: Sequence[str]) -> list[str]:
    """Output names: each stem, with ``-2``, ``-3``... when stems repeat (the same frame name in
    two folders)."""
    seen: dict[str, int] = {}
    names = []
    for stem in stems:
        count = seen[stem] = seen.get(stem, 0) + 1
        names.append(stem if count == 1 else f"{stem}-{count}")
    return names


def open_sources(inputs: Sequence[str | os.PathLike], intrinsics: Intrinsics | None = None,
                 max_frames: int | None = None) -> list[FrameSource]:
    """Command-line inputs -> frame sources, in order.

    * ``realsense`` or ``realsense:SERIAL``: a live RealSense camera;
    * a ``.bag`` / ``.db3`` file: a RealSense recording (its own camera and depth unit);
    * a folder holding ``joint_data.mat``: an NYU-format labelled split (its camera, NYU);
    * other folders and files: depth frame files with ``intrinsics``, as before.

    Consecutive plain files and folders form one source. ``max_frames`` caps recordings and
    the live camera.
    """
    sources: list[FrameSource] = []
    plain: list[str | os.PathLike] = []

    def flush() -> None:
        if plain:
            sources.append(FileFrames(list_depth_files(plain), intrinsics))
            plain.clear()

    for item in inputs:
        text = os.fspath(item)
        path = Path(text)
        if text == LIVE_PREFIX or (text.startswith(LIVE_PREFIX + ":") and not path.exists()):
            flush()
            serial = text.partition(":")[2] or None
            sources.append(RealSenseFrames(None, serial=serial, max_frames=max_frames))
        elif path.suffix.lower() in RECORDING_SUFFIXES:
            flush()
            if not path.is_file():
                raise HandganError(f"{path}: no such recording")
            sources.append(RealSenseFrames(path, max_frames=max_frames))
        elif path.is_dir() and is_nyu_split(path):
            from handgan.data.nyu import NYUSplit

            flush()
            sources.append(DatasetFrames(NYUSplit(path.parent, path.name)))
        else:
            plain.append(item)
    flush()
    return sources


# --------------------------------------------------------------------------------------------
# RealSense: recordings and live cameras (pyrealsense2, an optional extra)
# --------------------------------------------------------------------------------------------

def import_realsense():
    """The ``pyrealsense2`` module, or a one-line HandganError saying how to install it."""
    try:
        import pyrealsense2 as rs
    except ModuleNotFoundError as e:
        if e.name == "pyrealsense2":
            raise HandganError(REALSENSE_MISSING) from None
        raise HandganError(f"{REALSENSE_MISSING} (it failed to load: {e})") from None
    except ImportError as e:  # the wheel links libusb-1.0, a system library
        hint = "; install libusb-1.0 (Debian/Ubuntu: apt-get install libusb-1.0-0)" \
            if "libusb" in str(e) else ""
        raise HandganError(f"pyrealsense2 is installed but failed to load ({e}){hint}") from None
    return rs


class RealSenseFrames:
    """Depth frames of a RealSense recording (``path``) or live camera (``path`` None).

    The camera and depth unit come from the stream itself: intrinsics from the depth stream
    profile (fx, fy, ppx, ppy, size; lens distortion is ignored: RealSense depth streams are
    rectified), raw z16 values times the sensor's depth unit give mm. librealsense stores the
    unit (metres) and the intrinsics as float32, so they are read back to 7 significant digits
    (0.001 m -> exactly 1 mm per step). Playback is not real time: every recorded frame is
    read, none dropped.
    """

    def __init__(self, path: Path | None, serial: str | None = None,
                 max_frames: int | None = None) -> None:
        self.path, self.serial, self.max_frames = path, serial, max_frames
        self.files = [path] if path is not None else []
        self.length: int | None = None
        self.label = str(path) if path is not None else \
            LIVE_PREFIX + (f":{serial}" if serial else "")
        self.stem = path.stem if path is not None else LIVE_PREFIX
        self.rs = import_realsense()  # fail early, before any frame or output

    def __iter__(self) -> Iterator[Frame]:
        rs = self.rs
        pipe, intr, mm_per_unit, playback = self._start()
        timeout = LIVE_TIMEOUT_MS if playback is None else PLAYBACK_TIMEOUT_MS
        index, waited, stopped = 0, 0, False
        try:
            while self.max_frames is None or index < self.max_frames:
                ok, frames = pipe.try_wait_for_frames(timeout)
                if not ok:
                    if playback is None:
                        raise HandganError(f"{self.label}: no depth frame from the camera in "
                                           f"{timeout / 1000:g} s")
                    # The end of a recording is its player stopping (then one more wait, for
                    # a last frame still on its way); a busy machine only delays a frame.
                    if playback.current_status() == rs.playback_status.stopped:
                        if stopped:
                            return
                        stopped = True
                    waited += timeout
                    if waited >= PLAYBACK_STALL_MS:
                        raise HandganError(f"{self.label}: playback stalled after {index} "
                                           "frames")
                    continue
                waited, stopped = 0, False
                depth = frames.get_depth_frame()
                if not depth:
                    continue
                raw = np.asanyarray(depth.get_data())  # (H, W) uint16, a view of the frame
                depth_mm = raw.astype(np.float32) * np.float32(mm_per_unit)
                yield Frame(f"{self.stem}-{index:06d}", f"{self.label}#{index}",
                            lambda d=depth_mm: d, intr)
                index += 1
        finally:
            try:
                pipe.stop()
            except RuntimeError:  # already stopped by the end of the recording
                pass

    def _check_connected(self) -> None:
        """Fail at once, not after librealsense's 15 s wait, when the camera is not there."""
        rs = self.rs
        serials = [d.get_info(rs.camera_info.serial_number)
                   for d in rs.context().query_devices()]
        if not serials:
            raise HandganError(f"{self.label}: no RealSense camera connected")
        if self.serial and self.serial not in serials:
            raise HandganError(f"{self.label}: no RealSense camera with serial {self.serial} "
                               f"(connected: {', '.join(serials)})")

    def _start(self):
        """Start the pipeline -> (pipeline, intrinsics, mm per depth unit, the player of a
        recording or None for a camera)."""
        rs = self.rs
        cfg = rs.config()
        if self.path is not None:
            cfg.enable_device_from_file(str(self.path), repeat_playback=False)
        else:
            self._check_connected()
            if self.serial:
                cfg.enable_device(self.serial)
        cfg.enable_stream(rs.stream.depth)
        pipe = rs.pipeline()
        try:
            profile = pipe.start(cfg)
        except RuntimeError as e:
            what = "not a RealSense recording with a depth stream" if self.path is not None \
                else "no RealSense camera" + (f" with serial {self.serial}" if self.serial
                                              else "")
            raise HandganError(f"{self.label}: {what} ({' '.join(str(e).split())})") from None
        device = profile.get_device()
        playback = device.as_playback() if self.path is not None else None
        if playback is not None:
            playback.set_real_time(False)
        stream = profile.get_stream(rs.stream.depth).as_video_stream_profile()
        if stream.format() != rs.format.z16:
            pipe.stop()
            raise HandganError(f"{self.label}: depth stream format {stream.format()}, "
                               "expected z16")
        i = stream.get_intrinsics()
        intr = Intrinsics(fx=_float32_value(i.fx), fy=_float32_value(i.fy),
                          cx=_float32_value(i.ppx), cy=_float32_value(i.ppy),
                          width=int(i.width), height=int(i.height), y_up=True)
        try:
            unit_m = float(device.first_depth_sensor().get_depth_scale())
        except RuntimeError:  # a recording without the depth-unit option: the D400 default
            unit_m = 0.001
        if not (math.isfinite(unit_m) and unit_m > 0):
            pipe.stop()
            raise HandganError(f"{self.label}: bad depth unit {unit_m} m")
        return pipe, intr, _float32_value(unit_m * 1000.0), playback


def _float32_value(value: float) -> float:
    """A number librealsense stores as float32, back to the 7 significant digits it was given
    with (0.001 m -> 0.001, not 0.0010000000474974513; fx 588.03 -> 588.03)."""
    return float(f"{float(value):.7g}")
