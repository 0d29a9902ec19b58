"""Prediction files, `compare_methods`, figures and `handgan compare`, down to the published numbers."""
import json
import struct
from pathlib import Path

import numpy as np
import pytest

from handgan.cli import build_parser, main
from handgan.errors import HandganError
from handgan.evaluation.compare import compare_methods, format_table, write_report
from handgan.evaluation.metrics import CURVE_KINDS, LAYOUTS
from handgan.evaluation.predfile import check_frame_count, read_predictions, write_predictions

EVAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "eval-data"
NYU_GT = EVAL_DATA / "groundtruth" / "nyu" / "nyu_test_groundtruth_label.txt"
ICVL_GT = EVAL_DATA / "groundtruth" / "icvl" / "icvl_test_groundtruth_label.txt"
# The published mean 3D errors (mm) of the files in shared/eval-data (its README).
PUBLISHED = {
    "nyu": (NYU_GT, {"DeepPrior": ("results/nyu/CVWW15_NYU_Prior.txt", 20.750),
                     "DeepModel": ("results/nyu/IJCAI16_NYU_DeepModel.txt", 17.036),
                     "DeepPrior++": ("results/nyu/ICCVW17_NYU_DeepPrior++.txt", 12.238)}),
    "icvl": (ICVL_GT, {"LRF": ("results/icvl/CVPR14_LRF_Results.txt", 12.578),
                       "V2V-PoseNet": ("results/icvl/CVPR18_ICVL_V2V_PoseNet.txt", 6.284)}),
}
needs_eval_data = pytest.mark.skipif(
    not EVAL_DATA.is_dir(),
    reason=f"real evaluation data not found at {EVAL_DATA} (the shared/ folder beside the repo)")


ONE_JOINT_LINE = "1 2 3\n"


def _write(path, text):
    path.write_bytes(text.encode("ascii"))
    return path


def _frames(n=4, joints=14, depth=1000.0):
    """n frames with every joint on the principal point at ``depth``: xyz = (0, 0, depth)."""
    uvd = np.empty((n, joints, 3))
    uvd[...] = (320.0, 240.0, depth)
    return uvd


def _one_line_error(capsys):
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    return err


# ---- prediction files ------------------------------------------------------------------------

def test_reader_accepts_crlf_trailing_space_and_tabs(tmp_path):
    f = _write(tmp_path / "p.txt", "1 2 3 4.5 5 6 \r\n7\t8\t9 1e1 -11 +12\t\r\n")
    got = read_predictions(f, n_joints=2)
    assert got.dtype == np.float64 and got.shape == (2, 2, 3)
    np.testing.assert_array_equal(got[1], [[7, 8, 9], [10, -11, 12]])
    # No final newline is fine too, and J is inferred from the first line when not given.
    assert read_predictions(_write(tmp_path / "q.txt", "1 2 3\n4 5 6"), None).shape == (2, 1, 3)


@pytest.mark.parametrize("text, message", [
    ("1 2 3 4 5 6\n1 2 3 4 5\n", "line 2: expected 6 numbers (2 joints x u v d), found 5"),
    ("1 2 3 4 5 6\n1 2 3 4 nan 6\n", "line 2: number 5 ('nan') is not finite"),
    ("1 2 3 4 5 6\n1 2 3 -inf 5 6\n", "line 2: number 4 ('-inf') is not finite"),
    ("1 2 3 4 5 6\n1 2 3 4 5 1e999\n", "line 2: number 6 ('1e999') is not finite"),
    ("1 2 3 4 5 6\n1 2 x3 4 5 6\n", "line 2: token 3 ('x3') is not a number"),
    ("1 2 3 4 5 6\n1,2 3 4 5 6 7\n", "line 2: token 1 ('1,2') is not a number"),
    ("", "empty file"),
    ("\n", "empty file"),
    ("1 2 3 4 5 6\n\n1 2 3 4 5 6\n", "line 2 is blank"),
    ("1 2 3 4 5 6\n\n", "line 2 is blank"),
    ("1 2 3 4 5 6\n1 2 3 4 5 6 7 8 9\n", "line 2: expected 6 numbers"),
])
def test_reader_refuses_malformed_files(tmp_path, text, message):
    f = _write(tmp_path / "bad.txt", text)
    with pytest.raises(HandganError) as info:
        read_predictions(f, n_joints=2)
    assert str(info.value).startswith(f"{f}: ") and message in str(info.value)
    assert "\n" not in str(info.value)


