"""inference.py and `handgan predict`: frame -> joints consistency with the crop path, batch ==
single, checkpoint loading (crop metadata, fallbacks, refusals) and bad inputs -> one line, exit 2.
Checkpoints are built here from tiny random networks (no training)."""
from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from handgan.camera import ICVL, NYU
from handgan.checkpoint import FORMAT_VERSION, save_checkpoint
from handgan.cli import main
from handgan.data.nyu import read_depth_png
from handgan.errors import HandganError
from handgan.evaluation.predfile import read_predictions
from handgan.inference import Estimator, read_depth_frame
from handgan.joints import NYU14_NAMES
from handgan.preprocess import crop_depth, localize_hand
from handgan.synth.generate import synthesize_dataset

from helpers import HAND, TINY, save_tiny_checkpoint


@pytest.fixture(scope="module")
def frames_dir(tmp_path_factory):
    """Three rendered 640x480 frames in NYU's format (train/depth_1_000000k.png)."""
    root = tmp_path_factory.mktemp("synth")
    synthesize_dataset(root, 3, 0, seed=5, workers=1, config=HAND, progress=False)
    return root / "train"


@pytest.fixture(scope="module")
def frames(frames_dir):
    return [read_depth_png(p) for p in sorted(frames_dir.glob("depth_1_*.png"))]


# --------------------------------------------------------------------------------------------
# Python API
# --------------------------------------------------------------------------------------------

def test_checkpoint_crop_metadata_is_used(est):
    assert est.spec.cube_mm == (250.0, 250.0, 250.0) and est.size == 64
    # the checkpoint saves NYU's own names (F1_KNU3_A ... PALM_3); predictions use readable ones
    assert est.intrinsics == NYU and est.joint_names == NYU14_NAMES
    assert not est.network.training
    assert not any(p.requires_grad for p in est.network.parameters())


def test_full_frame_estimate_equals_crop_estimate_with_the_same_centre(est, frames):
    depth = frames[0]
    pred = est.estimate(depth)
    centre = localize_hand(depth, NYU, cube_mm=250.0)
    np.testing.assert_array_equal(pred.centre_uvd, centre)
    crop, t = crop_depth(depth, centre, 250.0, 64, intr=NYU)
    by_crop = est.estimate_crop(crop, t)
    np.testing.assert_allclose(pred.uvd, by_crop.uvd, rtol=0, atol=1e-9)
    np.testing.assert_allclose(pred.xyz, by_crop.xyz, rtol=0, atol=1e-9)
    # the network's output mapped back with the exact transform, and uvd/xyz agree
    norm = est.predict_norm(crop[None])[0]
    np.testing.assert_allclose(pred.xyz, norm * 125.0 + t.centre_xyz, atol=1e-6)
    np.testing.assert_allclose(NYU.uvd_to_xyz(pred.uvd), pred.xyz, atol=1e-6)
    assert pred.uvd.shape == (14, 3) and len(pred.joint_names) == 14


def test_given_centre_is_used_instead_of_localisation(est, frames):
    centre = np.array([300.0, 250.0, 800.0])
    pred = est.estimate(frames[0], centre_uvd=centre)
    np.testing.assert_array_equal(pred.centre_uvd, centre)
    crop, t = crop_depth(frames[0], centre, 250.0, 64, intr=NYU)
    np.testing.assert_allclose(pred.uvd, est.estimate_crop(crop, t).uvd, atol=1e-9)


def test_batch_results_equal_single_frame_results(est, frames):
    batch = est.estimate_batch(frames)
    assert len(batch) == 3
    for depth, b in zip(frames, batch):
        single = est.estimate(depth)
        np.testing.assert_allclose(b.xyz, single.xyz, rtol=0, atol=1e-3)  # mm
        np.testing.assert_array_equal(b.centre_uvd, single.centre_uvd)
    crops, transforms = zip(*(crop_depth(d, b.centre_uvd, 250.0, 64, intr=NYU)
                              for d, b in zip(frames, batch)))
    for b, c in zip(batch, est.estimate_crops(np.stack(crops), transforms)):
        np.testing.assert_allclose(b.xyz, c.xyz, atol=1e-9)
    assert est.estimate_batch([]) == []


def test_checkpoint_without_crop_metadata_falls_back_to_nyu_defaults(tmp_path, frames):
    path = tmp_path / "old.pt"
    save_tiny_checkpoint(path, crop=None)
    est = Estimator.from_checkpoint(path, device="cpu")
    assert est.spec.cube_mm == (300.0,) * 3 and est.spec.size == 64
    assert est.intrinsics == NYU and est.joint_names == NYU14_NAMES
    assert est.estimate(frames[0]).transform.cube_mm[2] == 300.0


