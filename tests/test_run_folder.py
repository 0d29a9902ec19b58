"""A run folder loses nothing: shape-changing overrides on --resume are refused before anything is
written, one writer per folder (stale locks taken over), short and finished runs resume, the
metrics log has each step once, a folder with an earlier run's log is refused, and temp files
left by killed writers are removed."""
import json
import os
import shutil
import signal
import subprocess
import sys

import pytest

from handgan.checkpoint import load_checkpoint
from handgan.cli import main
from handgan.runlock import LOCK_NAME, FolderLock
from handgan.synth.generate import synthesize_dataset

from helpers import HAND, read_jsonl

# 24 training frames, batch 8, no hold-out: 3 steps per epoch.
STEPS_PER_EPOCH = 3


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("runfolder")
    synthesize_dataset(root / "ds", 24, 8, seed=0, workers=1, config=HAND, progress=False)
    return root


def train(data, run, *extra):
    sets = ["model.width=8", "localizer.enabled=false", "model.pose_hidden=32", "optim.batch_size=8", "device=cpu",
            "log_every=1", "data.val_fraction=0", "num_workers=0", "sample_every_epochs=0",
            f"data.cache_dir={data / 'cache'}"]
    args = ["train", "--out", str(run), "--quiet", *extra]
    if "--resume" not in extra:
        args += ["--data", f"synthetic:{data / 'ds'}", *[a for kv in sets for a in ("--set", kv)]]
    return main(args)


def steps(run, event="train"):
    return [r["step"] for r in read_jsonl(run / "metrics.jsonl") if r["event"] == event]


def one_line_error(capsys):
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


def snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and "tb" not in p.parts}


def test_resume_refuses_a_shape_change_before_writing_anything(data, tmp_path, capsys):
    run = tmp_path / "run"
    assert train(data, run, "--max-steps", "2") == 0
    before = snapshot(run)
    capsys.readouterr()
    assert train(data, run, "--resume", "--set", "model.width=32") == 2
    err = one_line_error(capsys)
    assert "model.width" in err and "8" in err and "32" in err
    assert snapshot(run) == before  # config.yaml, checkpoints and log as they were
    assert train(data, run, "--resume", "--set", "optim.max_steps=3") == 0  # still resumable
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 3


def test_one_writer_per_run_folder_and_stale_locks_are_taken_over(data, tmp_path, capsys):
    run = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from handgan.runlock import FolderLock; "
         f"FolderLock({str(run)!r}).acquire(); print('held', flush=True); time.sleep(120)"],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        assert holder.stdout.readline().strip() == "held"
        assert train(data, run, "--max-steps", "1") == 2
        err = one_line_error(capsys)
        assert "in use by another handgan process" in err and f"pid {holder.pid}" in err
        assert sorted(p.name for p in run.iterdir()) == [LOCK_NAME]  # nothing written
    finally:
        holder.send_signal(signal.SIGKILL)  # dies holding it: the lock file stays, stale
        holder.wait()
    assert (run / LOCK_NAME).read_text().split()[0] == str(holder.pid)
    assert train(data, run, "--max-steps", "1") == 0
    assert not (run / LOCK_NAME).exists()  # released at the end
    with FolderLock(run):  # the API refuses a second holder in the same process too
        assert train(data, run, "--resume", "--set", "optim.max_steps=2") == 2
    assert "in use" in one_line_error(capsys)


def test_a_run_shorter_than_an_epoch_resumes_finished_or_killed(data, tmp_path):
    run = tmp_path / "run"
    assert train(data, run, "--max-steps", "2") == 0  # 2 of 3 steps: stops mid-epoch
    summary = (run / "summary.json").read_bytes()
    assert train(data, run, "--resume") == 0  # finished: nothing to do, nothing rewritten
    assert (run / "summary.json").read_bytes() == summary
    (run / "summary.json").unlink()  # as if killed after last.pt, before summary.json
    assert train(data, run, "--resume") == 0
    again = json.loads((run / "summary.json").read_text())
    assert again["steps"] == 2
    assert again["final_mean_error_mm"] == pytest.approx(json.loads(summary)["final_mean_error_mm"])
    assert steps(run) == [1, 2] and steps(run, "eval") == [2]  # the step's eval is not doubled
    # ...and it continues past its end exactly where it stopped
    assert train(data, run, "--resume", "--set", "optim.max_steps=4") == 0
    assert steps(run) == [1, 2, 3, 4]


def test_resume_drops_what_was_logged_after_the_checkpoint(data, tmp_path):
    run = tmp_path / "run"
    assert train(data, run, "--max-steps", str(STEPS_PER_EPOCH)) == 0
    at_epoch_end = (run / "checkpoints" / "last.pt").read_bytes()
    assert train(data, run, "--resume", "--set", "optim.max_steps=5") == 0
    # As if killed at step 5 before its checkpoint: last.pt is still the one of step 3.
    (run / "checkpoints" / "last.pt").write_bytes(at_epoch_end)
    assert train(data, run, "--resume") == 0
    assert steps(run) == [1, 2, 3, 4, 5]
    assert steps(run, "eval") == [3, 5]


