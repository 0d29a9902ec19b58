"""The training loop: the seed's pose-conditioned GAN, or the supervised-only baseline.

    run_dir = train(preset("quick"), "runs/quick")            # GAN mode, the seed's method
    train(cfg, "runs/quick", resume=True)                      # continue from checkpoints/last.pt

One GAN iteration updates both networks (see :func:`gan_step` for the objectives and signs).
Batches are drawn with the datasets' ``sample_batch`` from a seeded permutation per epoch (no
DataLoader): the permutation generator's state is checkpointed with every other RNG, so a resumed
run takes exactly the batches, augmentations and noise an uninterrupted run would have taken.

Run folder::

    config.yaml            the resolved config
    metrics.jsonl          one JSON line per log event (losses) and per evaluation
    checkpoints/last.pt    after every epoch and at the end; best.pt = lowest test error so far
    summary.json           final and best mean joint error, baseline, steps, wall time, crops/s
"""
from __future__ import annotations

import json
import math
import random
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from torch import nn

from handgan.atomic import atomic_write
from handgan.checkpoint import (
    CheckpointManager,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
)
from handgan.config import TrainConfig, save_yaml, to_dict
from handgan.data.sources import ensure_synthetic, open_split, parse_source, split_names
from handgan.dataset import (
    CropCache,
    CropParams,
    LabeledCrops,
    UnlabeledCrops,
    all_labeled,
    all_unlabeled,
    load_or_build_cache,
    split_labeled,
)
from handgan.errors import HandganError
from handgan.losses import (
    discriminator_gan_loss,
    generator_adversarial_loss,
    joint_loss,
    reconstruction_loss,
)
from handgan.models import Discriminator, Generator, init_weights
from handgan.monitor import JsonlWriter, ScalarWriter, progress_bar

EVAL_BATCH = 256


# --------------------------------------------------------------------------------------------
# Set-up
# --------------------------------------------------------------------------------------------

