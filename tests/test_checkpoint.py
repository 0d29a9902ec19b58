"""checkpoint.py: exact round trips (weights, optimiser, RNG), atomic writes, safe loading."""
import os
import pickle
import random
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from handgan.checkpoint import (
    FORMAT_VERSION,
    CheckpointManager,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from handgan.config import from_dict, preset, to_dict
from handgan.errors import HandganError
from handgan.models import Discriminator, ModelConfig


def _draw(gen: np.random.Generator) -> list:
    return [random.random(), random.gauss(0, 1), np.random.rand(3).tolist(),
            np.random.standard_normal(), torch.rand(4).tolist(), torch.randn(3).tolist(),
            gen.random(2).tolist()]


def _trained_state(seed: int = 0):
    torch.manual_seed(seed)
    cfg = ModelConfig(size=32, width=4, pose_hidden=8)
    net = Discriminator(cfg)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, betas=(0.5, 0.999))
    _, pose = net(torch.randn(2, 1, 32, 32))
    pose.square().mean().backward()
    opt.step()
    return net, opt


def _tmp_files(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_round_trip_weights_optimiser_config_and_rng(tmp_path):
    net, opt = _trained_state()
    cfg = preset("quick")
    gen = np.random.default_rng(7)
    random.gauss(0, 1), np.random.standard_normal()  # leave cached Gaussians in both states
    state = {"discriminator": net.state_dict(), "opt_d": opt.state_dict(),
             "scaler": torch.amp.GradScaler("cpu").state_dict(),
             "rng": capture_rng_state({"data": gen}), "config": to_dict(cfg),
             "epoch": 3, "step": 120, "best_metric": 17.5, "history": [(1, 2.0), (2, 1.5)]}
    expected = _draw(gen)
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, state)

    _draw(gen), _draw(gen)  # move every generator on
    ckpt = load_checkpoint(path)
    restore_rng_state(ckpt["rng"], {"data": gen})
    assert _draw(gen) == expected

    assert ckpt["format_version"] == FORMAT_VERSION and isinstance(ckpt["handgan_version"], str)
    assert from_dict(ckpt["config"]) == cfg
    assert (ckpt["epoch"], ckpt["step"], ckpt["best_metric"]) == (3, 120, 17.5)
    net2, opt2 = _trained_state(seed=1)
    net2.load_state_dict(ckpt["discriminator"])
    opt2.load_state_dict(ckpt["opt_d"])
    for a, b in zip(net.state_dict().values(), net2.state_dict().values()):
        assert torch.equal(a, b)
    saved, loaded = opt.state_dict(), opt2.state_dict()
    assert saved["param_groups"] == loaded["param_groups"] and len(saved["state"]) > 0
    for index, per_param in saved["state"].items():
        for key, value in per_param.items():
            assert torch.equal(value, loaded["state"][index][key])


def test_unplain_state_is_refused_before_writing(tmp_path):
    path = tmp_path / "ckpt.pt"
    with pytest.raises(TypeError, match=r"state\['metrics'\]\['mean'\] is a numpy.float64"):
        save_checkpoint(path, {"metrics": {"mean": np.float64(1.0)}})  # subclasses float
    with pytest.raises(TypeError, match=r"state\['crop'\] is a numpy.ndarray"):
        save_checkpoint(path, {"crop": np.zeros(3)})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fail_in", ["torch.save", "os.replace"])
def test_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch, fail_in):
    manager = CheckpointManager(tmp_path)
    manager.save({"step": 1, "w": torch.ones(1000)}, is_best=True)

    def half_written_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a zip")
        raise OSError("disk full")

    def failing_replace(src, dst):
        raise OSError("simulated crash before the rename")

    if fail_in == "torch.save":
        monkeypatch.setattr(torch, "save", half_written_save)
    else:
        monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError):
        manager.save({"step": 2, "w": torch.zeros(1000)}, is_best=True)
    monkeypatch.undo()

    for path in (manager.latest(), manager.best()):
        ckpt = load_checkpoint(path)
        assert ckpt["step"] == 1 and torch.equal(ckpt["w"], torch.ones(1000))
    assert _tmp_files(tmp_path) == []


def test_sigkill_mid_save_leaves_a_loadable_checkpoint(tmp_path):
    """A process killed while writing: last.pt is one of the complete versions, never a part."""
    child = textwrap.dedent(f"""
        import sys, torch
        from handgan.checkpoint import CheckpointManager
        manager = CheckpointManager({str(tmp_path)!r})
        step = 0
        while True:
            manager.save({{"step": step, "w": torch.full((4_000_000,), float(step))}}, step == 0)
            if step == 0:
                print("ready", flush=True)
            step += 1
    """)
    proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        proc.wait(timeout=0.7)  # let it be somewhere in a later save
    except subprocess.TimeoutExpired:
        pass
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert ckpt["w"].shape == (4_000_000,) and bool((ckpt["w"] == ckpt["step"]).all())
    assert load_checkpoint(tmp_path / "best.pt")["step"] == 0


