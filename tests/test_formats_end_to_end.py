"""Every dataset format through every command: `handgan train`, `evaluate`, `predict`, `export`,
`compare` and `generate` on small datasets written in the exact on-disk formats (NYU with one
split, ICVL in the official and DeepPrior++ layouts with two or one test sequences, MSRA with one
fold held out and with all subjects), plus the joint layouts they rely on (skeleton trees,
readable names)."""
from __future__ import annotations

import contextlib
import io
import json
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from handgan import cli
from handgan.camera import ICVL, MSRA, NYU, Intrinsics
from handgan.checkpoint import load_checkpoint
from handgan.data.nyu import depth_png_name, write_depth_png, write_joint_data
from handgan.joints import (
    ICVL16,
    ICVL16_NAMES,
    ICVL_JOINT_NAMES,
    LAYOUTS,
    MSRA21,
    NYU14,
    NYU14_NAMES,
    NYU36,
    readable_names,
    skeleton_edges,
)
from handgan.models import Generator, ModelConfig
from handgan.models import skeleton_edges as model_edges

ICVL_GT = Path("/work/shared/eval-data/groundtruth/icvl/icvl_test_groundtruth_label.txt")

# --- joint layouts -------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", list(LAYOUTS.values()), ids=lambda lay: lay.name)
def test_layout_edges_are_a_tree_from_the_palm_over_every_joint(layout):
    parents: dict[int, int] = {}
    for parent, child in layout.edges:
        assert child not in parents, f"{layout.names[child]} has two parents"
        parents[child] = parent
    assert len(layout.edges) == layout.num_joints - 1 and layout.root not in parents
    for joint in range(layout.num_joints):  # every joint walks up to the root, without a cycle
        seen, j = set(), joint
        while j != layout.root:
            assert j not in seen and j in parents, f"{layout.names[joint]} is not under the root"
            seen.add(j)
            j = parents[j]
    assert len(set(layout.names)) == layout.num_joints == len(layout.dataset_names)
    assert layout.names[layout.root] in ("palm_centre", "wrist", "hand_origin")


def test_layouts_name_and_connect_the_datasets_joints():
    # ICVL: palm, then thumb/index/middle/ring/little, root to tip; each finger hangs off the palm
    assert ICVL16.dataset_names == ICVL_JOINT_NAMES and ICVL_JOINT_NAMES[:4] == ("C", "T1", "T2",
                                                                                 "T3")
    assert ICVL16_NAMES[1:4] == ("thumb_root", "thumb_mid", "thumb_tip")
    assert ICVL16.edges[:3] == ((0, 1), (1, 2), (2, 3)) and ICVL16.centre == 0
    # MSRA: wrist, then index/middle/ring/little/thumb, MCP to tip; crops centre on middle_mcp
    assert MSRA21.names[1:5] == ("index_mcp", "index_pip", "index_dip", "index_tip")
    assert MSRA21.names[17] == "thumb_mcp" and (0, 17) in MSRA21.edges and (19, 20) in MSRA21.edges
    assert MSRA21.names[MSRA21.centre] == "middle_mcp"
    # NYU: the 14 evaluation joints are the 36 points' names at the evaluation ids
    assert NYU14.dataset_names[0] == "F1_KNU3_A" and NYU14.dataset_names[-1] == "PALM_3"
    assert NYU36.names[32] == "palm_centre" and NYU36.names[30:32] == NYU14_NAMES[11:13]


def test_readable_names_map_each_datasets_own_names():
    assert readable_names(NYU14.dataset_names) == NYU14_NAMES
    assert readable_names(NYU14_NAMES) == NYU14_NAMES
    assert readable_names(ICVL_JOINT_NAMES)[0] == "palm_centre"
    assert readable_names(NYU36.dataset_names)[:3] == ("little_tip", "little_dip", "little_dip_2")
    assert readable_names(("a", "b")) == ("a", "b")  # no known layout: kept as given


