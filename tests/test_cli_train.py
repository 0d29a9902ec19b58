"""`handgan train`: a smoke run through the command, refusal to overwrite a run, bad keys."""
import subprocess
import sys

from handgan.checkpoint import load_checkpoint
from handgan.synth.generate import synthesize_dataset

from helpers import HAND

SMALL = ["--set", "model.width=8", "--set", "localizer.enabled=false", "--set", "model.pose_hidden=32", "--set", "optim.batch_size=8"]


def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "handgan", *args], capture_output=True, text=True, cwd=cwd)


def test_train_command_smoke_run_resume_and_errors(tmp_path):
    data = synthesize_dataset(tmp_path / "ds", 24, 8, seed=0, config=HAND, progress=False)
    run = tmp_path / "run"
    r = _cli("train", "--out", str(run), "--data", f"synthetic:{data}", "--max-steps", "2", "--quiet",
             *SMALL, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "mean 3D joint error" in r.stdout
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert state["step"] == 2
    assert (tmp_path / ".handgan-cache").is_dir()  # the default cache lives in the working folder

    r = _cli("train", "--out", str(run), "--data", f"synthetic:{data}", "--quiet", cwd=tmp_path)
    assert r.returncode == 2 and "already holds a run" in r.stderr
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 2  # nothing lost

    r = _cli("train", "--out", str(run), "--resume", "--set", "optim.max_steps=4", "--quiet", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 4

    r = _cli("train", "--out", str(tmp_path / "other"), "--set", "optim.lrr=1", cwd=tmp_path)
    assert r.returncode == 2 and "optim.lr" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_train_help():
    r = subprocess.run([sys.executable, "-m", "handgan", "train", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--labeled-fraction" in r.stdout