class _Payload:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return os.system, (f"touch {self.target}",)


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_code_running_pickle_is_refused(tmp_path, writer):
    marker = tmp_path / "SOMEFILE"
    path = tmp_path / "evil.pt"
    state = {"format_version": FORMAT_VERSION, "weights": _Payload(marker)}
    with open(path, "wb") as f:
        torch.save(state, f) if writer == "torch.save" else pickle.dump(state, f)

    with pytest.raises(HandganError) as err:
        load_checkpoint(path)
    message = str(err.value)
    assert message.startswith(f"{path}: refused: not a plain-weights checkpoint (it would run code "
                              "when loaded") and "\n" not in message
    assert not marker.exists()

    # The payload is live: an unsafe load runs it.
    with open(path, "rb") as f:
        torch.load(f, weights_only=False) if writer == "torch.save" else pickle.load(f)
    assert marker.exists()


def test_corrupt_files_are_one_line_errors(tmp_path):
    good = tmp_path / "good.pt"
    save_checkpoint(good, {"w": torch.randn(10_000)})
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    text = tmp_path / "notes.pt"
    text.write_text("epoch 3: loss 0.1\nthis is not a checkpoint\n")
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    for path in (truncated, text, empty):
        with pytest.raises(HandganError) as err:
            load_checkpoint(path)
        message = str(err.value)
        assert message.startswith(f"{path}: not a torch checkpoint") and "\n" not in message

    with pytest.raises(HandganError, match="missing.pt: no such checkpoint file"):
        load_checkpoint(tmp_path / "missing.pt")
    CheckpointManager(tmp_path / "run").save({"step": 0}, is_best=False)
    with pytest.raises(HandganError, match=r"run: is a folder, not a checkpoint file \(did you "
                                           r"mean .*last.pt\?\)"):
        load_checkpoint(tmp_path / "run")


def test_format_version_is_checked(tmp_path):
    path = tmp_path / "old.pt"
    torch.save({"format_version": FORMAT_VERSION + 1, "w": torch.ones(1)}, path)
    with pytest.raises(HandganError, match=f"old.pt: checkpoint format {FORMAT_VERSION + 1}, "
                                           f"this handgan reads {FORMAT_VERSION}$"):
        load_checkpoint(path)
    torch.save({"w": torch.ones(1)}, path)
    with pytest.raises(HandganError, match="old.pt: not a handgan checkpoint \\(no format_version"):
        load_checkpoint(path)
    torch.save([torch.ones(1)], path)
    with pytest.raises(HandganError, match="holds a list, not a dict"):
        load_checkpoint(path)


def test_manager_last_and_best(tmp_path):
    manager = CheckpointManager(tmp_path / "run")
    assert manager.latest() is None and manager.best() is None
    manager.save({"step": 1}, is_best=True)
    assert manager.latest() == tmp_path / "run" / "last.pt"
    assert os.path.samefile(manager.latest(), manager.best())  # a hard link, not a copy
    manager.save({"step": 2}, is_best=False)
    manager.save({"step": 3}, is_best=False)
    assert load_checkpoint(manager.latest())["step"] == 3
    assert load_checkpoint(manager.best())["step"] == 1  # replacing last.pt leaves best.pt alone
    manager.save({"step": 4}, is_best=True)
    assert load_checkpoint(manager.best())["step"] == 4
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["best.pt", "last.pt"]


def test_manager_copies_best_where_hard_links_fail(tmp_path, monkeypatch):
    def no_links(src, dst):
        raise OSError("hard links not supported")

    monkeypatch.setattr(os, "link", no_links)
    manager = CheckpointManager(tmp_path)
    manager.save({"step": 1}, is_best=True)
    assert not os.path.samefile(manager.latest(), manager.best())
    assert load_checkpoint(manager.best())["step"] == 1
    assert _tmp_files(tmp_path) == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_rng_round_trip(tmp_path):
    state = capture_rng_state()
    expected = torch.rand(5, device="cuda").tolist()
    save_checkpoint(tmp_path / "rng.pt", {"rng": state})
    torch.rand(100, device="cuda")
    restore_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"])
    assert torch.rand(5, device="cuda").tolist() == expected
