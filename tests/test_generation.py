"""generation.py and `handgan generate`: poses are normalised exactly as training normalises them,
pose files of every accepted form read back, and the strip PNG / GIF have one crop per step."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from handgan.camera import NYU
from handgan.cli import main
from handgan.errors import HandganError
from handgan.evaluation.predfile import write_predictions
from handgan.generation import (
    generate_crops,
    interpolate_poses,
    load_generator,
    normalise_poses,
    read_poses,
)
from handgan.joints import NYU14_PALM, NYU_EVAL_IDS
from handgan.synth.frame import SynthConfig, frame_rng, subject_shapes, synthesize_frame

from helpers import preprocess_frame


@pytest.fixture(scope="module")
def frame():
    rng = frame_rng(3, "train", 0)
    return synthesize_frame(rng, subject_shapes(3, "train", 4)[0], SynthConfig(scene="hand"))


@pytest.fixture(scope="module")
def poses_uvd(frame):
    """Two different poses: the rendered one and a copy with the fingers moved 20 px."""
    a = frame.joints_uvd[..., list(NYU_EVAL_IDS), :]
    b = a.copy()
    b[:NYU14_PALM, 0] += 20.0
    return np.stack([a, b])


def test_uvd_poses_are_normalised_as_training_crops_are(ckpt, frame, poses_uvd):
    _, spec = load_generator(ckpt)
    uvd = poses_uvd[0]
    _, t, expected = preprocess_frame(frame.depth_mm, NYU, spec.cube_mm, spec.size,
                                      centre_uvd=uvd[NYU14_PALM], joints_uvd=uvd)
    norm = normalise_poses(uvd, "uvd", spec)[0]
    np.testing.assert_allclose(norm, expected, atol=1e-12)
    np.testing.assert_allclose(norm[NYU14_PALM], 0.0, atol=1e-12)
    np.testing.assert_allclose(normalise_poses(NYU.uvd_to_xyz(uvd), "xyz", spec)[0], expected,
                               atol=1e-9)
    np.testing.assert_allclose(t.norm_to_uvd(norm), uvd, atol=1e-9)  # and back


def test_generate_crops_shapes_range_and_determinism(ckpt, poses_uvd):
    gen, spec = load_generator(ckpt)
    crops = generate_crops(ckpt, poses_uvd, space="uvd")
    assert crops.shape == (2, 64, 64) and crops.dtype == np.float32
    assert np.abs(crops).max() <= 1.0 and not np.allclose(crops[0], crops[1])
    norm = normalise_poses(poses_uvd, "uvd", spec)
    np.testing.assert_allclose(generate_crops(gen, norm), crops, atol=1e-6)
    np.testing.assert_allclose(generate_crops(gen, norm[1]), crops[1:], atol=1e-6)


def test_generated_crops_are_the_same_for_a_seed_and_leave_the_callers_rng_alone():
    import torch

    from handgan.models import Generator, ModelConfig

    torch.manual_seed(5)
    gen = Generator(ModelConfig(size=64, width=8, gen_pixel_dropout=0.3, gen_edge_dropout=0.3))
    poses = np.random.default_rng(0).uniform(-0.5, 0.5, (3, 14, 3)).astype(np.float32)
    state = torch.get_rng_state()
    a, b = generate_crops(gen, poses, seed=7), generate_crops(gen, poses, seed=7)
    np.testing.assert_array_equal(a, b)  # the same missing pixels
    assert not np.array_equal(a, generate_crops(gen, poses, seed=8))
    assert torch.equal(torch.get_rng_state(), state)


def test_interpolation_includes_both_ends():
    a, b = np.zeros((14, 3)), np.ones((14, 3))
    steps = interpolate_poses(a, b, 5)
    assert steps.shape == (5, 14, 3)
    np.testing.assert_array_equal(steps[0], a)
    np.testing.assert_array_equal(steps[-1], b)
    np.testing.assert_allclose(steps[2], 0.5)
    with pytest.raises(HandganError):
        interpolate_poses(a, b, 1)


def test_pose_files_in_every_accepted_form(tmp_path, poses_uvd):
    write_predictions(tmp_path / "p.txt", poses_uvd)
    poses, space = read_poses(tmp_path / "p.txt")
    assert space == "uvd" and np.abs(poses - poses_uvd).max() < 1e-6
    one, _ = read_poses(f"{tmp_path / 'p.txt'}:2")
    np.testing.assert_array_equal(one, poses[1:2])
    (tmp_path / "list.json").write_text(json.dumps(poses_uvd.tolist()))
    np.testing.assert_array_equal(read_poses(tmp_path / "list.json")[0], poses_uvd)
    (tmp_path / "obj.json").write_text(json.dumps({"frames": [poses_uvd[0].tolist()],
                                                   "space": "norm"}))
    assert read_poses(tmp_path / "obj.json")[1] == "norm"
    record = {"file": "x.png", "joints": {f"j{k}": {"uvd": list(u), "xyz": [0, 0, 0]}
                                          for k, u in enumerate(poses_uvd[1])}}
    (tmp_path / "record.json").write_text(json.dumps([record]))  # `handgan predict --json`
    np.testing.assert_array_equal(read_poses(tmp_path / "record.json")[0][0], poses_uvd[1])


@pytest.mark.parametrize("content, message", [
    ("1 2 3\n\n4 5 6\n", "blank"),
    ("1 2 nan\n", "not finite"),
    ('{"frames": [[[1, 2]]]}', "J x 3"),
    ('{"frames": [[[1, 2, 3]]], "space": "abc"}', "space must be"),
    ("[", "not a readable JSON"),
])
def test_bad_pose_files(tmp_path, content, message):
    path = tmp_path / ("p.json" if content[:1] in "[{" else "p.txt")
    path.write_text(content)
    with pytest.raises(HandganError, match=message):
        read_poses(path)
    with pytest.raises(HandganError, match="no frame 3"):
        write_predictions(tmp_path / "ok.txt", np.ones((2, 14, 3)))
        read_poses(f"{tmp_path / 'ok.txt'}:3")


def test_wrong_joint_count_is_refused(ckpt, tmp_path, capsys):
    write_predictions(tmp_path / "p.txt", np.ones((1, 16, 3)))
    assert main(["generate", str(ckpt), "--poses", str(tmp_path / "p.txt"),
                 "--out", str(tmp_path / "o")]) == 2
    assert "(N, 14, 3)" in capsys.readouterr().err


def test_generate_cli_poses_and_interpolation(ckpt, tmp_path, poses_uvd, capsys):
    write_predictions(tmp_path / "poses.txt", poses_uvd)
    out = tmp_path / "out"
    assert main(["generate", str(ckpt), "--poses", str(tmp_path / "poses.txt"),
                 "--out", str(out)]) == 0
    assert np.load(out / "generated.npy").shape == (2, 64, 64)
    with Image.open(out / "generated.png") as im:  # 2 tiles of 128 px (64 px crops, scaled x2)
        assert im.size == (2 * 128 + 2, 128)

    steps = 5
    assert main(["generate", str(ckpt), "--interpolate", f"{tmp_path / 'poses.txt'}:1",
                 f"{tmp_path / 'poses.txt'}:2", "--steps", str(steps), "--out", str(out)]) == 0
    assert "interpolation.gif" in capsys.readouterr().out
    with Image.open(out / "interpolation.png") as im:
        assert im.size == (steps * 128 + (steps - 1) * 2, 128)
    with Image.open(out / "interpolation.gif") as gif:
        assert gif.n_frames == steps and gif.is_animated
    crops = np.load(out / "interpolation.npy")
    np.testing.assert_allclose(crops[[0, -1]], generate_crops(ckpt, poses_uvd, space="uvd"),
                               atol=1e-6)

    assert main(["generate", str(ckpt), "--interpolate", str(tmp_path / "poses.txt"),
                 str(tmp_path / "poses.txt"), "--out", str(out)]) == 2
    assert "holds 2 poses" in capsys.readouterr().err
