"""frames.py: the frame sources of `handgan predict`. RealSense recordings are written here with
librealsense's software device and recorder (no camera needed) and read back through the same
source a live camera uses: frames, intrinsics and depth in mm are checked exactly."""
from __future__ import annotations

import sys

import numpy as np
import pytest

from handgan.camera import NYU, Intrinsics
from handgan.cli import main
from handgan.errors import HandganError
from handgan.frames import DatasetFrames, FileFrames
from handgan.realsense import REALSENSE_MISSING
from handgan.sequence import open_sources

from helpers import save_tiny_checkpoint


def _realsense():
    """pyrealsense2, or skip: it is in the dev extra where its wheel exists (x86-64)."""
    try:
        import pyrealsense2 as rs
    except ImportError as e:
        pytest.skip(f"pyrealsense2 not importable here ({e})")
    return rs


def record_depth(folder, frames: list[np.ndarray], intr: Intrinsics, unit_m: float,
                 name: str = "rec"):
    """Record uint16 depth frames with a software device -> the recording's path.

    librealsense 2.59+ records ROS2 .db3 files, older versions ROS1 .bag files: the suffix the
    installed recorder takes is used.
    """
    rs = _realsense()
    h, w = frames[0].shape
    ri = rs.intrinsics()
    ri.width, ri.height, ri.ppx, ri.ppy, ri.fx, ri.fy = w, h, intr.cx, intr.cy, intr.fx, intr.fy
    ri.model, ri.coeffs = rs.distortion.none, [0.0] * 5
    stream = rs.video_stream()
    stream.type, stream.index, stream.uid = rs.stream.depth, 0, 0
    stream.width, stream.height, stream.fps, stream.bpp = w, h, 30, 2
    stream.fmt, stream.intrinsics = rs.format.z16, ri
    device = rs.software_device()
    sensor = device.add_sensor("Depth")
    sensor.add_read_only_option(rs.option.depth_units, unit_m)
    profile = sensor.add_video_stream(stream).as_video_stream_profile()
    for suffix in (".db3", ".bag"):
        path = folder / f"{name}{suffix}"
        try:
            recorder = rs.recorder(str(path), device)
            break
        except RuntimeError:
            continue
    pixels = [np.ascontiguousarray(f, dtype=np.uint16) for f in frames]  # alive until the end
    sensor.open([profile])
    sensor.start(rs.syncer())
    for i, p in enumerate(pixels):
        frame = rs.software_video_frame()  # a fresh one per frame (librealsense's own tests)
        frame.pixels, frame.bpp, frame.stride = p, 2, w * 2
        frame.timestamp, frame.frame_number = 1000.0 + i * 33.3, i
        frame.domain, frame.profile = rs.timestamp_domain.hardware_clock, profile
        sensor.on_video_frame(frame)
    sensor.stop()
    sensor.close()
    recorder.pause()
    del recorder  # closes the file
    return path


CAM = Intrinsics(fx=50.5, fy=51.25, cx=31.5, cy=23.75, width=64, height=48, y_up=True)


@pytest.mark.parametrize("unit_m, mm_per_unit", [(0.001, 1.0), (0.0001, 0.1)])
def test_recording_reads_back_frames_intrinsics_and_mm_exactly(tmp_path, unit_m, mm_per_unit):
    rng = np.random.default_rng(0)
    raw = [rng.integers(0, 6000, size=(48, 64)).astype(np.uint16) for _ in range(5)]
    raw[2][:] = 0  # an empty frame is still a frame
    path = record_depth(tmp_path, raw, CAM, unit_m)
    (source,) = open_sources([path])
    frames = list(source)
    assert [f.name for f in frames] == [f"rec-{i:06d}" for i in range(5)]
    assert [f.origin for f in frames] == [f"{path}#{i}" for i in range(5)]
    for f, r in zip(frames, raw):
        assert f.intrinsics == CAM  # fx, fy, ppx, ppy, size from the stream profile; y up
        depth = f.depth()
        assert depth.dtype == np.float32 and depth.shape == (48, 64)
        np.testing.assert_array_equal(depth, r.astype(np.float32) * np.float32(mm_per_unit))
    assert np.array_equal(frames[1].depth()[:2, :3], raw[1][:2, :3] * np.float32(mm_per_unit))
    assert len(list(open_sources([path], max_frames=2)[0])) == 2