def test_reader_needs_whole_joints_and_an_existing_file(tmp_path):
    with pytest.raises(HandganError, match=r"line 1: 4 numbers, not a multiple of 3"):
        read_predictions(_write(tmp_path / "p.txt", "1 2 3 4\n"))
    with pytest.raises(HandganError, match="file not found"):
        read_predictions(tmp_path / "missing.txt")
    with pytest.raises(HandganError, match="is a folder"):
        read_predictions(tmp_path)
    utf8 = tmp_path / "u.txt"
    utf8.write_bytes("1 2 3\n4 5 6\u00a0\n".encode())  # a no-break space
    with pytest.raises(HandganError, match=r"line 2: non-ASCII byte 0xc2"):
        read_predictions(utf8)


def test_frame_count_check_names_both_files(tmp_path):
    gt = _frames(4)
    with pytest.raises(HandganError) as info:
        check_frame_count(tmp_path / "pred.txt", gt[:3], tmp_path / "gt.txt", gt)
    message = str(info.value)
    assert "pred.txt: 3 frames" in message and "gt.txt has 4" in message
    check_frame_count("p", gt, "g", gt)  # equal counts pass


def test_write_read_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    uvd = rng.uniform([0, 0, 300], [640, 480, 1500], size=(7, 14, 3))
    path = write_predictions(tmp_path / "pred.txt", uvd)
    back = read_predictions(path, n_joints=14)
    assert back.shape == uvd.shape and np.max(np.abs(back - uvd)) <= 5e-7
    lines = path.read_text().split("\n")
    assert len(lines) == 8 and lines[-1] == "" and len(lines[0].split()) == 42
    assert not list(tmp_path.glob(".*tmp"))  # the atomic writer left no temp file
    with pytest.raises(ValueError, match="NaN"):
        write_predictions(tmp_path / "nan.txt", np.full((1, 14, 3), np.nan))


# ---- compare_methods, table, figures --------------------------------------------------------

@pytest.fixture
def synthetic_files(tmp_path):
    """GT at (0, 0, 1000) mm; "five" is 5 mm deeper everywhere; "tip" is 10 mm off on joint 0."""
    gt = _frames(4)
    five = gt.copy()
    five[..., 2] += 5.0
    tip = gt.copy()
    tip[:, 0, 2] += 10.0
    paths = {name: write_predictions(tmp_path / f"{name}.txt", a)
             for name, a in {"gt": gt, "five": five, "tip": tip}.items()}
    return paths


def test_compare_methods_scores_and_sorts_best_first(synthetic_files):
    p = synthetic_files
    result = compare_methods("synthetic", p["gt"], {"five": p["five"], "tip": p["tip"]})
    assert list(result["methods"]) == ["tip", "five"]  # 10/14 mm beats 5 mm
    assert result["dataset"] == "synthetic" and result["curve"] == "max-frame"
    assert result["frames"] == 4 and result["joints"] == list(LAYOUTS["synthetic"].joint_names)
    five, tip = result["methods"]["five"], result["methods"]["tip"]
    assert five["mean_error_mm"] == 5.0 and tip["mean_error_mm"] == pytest.approx(10 / 14)
    assert tip["per_joint_mm"] == [10.0] + [0.0] * 13
    rates = dict(zip(five["success"]["thresholds"], five["success"]["rates"]))
    assert len(rates) == 81 and rates[4.0] == 0.0 and rates[5.0] == 1.0  # 5 mm counts at 5 mm
    # Worst joint is 10 mm in every frame: success from t = 10 on; AUC = (70 + 0.5) / 80.
    assert tip["auc"] == pytest.approx(70.5 / 80)
    joint = compare_methods("synthetic", p["gt"], {"tip": p["tip"]}, curve="joint")
    assert joint["methods"]["tip"]["success"]["rates"][0] == pytest.approx(13 / 14)
    table = format_table(result)
    assert table.splitlines()[2].split() == ["1", "tip", "0.714", f"{tip['auc']:.3f}"]


def test_compare_methods_refuses_mismatches(synthetic_files, tmp_path):
    p = synthetic_files
    short = write_predictions(tmp_path / "short.txt", _frames(3))
    with pytest.raises(HandganError, match=r"short.txt: 3 frames, but the ground truth .*gt.txt has 4"):
        compare_methods("nyu", p["gt"], {"short": short})
    with pytest.raises(HandganError, match=r"gt.txt: 14 joints per frame, but icvl has 16"):
        compare_methods("icvl", p["gt"], {"five": p["five"]})
    with pytest.raises(HandganError, match="unknown success curve"):
        compare_methods("nyu", p["gt"], {"five": p["five"]}, curve="worst")


def _png_size(path):
    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24]), len(data)


def test_report_writes_two_pngs_and_the_json(synthetic_files, tmp_path):
    p = synthetic_files
    result = compare_methods("nyu", p["gt"], {"five": p["five"], "tip": p["tip"]})
    paths = write_report(result, tmp_path / "report")
    for key in ("success", "per_joint"):
        (width, height), size = _png_size(paths[key])
        assert 400 <= width <= 3000 and 300 <= height <= 2000 and size > 10_000
    assert json.loads(paths["json"].read_text()) == result


