"""`handgan study labels` end to end on a small budget: every run, the table, the plot and
study.json; a rerun reads finished runs back instead of training them again."""
import json

import pytest

from handgan.cli import main
from handgan.errors import HandganError
from handgan.study import parse_fractions, parse_variants, summarise
from handgan.synth.generate import synthesize_dataset

from helpers import HAND


def test_study_end_to_end_and_rerun(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = synthesize_dataset(tmp_path / "ds", 32, 8, seed=0, workers=1, config=HAND, progress=False)
    args = ["study", "labels", "--out", "study", "--data", f"synthetic:{data}",
            "--fractions", "0.25,1", "--seeds", "1", "--max-steps", "2", "--quiet",
            "--variant", "gan-wd=optim.weight_decay=1e-4", "--modes", "supervised",
            *[a for kv in ("model.width=8", "localizer.enabled=false", "model.pose_hidden=32",
                           "optim.batch_size=8",
                           "device=cpu", "data.val_fraction=0.25") for a in ("--set", kv)]]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "| 25 % |" in out and "| 100 % |" in out and "| supervised | gan-wd |" in out
    study = json.loads((tmp_path / "study" / "study.json").read_text())
    rows = study["rows"]
    assert len(rows) == 2 * 2  # 2 fractions x (supervised, gan-wd) x 1 seed
    assert {(r["mode"], r["fraction"]) for r in rows} == {
        (m, f) for m in ("supervised", "gan-wd") for f in (0.25, 1.0)}
    assert all(r["steps"] == 2 and r["mean_error_mm"] > 0 for r in rows)
    assert study["config"]["command"].startswith("handgan study labels")
    assert (tmp_path / "study" / "label-study.png").stat().st_size > 5000
    assert "±" not in (tmp_path / "study" / "table.md").read_text()  # one seed: no spread

    run = tmp_path / "study" / "runs" / "gan-wd-f0.25-s0"
    stamp = (run / "summary.json").stat().st_mtime_ns
    assert main(args) == 0  # finished runs are read back, not trained again
    assert (run / "summary.json").stat().st_mtime_ns == stamp
    assert json.loads((tmp_path / "study" / "study.json").read_text())["rows"] == rows


def test_parsers_and_summary():
    assert parse_fractions("1,0.1, 0.01") == [0.01, 0.1, 1.0]
    for bad in ("0", "1.5", "a", "0.1,0.1", ""):
        with pytest.raises(HandganError):
            parse_fractions(bad)
    v = parse_variants("gan", ["sup-wd=supervised:optim.weight_decay=1e-4", "g0=model.shared_layers=0"])
    assert [(x.name, x.mode, x.overrides) for x in v] == [
        ("gan", "gan", ()), ("sup-wd", "supervised", ("optim.weight_decay=1e-4",)),
        ("g0", "gan", ("model.shared_layers=0",))]
    with pytest.raises(HandganError):
        parse_variants("gan,gan", [])
    stats = summarise({"rows": [{"mode": "gan", "fraction": 0.1, "mean_error_mm": e}
                                for e in (10.0, 12.0, 14.0)]})
    assert stats == [{"mode": "gan", "fraction": 0.1, "n": 3, "mean": 12.0, "std": 2.0}]
