"""Data source specs and `handgan data info` on every kind of source we can write here."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from handgan.data import sources
from handgan.data.sources import (
    open_split,
    parse_source,
    pick_test_split,
    prepare_sources,
    split_names,
)
from handgan.errors import HandganError
from handgan.synth.generate import synthesize_dataset

from helpers import HAND


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory) -> Path:
    return synthesize_dataset(tmp_path_factory.mktemp("src") / "ds", 6, 3, seed=2, config=HAND,
                              progress=False)


@pytest.mark.parametrize("text, kind, root, option", [
    ("synthetic", "synthetic", "data/synthetic", None),
    ("synthetic:/tmp/s", "synthetic", "/tmp/s", None),
    ("nyu:/data/nyu", "nyu", "/data/nyu", None),
    ("nyu:/data/nyu:test", "nyu", "/data/nyu", "test"),  # the one split to use
    ("nyu:/data/a:b/nyu", "nyu", "/data/a:b/nyu", None),  # a ':' inside the path is the path's
    ("icvl:rel/icvl", "icvl", "rel/icvl", None),
    ("msra:/data/msra", "msra", "/data/msra", None),
    ("msra:/data/msra:3", "msra", "/data/msra", "3"),
    ("folder:/frames", "folder", "/frames", None),
    ("folder:/frames:475.1,475.1,315.5,245.5,640,480", "folder", "/frames", "475.1,475.1,315.5,245.5,640,480"),
])
def test_parse_source(text, kind, root, option):
    spec = parse_source(text)
    assert (spec.kind, spec.root, spec.option) == (kind, Path(root), option)


@pytest.mark.parametrize("text, message", [
    ("kinect:/x", "unknown data source"), ("nyu", "needs a folder"), ("msra:/d:9", "subject 0-8"),
])
def test_parse_source_rejects_bad_specs(text, message):
    with pytest.raises(HandganError, match=message):
        parse_source(text)


@pytest.mark.parametrize("names, expected", [
    (["train", "test"], "test"), (["train", "test_seq_1"], "test_seq_1"),
    (["train", "test_seq_2"], "test_seq_2"), (["all"], None), (["train", "test_1", "test_2"], None),
])
def test_the_test_split_of_a_source(names, expected):
    # what training reports as its test figure and evaluate scores by default
    assert pick_test_split(names) == expected


def test_nyu_split_named_in_the_spec(synth_root):
    assert split_names(parse_source(f"nyu:{synth_root}:test")) == ["test"]
    with pytest.raises(HandganError, match=r"no split folder 'test_2' .*\(found: test, train\)"):
        split_names(parse_source(f"nyu:{synth_root}:test_2"))


def test_synthetic_reads_through_the_nyu_reader(synth_root):
    for kind in ("synthetic", "nyu"):
        spec = parse_source(f"{kind}:{synth_root}")
        assert split_names(spec) == ["train", "test"]
        test = open_split(spec, "test")
        assert len(test) == 3 and test.joints_xyz().shape == (3, 14, 3)


def test_opening_a_missing_synthetic_source_generates_nothing(tmp_path):
    spec = parse_source(f"synthetic:{tmp_path / 's'}")
    for open_ in (lambda: split_names(spec), lambda: open_split(spec, "train")):
        with pytest.raises(HandganError, match="no synthetic dataset in .* yet; the commands"):
            open_()
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def tiny_default(monkeypatch):
    """The explicit generation step makes 2 + 1 frames instead of 4,000 + 1,000."""
    monkeypatch.setitem(sources.DEFAULT_SYNTHETIC_COUNTS, "train", 2)
    monkeypatch.setitem(sources.DEFAULT_SYNTHETIC_COUNTS, "test", 1)


def test_prepare_sources_generates_a_missing_synthetic_source_once(tmp_path, tiny_default,
                                                                    capsys):
    root = tmp_path / "s"
    prepare_sources([f"synthetic:{root}", None, "none"], seed=2)
    err = capsys.readouterr().err
    assert f"{root}: generating the synthetic dataset (2 training + 1 test frames, seed 2)" in err
    assert json.loads((root / "handgan_synth.json").read_text())["seed"] == 2
    assert split_names(parse_source(f"synthetic:{root}")) == ["train", "test"]
    prepare_sources([f"synthetic:{root}"], seed=2)  # there now: nothing to do, nothing said
    assert "generating" not in capsys.readouterr().err


def test_evaluate_generates_its_missing_data_with_the_runs_seed(ckpt, tmp_path, tiny_default):
    import torch

    from handgan.checkpoint import save_checkpoint
    from handgan.cli import main

    state = torch.load(ckpt, weights_only=True)
    state["config"]["seed"] = 4
    save_checkpoint(tmp_path / "seed4.pt", state)
    root = tmp_path / "s"
    assert main(["evaluate", str(tmp_path / "seed4.pt"), "--data", f"synthetic:{root}", "--quiet",
                 "--out", str(tmp_path / "eval"), "--cache-dir", str(tmp_path / "cache")]) == 0
    assert json.loads((root / "handgan_synth.json").read_text())["seed"] == 4


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "handgan", *args], capture_output=True, text=True)


def test_data_info_reports_splits_and_bad_frames(synth_root, tmp_path):
    r = _cli("data", "info", "--data", f"nyu:{synth_root}", "--json", "--check-all")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["splits"]["train"]["frames"] == 6 and report["splits"]["test"]["frames"] == 3
    assert report["splits"]["train"]["joints"] == 14 and report["splits"]["train"]["bad_frames"] == []
    lo, hi = report["splits"]["train"]["depth_range_mm"]
    assert 300 < lo < hi < 4000

    # a folder of .npy frames: one good synthetic frame, one empty frame
    folder = tmp_path / "frames"
    folder.mkdir()
    good = open_split(parse_source(f"nyu:{synth_root}"), "train").depth(0)
    np.save(folder / "a.npy", good.astype(np.uint16))
    np.save(folder / "b.npy", np.zeros((480, 640), np.uint16))
    r = _cli("data", "info", "--data", f"folder:{folder}:nyu")
    assert r.returncode == 0, r.stderr
    assert "[all] 2 frames, unlabelled" in r.stdout
    assert "bad frames: 1 of 2 checked" in r.stdout and "b.npy" in r.stdout


def test_data_info_errors_are_one_line(tmp_path):
    for args in (["--data", f"nyu:{tmp_path / 'none'}"], ["--data", "kinect:/x"]):
        r = _cli("data", "info", *args)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