def test_a_slow_reader_gets_every_recorded_frame_in_order(tmp_path):
    import time

    raw = [np.full((48, 64), 100 + i, np.uint16) for i in range(20)]  # > the read-ahead queue
    (source,) = open_sources([record_depth(tmp_path, raw, CAM, 0.001)])
    seen = []
    for frame in source:
        time.sleep(0.05)  # a consumer slower than the recording's 30 fps
        seen.append(int(frame.depth()[0, 0]))
    assert seen == list(range(100, 120))


def test_predict_on_a_recording_equals_predict_on_its_frame_files(tmp_path, capsys):
    from handgan.data.nyu import read_depth_png
    from handgan.synth.generate import synthesize_dataset

    data = synthesize_dataset(tmp_path / "ds", 3, 0, seed=5, workers=1, progress=False)
    pngs = sorted((data / "train").glob("depth_1_*.png"))
    frames = [read_depth_png(p).astype(np.uint16) for p in pngs]
    rec = record_depth(tmp_path, frames, NYU, 0.001, name="hand")
    ckpt = tmp_path / "tiny.pt"
    save_tiny_checkpoint(ckpt)
    assert main(["predict", str(ckpt), str(rec), "--json", "--quiet"]) == 0
    from_rec = __import__("json").loads(capsys.readouterr().out)
    assert main(["predict", str(ckpt), *map(str, pngs), "--json", "--quiet"]) == 0
    from_png = __import__("json").loads(capsys.readouterr().out)
    assert [r["file"] for r in from_rec] == [f"{rec}#{i}" for i in range(3)]
    for a, b in zip(from_rec, from_png):  # the same depth, camera and crop: the same joints
        assert a["centre_uvd"] == b["centre_uvd"] and a["joints"].keys() == b["joints"].keys()
        for name in a["joints"]:  # to float rounding: the files go 3 to a network call
            for key in ("uvd", "xyz"):
                np.testing.assert_allclose(a["joints"][name][key], b["joints"][name][key],
                                           rtol=0, atol=1e-3)


def test_missing_realsense_extra_is_one_line(tmp_path, monkeypatch, capsys):
    ckpt = tmp_path / "tiny.pt"
    save_tiny_checkpoint(ckpt)
    rec = tmp_path / "x.bag"
    rec.write_bytes(b"whatever")
    monkeypatch.setitem(sys.modules, "pyrealsense2", None)  # import fails: not installed
    for inputs in ([str(rec)], ["realsense"]):
        assert main(["predict", str(ckpt), *inputs]) == 2
        err = capsys.readouterr().err
        assert err == f"handgan predict: error: {REALSENSE_MISSING}\n"


def test_bad_recording_and_absent_camera_are_one_line(tmp_path, capsys):
    _realsense()
    ckpt = tmp_path / "tiny.pt"
    save_tiny_checkpoint(ckpt)
    bad = tmp_path / "bad.db3"
    bad.write_bytes(b"not a recording")
    assert main(["predict", str(ckpt), str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{bad}: not a RealSense recording" in err
    assert main(["predict", str(ckpt), str(tmp_path / "none.bag")]) == 2
    assert "none.bag: no such recording" in capsys.readouterr().err
    # This machine has no camera (CI): the live source says so in one line.
    if len(_realsense().context().query_devices()) == 0:
        for live in ("realsense", "realsense:123"):
            assert main(["predict", str(ckpt), live, "--max-frames", "1"]) == 2
            assert capsys.readouterr().err == \
                f"handgan predict: error: {live}: no RealSense camera connected\n"


def test_sources_of_mixed_inputs(tmp_path):
    from handgan.synth.generate import synthesize_dataset

    data = synthesize_dataset(tmp_path / "ds", 2, 0, seed=1, workers=1, progress=False)
    np.save(tmp_path / "a.npy", np.zeros((480, 640), np.uint16))
    np.save(tmp_path / "b.npy", np.zeros((480, 640), np.uint16))
    sources = open_sources([tmp_path / "a.npy", tmp_path / "b.npy", data / "train"])
    assert [type(s) for s in sources] == [FileFrames, DatasetFrames]
    assert sources[0].names == ["a", "b"] and sources[0].length == 2
    labelled = list(sources[1])
    assert [f.name for f in labelled] == ["depth_1_0000001", "depth_1_0000002"]
    assert labelled[0].intrinsics == NYU and labelled[0].truth_uvd.shape == (14, 3)
    with pytest.raises(HandganError, match="no such file or folder"):
        open_sources([tmp_path / "c.npy"])