# ---- the command ---------------------------------------------------------------------------

def test_cli_choices_match_the_library():
    for dataset in LAYOUTS:
        for curve in CURVE_KINDS:
            args = build_parser().parse_args(["compare", "--dataset", dataset, "--gt", "g",
                                              "--curve", curve, "a=b"])
            assert (args.dataset, args.curve) == (dataset, curve)


def test_cli_table_json_and_out(synthetic_files, tmp_path, capsys):
    p = synthetic_files
    common = ["compare", "--dataset", "synthetic", "--gt", str(p["gt"]), f"five={p['five']}",
              f"tip={p['tip']}"]
    assert main(common) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[2].split()[:3] == ["1", "tip", "0.714"]

    assert main([*common, "--json", "--out", str(tmp_path / "r"), "--curve", "mean-frame"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)  # stdout is the JSON and nothing else
    assert result["curve"] == "mean-frame" and list(result["methods"]) == ["tip", "five"]
    written = [line.removeprefix("wrote ") for line in captured.err.splitlines()]
    assert sorted(Path(w).name for w in written) == ["compare.json", "per_joint.png", "success.png"]
    assert json.loads((tmp_path / "r" / "compare.json").read_text()) == result


@pytest.mark.parametrize("case, message", [
    ("no-equals", "expected NAME=PRED.txt, got 'five'"),
    ("empty-name", "expected NAME=PRED.txt, got '="),
    ("twice", "method name 'five' given twice"),
    ("missing", "missing.txt: file not found"),
    ("malformed", "bad.txt: line 1: expected 42 numbers (14 joints x u v d), found 3"),
    ("fewer", "short.txt: 3 frames, but the ground truth"),
])
def test_cli_errors_are_one_line_and_exit_2(synthetic_files, tmp_path, capsys, case, message):
    p = synthetic_files
    specs = {
        "no-equals": ["five"],
        "empty-name": [f"={p['five']}"],
        "twice": [f"five={p['five']}", f"five={p['tip']}"],
        "missing": [f"m={tmp_path / 'missing.txt'}"],
        "malformed": [f"b={_write(tmp_path / 'bad.txt', ONE_JOINT_LINE)}"],
        "fewer": [f"s={write_predictions(tmp_path / 'short.txt', _frames(3))}"],
    }[case]
    assert main(["compare", "--dataset", "nyu", "--gt", str(p["gt"]), *specs]) == 2
    err = _one_line_error(capsys)
    assert err.startswith("handgan compare: error: ") and message in err


def test_cli_bad_dataset_is_one_line(capsys):
    with pytest.raises(SystemExit) as info:
        main(["compare", "--dataset", "hands", "--gt", "g", "a=b"])
    assert info.value.code == 2 and "invalid choice: 'hands'" in _one_line_error(capsys)


# ---- acceptance: the published numbers, through the command --------------------------------

@needs_eval_data
@pytest.mark.parametrize("dataset", sorted(PUBLISHED))
def test_published_mean_errors_reproduced_through_the_cli(dataset, capsys):
    gt, methods = PUBLISHED[dataset]
    specs = [f"{name}={EVAL_DATA / rel}" for name, (rel, _) in methods.items()]
    assert main(["compare", "--dataset", dataset, "--gt", str(gt), *specs, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    got = {name: m["mean_error_mm"] for name, m in result["methods"].items()}
    for name, (_, published) in methods.items():
        assert abs(got[name] - published) <= 1e-3, (name, got[name], published)
    assert list(got) == sorted(got, key=got.get)  # best first


@needs_eval_data
def test_icvl_success_rates_match_the_reference_implementation():
    # Reference values (%, inclusive) at 10 / 20 / 40 mm from shared/research/eval-reference.md.
    gt, methods = PUBLISHED["icvl"]
    files = {name: EVAL_DATA / rel for name, (rel, _) in methods.items()}
    expected = {"max-frame": {"LRF": (0.63, 20.74, 70.86), "V2V-PoseNet": (45.30, 84.65, 97.18)},
                "joint": {"LRF": (52.87, 85.05, 97.10), "V2V-PoseNet": (89.59, 98.03, 99.74)}}
    for curve, per_method in expected.items():
        result = compare_methods("icvl", gt, files, curve=curve)
        for name, percents in per_method.items():
            rates = result["methods"][name]["success"]["rates"]
            got = [100 * rates[t] for t in (10, 20, 40)]  # thresholds 0, 1, ... so index = mm
            np.testing.assert_allclose(got, percents, atol=0.005)
