"""`handgan evaluate`: the report folder, agreement with training's own evaluation and with the
field's evaluator on the written files, and one-line errors."""
import json
import math

import numpy as np
import pytest

from handgan.cli import main
from handgan.config import apply_overrides, preset
from handgan.evaluation.compare import compare_methods
from handgan.evaluation.predfile import read_predictions
from handgan.synth.generate import synthesize_dataset
from handgan.train import train

from helpers import HAND, save_tiny_checkpoint


def _tiny_run(root, mode: str):
    data = synthesize_dataset(root / "ds", 40, 12, seed=0, workers=1, config=HAND, progress=False)
    cfg = apply_overrides(preset("quick"), [
        f"data.source=synthetic:{data}", f"data.cache_dir={root / 'cache'}", "model.width=8", "localizer.enabled=false",
        "model.pose_hidden=32", "optim.batch_size=8", "optim.max_steps=6", "device=cpu",
        "num_workers=0", "data.val_fraction=0.2", f"mode={mode}"])
    return train(cfg, root / "run", progress=False)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return _tiny_run(tmp_path_factory.mktemp("evaluate"), "gan")


@pytest.fixture(scope="module")
def supervised_run(tmp_path_factory):
    return _tiny_run(tmp_path_factory.mktemp("evaluate-supervised"), "supervised")


def test_report_folder_and_agreement(run, capsys):
    out = run / "report"
    assert main(["evaluate", str(run / "checkpoints" / "last.pt"), "--out", str(out),
                 "--cache-dir", str(run.parent / "cache"), "--quiet"]) == 0
    assert "mean 3D joint error" in capsys.readouterr().out
    for name in ("predictions.txt", "groundtruth.txt", "metrics.json", "success.png",
                 "per_joint.png", "predictions.png", "generated.png", "report.md"):
        assert (out / name).stat().st_size > 0, name
    m = json.loads((out / "metrics.json").read_text())
    summary = json.loads((run / "summary.json").read_text())
    # the same network on the same test crops as training's final evaluation
    assert m["frames"] == 12 and m["mean_error_mm"] == pytest.approx(
        summary["final_mean_error_mm"], rel=1e-9)
    assert m["mean_pose_baseline_mm"] == pytest.approx(summary["mean_pose_baseline_mm"], rel=1e-9)
    assert np.mean(m["per_joint_mm"]) == pytest.approx(m["mean_error_mm"])
    for kind in ("max-frame", "mean-frame", "joint"):
        rates = m["success"][kind]["rates"]
        assert rates == sorted(rates) and len(rates) == 81
    # the field's evaluator on the written files gives the same number
    result = compare_methods("synthetic", out / "groundtruth.txt", {"run": out / "predictions.txt"})
    assert result["methods"]["run"]["mean_error_mm"] == pytest.approx(m["mean_error_mm"], abs=1e-3)
    assert read_predictions(out / "predictions.txt").shape == (12, 14, 3)
    report = (out / "report.md").read_text()
    assert "![" in report and "## Generator fidelity" in report
    g = m["generator"]
    assert g["hand_radius_mm"] == 20
    for key in ("hand_depth_error_mm", "full_depth_error_mm", "blank_hand_depth_error_mm",
                "readback_mean_error_mm"):
        assert math.isfinite(g[key]) and g[key] > 0, key
    assert g["real_mean_error_mm"] == pytest.approx(m["mean_error_mm"], rel=1e-9)
    assert "reference_readback_mean_error_mm" not in g
    from PIL import Image
    assert Image.open(out / "generated.png").size[0] >= 600


def test_supervised_run_has_no_generator_block_and_refuses_a_reference(supervised_run, capsys):
    assert main(["evaluate", str(supervised_run), "--json", "--out", ""]) == 0
    m = json.loads(capsys.readouterr().out)
    assert m["mode"] == "supervised" and "generator" not in m
    assert main(["evaluate", str(supervised_run), "--quiet", "--reference",
                 str(supervised_run)]) == 2
    err = capsys.readouterr().err
    assert "needs a trained generator" in err and len(err.strip().splitlines()) == 1


