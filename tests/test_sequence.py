"""sequence.py, overlay.py, video.py: `handgan predict` on a sequence writes overlays and a video,
smooths the hand centre when asked, draws the true skeleton and reports per-frame errors on
labelled frames, and takes a run folder as `evaluate` does."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import scipy.io
from PIL import Image

from handgan.camera import NYU
from handgan.cli import main
from handgan.data.nyu import read_depth_png
from handgan.errors import HandganError
from handgan.frames import FileFrames
from handgan.joints import NYU_EVAL_IDS
from handgan.sequence import CentreSmoother, predict_frames
from handgan.synth.generate import synthesize_dataset


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """Four rendered frames in NYU's format (labelled: joint_data.mat beside the PNGs)."""
    root = tmp_path_factory.mktemp("synth")
    synthesize_dataset(root, 4, 0, seed=7, workers=1, progress=False)
    return root / "train"


def test_sequence_folder_writes_overlays_gif_and_mp4(ckpt, labelled, tmp_path, capsys):
    seq = tmp_path / "seq"
    seq.mkdir()
    for png in sorted(labelled.glob("depth_1_*.png")):  # unlabelled copies: a plain folder
        shutil.copy(png, seq / png.name)
    out = tmp_path / "out"
    assert main(["predict", str(ckpt), str(seq), "--out", str(out), "--video",
                 str(out / "seq.gif"), "--fps", "10", "--quiet"]) == 0
    overlays = sorted(out.glob("*.overlay.png"))
    assert [p.name for p in overlays] == [f"depth_1_000000{k}.overlay.png" for k in range(1, 5)]
    with Image.open(out / "seq.gif") as gif:
        assert gif.n_frames == 4 and gif.info["duration"] == 100 and gif.info["loop"] == 0
        assert gif.size == Image.open(overlays[0]).size == (720, 342)
        gif.seek(2)
        # the GIF's frame 3 is overlay 3 (256 colours: within a few levels)
        diff = np.abs(np.asarray(gif.convert("RGB"), np.int16)
                      - np.asarray(Image.open(overlays[2]).convert("RGB"), np.int16))
        assert np.median(diff) == 0 and diff.mean() < 3
    assert "error_mm" not in json.loads((out / "depth_1_0000001.json").read_text())
    imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")
    mp4 = tmp_path / "new" / "folder" / "seq.mp4"  # its folders are made (was a traceback)
    assert main(["predict", str(ckpt), str(seq), "--video", str(mp4), "--quiet"]) == 0
    frames, seconds = imageio_ffmpeg.count_frames_and_secs(str(mp4))
    assert frames == 4 and seconds == pytest.approx(4 / 15, abs=0.02)
    assert not list(mp4.parent.glob(".seq.mp4*"))  # the temporary file is gone