def test_estimator_needs_only_the_pose_branch(tmp_path, frames, est):
    path = tmp_path / "pose_only.pt"
    save_tiny_checkpoint(path)
    ckpt = torch.load(path, weights_only=True)
    ckpt["discriminator"] = {k: v for k, v in ckpt["discriminator"].items()
                             if not k.startswith("real_fake.")}
    del ckpt["generator"]
    save_checkpoint(path, ckpt)
    reduced = Estimator.from_checkpoint(path, device="cpu")
    assert not any("real_fake" in k for k in reduced.network.state_dict())
    np.testing.assert_allclose(reduced.estimate(frames[1]).xyz, est.estimate(frames[1]).xyz,
                               atol=1e-9)


def test_other_camera_and_frame_size_checks(est, frames):
    small = frames[0][::2, ::2]  # 320x240
    with pytest.raises(HandganError, match="320x240 but the camera is 640x480"):
        est.estimate(small)
    pred = est.estimate(small, intrinsics=ICVL)
    np.testing.assert_allclose(ICVL.uvd_to_xyz(pred.uvd), pred.xyz, atol=1e-6)


@pytest.mark.parametrize("frame, message", [
    (np.zeros((480, 640), np.uint16), "no hand found: all pixels are 0"),
    (np.ones((480, 640), bool), "dtype bool"),
    (np.ones((2, 480, 640), np.float32), "2-D"),
])
def test_bad_frames_raise_one_line_errors(est, frame, message):
    with pytest.raises(HandganError, match=message) as info:
        est.estimate(frame)
    assert "\n" not in str(info.value)


def test_weights_that_do_not_fit_the_config(tmp_path):
    path = tmp_path / "bad.pt"
    save_tiny_checkpoint(path)
    ckpt = torch.load(path, weights_only=True)
    ckpt["config"]["model"]["pose_hidden"] = 64
    save_checkpoint(path, ckpt)
    with pytest.raises(HandganError, match="weights do not fit"):
        Estimator.from_checkpoint(path)


