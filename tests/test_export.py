"""export.py and `handgan export`: onnxruntime agrees with PyTorch in mm, the batch axis is
dynamic, the generator exports too, and a missing onnxruntime is a one-line error."""
from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from handgan.camera import NYU
from handgan.cli import main
from handgan.errors import HandganError
from handgan.export import export_onnx, onnxruntime_session
from handgan.inference import Estimator
from handgan.models import ModelConfig
from handgan.networks import load_networks
from handgan.preprocess import CropTransform

from helpers import save_tiny_checkpoint

ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (handgan[export])")


@pytest.fixture(scope="module")
def estimator_onnx(ckpt, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "pose.onnx"
    result = export_onnx(ckpt, path)
    assert result.path == path and path.is_file() and result.max_abs_diff < 1e-5
    return path


def test_onnx_matches_pytorch_on_100_crops_within_1e_3_mm(ckpt, estimator_onnx):
    est = Estimator.from_checkpoint(ckpt, device="cpu")
    rng = np.random.default_rng(0)
    crops = rng.uniform(-1.0, 1.0, (100, 1, 64, 64)).astype(np.float32)
    crops[:, :, :8] = 1.0  # some background rows, as real crops have
    torch_norm = est.predict_norm(crops)  # (100, 14, 3)
    onnx_norm = onnxruntime_session(estimator_onnx).run(None, {"crops": crops})[0]
    assert onnx_norm.shape == (100, 14, 3)
    t = CropTransform(np.array([320.0, 240.0, 800.0]), est.spec.cube_mm, 64, NYU)
    torch_xyz, onnx_xyz = t.norm_to_xyz(torch_norm), t.norm_to_xyz(onnx_norm)
    assert np.abs(torch_xyz - onnx_xyz).max() < 1e-3  # mm
    assert np.abs(t.norm_to_uvd(torch_norm) - t.norm_to_uvd(onnx_norm)).max() < 1e-3


@pytest.mark.parametrize("batch", [1, 7])
def test_dynamic_batch_axis(ckpt, estimator_onnx, batch):
    _, net = load_networks(ckpt, ["estimator"])
    crops = torch.rand(batch, 1, 64, 64) * 2 - 1
    got = onnxruntime_session(estimator_onnx).run(None, {"crops": crops.numpy()})[0]
    with torch.inference_mode():
        expected = net(crops).numpy()
    assert got.shape == (batch, 14, 3)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


def test_sessions_do_not_spin_after_a_run(estimator_onnx):
    """Spinning threads took the cores from the localiser's torch networks (2x slower)."""
    options = onnxruntime_session(estimator_onnx, threads=2).get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert options.intra_op_num_threads == 2


@pytest.mark.parametrize("render", [False, True])
def test_generator_export(tmp_path, render):
    # render: the skeleton render's z-buffer and forearm survive tracing (every pixel in ONNX)
    cfg = ModelConfig(size=64, width=8, pose_hidden=32, gen_render=render)
    save_tiny_checkpoint(tmp_path / "g.pt", cfg=cfg)
    result = export_onnx(tmp_path / "g.pt", tmp_path / "gen.onnx", what="generator")
    assert result.max_abs_diff < 1e-5 and result.max_abs_diff_mm is None
    session = onnxruntime_session(tmp_path / "gen.onnx")
    assert [i.name for i in session.get_inputs()] == ["joints"]
    for batch in (1, 7):
        (crops,) = session.run(None, {"joints": np.zeros((batch, 14, 3), np.float32)})
        assert crops.shape == (batch, 1, 64, 64) and np.abs(crops).max() <= 1.0


def test_missing_onnxruntime_is_a_clear_error(ckpt, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` -> ImportError
    with pytest.raises(HandganError, match=r"pip install 'handgan\[export\]'"):
        export_onnx(ckpt, tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


def test_export_cli_prints_the_difference(ckpt, tmp_path, capsys):
    out = tmp_path / "cli.onnx"
    assert main(["export", str(ckpt), "--onnx", str(out)]) == 0
    line = capsys.readouterr().out.strip()
    assert out.is_file() and "max abs difference onnxruntime vs PyTorch" in line and " mm" in line
    assert main(["export", str(tmp_path / "missing.pt"), "--onnx", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing.pt" in err


def test_onnxruntime_backend_estimates_like_torch(ckpt):
    torch_est = Estimator.from_checkpoint(ckpt, device="cpu")
    ort_est = Estimator.from_checkpoint(ckpt, backend="onnxruntime", threads=1)
    assert ort_est.backend == "onnxruntime"
    depth = np.zeros((480, 640), np.float32)
    depth[200:260, 300:360] = 700.0  # a flat square "hand"
    a, b = torch_est.estimate(depth), ort_est.estimate(depth)
    np.testing.assert_array_equal(a.centre_uvd, b.centre_uvd)
    assert np.abs(a.xyz - b.xyz).max() < 1e-3  # mm
    crops = np.random.default_rng(1).uniform(-1, 1, (7, 64, 64)).astype(np.float32)
    np.testing.assert_allclose(ort_est.predict_norm(crops), torch_est.predict_norm(crops),
                               atol=1e-5)
