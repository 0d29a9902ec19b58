"""The device data pipeline (``data.pipeline=device``, issue 16): the crop caches held on the
training device and each batch gathered and re-warped there from a plan of rows and transforms.
Run here on the CPU: its batches are the host pipeline's (crops pixel for pixel), so a run trains
as the host pipeline's does, and a resumed run continues exactly."""
import json
import math

import numpy as np
import pytest
import torch

import handgan.batches as batches_mod
import handgan.train as train_mod
from handgan.batches import DeviceCrops, EpochBatches, epoch_order, equivariance_augment
from handgan.config import apply_overrides, preset
from handgan.errors import HandganError
from handgan.synth.generate import synthesize_dataset

from helpers import HAND, read_jsonl

BATCH = 8


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    synthesize_dataset(root / "synth", 48, 16, seed=0, workers=1, config=HAND, progress=False)
    synthesize_dataset(root / "extra", 12, 0, seed=1, workers=1, config=HAND, progress=False)
    return root


def make_cfg(workdir, *extra):
    return apply_overrides(preset("quick"), [
        f"data.source=synthetic:{workdir / 'synth'}", f"data.cache_dir={workdir / 'cache'}",
        f"data.unlabeled=synthetic:{workdir / 'extra'}", "data.labeled_fraction=0.5",
        "data.size=64", "model.size=64", "model.width=8", "model.pose_hidden=32",
        "localizer.enabled=false", f"optim.batch_size={BATCH}", "optim.epochs=2",
        "device=cpu", "log_every=1", "data.val_fraction=0", "num_workers=0", "threads=1", *extra])


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
@pytest.mark.parametrize("equivariance", [True, False])
def test_device_batches_are_the_host_batches(workdir, equivariance, device):
    # Labelled crops augmented (all four modes), unlabelled crops from two caches as two views
    # (equivariance) or augmented, the skeleton render's rays.
    cfg = make_cfg(workdir, f"loss.w_equivariance={1 if equivariance else 0}")
    data = batches_mod.load_data(cfg, progress=False)
    assert len(data.unlabeled.parts) == 2
    view_augment = equivariance_augment(cfg) if equivariance else None
    rng = np.random.default_rng(3)
    order = epoch_order(rng, len(data.labeled), 4 * BATCH)
    order_u = epoch_order(rng, len(data.unlabeled), 4 * BATCH)
    data.labeled.set_epoch(1)
    data.unlabeled.set_epoch(1)
    make = [EpochBatches(data.labeled, data.unlabeled, order, order_u, BATCH, slice(None), 4,
                         view_augment, rays=True, plans=plans) for plans in (False, True)]
    on_device = DeviceCrops(data, torch.device(device))
    warped = 0

    def same_crops(a, b):  # on a GPU, sin/cos may round a matrix entry apart: a rare pixel
        return torch.equal(a, b) if device == "cpu" else (a != b).float().mean() < 1e-3

    for b in range(4):
        host, plan = make[0][b], make[1][b]
        dev = on_device.batch(plan).to(torch.device("cpu"))
        assert same_crops(dev.x_l, host.x_l) and same_crops(dev.x_u, host.x_u)
        torch.testing.assert_close(dev.j_l, host.j_l, rtol=0, atol=1e-6)
        torch.testing.assert_close(dev.ray_l, host.ray_l.to(dev.ray_l.dtype), rtol=0, atol=1e-12)
        if equivariance:
            assert same_crops(dev.views[0], host.views[0])
            poses = np.random.default_rng(b).normal(0, 0.3, (BATCH, 14, 3))
            np.testing.assert_allclose(dev.views[1].apply(poses), host.views[1].apply(poses),
                                       rtol=0, atol=1e-12)
        else:
            assert dev.views is None and host.views is None
        warped += int((plan.labeled[1] != plan.labeled[2]).any(dim=1).sum())
    assert 0 < warped < 4 * BATCH  # some crops re-warped, some kept ('none')


def test_training_on_the_device_pipeline_is_the_host_runs_and_resumes_exactly(workdir,
                                                                              tmp_path):
    cfg = make_cfg(workdir, "loss.w_equivariance=1")
    device = apply_overrides(cfg, ["data.pipeline=device", "num_workers=1"])  # plans by a worker

    def losses(run):
        return {r["step"]: {k: v for k, v in r.items() if k.startswith("loss_")}
                for r in read_jsonl(run / "metrics.jsonl") if r["event"] == "train"}

    host = losses(train_mod.train(cfg, tmp_path / "host", progress=False))
    full = losses(train_mod.train(device, tmp_path / "device", progress=False))
    assert sorted(full) == sorted(host) and len(full) == 2 * (48 // BATCH)
    for step, values in host.items():
        assert full[step] == pytest.approx(values, rel=1e-5, abs=1e-6), step
    # stopped mid-epoch and resumed: the same steps as the uninterrupted device run, exactly
    first = apply_overrides(device, ["optim.max_steps=7"])
    train_mod.train(first, tmp_path / "split", progress=False)
    resumed = losses(train_mod.train(device, tmp_path / "split", resume=True, progress=False))
    assert resumed == full


def test_the_device_pipeline_refuses_sensor_noise(workdir):
    with pytest.raises(HandganError, match="pipeline=device draws no sensor noise"):
        make_cfg(workdir, "data.pipeline=device", "data.augment.pixel_dropout_p=0.1")
    with pytest.raises(HandganError, match="pipeline must be one of host, device"):
        make_cfg(workdir, "data.pipeline=gpu")


@CUDA
def test_a_run_on_the_gpu_with_the_device_pipeline(workdir, tmp_path):
    # The crop caches in GPU memory, the losses read only when logged, Adam fused.
    cfg = make_cfg(workdir, "device=cuda", "data.pipeline=device", "loss.w_equivariance=1",
                   "num_workers=2")
    gen, dis = train_mod.build_models(cfg, torch.device("cuda"))
    assert all(opt.defaults["fused"] for opt in train_mod.build_optimizers(cfg, gen, dis))
    run = train_mod.train(cfg, tmp_path / "gpu", progress=False)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["device"].startswith("cuda") and summary["gpu_memory_gb"] > 0
    assert summary["crops_per_s"] > 0 and math.isfinite(summary["final_mean_error_mm"])
