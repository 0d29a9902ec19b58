"""The training loop on a tiny synthetic dataset: both networks learn in GAN mode and only the
pose network in supervised mode, unlabelled crops never reach L_J, a short run leaves a complete
run folder, and a resumed run continues exactly like an uninterrupted one."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import handgan.batches as batches_mod
import handgan.steps as steps_mod
import handgan.train as train_mod
from handgan.batches import Batch
from handgan.checkpoint import load_checkpoint
from handgan.config import apply_overrides, load_yaml, preset
from handgan.errors import HandganError
from handgan.fidelity import generator_fidelity
from handgan.networks import load_networks
from handgan.synth.generate import synthesize_dataset

from helpers import HAND, read_jsonl

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

BATCH = 8


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    synthesize_dataset(root / "synth", 48, 16, seed=0, workers=1, config=HAND, progress=False)
    return root


def make_cfg(workdir, *extra, literal=False):
    """The quick preset (or, ``literal``, the seed document's formulation: the FC generator,
    configs/seed-literal.yaml) at test sizes."""
    base = load_yaml(CONFIGS / "seed-literal.yaml") if literal else preset("quick")
    return apply_overrides(base, [
        f"data.source=synthetic:{workdir / 'synth'}", f"data.cache_dir={workdir / 'cache'}",
        "data.size=64", "model.size=64", "model.width=8", "localizer.enabled=false", "model.pose_hidden=32",
        f"optim.batch_size={BATCH}", "optim.epochs=2", "device=cpu", "log_every=1",
        "data.val_fraction=0", "num_workers=0", "threads=1", *extra])


def params(module):
    return [p.detach().clone() for p in module.parameters()]


def changed(before, module):
    return any(not torch.equal(a, b) for a, b in zip(before, module.parameters()))


def models(cfg):
    train_mod.seed_everything(cfg.seed)
    gen, dis = train_mod.build_models(cfg)
    opt_g, opt_d = train_mod.build_optimizers(cfg, gen, dis)
    return gen, dis, opt_g, opt_d


def batch(n_l=BATCH, n_u=5, size=64):
    g = torch.Generator().manual_seed(0)
    x_l = torch.rand(n_l, 1, size, size, generator=g) * 2 - 1
    j_l = torch.randn(n_l, 14, 3, generator=g) * 0.3
    x_u = torch.rand(n_u, 1, size, size, generator=g) * 2 - 1
    return x_l, j_l, x_u


def identity_view_maps(n):
    """Two-view maps whose views A and B are the same crop (the map is the identity)."""
    from handgan.camera import NYU
    from handgan.preprocess import CropTransform
    from handgan.views import ViewMaps
    t = CropTransform(np.array([300.0, 220.0, 700.0]), 300.0, 64, NYU)
    return ViewMaps([(t, t)] * n)


def test_gan_step_updates_both_networks(workdir):
    cfg = make_cfg(workdir)
    gen, dis, opt_g, opt_d = models(cfg)
    g0, d0 = params(gen), params(dis)
    losses = steps_mod.gan_step(gen, dis, opt_g, opt_d, Batch(*batch()), cfg)
    assert changed(g0, gen) and changed(d0, dis)
    # the losses stay on the device as 0-dim tensors (read only when logged: no sync per step)
    assert all(v.ndim == 0 and not v.requires_grad and torch.isfinite(v) for v in losses.values())


def test_supervised_step_updates_only_the_pose_network(workdir):
    cfg = make_cfg(workdir, "mode=supervised")
    gen, dis, _, opt_d = models(cfg)
    g0, rf0, trunk0, pose0 = params(gen), params(dis.real_fake), params(dis.trunk), params(dis.pose)
    x_l, j_l, _ = batch()
    steps_mod.supervised_step(dis, opt_d, Batch(x_l, j_l), cfg)
    assert changed(trunk0, dis.trunk) and changed(pose0, dis.pose)
    assert not changed(rf0, dis.real_fake) and not changed(g0, gen)


def test_supervised_training_leaves_the_generator_untouched(workdir, tmp_path):
    cfg = make_cfg(workdir, "mode=supervised", "optim.max_steps=2")
    run = train_mod.train(cfg, tmp_path / "run", progress=False)
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    gen, _, _, _ = models(cfg)
    for name, value in gen.state_dict().items():
        assert torch.equal(value, ckpt["generator"][name]), name


def test_unlabelled_crops_never_reach_the_joint_loss(workdir, monkeypatch):
    cfg = make_cfg(workdir)
    gen, dis, opt_g, opt_d = models(cfg)
    x_l, j_l, x_u = batch(n_u=5)
    calls, pose_inputs = [], []
    real_joint_loss = steps_mod.joint_loss

    def spy(predicted, target):
        calls.append((predicted.shape[0], target))
        return real_joint_loss(predicted, target)

    monkeypatch.setattr(steps_mod, "joint_loss", spy)
    dis.pose.register_forward_pre_hook(lambda m, args: pose_inputs.append(args[0].shape[0]))
    # Record which crops go into the pose branch: the labelled batch, generated crops, never x_u.
    seen = []
    trunk_forward = dis.trunk.forward

    def trunk_spy(x):
        seen.append(x)
        return trunk_forward(x)

    monkeypatch.setattr(dis.trunk, "forward", trunk_spy)
    steps_mod.gan_step(gen, dis, opt_g, opt_d, Batch(x_l, j_l, x_u), cfg)

    assert all(n == BATCH for n in pose_inputs)  # x_u has 5 rows: never in the pose branch
    assert len(calls) == 1
    assert calls[0][1] is j_l  # L_J on the labelled batch with its own joints
    assert any(x is x_u for x in seen)  # x_u did reach the real/fake head


def test_short_run_writes_a_complete_run_folder(workdir, tmp_path):
    cfg = make_cfg(workdir, "optim.max_steps=3")
    run = train_mod.train(cfg, tmp_path / "run", progress=False)
    assert (run / "config.yaml").is_file()
    records = read_jsonl(run / "metrics.jsonl")
    train_steps = [r["step"] for r in records if r["event"] == "train"]
    assert train_steps == [1, 2, 3]
    evals = [r for r in records if r["event"] == "eval"]
    assert evals and all(r["mean_error_mm"] > 0 for r in evals)
    # GAN runs log the generator's fidelity with every evaluation (here on the test split:
    # this config holds out no validation frames), as handgan evaluate computes it
    _, gen, dis = load_networks(run / "checkpoints" / "last.pt")
    expected = generator_fidelity(gen, batches_mod.load_data(cfg, progress=False).test,
                                  {"run": dis})
    assert evals[-1]["generator_hand_depth_error_mm"] == pytest.approx(
        expected["hand_depth_error_mm"], rel=1e-5)
    assert evals[-1]["generator_readback_mean_error_mm"] == pytest.approx(
        expected["readback_mean_error_mm"]["run"], rel=1e-5)
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    assert ckpt["step"] == 3 and "generator" in ckpt and "opt_d" in ckpt
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 3
    assert summary["final_mean_error_mm"] > 0 and summary["mean_pose_baseline_mm"] > 0
    assert summary["crops_per_s"] > 0


def train_losses(run):
    return {r["step"]: r for r in read_jsonl(run / "metrics.jsonl") if r["event"] == "train"}


# The options with state of their own: the two-view batches, the schedule.
SEMI = ("loss.w_equivariance=1", "optim.lr_schedule=cosine")


# The generator options: warm-up and ramp phases cross the stop, new poses draw from torch's RNG.
GEN = ("loss.recons_mode=pixel_l1", "loss.tau=1", "loss.w_hand=3", "loss.gen_warmup_epochs=0.5",
       "loss.w_synth=1", "loss.synth_ramp_epochs=1", "loss.synth_poses=mix+finger+rotate+unlabeled")
# the rendered generator (its rays travel with the labelled batches)
RENDER = ("model.gen_render=true", "loss.recons_mode=pixel_l1", "loss.tau=1", "loss.w_hand=3",
          "loss.w_synth=1", "loss.synth_ramp_epochs=1", "loss.synth_poses=mix+unlabeled")


@pytest.mark.parametrize("stop_mid_epoch, extra",
                         [(False, ()), (True, ()), (True, SEMI), (True, GEN), (True, RENDER)])
def test_resume_matches_an_uninterrupted_run(workdir, tmp_path, stop_mid_epoch, extra):
    # labelled half: the unlabelled rows and their own permutation take part too
    cfg = make_cfg(workdir, "data.labeled_fraction=0.5", *extra)
    # The uninterrupted run prepares its batches in a worker process, the split one in this
    # process: the batches, and so the losses, must not depend on that.
    full = train_losses(train_mod.train(apply_overrides(cfg, ["num_workers=1"]), tmp_path / "full",
                                        progress=False))
    steps_per_epoch = 48 // BATCH  # an epoch = all training frames, labelled or not
    assert sorted(full) == list(range(1, 2 * steps_per_epoch + 1))

    stop = steps_per_epoch + (1 if stop_mid_epoch else 0)
    first = make_cfg(workdir, "data.labeled_fraction=0.5", f"optim.max_steps={stop}", *extra)
    train_mod.train(first, tmp_path / "split", progress=False)
    resumed = train_losses(train_mod.train(cfg, tmp_path / "split", resume=True,
                                           progress=False))
    assert sorted(resumed) == sorted(full)
    for step in range(steps_per_epoch + 1, 2 * steps_per_epoch + 1):
        for key, value in full[step].items():
            if key.startswith("loss_"):
                assert resumed[step][key] == pytest.approx(value, abs=1e-5), (step, key)


def test_validation_split_chooses_best_and_samples_are_drawn(workdir, tmp_path):
    cfg = make_cfg(workdir, "data.val_fraction=0.25", "optim.epochs=3", "data.labeled_fraction=0.5")
    data = batches_mod.load_data(cfg, progress=False)
    val, lab = set(data.val.indices), set(data.labeled.indices)
    assert len(val) == 12 and not val & lab  # 48 * 0.25 held out, never trained on
    assert len(lab) == 18  # half of the 36 remaining frames
    run = train_mod.train(cfg, tmp_path / "run", progress=False)
    evals = [r for r in read_jsonl(run / "metrics.jsonl") if r["event"] == "eval"]
    assert [r["epoch"] for r in evals] == [1, 2, 3]
    best = min(evals, key=lambda r: r["val_mean_error_mm"])
    summary = json.loads((run / "summary.json").read_text())
    assert summary["selection_split"] == "val" and summary["best_epoch"] == best["epoch"]
    assert summary["best_selection_error_mm"] == pytest.approx(best["val_mean_error_mm"])
    assert load_checkpoint(run / "checkpoints" / "best.pt")["epoch"] == best["epoch"]
    crop = load_checkpoint(run / "checkpoints" / "last.pt")["crop"]
    assert crop["size"] == 64 and crop["cube_mm"] == [300.0, 300.0, 300.0]
    assert len(crop["joint_names"]) == 14 and crop["intrinsics"]["fx"] == pytest.approx(588.03)
    assert list((run / "tb").glob("events.out.tfevents.*"))  # TensorBoard scalars and images
    from PIL import Image
    for epoch in (1, 2, 3):  # 8 pairs of 64 x 64 crops, 4 pairs per row
        image = Image.open(run / "samples" / f"epoch_{epoch:03d}.png")
        assert image.size == (4 * 128 + 3 * 2, 2 * 64 + 2) and image.mode == "L"


def test_fewer_labels_than_a_batch_get_the_same_budget(workdir, tmp_path):
    cfg = make_cfg(workdir, "data.labeled_count=3", "optim.epochs=1")
    run = train_mod.train(cfg, tmp_path / "run", progress=False)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 48 // BATCH  # one pass over all 48 training frames


def test_generated_crops_do_not_move_the_running_statistics(workdir):
    # One gan_step must move Dis's running statistics exactly as its real crops alone do.
    cfg = make_cfg(workdir)
    x_l, j_l, x_u = batch()
    gen, dis, opt_g, opt_d = models(cfg)
    dis_ref = models(cfg)[1]
    dis_ref.train()
    with torch.no_grad():
        dis_ref(x_l)
        dis_ref(x_u, heads="real_fake")
    steps_mod.gan_step(gen, dis, opt_g, opt_d, Batch(x_l, j_l, x_u), cfg)
    for a, b in zip(dis.modules(), dis_ref.modules()):
        if isinstance(a, torch.nn.BatchNorm2d):
            assert torch.allclose(a.running_mean, b.running_mean, atol=1e-6)
            assert torch.allclose(a.running_var, b.running_var, atol=1e-6)
    assert all(m.momentum == 0.1 for m in dis.modules()
               if isinstance(m, torch.nn.BatchNorm2d))  # restored after each generated pass


def test_cosine_schedule_values_and_a_run_follows_it(workdir, tmp_path):
    from handgan.config import OptimConfig
    o = OptimConfig(lr=1e-3, lr_schedule="cosine")
    assert train_mod.learning_rate(o, 0, 100) == pytest.approx(1e-3)
    assert train_mod.learning_rate(o, 50, 100) == pytest.approx(5e-4)
    assert train_mod.learning_rate(o, 99, 100) == pytest.approx(1e-3 * 0.5 * (1 + np.cos(np.pi * 0.99)))
    assert train_mod.learning_rate(OptimConfig(lr=1e-3), 99, 100) == 1e-3
    cfg = make_cfg(workdir, "optim.lr_schedule=cosine", "optim.epochs=2")
    run = train_mod.train(cfg, tmp_path / "run", progress=False)
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    steps = ckpt["step"]  # 2 epochs of 48 // 8 steps; the last step ran at learning_rate(steps - 1)
    assert steps == 12
    for key in ("opt_g", "opt_d"):
        assert ckpt[key]["param_groups"][0]["lr"] == pytest.approx(
            train_mod.learning_rate(cfg.optim, steps - 1, steps))


@pytest.mark.parametrize("mode", ["gan", "supervised"])
def test_equivariance_term_matches_its_formula(workdir, mode):
    # ||Dis_pose(x_b) - map(Dis_pose(x_a))||^2 with the network's own pose on x_a as the target;
    # here view B is view A turned by 90 degrees about the crop centre.
    import copy

    from handgan.camera import NYU
    from handgan.losses import joint_loss
    from handgan.preprocess import CropTransform
    from handgan.views import ViewMaps
    cfg = make_cfg(workdir, f"mode={mode}", "loss.w_equivariance=1", "loss.w_joint=0",
                   "loss.w_gan=0")
    gen, dis, opt_g, opt_d = models(cfg)
    x_l, j_l, x_a = batch()
    x_b = torch.rot90(x_a, 1, dims=(2, 3))
    t = CropTransform(np.array([300.0, 220.0, 700.0]), 300.0, 64, NYU)
    maps = ViewMaps([(t, CropTransform(t.centre_uvd, 300.0, 64, NYU, 90.0))] * len(x_a))
    dis_copy = copy.deepcopy(dis)
    with torch.no_grad():
        pose_a = dis_copy(x_a, heads="pose")
        target = torch.as_tensor(maps.apply(pose_a.numpy()), dtype=torch.float32)
        expected = joint_loss(dis_copy(x_b, heads="pose"), target).item()
    assert not np.allclose(target.numpy(), pose_a.numpy())  # the map did turn the poses
    pose_before = params(dis.pose)
    if mode == "gan":
        out = steps_mod.gan_step(gen, dis, opt_g, opt_d, Batch(x_l, j_l, x_b, (x_a, maps)), cfg)
    else:
        out = steps_mod.supervised_step(dis, opt_d, Batch(x_l, j_l, x_b, (x_a, maps)), cfg)
    assert out["loss_equivariance"] == pytest.approx(expected, rel=1e-5)
    assert changed(pose_before, dis.pose)


def test_equivariance_run_uses_unlabelled_crops_in_supervised_mode(workdir, tmp_path):
    cfg = make_cfg(workdir, "mode=supervised", "loss.w_equivariance=0.5",
                   "data.labeled_fraction=0.25", "optim.max_steps=3")
    run = train_mod.train(cfg, tmp_path / "run", progress=False)
    train_rows = [r for r in read_jsonl(run / "metrics.jsonl") if r["event"] == "train"]
    assert len(train_rows) == 3 and all(r["loss_equivariance"] > 0 for r in train_rows)


def test_equivariance_views_and_batch_statistics_target(workdir):
    cfg = make_cfg(workdir, "loss.w_equivariance=1", "loss.equi_rotation_deg=45",
                   "data.augment.pixel_dropout_p=0.1", "data.augment.rotation_deg=180")
    view = batches_mod.equivariance_augment(cfg)
    assert view.combine and view.rotation_deg == 45
    assert view.pixel_dropout_p == 0.0  # data.augment's dropout is for the labelled crops
    assert cfg.data.augment.rotation_deg == 180 and not cfg.data.augment.combine  # untouched
    assert (view.translation_sigma_mm, view.scale_sigma) == (cfg.data.augment.translation_sigma_mm,
                                                             cfg.data.augment.scale_sigma)
    # The target is Dis's pose with the batch's statistics, as the student's (not the running
    # statistics, as evaluation's); the running statistics do not move, Dis stays in training.
    from handgan.losses import joint_loss
    _, dis, _, _ = models(cfg)
    _, _, x_a = batch()
    with torch.no_grad():
        dis(x_a + 0.3)  # running statistics that differ from this batch's
    maps = identity_view_maps(len(x_a))
    pose_b = dis(x_a, heads="pose")
    dis.eval()
    with torch.no_grad():
        on_running = joint_loss(pose_b, dis(x_a, heads="pose")).item()
    dis.train()
    assert on_running > 1e-6
    running = [b.clone() for b in dis.buffers() if b.is_floating_point()]
    assert steps_mod.equivariance_loss(dis, pose_b, (x_a, maps)).item() < 1e-10
    assert dis.training and all(torch.equal(b, r) for b, r in zip(
        [b for b in dis.buffers() if b.is_floating_point()], running))


@pytest.mark.parametrize("on_device", [False, True])
def test_equivariance_target_is_clipped_to_the_cube(workdir, on_device):
    # A pose outside the crop cube is no target: it is clipped to [-1, 1] before the map (on
    # the host as on the CPU, on the device as on a GPU).
    class Wild(torch.nn.Module):
        def forward(self, x, heads="both"):
            pose = torch.full((len(x), 14, 3), 0.5)
            pose[:, 0] = torch.tensor([7.0, -9.0, 0.25])
            return pose

    x_a = torch.zeros(3, 1, 64, 64)
    maps = identity_view_maps(3)
    pose_b = torch.zeros(3, 14, 3)
    loss = steps_mod.equivariance_loss(Wild(), pose_b, (x_a, maps), on_device=on_device)
    expected = 13 * 3 * 0.25 + (1.0 + 1.0 + 0.0625)  # joint 0 -> (1, -1, 0.25)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_view_maps_on_the_device_map_as_on_the_host():
    """The GPU's batched map of the equivariance target equals the host's crop-by-crop one."""
    from handgan.camera import NYU
    from handgan.preprocess import CropTransform
    from handgan.views import ViewMaps

    rng = np.random.default_rng(0)
    pairs = []
    for _ in range(16):  # view B: shifted, scaled and turned, as the views' augmentation does
        c = np.array([rng.uniform(150, 490), rng.uniform(100, 380), rng.uniform(450, 1100)])
        b = c + np.array([rng.normal(0, 8), rng.normal(0, 8), rng.normal(0, 20)])
        pairs.append((CropTransform(c, 300.0, 64, NYU),
                      CropTransform(b, 300.0 * rng.uniform(0.85, 1.15), 64, NYU,
                                    rotation_deg=rng.uniform(-45, 45))))
    maps = ViewMaps(pairs)
    joints = rng.uniform(-1, 1, (16, 14, 3))
    host = maps.apply(joints)
    device = maps.apply_on_device(torch.from_numpy(joints)).numpy()
    assert np.abs(host - joints).max() > 0.05  # the maps move the joints
    np.testing.assert_allclose(device, host, rtol=0, atol=1e-9)  # normalised: 1.5e-7 mm
    with pytest.raises(ValueError, match="3 poses for 16 view pairs"):
        maps.apply_on_device(torch.zeros(3, 14, 3))


def test_epoch_batches_take_each_ranks_share(workdir):
    # Batch b holds one unlabelled crop per labelled crop: window b of each epoch order, each
    # rank its share of both.
    from handgan.batches import EpochBatches
    cfg = make_cfg(workdir, "data.labeled_fraction=0.25")
    data = batches_mod.load_data(cfg, progress=False)
    n_u = len(data.unlabeled)
    order_u = np.concatenate([np.arange(n_u)[::-1]] * 4)
    batches = EpochBatches(data.labeled, data.unlabeled, np.arange(8), order_u, 4,
                           slice(2, 4), 2)
    expected = data.unlabeled.sample_batch(order_u[4:8][2:4])
    x_l, j_l, x_u, views, ray_l = batches[1]
    assert torch.equal(j_l, data.labeled.sample_batch(np.arange(8)[4:8][2:4])[1])
    assert len(x_l) == 2 and views is None and ray_l is None and torch.equal(x_u, expected)


def test_an_nyu_folder_without_train_split_is_refused(workdir, tmp_path):
    # nyu:DIR holding only test/ must not train on the test frames without a word
    import shutil

    only_test = tmp_path / "nyu"
    shutil.copytree(workdir / "synth" / "test", only_test / "test")
    cfg = make_cfg(workdir, f"data.source=nyu:{only_test}")
    with pytest.raises(HandganError, match=r"no train split to train on \(found: test\)"):
        batches_mod.load_data(cfg, progress=False)


def _write_icvl(root, train_frames=12, test_frames=3):
    """A small ICVL dataset in DeepPrior++'s layout with only test_seq_1 (as it ships): label
    lines `relpath u v d x 16` with 3 decimals, 16-bit PNG frames in mm with a blob at the palm."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for name, count in (("train.txt", train_frames), ("test_seq_1.txt", test_frames)):
        lines = []
        for k in range(count):
            rel = f"{'201403121135' if name == 'train.txt' else 'test_seq_1'}/image_{k:04d}.png"
            uvd = np.column_stack([rng.uniform(140, 180, 16), rng.uniform(100, 140, 16),
                                   rng.uniform(380, 420, 16)])
            lines.append(rel + " " + " ".join(f"{v:.3f}" for v in uvd.ravel()) + "\n")
            depth = np.zeros((240, 320), np.uint16)
            depth[90:150, 130:190] = 400
            (root / "Depth" / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(depth).save(root / "Depth" / rel)
        (root / name).write_text("".join(lines))


def test_icvl_trains_with_its_16_joints_and_evaluates(tmp_path):
    # model.num_joints follows the data (ICVL: 16), through training, the checkpoint and
    # evaluation; the test split is test_seq_1 alone
    from handgan.evaluation.evaluate import evaluate_checkpoint

    _write_icvl(tmp_path / "icvl")
    cfg = apply_overrides(preset("quick"), [
        f"data.source=icvl:{tmp_path / 'icvl'}", f"data.cache_dir={tmp_path / 'cache'}",
        "model.width=8", "localizer.enabled=false", "model.pose_hidden=32", "optim.batch_size=4", "optim.max_steps=2",
        "device=cpu", "data.val_fraction=0", "num_workers=0"])
    assert cfg.model.num_joints == 14
    run = train_mod.train(cfg, tmp_path / "run", progress=False)
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    assert ckpt["config"]["model"]["num_joints"] == 16
    last_layer = [v for k, v in ckpt["discriminator"].items() if k.startswith("pose")][-1]
    assert last_layer.shape[0] == 16 * 3  # the pose head's bias: 16 joints x 3
    summary = json.loads((run / "summary.json").read_text())
    assert summary["final_mean_error_mm"] > 0  # evaluated on test_seq_1
    metrics = evaluate_checkpoint(run, data=f"icvl:{tmp_path / 'icvl'}", split="test_seq_1",
                                  out=tmp_path / "eval", device="cpu", progress=False,
                                  cache_dir=tmp_path / "cache")
    assert metrics["frames"] == 3 and len(metrics["per_joint_mm"]) == 16
