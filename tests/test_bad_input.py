"""Every command on the mistakes a careless or unlucky user makes: exit 2, one line naming the
problem, no traceback, and no file changed outside the command's own output (a bad frame in a
batch is one line and the other frames still work)."""
import errno
import json
import shutil

import numpy as np
import pytest
import torch

from handgan.checkpoint import _torch_save, load_checkpoint, save_checkpoint
from handgan.cli import main
from handgan.config import apply_overrides, preset
from handgan.errors import HandganError
from handgan.synth.generate import synthesize_dataset
from handgan.train import train

from helpers import HAND


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Inputs the commands read (never to be changed): a dataset, a run, odd files."""
    root = tmp_path_factory.mktemp("bad")
    data = synthesize_dataset(root / "ds", 16, 4, seed=0, workers=1, config=HAND, progress=False)
    cfg = apply_overrides(preset("quick"), [
        f"data.source=synthetic:{data}", f"data.cache_dir={root / 'cache'}", "model.width=8", "localizer.enabled=false",
        "model.pose_hidden=32", "optim.batch_size=8", "optim.max_steps=1", "device=cpu",
        "num_workers=0", "data.val_fraction=0", "sample_every_epochs=0"])
    run = train(cfg, root / "run", progress=False)
    ckpt = run / "checkpoints" / "last.pt"
    state = load_checkpoint(ckpt)
    nan = {**state, "discriminator": {k: v.clone() for k, v in state["discriminator"].items()},
           "generator": {k: v.clone() for k, v in state["generator"].items()}}
    for net in ("discriminator", "generator"):
        next(v for v in nan[net].values() if v.is_floating_point()).fill_(float("nan"))
    save_checkpoint(root / "nan.pt", nan)
    save_checkpoint(root / "noconfig.pt", {"step": 1, "generator": state["generator"]})
    shutil.copy(ckpt, root / "copy.pt")
    (root / "random.pt").write_bytes(np.random.default_rng(0).bytes(4096))
    (root / "model.onnx").write_bytes(b"\x08\x07\x12\x07pytorch\x1a\x032.1" + bytes(64))
    (root / "empty").mkdir()
    (root / "afile").write_text("not a folder\n")
    gt = root / "gt.txt"
    gt.write_text(" ".join(["100 100 500"] * 14) + "\n")
    (root / "huge.txt").write_text(" ".join(["1e300 100 500"] * 14) + "\n")
    pose = state["crop"]["joint_names"]
    (root / "pose_huge.json").write_text(json.dumps([[[1e300, 0.0, 500.0]] * len(pose)]))
    (root / "pose.txt").write_text(" ".join(["320 240 500"] * len(pose)) + "\n")
    return root


def snapshot(root):
    return {p: p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and "cache" not in p.parts}


FRAME = "ds/test/depth_1_0000001.png"
CASES = {  # name: (argv with ROOT/ for the fixture and OUT/ for a fresh folder, what the line says)
    # writing over inputs and checkpoints
    "export-over-its-checkpoint": ("export ROOT/run/checkpoints/last.pt --onnx ROOT/run/checkpoints/last.pt", "also an input"),
    "export-over-another-checkpoint": ("export ROOT/run/checkpoints/last.pt --onnx ROOT/copy.pt", "is a checkpoint"),
    "export-onnx-is-a-folder": ("export ROOT/run/checkpoints/last.pt --onnx ROOT/empty", "is a folder"),
    "export-opset-out-of-range": ("export ROOT/run/checkpoints/last.pt --onnx OUT/x.onnx --opset 99", "opsets 9 to"),
    "show-samples-out-is-a-folder": ("show-samples ROOT/ds --out ROOT/empty", "is a folder"),
    "evaluate-out-is-a-file": ("evaluate ROOT/run --out ROOT/afile --cache-dir ROOT/cache", "is a file"),
    "generate-out-is-a-file": ("generate ROOT/run/checkpoints/last.pt --poses ROOT/pose.txt --out ROOT/afile", "is a file"),
    "compare-out-is-a-file": ("compare --dataset nyu --gt ROOT/gt.txt a=ROOT/gt.txt --out ROOT/afile/x", "is a file"),
    "train-out-is-a-file": ("train --out ROOT/afile --max-steps 1", "afile"),
    # checkpoints that are not what they claim
    "random-bytes-as-checkpoint": ("evaluate ROOT/random.pt --out OUT/e", "not a torch checkpoint (not a zip"),
    "onnx-as-checkpoint": ("predict ROOT/model.onnx ROOT/" + FRAME, "an ONNX model"),
    "checkpoint-without-config": ("evaluate ROOT/noconfig.pt --out OUT/e", "no 'config'"),
    "nan-weights-evaluate": ("evaluate ROOT/nan.pt --out OUT/e --data synthetic:ROOT/ds --cache-dir ROOT/cache", "NaN"),
    "nan-weights-predict-json": ("predict ROOT/nan.pt ROOT/" + FRAME + " --json", "NaN"),
    "nan-weights-generate": ("generate ROOT/nan.pt --poses ROOT/pose.txt --out OUT/g", "NaN"),
    # values
    "synth-negative-seed": ("synth --out OUT/s --train 2 --test 0 --seed -5", "must be >= 0"),
    "train-negative-seed": ("train --out OUT/r --set seed=-1", "seed must be >= 0"),
    "train-width-0": ("train --out OUT/r --set model.width=0", "width must be >= 1"),
    "intrinsics-1e300": ("predict ROOT/run/checkpoints/last.pt ROOT/" + FRAME + " --intrinsics 1e300,1e300,320,240", "fx and fy"),
    "intrinsics-1e-300": ("predict ROOT/run/checkpoints/last.pt ROOT/" + FRAME + " --intrinsics 1e-300,1e-300,320,240", "fx and fy"),
    "intrinsics-cx-1e30": ("predict ROOT/run/checkpoints/last.pt ROOT/" + FRAME + " --intrinsics 500,500,1e30,240", "principal point"),
    "pose-1e300": ("generate ROOT/run/checkpoints/last.pt --poses ROOT/pose_huge.json --out OUT/g", "not pixels or mm"),
    "compare-huge-coordinates-json": ("compare --dataset nyu --gt ROOT/gt.txt a=ROOT/huge.txt --json", "not pixels or mm"),
    "data-info-empty-folder": ("data info --data nyu:ROOT/empty", "no splits"),
    # resources
    "generate-100000-steps": ("generate ROOT/run/checkpoints/last.pt --interpolate ROOT/pose.txt ROOT/pose.txt --steps 100000 --out OUT/g", "at most 1000"),
    "synth-absurd-count": ("synth --out OUT/s --train 99999999999999", "at most 9,999,999"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line_exit_2_and_changes_nothing(env, tmp_path, capsys, monkeypatch, name):
    argv, message = CASES[name]
    monkeypatch.chdir(tmp_path)  # any default output lands here, not in the repository
    args = [a.replace("ROOT/", f"{env}/").replace("OUT/", f"{tmp_path}/out/") for a in argv.split()]
    before = snapshot(env)
    with pytest.raises(SystemExit) if name == "synth-negative-seed" else _no_exit() as exit_info:
        rc = main(args)
    if name == "synth-negative-seed":  # argparse's own error, made one line by cli._Parser
        rc = exit_info.value.code
    out, err = capsys.readouterr()
    assert rc == 2, (out, err)
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert snapshot(env) == before  # nothing outside the command's output changed
    if name.endswith("-json"):
        assert out == ""  # no half-written or invalid JSON on stdout


class _no_exit:
    value = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_predict_never_writes_over_an_input_frame(env, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    shutil.copy(env / FRAME, tmp_path / "a.png")
    old_overlay = out / "a.overlay.png"  # e.g. from `predict ... out/*` after an earlier run
    old_overlay.write_bytes(b"an earlier overlay")
    rc = main(["predict", str(env / "run/checkpoints/last.pt"), str(tmp_path / "a.png"),
               str(old_overlay), "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "also an input" in err and len(err.strip().splitlines()) == 1
    assert old_overlay.read_bytes() == b"an earlier overlay"
    assert sorted(p.name for p in out.iterdir()) == ["a.overlay.png"]


def test_oversized_frames_are_bad_frames_and_the_batch_goes_on(env, tmp_path, capsys):
    bomb = tmp_path / "bomb.png"  # IHDR claims 20000 x 20000, 16-bit grey
    shutil.copy(env / FRAME, bomb)
    data = bytearray(bomb.read_bytes())
    data[16:24] = (20000).to_bytes(4, "big") * 2
    bomb.write_bytes(bytes(data))
    huge = tmp_path / "huge.npy"  # a header claiming (200000, 200000) float32, 1 kB of data
    header = np.lib.format.header_data_from_array_1_0(np.zeros((1, 1), np.float32))
    header["shape"] = (200000, 200000)
    with open(huge, "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        f.write(bytes(1024))
    out = tmp_path / "out"
    rc = main(["predict", str(env / "run/checkpoints/last.pt"), str(bomb), str(huge),
               str(env / FRAME), "--out", str(out), "--quiet", "--no-overlay"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(lines) == 2 and "Traceback" not in "".join(lines)
    assert "bomb.png: a 20000x20000 image is too large" in lines[0]
    assert "huge.npy" in lines[1]
    assert (out / "depth_1_0000001.json").is_file()  # the good frame still got its prediction


def test_machine_errors_are_one_line(env, tmp_path, capsys, monkeypatch):
    # A read-only folder (EROFS reaches root too, unlike a chmod): one line naming the file.
    import handgan.atomic

    def read_only(src, dst):
        raise OSError(errno.EROFS, "Read-only file system", str(dst))

    monkeypatch.setattr(handgan.atomic.os, "replace", read_only)
    rc = main(["compare", "--dataset", "nyu", "--gt", str(env / "gt.txt"), f"a={env / 'gt.txt'}",
               "--out", str(tmp_path / "report")])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "Read-only file system" in err and "report" in err
    monkeypatch.undo()

    class Full:  # a disk that fills after 1 kB: torch would say "unexpected pos ..."
        written = 0

        def write(self, data):
            self.written += len(data)
            if self.written > 1024:
                raise OSError(errno.ENOSPC, "No space left on device")
            return len(data)

        def flush(self):
            pass

    with pytest.raises(OSError) as e:
        _torch_save({"w": torch.zeros(10_000)}, Full(), tmp_path / "last.pt")
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(tmp_path / "last.pt")


def test_rerunning_a_finished_synth_says_it_is_complete(tmp_path, capsys):
    args = ["synth", "--out", str(tmp_path / "s"), "--train", "2", "--test", "0", "--workers", "1",
            "--quiet"]
    assert main(args) == 0
    before = snapshot(tmp_path / "s")
    capsys.readouterr()
    assert main(args) == 0
    assert "the dataset is complete" in capsys.readouterr().out
    assert snapshot(tmp_path / "s") == before


def test_a_damaged_first_frame_does_not_stop_a_folder_from_opening(tmp_path):
    from handgan.camera import NYU
    from handgan.data.folder import FolderFrames

    folder = tmp_path / "frames"
    folder.mkdir()
    huge = folder / "a_huge.npy"  # sorts first; its header claims (200000, 200000)
    header = np.lib.format.header_data_from_array_1_0(np.zeros((1, 1), np.float32))
    header["shape"] = (200000, 200000)
    with open(huge, "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        f.write(bytes(1024))
    np.save(folder / "b_good.npy", np.full((480, 640), 700, np.uint16))
    frames = FolderFrames(folder, NYU)
    assert len(frames) == 2 and frames.depth(1).shape == (480, 640)
    with pytest.raises(HandganError, match="a_huge.npy"):
        frames.depth(0)
    (folder / "b_good.npy").unlink()
    with pytest.raises(HandganError, match="a_huge.npy"):  # nothing readable: the first error
        FolderFrames(folder, NYU)
