"""Data source specs and `handgan data info` on every kind of source we can write here."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from handgan.data.sources import open_split, parse_source, pick_test_split, split_names
from handgan.errors import HandganError
from handgan.synth.frame import SynthConfig
from handgan.synth.generate import synthesize_dataset

HAND = SynthConfig(scene="hand")  # hand-only frames: faster, and enough for these tests


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