def test_fresh_run_refuses_a_folder_with_an_earlier_runs_log(data, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    log = '{"event": "train", "step": 1, "epoch": 0, "loss_dis": 1.0}\n'
    (run / "metrics.jsonl").write_text(log)  # a run killed before its first checkpoint
    assert train(data, run, "--max-steps", "1") == 2
    assert "metrics.jsonl" in one_line_error(capsys)
    assert (run / "metrics.jsonl").read_text() == log
    assert sorted(p.name for p in run.iterdir()) == ["metrics.jsonl"]


def test_temp_files_of_killed_writers_are_removed(data, tmp_path):
    run = tmp_path / "run"
    assert train(data, run, "--max-steps", "1") == 0
    left = [run / "checkpoints" / ".last.pt.4242.0123abcd.tmp", run / ".summary.json.77.cafe0001.tmp"]
    for path in left:
        path.write_bytes(b"\0" * 1_000_000)
    mine = run / "checkpoints" / ".notes.tmp"  # not atomic_write's name: not ours to delete
    mine.write_text("keep")
    assert train(data, run, "--resume", "--set", "optim.max_steps=2") == 0
    assert not any(p.exists() for p in left) and mine.read_text() == "keep"


def test_study_restarts_a_run_killed_before_its_first_checkpoint(data, tmp_path):
    out = tmp_path / "study"
    run = out / "runs" / "supervised-f1-s0"
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text('{"event": "train", "step": 1}\n')
    sets = ["model.width=8", "localizer.enabled=false", "model.pose_hidden=32", "optim.batch_size=8", "device=cpu",
            "data.val_fraction=0", "num_workers=0", f"data.cache_dir={data / 'cache'}"]
    assert main(["study", "labels", "--out", str(out), "--data", f"synthetic:{data / 'ds'}",
                 "--fractions", "1", "--modes", "supervised", "--seeds", "1", "--max-steps", "1",
                 "--quiet", *[a for kv in sets for a in ("--set", kv)]]) == 0
    assert json.loads((run / "summary.json").read_text())["steps"] == 1
    shutil.rmtree(out)


def test_resume_into_an_unwritable_checkpoint_folder_is_refused_before_training(
        data, tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    assert train(data, run, "--max-steps", "2") == 0
    before = snapshot(run)
    capsys.readouterr()
    real_write = type(run).write_bytes

    def read_only(path, payload):  # root ignores chmod, so the file system's answer is faked
        if path.name.startswith(".handgan-write-probe"):
            raise OSError(30, "Read-only file system")
        return real_write(path, payload)

    monkeypatch.setattr(type(run), "write_bytes", read_only)
    assert train(data, run, "--resume", "--max-steps", "5") == 2
    err = one_line_error(capsys)
    assert "checkpoints" in err and "Read-only file system" in err
    assert snapshot(run) == before


def test_train_command_reports_validation_error_when_the_source_has_no_test_split():
    # a source without a test split (msra:DIR without a fold, nyu:DIR with only train/) has no
    # final test figure in summary.json: the closing line names the validation figure instead
    from handgan.cli import _final_error

    with_test = {"final_mean_error_mm": 21.5, "mean_pose_baseline_mm": 59.8,
                 "final_val_mean_error_mm": 20.0, "best_mean_error_mm": 20.75, "best_epoch": 7,
                 "selection_split": "val"}
    assert _final_error(with_test) == (
        "mean 3D joint error on the test split 21.50 mm at the last epoch (last.pt), 20.75 mm "
        "with best.pt (epoch 7, chosen on validation); mean-pose baseline 59.80 mm")
    no_test = {"final_mean_error_mm": None, "mean_pose_baseline_mm": None,
               "final_val_mean_error_mm": 24.25}
    assert "24.25 mm on the validation hold-out" in _final_error(no_test)
    nothing = {"final_mean_error_mm": None, "final_val_mean_error_mm": None}
    assert _final_error(nothing).startswith("no labelled split")


def test_train_command_counts_steps_and_time_of_the_whole_run_after_a_resume():
    from handgan.cli import _steps_and_time

    fresh = {"steps": 100, "steps_this_session": 100, "wall_seconds": 50.2,
             "wall_seconds_total": 50.2}
    assert _steps_and_time(fresh) == "100 steps, 50 s in all"
    resumed = {"steps": 2950, "steps_this_session": 1000, "wall_seconds": 349.4,
               "wall_seconds_total": 711.0}
    assert _steps_and_time(resumed) == ("2950 steps, 711 s in all (1000 steps in 349 s by this "
                                        "command)")