@pytest.mark.skipif(not ICVL_GT.is_file(), reason=f"{ICVL_GT} (shared eval data) is not here")
def test_icvl_edges_are_the_rigid_bones_of_the_real_labels():
    # On the 1596 real ICVL test frames every edge of ICVL16 keeps its length (a bone: spread
    # < 4.1 mm), while a joint pair two bones apart does not (it bends)
    xyz = ICVL.uvd_to_xyz(np.loadtxt(ICVL_GT).reshape(-1, 16, 3))
    spread = {e: np.linalg.norm(xyz[:, e[0]] - xyz[:, e[1]], axis=-1).std() for e in ICVL16.edges}
    assert max(spread.values()) < 4.1, spread
    assert np.linalg.norm(xyz[:, 0] - xyz[:, 6], axis=-1).std() > 8.0  # palm -> index tip


def test_networks_and_fidelity_use_the_layout_edges():
    from handgan.fidelity import skeleton_edges as fidelity_edges

    assert model_edges(16) == ICVL16.edges == fidelity_edges(16) == skeleton_edges(16)
    assert model_edges(21) == MSRA21.edges and model_edges(14) == NYU14.edges
    assert model_edges(5) == ((0, 1), (1, 2), (2, 3), (3, 4))  # no known layout: a chain
    assert fidelity_edges(5) == ()
    gen = Generator(ModelConfig(size=64, num_joints=21, width=8, gen_render=True))
    assert gen.radii.shape == (20, 2)  # one (start, end) radius per MSRA bone


# --- the datasets, written in their exact formats ------------------------------------------------


def _hand(rng, cam: Intrinsics, joints: int, centre_d: float, half: int = 25):
    """Joints (uvd) scattered over a square blob of depth ``centre_d`` mm in the frame's middle:
    a crop around any joint, and the localiser, find the hand."""
    u0, v0 = cam.width // 2, cam.height // 2
    offsets = rng.uniform((-half, -half, -20), (half, half, 20), (joints, 3))
    uvd = np.array([u0, v0, centre_d]) + offsets
    depth = np.zeros((cam.height, cam.width), np.float32)
    depth[v0 - half:v0 + half, u0 - half:u0 + half] = centre_d
    return uvd, depth


