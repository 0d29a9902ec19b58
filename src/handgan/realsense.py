"""RealSense depth as a frame source (``frames.FrameSource``): recordings and live cameras.

``pyrealsense2`` is an optional extra (``pip install 'handgan[realsense]'``), imported only
when a RealSense input is used; without it the input fails in one line that says so.

* A recording (``.bag`` up to librealsense 2.58, ``.db3`` from 2.59) is played with its player
  set to non-real-time *before* it starts, and its frames are handed over through a bounded
  queue that the player waits on: every recorded frame is read, none dropped, however slow the
  consumer (a real-time player drops frames while the machine is busy).
* A live camera streams through a pipeline in real time: a slow consumer gets the newest frames.

The camera and the depth unit come from the stream itself: intrinsics from the depth stream
profile (fx, fy, ppx, ppy, size; lens distortion is ignored: RealSense depth streams are
rectified), raw z16 values times the sensor's depth unit give mm. librealsense stores the unit
(metres) and the intrinsics as float32, so they are read back to 7 significant digits
(0.001 m -> exactly 1 mm a step).
"""
from __future__ import annotations

import math
import queue
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from handgan.camera import Intrinsics
from handgan.errors import HandganError
from handgan.frames import LIVE_PREFIX, Frame

REALSENSE_MISSING = "RealSense input needs pyrealsense2: pip install 'handgan[realsense]'"
LIVE_TIMEOUT_MS = 5000  # a live camera that sends nothing for this long is an error
POLL_S = 0.2  # how often a waiting reader asks whether the recording has ended
STALL_S = 30.0  # a player that neither ends nor gives a frame for this long is stuck
QUEUE_FRAMES = 8  # frames read ahead of the consumer
DEFAULT_UNIT_M = 0.001  # a recording without the depth-unit option: the D400 default


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
    """Depth frames of a RealSense recording (``path``) or live camera (``path`` None; the
    first camera, or the one with ``serial``), at most ``max_frames`` of them."""

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
        raw_frames = self._playback() if self.path is not None else self._live()
        try:
            for index, (raw, intr, mm_per_unit) in enumerate(raw_frames):
                if self.max_frames is not None and index >= self.max_frames:
                    return
                depth_mm = raw.astype(np.float32) * np.float32(mm_per_unit)  # (H, W) mm
                yield Frame(f"{self.stem}-{index:06d}", f"{self.label}#{index}",
                            lambda d=depth_mm: d, intr)
        finally:
            raw_frames.close()  # stops the player or the camera

    def _playback(self):
        """(raw uint16 depth, intrinsics, mm per unit) per recorded depth frame, in order."""
        rs = self.rs
        try:
            device = rs.context().load_device(str(self.path))
        except RuntimeError as e:
            raise HandganError(f"{self.label}: not a RealSense recording "
                               f"({' '.join(str(e).split())})") from None
        player = device.as_playback()
        player.set_real_time(False)  # before it starts: a real-time player drops frames
        sensor, profile = self._depth_stream(device.query_sensors())
        intr, mm_per_unit = _intrinsics(profile), _unit_mm(sensor, rs)
        frames: queue.Queue = queue.Queue(maxsize=QUEUE_FRAMES)
        closing = threading.Event()

        def on_frame(frame) -> None:  # the player's thread; it waits while we wait here
            depth = frame.as_depth_frame()
            if not depth:
                return
            raw = np.asanyarray(depth.get_data()).copy()  # the frame's memory is reused
            while not closing.is_set():
                try:
                    frames.put(raw, timeout=POLL_S)
                    return
                except queue.Full:
                    continue

        sensor.open(profile)
        sensor.start(on_frame)
        try:
            waited, ended = 0.0, False
            while True:
                try:
                    raw = frames.get(timeout=POLL_S)
                except queue.Empty:
                    # The end: the player has stopped (after its last callback returned, so
                    # one more look at the queue finds any frame still there).
                    if player.current_status() == rs.playback_status.stopped:
                        if ended:
                            return
                        ended = True
                        continue
                    waited += POLL_S
                    if waited >= STALL_S:
                        raise HandganError(f"{self.label}: playback stalled") from None
                    continue
                waited, ended = 0.0, False
                yield raw, intr, mm_per_unit
        finally:
            closing.set()
            for stop in (sensor.stop, sensor.close):
                try:
                    stop()
                except RuntimeError:  # already stopped by the end of the recording
                    pass

    def _depth_stream(self, sensors):
        """(sensor, profile) of the recording's z16 depth stream."""
        rs = self.rs
        for sensor in sensors:
            for profile in sensor.get_stream_profiles():
                if profile.stream_type() == rs.stream.depth:
                    if profile.format() != rs.format.z16:
                        raise HandganError(f"{self.label}: depth stream format "
                                           f"{profile.format()}, expected z16")
                    return sensor, profile.as_video_stream_profile()
        raise HandganError(f"{self.label}: the recording has no depth stream")

    def _live(self):
        """(raw uint16 depth, intrinsics, mm per unit) per frame of the camera, until closed."""
        rs = self.rs
        self._check_connected()
        cfg = rs.config()
        if self.serial:
            cfg.enable_device(self.serial)
        cfg.enable_stream(rs.stream.depth, rs.format.z16)
        pipe = rs.pipeline()
        try:
            started = pipe.start(cfg)
        except RuntimeError as e:
            raise HandganError(f"{self.label}: the camera did not start a z16 depth stream "
                               f"({' '.join(str(e).split())})") from None
        try:
            profile = started.get_stream(rs.stream.depth).as_video_stream_profile()
            intr = _intrinsics(profile)
            mm_per_unit = _unit_mm(started.get_device().first_depth_sensor(), rs)
            while True:
                ok, frames = pipe.try_wait_for_frames(LIVE_TIMEOUT_MS)
                if not ok:
                    raise HandganError(f"{self.label}: no depth frame from the camera in "
                                       f"{LIVE_TIMEOUT_MS / 1000:g} s")
                depth = frames.get_depth_frame()
                if depth:
                    yield np.asanyarray(depth.get_data()).copy(), intr, mm_per_unit
        finally:
            pipe.stop()

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


def _intrinsics(profile) -> Intrinsics:
    """The pinhole camera of a video stream profile (y up, as custom cameras are here)."""
    i = profile.get_intrinsics()
    return Intrinsics(fx=_float32_value(i.fx), fy=_float32_value(i.fy),
                      cx=_float32_value(i.ppx), cy=_float32_value(i.ppy),
                      width=int(i.width), height=int(i.height), y_up=True)


def _unit_mm(sensor, rs) -> float:
    """mm per raw depth step of a depth sensor (its depth-unit option, in metres)."""
    try:
        unit_m = float(sensor.get_option(rs.option.depth_units))
    except RuntimeError:  # the option is not there
        unit_m = DEFAULT_UNIT_M
    if not (math.isfinite(unit_m) and unit_m > 0):
        raise HandganError(f"bad depth unit {unit_m} m in the RealSense stream")
    return _float32_value(unit_m * 1000.0)


def _float32_value(value: float) -> float:
    """A number librealsense stores as float32, back to the 7 significant digits it was given
    with (0.001 m -> 0.001, not 0.0010000000474974513; fx 588.03 -> 588.03)."""
    return float(f"{float(value):.7g}")
