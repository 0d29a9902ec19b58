"""`handgan predict` on full 640x480 NYU-encoded frames gives the joints `handgan evaluate`
reports for the same frames (same localisation, same crop, same network), from the same run
folder, and on the labelled split the same mean error."""
import json

import numpy as np

from handgan.cli import main
from handgan.config import apply_overrides, preset
from handgan.evaluation.predfile import read_predictions
from handgan.synth.generate import synthesize_dataset
from handgan.train import train

from helpers import HAND


def test_predict_matches_evaluate_on_rendered_frames(tmp_path, capsys):
    data = synthesize_dataset(tmp_path / "ds", 24, 6, seed=3, workers=1, config=HAND, progress=False)
    cfg = apply_overrides(preset("quick"), [
        f"data.source=synthetic:{data}", f"data.cache_dir={tmp_path / 'cache'}",
        "data.centre=com", "model.width=8", "localizer.enabled=false", "model.pose_hidden=32", "optim.batch_size=8",
        "optim.max_steps=3", "device=cpu", "data.val_fraction=0"])
    run = train(cfg, tmp_path / "run", progress=False)
    assert main(["evaluate", str(run), "--out", str(tmp_path / "eval"), "--quiet",
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    assert main(["predict", str(run), str(data / "test"),
                 "--out", str(tmp_path / "pred"), "--quiet", "--no-overlay"]) == 0
    capsys.readouterr()
    evaluated = read_predictions(tmp_path / "eval" / "predictions.txt")
    predicted = read_predictions(tmp_path / "pred" / "predictions.txt")
    assert evaluated.shape == predicted.shape == (6, 14, 3)
    # The cache stores crops as float16 (a depth step of at most 0.15 mm in a 300 mm cube);
    # predict crops in float32: the joints agree to a fraction of a pixel / millimetre.
    assert np.abs(evaluated - predicted).max() < 0.5
    # The test split is an NYU-format folder: predict reads its labels and reports the error.
    errors = [json.loads(p.read_text())["error_mm"]
              for p in sorted((tmp_path / "pred").glob("*.json"))]
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert len(errors) == 6
    assert abs(np.mean(errors) - metrics["mean_error_mm"]) < 0.5