def test_reference_reads_back_with_its_own_network(run, supervised_run, capsys):
    # the run as its own reference: the same network, so the same numbers
    assert main(["evaluate", str(run), "--json", "--out", "", "--reference", str(run)]) == 0
    g = json.loads(capsys.readouterr().out)["generator"]
    assert g["reference_readback_mean_error_mm"] == pytest.approx(g["readback_mean_error_mm"],
                                                                  rel=1e-9)
    assert g["reference_real_mean_error_mm"] == pytest.approx(g["real_mean_error_mm"], rel=1e-9)
    assert g["reference_checkpoint"].endswith("best.pt")
    # another network (the supervised run's) reads differently
    assert main(["evaluate", str(run), "--json", "--out", "",
                 "--reference", str(supervised_run / "checkpoints" / "last.pt")]) == 0
    other = json.loads(capsys.readouterr().out)["generator"]
    assert other["readback_mean_error_mm"] == pytest.approx(g["readback_mean_error_mm"])
    assert other["reference_real_mean_error_mm"] != pytest.approx(g["real_mean_error_mm"])


def test_reference_with_other_joints_is_one_line(run, tmp_path, capsys):
    from handgan.models import ModelConfig

    path = tmp_path / "icvl16.pt"
    save_tiny_checkpoint(path, ModelConfig(size=64, num_joints=16, width=8, pose_hidden=32),
                         crop=None)
    assert main(["evaluate", str(run), "--quiet", "--reference", str(path)]) == 2
    err = capsys.readouterr().err
    assert "predicts 16 joints, the run 14" in err and len(err.strip().splitlines()) == 1
    small = tmp_path / "size32.pt"
    save_tiny_checkpoint(small, ModelConfig(size=32, width=8, pose_hidden=32), crop=None)
    assert main(["evaluate", str(run), "--quiet", "--reference", str(small)]) == 2
    err = capsys.readouterr().err
    assert "trained on 32 px crops" in err and len(err.strip().splitlines()) == 1


def test_run_folder_defaults_to_best_and_eval_dir(run, capsys):
    assert main(["evaluate", str(run), "--json", "--split", "train",
                 "--cache-dir", str(run.parent / "cache")]) == 0
    m = json.loads(capsys.readouterr().out)
    assert m["checkpoint"].endswith("best.pt") and m["split"] == "train" and m["frames"] == 40
    assert (run / "eval-train" / "metrics.json").is_file()


@pytest.mark.parametrize("args, message", [
    (["nowhere"], "no such run folder"),
    (["RUN", "--split", "val"], "no split 'val'"),
])
def test_bad_input_is_one_line(run, capsys, args, message):
    args = [str(run) if a == "RUN" else a for a in args]
    assert main(["evaluate", *args, "--quiet", "--cache-dir", str(run.parent / "cache")]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_paths_in_a_checkpoint_are_never_written_to(run, tmp_path, monkeypatch, capsys):
    from handgan.checkpoint import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    elsewhere = tmp_path / "elsewhere"  # where a received checkpoint would have data go
    ckpt["config"]["data"]["source"] = f"synthetic:{elsewhere / 'data'}"
    ckpt["config"]["data"]["cache_dir"] = str(elsewhere / "cache")
    received = tmp_path / "received.pt"
    save_checkpoint(received, ckpt)
    monkeypatch.chdir(tmp_path)
    assert main(["evaluate", str(received), "--out", "report", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "not here" in err and "--data" in err and len(err.strip().splitlines()) == 1
    summary = json.loads((run / "summary.json").read_text())
    source = load_checkpoint(run / "checkpoints" / "last.pt")["config"]["data"]["source"]
    assert main(["evaluate", str(received), "--data", source, "--out", "report", "--quiet"]) == 0
    assert not elsewhere.exists()
    assert (tmp_path / ".handgan-cache").is_dir()  # the local default cache
    m = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert m["mean_error_mm"] == pytest.approx(summary["final_mean_error_mm"], rel=1e-9)
