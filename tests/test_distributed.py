"""Multi-process training with torchrun on CPU (gloo): gradients are averaged over the processes,
and a 2-process run writes a checkpoint that one process loads and resumes."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import handgan.train as train_mod
from handgan.checkpoint import load_checkpoint
from handgan.config import apply_overrides, from_dict
from handgan.models import Discriminator, Generator
from handgan.synth.generate import synthesize_dataset

from helpers import HAND

HELPER = Path(__file__).parent / "helpers" / "ddp_sync_check.py"
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
SMALL = ["model.width=8", "localizer.enabled=false", "model.pose_hidden=32", "optim.batch_size=8", "device=cpu",
         "log_every=1", "data.val_fraction=0.2", "num_workers=0"]


def _torchrun(*args, cwd):
    r = subprocess.run([*TORCHRUN, *args], capture_output=True, text=True, cwd=cwd, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


@pytest.mark.parametrize("mode", ["gan", "supervised"])
def test_ddp_averages_gradients_across_processes(tmp_path, mode):
    r = _torchrun(str(HELPER), mode, cwd=tmp_path)
    assert r.stdout.strip() == "OK"


def test_two_process_run_loads_and_resumes_in_one_process(tmp_path):
    data = synthesize_dataset(tmp_path / "ds", 40, 8, seed=0, workers=1, config=HAND, progress=False)
    run = tmp_path / "run"
    sets = [a for kv in SMALL for a in ("--set", kv)]
    r = _torchrun("-m", "handgan", "train", "--out", str(run), "--data", f"synthetic:{data}",
                  "--max-steps", "3", "--quiet", *sets, cwd=tmp_path)
    assert r.stdout.count("mean 3D joint error") == 1  # rank 0 reports, the other is quiet
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 3

    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    assert ckpt["world_size"] == 2 and len(ckpt["rng_ranks"]) == 2
    cfg = from_dict(ckpt["config"])
    gen, dis = Generator(cfg.model), Discriminator(cfg.model)
    gen.load_state_dict(ckpt["generator"])  # plain module keys: no DDP "module." prefix
    dis.load_state_dict(ckpt["discriminator"])
    dis.eval()
    with torch.no_grad():
        assert dis.estimate(torch.zeros(2, 1, 64, 64)).shape == (2, 14, 3)

    cfg = apply_overrides(cfg, ["optim.max_steps=5"])
    train_mod.train(cfg, run, resume=True, progress=False)
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 5


def test_a_two_process_resume_of_a_finished_run_evaluates_and_saves_on_every_process(tmp_path):
    """A run whose last epoch ended but wrote no summary.json (killed in between): the resume has
    nothing to train and nothing evaluated yet, so it evaluates and saves, and the save is a
    collective: every process must take that branch, not rank 0 alone (which hung)."""
    data = synthesize_dataset(tmp_path / "ds", 40, 8, seed=0, workers=1, config=HAND, progress=False)
    run = tmp_path / "run"
    sets = [a for kv in [*SMALL, "optim.epochs=1"] for a in ("--set", kv)]
    _torchrun("-m", "handgan", "train", "--out", str(run), "--data", f"synthetic:{data}",
              "--quiet", *sets, cwd=tmp_path)
    steps = json.loads((run / "summary.json").read_text())["steps"]
    (run / "summary.json").unlink()
    r = subprocess.run([*TORCHRUN, "-m", "handgan", "train", "--out", str(run), "--resume",
                        "--quiet"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == steps and summary["world_size"] == 2
    evals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()
             if '"event": "eval"' in line]
    assert evals[-1]["step"] == steps