def resolve_device(name: str) -> torch.device:
    """``"auto"`` = CUDA if available, else CPU; anything else as torch reads it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def build_models(cfg: TrainConfig, device: torch.device | str = "cpu"
                 ) -> tuple[Generator, Discriminator]:
    """Gen and Dis with DCGAN initialisation (draws from torch's RNG: seed first)."""
    gen, dis = Generator(cfg.model), Discriminator(cfg.model)
    gen.apply(init_weights)
    dis.apply(init_weights)
    return gen.to(device), dis.to(device)


def build_optimizers(cfg: TrainConfig, gen: nn.Module, dis: nn.Module
                     ) -> tuple[torch.optim.Adam, torch.optim.Adam]:
    o = cfg.optim
    def adam(m: nn.Module) -> torch.optim.Adam:
        return torch.optim.Adam(m.parameters(), lr=o.lr, betas=tuple(o.betas),
                                weight_decay=o.weight_decay)

    return adam(gen), adam(dis)


class UnlabeledPool:
    """Several UnlabeledCrops seen as one: positions index their concatenation."""

    def __init__(self, parts: list[UnlabeledCrops]):
        self.parts = [p for p in parts if len(p)]
        self.offsets = np.cumsum([0] + [len(p) for p in self.parts])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def set_epoch(self, epoch: int) -> None:
        for p in self.parts:
            p.set_epoch(epoch)

    def sample_batch(self, positions: np.ndarray) -> torch.Tensor:
        positions = np.asarray(positions, dtype=np.int64)
        part = np.searchsorted(self.offsets, positions, side="right") - 1
        out: list[torch.Tensor | None] = [None] * len(positions)
        for k, p in enumerate(self.parts):
            where = np.flatnonzero(part == k)
            if len(where):
                crops = p.sample_batch(positions[where] - self.offsets[k])
                for j, w in enumerate(where):
                    out[w] = crops[j]
        return torch.stack(out)  # type: ignore[arg-type]


def _augment(cfg: TrainConfig):
    """The AugmentConfig, or None when it cannot change a crop (enables the fast path)."""
    a = cfg.data.augment
    if tuple(a.modes) == ("none",) and not a.pixel_dropout_p and not a.depth_noise_sigma_mm:
        return None
    return a


def _cache(spec, split: str, cfg: TrainConfig, progress: bool) -> CropCache:
    params = CropParams(size=cfg.model.size, cube_mm=cfg.data.cube_mm, centre=cfg.data.centre)
    return load_or_build_cache(open_split(spec, split), cfg.data.cache_dir, params,
                               progress=progress, on_bad=cfg.data.on_bad)


def load_data(cfg: TrainConfig, progress: bool = True
              ) -> tuple[LabeledCrops, UnlabeledPool, LabeledCrops | None, np.ndarray]:
    """(labelled train crops, unlabelled pool, test crops or None, mean normalised train pose)."""
    spec = parse_source(cfg.data.source)
    ensure_synthetic(spec, seed=cfg.seed, progress=progress)
    names = split_names(spec)
    train_cache = _cache(spec, names[0], cfg, progress)
    test_cache = _cache(spec, "test", cfg, progress) if "test" in names[1:] else None
    d = cfg.data
    amount = ({"labeled_count": d.labeled_count} if d.labeled_count is not None
              else {"labeled_fraction": d.labeled_fraction})
    augment = _augment(cfg)
    labeled, unlabeled = split_labeled(train_cache, **amount, seed=d.split_seed, augment=augment)
    parts = [unlabeled]
    if d.unlabeled and d.unlabeled.lower() not in ("none", "null"):
        extra_spec = parse_source(d.unlabeled)
        ensure_synthetic(extra_spec, seed=cfg.seed, progress=progress)
        extra = _cache(extra_spec, split_names(extra_spec)[0], cfg, progress)
        parts.append(all_unlabeled(extra, augment=augment, seed=d.split_seed))
    mean_pose = np.asarray(train_cache.joints_norm[labeled.indices], np.float64).mean(axis=0)
    test = all_labeled(test_cache) if test_cache is not None else None
    return labeled, UnlabeledPool(parts), test, mean_pose


# --------------------------------------------------------------------------------------------
# One step
# --------------------------------------------------------------------------------------------

def gan_step(gen: Generator, dis: Discriminator, opt_g: torch.optim.Optimizer,
             opt_d: torch.optim.Optimizer, x_l: torch.Tensor, j_l: torch.Tensor,
             x_u: torch.Tensor | None, cfg: TrainConfig, autocast=nullcontext) -> dict[str, float]:
    """One iteration of the seed's GAN: update Dis, then Gen. Returns the losses as floats.

    Unlabelled crops ``x_u`` only ever go through ``dis.real_fake_logits``: they cannot reach L_J.
    """
    w = cfg.loss
    j_g = j_l
    if w.pose_perturb_std > 0:
        j_g = j_l + w.pose_perturb_std * torch.randn_like(j_l)

    ############################
    # (1) Update Dis: minimise L_Dis = w_joint * L_J(Dis_pose(x_l), J_l)
    #                                + w_gan * L_gan,  L_gan = BCE(Dis(x_l, x_u), 1) + BCE(Dis(Gen(J)), 0)
    #     [+ w_joint * L_J(Dis_pose(Gen(J)), J) with fake_pose_loss]
    ############################
    opt_d.zero_grad(set_to_none=True)
    with autocast():
        x_g = gen(j_g).detach()  # no gradient into Gen here
        real_logits, pose_l = dis(x_l)  # labelled crops: both heads
        if x_u is not None and len(x_u):
            real_logits = torch.cat([real_logits, dis.real_fake_logits(x_u)])  # real/fake only
        if w.fake_pose_loss:
            fake_logits, pose_g = dis(x_g)
        else:
            fake_logits = dis.real_fake_logits(x_g)
        loss_j = joint_loss(pose_l.float(), j_l)
        loss_gan = discriminator_gan_loss(real_logits.float(), fake_logits.float())
        loss_d = w.w_joint * loss_j + w.w_gan * loss_gan
        if w.fake_pose_loss:
            loss_j_fake = joint_loss(pose_g.float(), j_g)
            loss_d = loss_d + w.w_joint * loss_j_fake
    loss_d.backward()
    opt_d.step()

    ############################
    # (2) Update Gen: minimise L_Gen = w_recons * L_recons(x_l, Gen(J_l))
    #                                + w_gen_adv * BCE(Dis(Gen(J_l)), 1)
    #     i.e. L_recons - L_gan in the non-saturating form -log Dis(Gen(J)) (see losses.py)
    ############################
    opt_g.zero_grad(set_to_none=True)
    with autocast():
        x_g = gen(j_l)
        loss_rec = reconstruction_loss(x_l, x_g.float(), w.tau, w.recons_mode)
        loss_adv = generator_adversarial_loss(dis.real_fake_logits(x_g).float())
        loss_g = w.w_recons * loss_rec + w.w_gen_adv * loss_adv
    loss_g.backward()
    opt_g.step()  # Dis also received gradients here; they are cleared before its next step

    out = {"loss_dis": loss_d.item(), "loss_joint": loss_j.item(), "loss_gan": loss_gan.item(),
           "loss_gen": loss_g.item(), "loss_recons": loss_rec.item(),
           "loss_gen_adv": loss_adv.item()}
    if w.fake_pose_loss:
        out["loss_joint_fake"] = loss_j_fake.item()
    return out


def supervised_step(dis: Discriminator, opt_d: torch.optim.Optimizer, x_l: torch.Tensor,
                    j_l: torch.Tensor, cfg: TrainConfig, autocast=nullcontext) -> dict[str, float]:
    """The baseline: the same pose network (Dis trunk + pose branch) trained on L_J alone."""
    ############################
    # Update Dis trunk + pose: minimise w_joint * L_J(Dis_pose(x_l), J_l)
    ############################
    opt_d.zero_grad(set_to_none=True)
    with autocast():
        loss_j = joint_loss(dis.estimate(x_l).float(), j_l)
        loss = cfg.loss.w_joint * loss_j
    loss.backward()
    opt_d.step()  # the real/fake head has no gradient, so Adam leaves it as it is
    return {"loss_dis": loss.item(), "loss_joint": loss_j.item()}


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------

@torch.no_grad()
def predict(dis: Discriminator, crops: LabeledCrops, device: torch.device) -> np.ndarray:
    """Normalised joints (N, J, 3) predicted by the pose branch (eval mode)."""
    was_training = dis.training
    dis.eval()
    out = []
    for start in range(0, len(crops), EVAL_BATCH):
        x, _ = crops.sample_batch(np.arange(start, min(start + EVAL_BATCH, len(crops))))
        out.append(dis.estimate(x.to(device)).float().cpu().numpy())
    dis.train(was_training)
    return np.concatenate(out).astype(np.float64)


def mean_joint_error_mm(pred_norm: np.ndarray, crops: LabeledCrops) -> float:
    """Mean 3D joint error in mm over frames and joints; normalised -> mm with each row's exact
    crop transform (``norm_to_xyz``)."""
    errors = []
    target = np.asarray(crops.joints_norm[crops.indices], np.float64)
    for k in range(len(crops)):
        t = crops.transform(k)
        p = pred_norm if pred_norm.ndim == 2 else pred_norm[k]
        errors.append(np.linalg.norm(t.norm_to_xyz(p) - t.norm_to_xyz(target[k]), axis=-1))
    return float(np.mean(errors))


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------

def train(cfg: TrainConfig, run_dir: str | Path, resume: bool = False,
          progress: bool = True) -> Path:
    """Train ``cfg`` into ``run_dir`` (created); returns the run folder.

    With ``resume`` the run continues from ``run_dir/checkpoints/last.pt`` with every RNG state
    restored, so it matches an uninterrupted run with the same config.
    """
    run_dir = Path(run_dir)
    ckpt_dir = run_dir / "checkpoints"
    manager = CheckpointManager(ckpt_dir)
    if resume and manager.latest() is None:
        raise HandganError(f"{ckpt_dir}: no last.pt to resume from")
    run_dir.mkdir(parents=True, exist_ok=True)
    save_yaml(cfg, run_dir / "config.yaml")

    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    labeled, unlabeled, test, mean_pose = load_data(cfg, progress)
    batch = cfg.optim.batch_size
    steps_per_epoch = len(labeled) // batch
    if steps_per_epoch == 0:
        raise HandganError(f"{len(labeled)} labelled crops: fewer than one batch of {batch}; "
                           "lower optim.batch_size or label more frames")
    total_steps = steps_per_epoch * cfg.optim.epochs
    if cfg.optim.max_steps is not None:
        total_steps = min(total_steps, cfg.optim.max_steps)
    gan = cfg.mode == "gan"
    use_unlabeled = gan and len(unlabeled) > 0

    seed_everything(cfg.seed)
    gen, dis = build_models(cfg, device)
    opt_g, opt_d = build_optimizers(cfg, gen, dis)
    perm_rng = np.random.default_rng(cfg.seed)  # batch order (labelled, then unlabelled)
    amp = cfg.amp and device.type == "cuda"
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if amp else nullcontext

    epoch, batch_in_epoch, step, best = 0, 0, 0, math.inf
    epoch_start_state = capture_rng_state({"perm": perm_rng})
    if resume:
        ckpt = load_checkpoint(manager.last_path, map_location=device)
        gen.load_state_dict(ckpt["generator"])
        dis.load_state_dict(ckpt["discriminator"])
        opt_g.load_state_dict(ckpt["opt_g"])
        opt_d.load_state_dict(ckpt["opt_d"])
        epoch, batch_in_epoch, step = ckpt["epoch"], ckpt["batch_in_epoch"], ckpt["step"]
        best = ckpt["best_metric"] if ckpt["best_metric"] is not None else math.inf
        restore_rng_state(ckpt["rng"])
        restore_rng_state(ckpt["rng_epoch_start"], {"perm": perm_rng})  # redraw this epoch
        restore_rng_state(ckpt["rng"])  # ...but keep the current python/numpy/torch states
        epoch_start_state = ckpt["rng_epoch_start"]

    gen.train()
    dis.train()
    metrics = JsonlWriter(run_dir / "metrics.jsonl")
    scalars = ScalarWriter(run_dir / "tb")
    bar = progress_bar(total_steps, initial=step, enabled=progress)
    baseline = None
    if test is not None:
        baseline = mean_joint_error_mm(mean_pose, test)
    last_eval: float | None = None
    train_seconds, crops_seen = 0.0, 0
    started = time.perf_counter()

    def evaluate(epoch_done: int) -> float | None:
        nonlocal last_eval
        if test is None:
            return None
        last_eval = mean_joint_error_mm(predict(dis, test, device), test)
        record = {"event": "eval", "step": step, "epoch": epoch_done,
                  "mean_error_mm": last_eval, "mean_pose_baseline_mm": baseline}
        metrics.write(record)
        scalars.add_scalars({"mean_error_mm": last_eval}, step, "eval/")
        return last_eval

    def checkpoint(epoch_next: int, batch_next: int, epoch_start_state: dict,
                   is_best: bool) -> None:
        manager.save({
            "config": to_dict(cfg), "mode": cfg.mode,
            "generator": gen.state_dict(), "discriminator": dis.state_dict(),
            "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(),
            "epoch": epoch_next, "batch_in_epoch": batch_next, "step": step,
            "best_metric": best if math.isfinite(best) else None,
            "rng": capture_rng_state(), "rng_epoch_start": epoch_start_state,
        }, is_best=is_best)

    try:
        while epoch < cfg.optim.epochs and step < total_steps:
            # This epoch's batch order; its generator state is what a checkpoint saved mid-epoch
            # needs to redraw it.
            epoch_start_state = capture_rng_state({"perm": perm_rng})
            labeled.set_epoch(epoch)
            unlabeled.set_epoch(epoch)
            order = perm_rng.permutation(len(labeled))
            if use_unlabeled:
                reps = math.ceil(steps_per_epoch * batch / len(unlabeled))
                order_u = np.concatenate([perm_rng.permutation(len(unlabeled))
                                          for _ in range(reps)])
            for b in range(batch_in_epoch, steps_per_epoch):
                if step >= total_steps:
                    break
                t0 = time.perf_counter()
                x_l, j_l = labeled.sample_batch(order[b * batch:(b + 1) * batch])
                x_l, j_l = x_l.to(device, non_blocking=True), j_l.to(device, non_blocking=True)
                if gan:
                    x_u = None
                    if use_unlabeled:
                        x_u = unlabeled.sample_batch(order_u[b * batch:(b + 1) * batch])
                        x_u = x_u.to(device, non_blocking=True)
                    losses = gan_step(gen, dis, opt_g, opt_d, x_l, j_l, x_u, cfg, autocast)
                else:
                    losses = supervised_step(dis, opt_d, x_l, j_l, cfg, autocast)
                train_seconds += time.perf_counter() - t0
                crops_seen += len(x_l)
                step += 1
                bar.update(1)
                bar.set_postfix({k.removeprefix("loss_"): f"{v:.4f}" for k, v in losses.items()},
                                refresh=False)
                if step % cfg.log_every == 0:
                    metrics.write({"event": "train", "step": step, "epoch": epoch, **losses})
                    scalars.add_scalars(losses, step, "train/")
                batch_in_epoch = b + 1
            if batch_in_epoch < steps_per_epoch:  # stopped mid-epoch by max_steps
                break
            epoch, batch_in_epoch = epoch + 1, 0
            is_best = False
            if epoch % cfg.eval_every_epochs == 0 or epoch == cfg.optim.epochs:
                err = evaluate(epoch)
                if err is not None and err < best:
                    best, is_best = err, True
            checkpoint(epoch, 0, capture_rng_state({"perm": perm_rng}), is_best)

        # The end (all epochs, or max_steps): a final evaluation and a loadable checkpoint.
        if batch_in_epoch:  # mid-epoch: resume redraws this epoch's order and skips what is done
            err = evaluate(epoch)
            is_best = err is not None and err < best
            best = err if is_best else best
            checkpoint(epoch, batch_in_epoch, epoch_start_state, is_best)
        elif last_eval is None and test is not None:
            err = evaluate(epoch)
            if err is not None and err < best:
                best = err
                checkpoint(epoch, 0, capture_rng_state({"perm": perm_rng}), True)
    finally:
        bar.close()
        metrics.close()
        scalars.close()

    summary = {
        "mode": cfg.mode, "final_mean_error_mm": last_eval,
        "best_mean_error_mm": best if math.isfinite(best) else None,
        "mean_pose_baseline_mm": baseline, "steps": step, "epochs_done": epoch,
        "wall_seconds": round(time.perf_counter() - started, 3),
        "train_seconds": round(train_seconds, 3),
        "crops_per_s": round(crops_seen / train_seconds, 1) if train_seconds > 0 else None,
        "device": str(device),
    }
    text = json.dumps(summary, indent=2) + "\n"
    atomic_write(run_dir / "summary.json", lambda f: f.write(text.encode("utf-8")))
    return run_dir