def write_icvl(root: Path, layout: str, sequences=("test_seq_1", "test_seq_2"), n_train=6,
               n_test=2) -> None:
    """ICVL: `<relpath> u v d x 16` label lines with 3 decimals, 16-bit PNG frames in mm with
    32001 = no depth; the official archive (Training/labels.txt, Testing/test_seq_N.txt, one
    Depth/ folder each) or DeepPrior++'s layout (train.txt, test_seq_N.txt, Depth/)."""
    rng = np.random.default_rng(1)
    for seq in ("train", *sequences):
        if layout == "official":
            part = "Training" if seq == "train" else "Testing"
            labels = root / part / ("labels.txt" if seq == "train" else f"{seq}.txt")
            depth_dir = root / part / "Depth"
        else:
            labels, depth_dir = root / f"{seq}.txt", root / "Depth"
        lines = []
        for k in range(n_train if seq == "train" else n_test):
            rel = f"{'201403121135' if seq == 'train' else seq}/image_{k:04d}.png"
            uvd, depth = _hand(rng, ICVL, 16, 400.0)
            depth[:4, :4] = 32001
            lines.append(rel + " " + " ".join(f"{v:.3f}" for v in uvd.ravel()) + "\n")
            (depth_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(depth.astype(np.uint16)).save(depth_dir / rel)
        labels.parent.mkdir(parents=True, exist_ok=True)
        labels.write_text("".join(lines))


def write_msra(root: Path, subjects=(0, 1, 2), per_gesture=2) -> None:
    """MSRA 2015: P<s>/<gesture>/joint.txt (frame count, then 21 x 'x y z' mm with z negative)
    and 000000_depth.bin ... ('<6i' width height left top right bottom, float32 mm box)."""
    rng = np.random.default_rng(2)
    for s in subjects:
        folder = root / f"P{s}" / "5"
        folder.mkdir(parents=True)
        rows = []
        for k in range(per_gesture):
            uvd, depth = _hand(rng, MSRA, 21, 350.0)
            xyz = MSRA.uvd_to_xyz(uvd) * (1.0, 1.0, -1.0)
            rows.append(" ".join(f"{v:.4f}" for v in xyz.ravel()) + "\n")
            left, top, right, bottom = 120, 80, 200, 160
            box = np.ascontiguousarray(depth[top:bottom, left:right], "<f4").tobytes()
            header = struct.pack("<6i", MSRA.width, MSRA.height, left, top, right, bottom)
            (folder / f"{k:06d}_depth.bin").write_bytes(header + box)
        (folder / "joint.txt").write_text(f"{per_gesture}\n" + "".join(rows))


def write_nyu_test_only(root: Path, frames=6) -> None:
    """NYU with only test/: joint_data.mat (36 joints, uvd and xyz) and RGB-encoded PNGs."""
    rng = np.random.default_rng(3)
    folder = root / "test"
    folder.mkdir(parents=True)
    uvds = []
    for k in range(frames):
        uvd, depth = _hand(rng, NYU, 36, 700.0, half=50)
        uvds.append(uvd)
        write_depth_png(folder / depth_png_name(k), depth.astype(np.uint16))
    write_joint_data(folder / "joint_data.mat", np.stack(uvds), NYU.uvd_to_xyz(np.stack(uvds)))


# --- the commands --------------------------------------------------------------------------------


def handgan(*args) -> tuple[int, str, str]:
    """`handgan ARGS` in this process -> (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


def ok(*args) -> str:
    code, out, err = handgan(*args)
    assert code == 0 and "Traceback" not in err, err
    return out


def refused(*args) -> str:
    """A user mistake: exit 2 and one line on stderr, no traceback."""
    code, out, err = handgan(*args)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


def train(tmp: Path, data: str, name: str) -> Path:
    run = tmp / f"run-{name}"
    ok("train", "--out", run, "--data", data, "--preset", "quick", "--max-steps", 2, "--quiet",
       *[x for kv in ("model.width=8", "localizer.enabled=false", "model.pose_hidden=32", "optim.batch_size=2", "device=cpu",
                      "num_workers=0", f"data.cache_dir={tmp / 'cache'}") for x in ("--set", kv)])
    return run


def evaluate(tmp: Path, run: Path, data: str, *split, default_out: str | None = None) -> dict:
    """`handgan evaluate`'s metrics.json, and "out": its folder (``default_out``: no --out, the
    report is expected in RUN/eval-<default_out>)."""
    out = run / f"eval-{default_out}" if default_out else tmp / f"eval-{run.name}-{len(split)}"
    shown = ok("evaluate", run, "--data", data, *split, *([] if default_out else ["--out", out]),
               "--cache-dir", tmp / "cache", "--device", "cpu", "--quiet")
    assert f"report: {out / 'report.md'}" in shown
    return json.loads((out / "metrics.json").read_text()) | {"out": out}


def predict_export_compare_generate(tmp: Path, run: Path, frames: Path, metrics: dict,
                                    dataset: str, names: tuple[str, ...]) -> None:
    """predict on the dataset's own frame files, export to ONNX (run by onnxruntime), compare the
    evaluation's files, generate from ground truth and from a predict JSON."""
    ckpt = run / "checkpoints" / "last.pt"
    pred = tmp / f"pred-{run.name}"
    ok("predict", ckpt, frames, "--out", pred, "--device", "cpu", "--quiet")
    first = json.loads(sorted(pred.glob("*.json"))[0].read_text())
    assert tuple(first["joints"]) == names  # readable names, in the network's order
    assert len((pred / "predictions.txt").read_text().split("\n")[0].split()) == 3 * len(names)

    onnx = tmp / f"{run.name}.onnx"
    assert "max abs difference" in ok("export", ckpt, "--onnx", onnx)
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    session = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
    crops = np.zeros((2, 1, 64, 64), np.float32)
    assert session.run(None, {"crops": crops})[0].shape == (2, len(names), 3)

    ev = metrics["out"]
    shown = ok("compare", "--dataset", dataset, "--gt", ev / "groundtruth.txt",
               f"handgan={ev / 'predictions.txt'}", "--json")
    compared = json.loads(shown)
    assert compared["joints"] == list(names) == metrics["joints"]
    # the field's metric on the written files; ICVL's evaluator camera differs a little from
    # the cropping camera evaluate uses (camera.ICVL), so the two agree to 1 %
    assert compared["methods"]["handgan"]["mean_error_mm"] == pytest.approx(
        metrics["mean_error_mm"], rel=0.01)

    ok("generate", ckpt, "--poses", ev / "groundtruth.txt", "--out", tmp / f"gen-{run.name}")
    crops = np.load(tmp / f"gen-{run.name}" / "generated.npy")
    assert crops.shape == (metrics["frames"], 64, 64)
    ok("generate", ckpt, "--poses", sorted(pred.glob("*.json"))[0], "--out",
       tmp / f"gen1-{run.name}")