def test_checkpoint_listing_removed_options_at_their_off_values_still_loads(tmp_path, frames,
                                                                           est, frames_dir,
                                                                           capsys):
    # A checkpoint written before the options of config.REMOVED_KEYS were removed lists them at
    # their off values (and a mean teacher's empty slot): it loads and estimates as before. One
    # that had such an option on is refused in one line naming the commit that still has it.
    from handgan.config import REMOVED_KEYS
    from handgan.generation import load_generator
    from handgan.networks import load_networks
    path = tmp_path / "old.pt"
    save_tiny_checkpoint(path)  # the same networks as ``est``'s checkpoint
    ckpt = torch.load(path, weights_only=True)
    for key, (_, off, _) in REMOVED_KEYS.items():
        *sections, leaf = key.split(".")
        node = ckpt["config"]
        for part in sections:
            node = node[part]
        node[leaf] = off[0]
    ckpt["teacher"] = None
    save_checkpoint(path, ckpt)
    old = Estimator.from_checkpoint(path, device="cpu")
    np.testing.assert_array_equal(old.estimate(frames[0]).xyz, est.estimate(frames[0]).xyz)
    gen, _ = load_generator(path)
    assert gen.cfg == TINY
    cfg, _, _ = load_networks(path)
    assert cfg.model == TINY
    ckpt["config"]["model"]["noise_dim"] = 16
    save_checkpoint(path, ckpt)
    with pytest.raises(HandganError, match="model.noise_dim was removed.*6a3f375"):
        Estimator.from_checkpoint(path)
    assert main(["predict", str(path), str(frames_dir / "depth_1_0000001.png")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "model.noise_dim was removed" in err


# --------------------------------------------------------------------------------------------
# Checkpoints that must be refused
# --------------------------------------------------------------------------------------------

class _Payload:
    """Unpickling this would create the marker file (what a malicious checkpoint would do)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_crafted_code_running_checkpoint_is_refused_and_runs_nothing(tmp_path, frames_dir,
                                                                     capsys):
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pt"
    torch.save({"format_version": FORMAT_VERSION, "config": {}, "discriminator": _Payload(marker)},
               path)
    with pytest.raises(HandganError, match="refused"):
        Estimator.from_checkpoint(path)
    assert main(["predict", str(path), str(frames_dir / "depth_1_0000001.png")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(path) in err and "refused" in err
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["version", "garbage", "pickle", "missing"])
def test_foreign_checkpoints_exit_2_with_one_line(tmp_path, frames_dir, capsys, kind):
    path = tmp_path / "x.pt"
    if kind == "version":
        torch.save({"format_version": FORMAT_VERSION + 1}, path)
    elif kind == "garbage":
        path.write_bytes(b"not a checkpoint at all")
    elif kind == "pickle":
        path.write_bytes(pickle.dumps({"a": 1}))
    assert main(["predict", str(path), str(frames_dir / "depth_1_0000001.png")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("handgan predict: error: ") and str(path) in err


# --------------------------------------------------------------------------------------------
# handgan predict
# --------------------------------------------------------------------------------------------

def test_predict_folder_writes_json_overlay_and_predictions(ckpt, frames_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["predict", str(ckpt), str(frames_dir), "--out", str(out), "--quiet"]) == 0
    pngs = sorted(frames_dir.glob("depth_1_*.png"))
    txt = read_predictions(out / "predictions.txt", n_joints=14)  # the field's format
    assert txt.shape == (3, 14, 3)
    listed = (out / "predictions_frames.txt").read_text().splitlines()
    assert listed == [str(p) for p in pngs]
    for k, png in enumerate(pngs):
        record = json.loads((out / f"{png.stem}.json").read_text())
        assert record["file"] == str(png) and len(record["joints"]) == 14
        uvd = np.array([j["uvd"] for j in record["joints"].values()])
        np.testing.assert_allclose(uvd, txt[k], atol=1e-3)
        with Image.open(out / f"{png.stem}.overlay.png") as im:
            assert im.format == "PNG" and im.width > 300
    assert capsys.readouterr().err == ""


def test_predict_single_png_json_to_stdout_same_as_api(ckpt, est, frames_dir, frames, capsys):
    png = frames_dir / "depth_1_0000002.png"
    assert main(["predict", str(ckpt), str(png), "--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert len(records) == 1 and records[0]["file"] == str(png)
    xyz = np.array([j["xyz"] for j in records[0]["joints"].values()])
    np.testing.assert_allclose(xyz, est.estimate(frames[1]).xyz, atol=1e-3)


def test_npy_and_16bit_png_give_the_same_joints_as_the_nyu_png(est, frames, tmp_path):
    depth = frames[0]
    np.save(tmp_path / "f.npy", depth.astype(np.uint16))
    Image.fromarray(depth.astype(np.uint16)).save(tmp_path / "f16.png")
    ref = est.estimate(depth)
    for name in ("f.npy", "f16.png"):
        np.testing.assert_allclose(est.estimate(read_depth_frame(tmp_path / name)).xyz, ref.xyz,
                                   atol=1e-9)


def test_bad_frames_in_a_folder_are_listed_and_the_rest_processed(ckpt, frames, tmp_path,
                                                                    capsys):
    src = tmp_path / "in"
    src.mkdir()
    np.save(src / "a_good.npy", frames[0])
    np.save(src / "b_3d.npy", np.zeros((2, 480, 640), np.float32))
    np.save(src / "c_bool.npy", np.ones((480, 640), bool))
    np.save(src / "d_empty.npy", np.zeros((480, 640), np.uint16))
    Image.fromarray(np.zeros((480, 640), np.uint8)).save(src / "e_grey8.png")
    (src / "f_text.png").write_text("hello")
    np.save(src / "g_good.npy", frames[2])
    out = tmp_path / "out"
    assert main(["predict", str(ckpt), str(src), "--out", str(out), "--no-overlay"]) == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 5 and all(line.startswith("handgan predict: error: ") for line in lines)
    for name, what in [("b_3d", "2-D"), ("c_bool", "dtype bool"), ("d_empty", "all pixels are 0"),
                       ("e_grey8", "8-bit grey"), ("f_text", "not a PNG")]:
        assert any(f"{name}." in line and what in line for line in lines), (name, lines)
    assert read_predictions(out / "predictions.txt").shape == (2, 14, 3)
    assert (out / "predictions_frames.txt").read_text().splitlines() == \
        [str(src / "a_good.npy"), str(src / "g_good.npy")]
    assert "a_good.npy" in captured.out


def test_predict_refuses_out_folder_equal_to_input_and_missing_inputs(ckpt, frames_dir, capsys):
    assert main(["predict", str(ckpt), str(frames_dir), "--out", str(frames_dir)]) == 2
    assert "must not be an input folder" in capsys.readouterr().err
    assert main(["predict", str(ckpt), str(frames_dir / "nope.png")]) == 2
    assert "no such file or folder" in capsys.readouterr().err


def test_predict_intrinsics_option(ckpt, frames, tmp_path, capsys):
    np.save(tmp_path / "small.npy", frames[0][::2, ::2])
    assert main(["predict", str(ckpt), str(tmp_path / "small.npy"), "--quiet"]) == 2
    assert "--intrinsics" in capsys.readouterr().err
    assert main(["predict", str(ckpt), str(tmp_path / "small.npy"), "--json",
                 "--intrinsics", "241.42,241.42,160,120,320,240"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 1


def test_predict_reads_a_supervised_checkpoint_too(frames_dir, tmp_path, capsys):
    supervised = tmp_path / "supervised.pt"
    save_tiny_checkpoint(supervised, mode="supervised")
    png = str(frames_dir / "depth_1_0000001.png")
    assert main(["predict", str(supervised), png, "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)[0]["joints"]) == 14