def test_video_option_errors_are_one_line(ckpt, labelled, tmp_path, capsys, monkeypatch):
    assert main(["predict", str(ckpt), str(labelled), "--video", str(tmp_path / "v.avi")]) == 2
    assert capsys.readouterr().err == \
        f"handgan predict: error: {tmp_path / 'v.avi'}: the video must be a .gif or an .mp4 file\n"
    monkeypatch.setitem(__import__("sys").modules, "imageio_ffmpeg", None)
    assert main(["predict", str(ckpt), str(labelled), "--video", str(tmp_path / "v.mp4")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "mp4 videos need imageio-ffmpeg" in err
    assert main(["predict", str(ckpt), str(labelled), "--smooth", "1.5"]) == 2
    assert "alpha must be > 0 and <= 1" in capsys.readouterr().err
    (tmp_path / "file").write_text("")  # a file where the video's folder would be
    assert main(["predict", str(ckpt), str(labelled), "--video",
                 str(tmp_path / "file" / "v.gif")]) == 2
    assert capsys.readouterr().err == (f"handgan predict: error: {tmp_path / 'file' / 'v.gif'}: "
                                       f"{tmp_path / 'file'} is a file, not a folder\n")


def test_labelled_frames_get_the_true_skeleton_and_their_error(ckpt, est, labelled, tmp_path,
                                                               capsys):
    out = tmp_path / "out"
    assert main(["predict", str(ckpt), str(labelled), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    # The error, from the .mat's own xyz labels (not the uvd the source reads).
    xyz_true = scipy.io.loadmat(labelled / "joint_data.mat")["joint_xyz"][0][:, NYU_EVAL_IDS]
    errors = []
    for k in range(4):
        name = f"depth_1_000000{k + 1}"
        record = json.loads((out / f"{name}.json").read_text())
        pred = est.estimate(read_depth_png(labelled / f"{name}.png"))
        expected = np.linalg.norm(pred.xyz - xyz_true[k], axis=-1).mean()
        assert record["error_mm"] == pytest.approx(expected, abs=1e-3)
        truth = np.array([j["xyz"] for j in record["truth"].values()])
        np.testing.assert_allclose(truth, xyz_true[k], atol=1e-3)
        assert f"{name}.png: 14 joints" in printed and f"mean error {expected:.1f} mm" in printed
        errors.append(expected)
    assert f"mean 3D joint error {np.mean(errors):.2f} mm over 4 labelled frames" in printed
    # The overlay with the truth differs from one without it (the white skeleton is drawn).
    from handgan.overlay import render_overlay

    depth = read_depth_png(labelled / "depth_1_0000001.png")
    pred = est.estimate(depth)
    plain = render_overlay(depth, pred, "depth_1_0000001.png")
    shown = np.asarray(Image.open(out / "depth_1_0000001.overlay.png").convert("RGB"))
    assert shown.shape == plain.shape and np.abs(shown.astype(int) - plain).sum() > 0


def test_smoothing_follows_the_filter_and_resets_on_a_jump(est, labelled, tmp_path):
    first = read_depth_png(labelled / "depth_1_0000001.png")
    far = read_depth_png(labelled / "depth_1_0000003.png")
    moved = np.roll(first, 6, axis=1)  # the same hand 6 px to the right
    for name, depth in (("a", first), ("b", moved), ("c", far)):
        np.save(tmp_path / f"{name}.npy", depth)
    files = [tmp_path / f"{n}.npy" for n in "abc"]
    centres = [NYU.uvd_to_xyz(est.locate(np.load(f))) for f in files]
    assert np.linalg.norm(centres[1] - centres[0]) < 60.0  # within the guard (125 mm)
    assert np.linalg.norm(centres[2] - centres[1]) > 125.0  # a jump: the filter restarts
    report = predict_frames(est, [FileFrames(files)], smooth=0.25)
    got = [NYU.uvd_to_xyz(p.centre_uvd) for _, p in report.frames]
    np.testing.assert_allclose(got[0], centres[0], atol=1e-6)
    np.testing.assert_allclose(got[1], 0.25 * centres[1] + 0.75 * centres[0], atol=1e-6)
    np.testing.assert_allclose(got[2], centres[2], atol=1e-6)
    # alpha = 1 is no smoothing: exactly the unsmoothed predictions
    plain = predict_frames(est, [FileFrames(files)])
    ones = predict_frames(est, [FileFrames(files)], smooth=1.0)
    for (_, a), (_, b) in zip(plain.frames, ones.frames):
        np.testing.assert_allclose(a.xyz, b.xyz, atol=1e-6)


def test_centre_smoother_numbers():
    s = CentreSmoother(0.5, jump_mm=100.0)
    at = NYU.xyz_to_uvd
    np.testing.assert_allclose(NYU.uvd_to_xyz(s(at(np.array([0.0, 0, 500])), NYU)), [0, 0, 500],
                               atol=1e-9)
    np.testing.assert_allclose(NYU.uvd_to_xyz(s(at(np.array([40.0, 0, 500])), NYU)),
                               [20, 0, 500], atol=1e-9)
    np.testing.assert_allclose(NYU.uvd_to_xyz(s(at(np.array([40.0, 20, 520])), NYU)),
                               [30, 10, 510], atol=1e-9)
    np.testing.assert_allclose(NYU.uvd_to_xyz(s(at(np.array([300.0, 0, 500])), NYU)),
                               [300, 0, 500], atol=1e-9)  # 270 mm away: restart there
    with pytest.raises(HandganError, match="alpha"):
        CentreSmoother(0.0, 100.0)


def test_predict_takes_a_run_folder_like_evaluate(ckpt, labelled, tmp_path, capsys):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(ckpt, run / "checkpoints" / "last.pt")
    png = str(labelled / "depth_1_0000002.png")
    assert main(["predict", str(run), png, "--json"]) == 0
    by_run = json.loads(capsys.readouterr().out)
    assert main(["predict", str(ckpt), png, "--json"]) == 0
    assert by_run == json.loads(capsys.readouterr().out)
    assert main(["predict", str(tmp_path), png]) == 2
    assert "no checkpoints/best.pt or last.pt" in capsys.readouterr().err


@pytest.mark.parametrize("smooth", [None, 0.5])
def test_frames_in_batches_give_what_frames_one_by_one_give(est, labelled, tmp_path,
                                                            monkeypatch, smooth):
    """Files go BATCH_FRAMES at a time through one localisation and one network call; a bad
    frame sends its batch frame by frame, so it is named and the smoother sees single frames;
    a new source restarts the smoother, also inside what would be one batch."""
    from handgan import sequence

    first = read_depth_png(labelled / "depth_1_0000001.png")
    files = []
    for k in range(6):  # the hand moving 6 px a frame: within the smoother's jump guard
        files.append(tmp_path / f"f{k}.npy")
        np.save(files[-1], np.roll(first, 6 * k, axis=1))
    (tmp_path / "bad.npy").write_bytes(b"not a depth frame")
    runs = {"one source": [FileFrames(files[:2] + [tmp_path / "bad.npy"] + files[2:])],
            "two sources": [FileFrames(files[:3]), FileFrames(files[3:])]}
    for name, sources in runs.items():
        monkeypatch.setattr(sequence, "BATCH_FRAMES", 1)
        alone = predict_frames(est, sources, smooth=smooth)
        for size in (2, 4):
            monkeypatch.setattr(sequence, "BATCH_FRAMES", size)
            batched = predict_frames(est, sources, smooth=smooth)
            assert batched.failures == alone.failures
            assert len(alone.failures) == (name == "one source")
            assert [f for f, _ in batched.frames] == [f for f, _ in alone.frames]
            for (_, a), (_, b) in zip(alone.frames, batched.frames):
                np.testing.assert_allclose(b.centre_uvd, a.centre_uvd, rtol=0, atol=1e-6)
                np.testing.assert_allclose(b.xyz, a.xyz, rtol=0, atol=1e-3)  # mm
    if smooth is not None:  # the smoother did move the centres (so the above tests it)
        unsmoothed = predict_frames(est, runs["two sources"])
        moved = [np.abs(a.centre_uvd - b.centre_uvd).max()
                 for (_, a), (_, b) in zip(alone.frames, unsmoothed.frames)]
        assert max(moved[0], moved[3]) < 1e-9 and sum(m > 1.0 for m in moved) >= 3
