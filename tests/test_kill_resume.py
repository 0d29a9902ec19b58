"""SIGKILL a training run mid-epoch, resume it, and compare with an uninterrupted run: the same
losses at every step after the resume point and the same final error."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from handgan.checkpoint import load_checkpoint
from handgan.synth.generate import synthesize_dataset

from helpers import HAND, read_jsonl

SETS = ["model.width=8", "localizer.enabled=false", "model.pose_hidden=32", "optim.batch_size=8", "optim.epochs=15",
        "device=cpu", "log_every=1", "data.val_fraction=0", "data.labeled_fraction=0.5",
        "num_workers=1", "threads=1"]  # fixed: sums depend on it
STEPS_PER_EPOCH = 6  # 48 training frames (24 labelled), batch 8


def _train_cmd(run, data, *extra):
    sets = [a for kv in SETS for a in ("--set", kv)]
    return [sys.executable, "-m", "handgan", "train", "--out", str(run), "--quiet",
            "--data", f"synthetic:{data}", *sets, *extra]


def _losses(run):
    """step -> losses (a resumed run drops what was logged after its checkpoint: each step once)."""
    records = [r for r in read_jsonl(run / "metrics.jsonl") if r["event"] == "train"]
    assert len({r["step"] for r in records}) == len(records)
    return {r["step"]: r for r in records}


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_matches_uninterrupted_run(tmp_path):
    data = synthesize_dataset(tmp_path / "ds", 48, 8, seed=0, workers=1, config=HAND, progress=False)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    full_run = tmp_path / "full"
    subprocess.run(_train_cmd(full_run, data), check=True, cwd=tmp_path, env=env,
                   capture_output=True)
    full = _losses(full_run)

    run = tmp_path / "killed"
    proc = subprocess.Popen(_train_cmd(run, data), cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = run / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 120
    killed_at = None
    while time.monotonic() < deadline and proc.poll() is None:
        if last.is_file() and (run / "metrics.jsonl").is_file():
            steps = [r["step"] for r in read_jsonl(run / "metrics.jsonl")
                     if r["event"] == "train"]
            if steps and steps[-1] % STEPS_PER_EPOCH and steps[-1] > STEPS_PER_EPOCH:
                proc.send_signal(signal.SIGKILL)  # mid-epoch, after a checkpoint
                killed_at = steps[-1]
                break
        time.sleep(0.005)
    proc.wait()
    assert killed_at is not None, "the run finished before it could be killed mid-epoch"
    resume_step = load_checkpoint(last)["step"]
    assert resume_step < killed_at

    r = subprocess.run([sys.executable, "-m", "handgan", "train", "--out", str(run), "--resume",
                        "--quiet"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    resumed = _losses(run)
    assert sorted(resumed) == sorted(full)
    for step in range(resume_step + 1, max(full) + 1):
        for key, value in full[step].items():
            if key.startswith("loss_"):
                assert resumed[step][key] == pytest.approx(value, rel=1e-6, abs=1e-7), (step, key)
    final = json.loads((run / "summary.json").read_text())["final_mean_error_mm"]
    expected = json.loads((full_run / "summary.json").read_text())["final_mean_error_mm"]
    assert final == pytest.approx(expected, rel=1e-6)