def test_msra_one_fold_and_all_subjects(tmp_path):
    write_msra(tmp_path / "msra")
    fold = f"msra:{tmp_path / 'msra'}:1"
    run = train(tmp_path, fold, "fold")
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    assert ckpt["config"]["model"]["num_joints"] == 21
    summary = json.loads((run / "summary.json").read_text())
    assert summary["final_mean_error_mm"] > 0  # the held-out subject is the test split
    m = evaluate(tmp_path, run, fold)  # default split: the fold's test subject
    assert m["split"] == "test" and m["frames"] == 2 and len(m["per_joint_mm"]) == 21
    assert m["joints"] == list(MSRA21.names)
    predict_export_compare_generate(tmp_path, run, tmp_path / "msra" / "P1" / "5", m, "msra",
                                    MSRA21.names)

    every = f"msra:{tmp_path / 'msra'}"  # all subjects: no test split, a validation figure
    code, out, err = handgan("train", "--out", tmp_path / "run-all", "--data", every,
                             "--max-steps", 2, "--quiet", "--set", "model.width=8", "--set", "localizer.enabled=false",
                             "--set", "model.pose_hidden=32", "--set", "optim.batch_size=2",
                             "--set", "device=cpu", "--set", "num_workers=0",
                             "--set", f"data.cache_dir={tmp_path / 'cache'}")
    assert code == 0, err
    assert "on the validation hold-out (the source has no test split)" in out
    err = refused("evaluate", tmp_path / "run-all", "--data", every, "--out", tmp_path / "e",
                  "--cache-dir", tmp_path / "cache", "--device", "cpu", "--quiet")
    assert "no test split (has: all); name the split to evaluate with --split" in err
    m = evaluate(tmp_path, tmp_path / "run-all", every, "--split", "all")
    assert m["frames"] == 6 and m["split"] == "all"


@pytest.mark.parametrize("layout, sequences", [("official", ("test_seq_1", "test_seq_2")),
                                               ("deep-prior", ("test_seq_1",))])
def test_icvl_layouts_with_two_or_one_test_sequences(tmp_path, layout, sequences):
    root = tmp_path / "icvl"
    write_icvl(root, layout, sequences)
    data = f"icvl:{root}"
    run = train(tmp_path, data, layout)
    crop = load_checkpoint(run / "checkpoints" / "last.pt")["crop"]
    assert crop["joint_names"] == list(ICVL_JOINT_NAMES)  # the dataset's own names are saved
    split = "test" if len(sequences) == 2 else "test_seq_1"  # the default: test, or the one
    m = evaluate(tmp_path, run, data, default_out=split)     # sequence present
    assert m["split"] == split
    assert m["frames"] == 2 * len(sequences) and m["joints"] == list(ICVL16_NAMES)
    depth = root / ("Testing/Depth" if layout == "official" else "Depth") / "test_seq_1"
    predict_export_compare_generate(tmp_path, run, depth, m, "icvl", ICVL16_NAMES)


def test_nyu_folder_with_one_split_trains_only_when_the_split_is_named(tmp_path):
    root = tmp_path / "nyu"
    write_nyu_test_only(root)
    err = refused("train", "--out", tmp_path / "refused", "--data", f"nyu:{root}", "--quiet")
    assert "no train split to train on (found: test)" in err and f"nyu:{root}:test" in err
    assert not (tmp_path / "refused" / "checkpoints").exists()
    err = refused("train", "--out", tmp_path / "refused", "--data", f"nyu:{root}:test_1")
    assert "no split folder 'test_1'" in err

    data = f"nyu:{root}:test"
    run = train(tmp_path, data, "nyu")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["final_mean_error_mm"] is None and summary["final_val_mean_error_mm"] > 0
    m = evaluate(tmp_path, run, data)
    assert m["split"] == "test" and m["frames"] == 6 and m["joints"] == list(NYU14_NAMES)
    predict_export_compare_generate(tmp_path, run, root / "test", m, "nyu", NYU14_NAMES)
