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

import dataclasses
import json
import math
import os
import random
import time
from collections.abc import Iterable
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from handgan.atomic import ATOMIC_TMP, atomic_write
from handgan.augment import AugmentConfig
from handgan.cachebuild import load_or_build_cache
from handgan.cachesource import CropParams
from handgan.cachestore import CropCache
from handgan.checkpoint import (
    CheckpointManager,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
)
from handgan.config import LossConfig, OptimConfig, TrainConfig, from_dict, save_yaml, to_dict
from handgan.data.sources import (
    open_split,
    parse_source,
    pick_test_split,
    prepare_sources,
    split_names,
)
from handgan.dataset import (
    LabeledCrops,
    UnlabeledCrops,
    all_labeled,
    all_unlabeled,
    split_labeled,
)
from handgan.device import (
    oversubscribed,
    resolve_device,  # noqa: F401  (re-exported)
    training_threads,
)
from handgan.distributed import (
    DistInfo,
    barrier,
    gather_objects,
    init_distributed,
    mean_over_ranks,
    shutdown,
)
from handgan.errors import HandganError
from handgan.evaluation.metrics import crops_mean_error_mm
from handgan.fidelity import generator_fidelity, training_hand_mask
from handgan.localize import LOCALIZER_FILE, Localizer, fit_run_localizer, locate_reader
from handgan.losses import (
    discriminator_gan_loss,
    feature_matching_loss,
    generator_adversarial_loss,
    joint_loss,
    reconstruction_loss,
)
from handgan.models import Discriminator, Generator, init_weights
from handgan.monitor import JsonlWriter, ScalarWriter, keep_records, progress_bar
from handgan.plots import crop_pairs_image, write_grey_png
from handgan.posespace import new_poses
from handgan.preprocess import DEFAULT_CUBE_MM
from handgan.runlock import FolderLock
from handgan.views import ViewMaps

EVAL_BATCH = 256


# --------------------------------------------------------------------------------------------
# Set-up
# --------------------------------------------------------------------------------------------

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

    def _by_part(self, positions: np.ndarray):
        """(part, where, local positions) for each part that ``positions`` touch."""
        positions = np.asarray(positions, dtype=np.int64)
        part = np.searchsorted(self.offsets, positions, side="right") - 1
        for k, p in enumerate(self.parts):
            where = np.flatnonzero(part == k)
            if len(where):
                yield p, where, positions[where] - self.offsets[k]

    def sample_batch(self, positions: np.ndarray) -> torch.Tensor:
        out: list[torch.Tensor | None] = [None] * len(positions)
        for p, where, local in self._by_part(positions):
            for w, crop in zip(where, p.sample_batch(local)):
                out[w] = crop
        return torch.stack(out)  # type: ignore[arg-type]

    def sample_views(self, positions: np.ndarray, view_augment: AugmentConfig
                     ) -> tuple[torch.Tensor, torch.Tensor, ViewMaps]:
        """:meth:`UnlabeledCrops.sample_views` over the concatenated parts, in ``positions`` order."""
        views_a, views_b, maps, where_all = [], [], [], []
        for p, where, local in self._by_part(positions):
            a, b, m = p.sample_views(local, view_augment)
            views_a.append(a)
            views_b.append(b)
            maps.append(m)
            where_all.append(where)
        back = np.argsort(np.concatenate(where_all), kind="stable")  # -> positions order
        return torch.cat(views_a)[back], torch.cat(views_b)[back], ViewMaps.concat(maps, back)


def _augment(cfg: TrainConfig):
    """The AugmentConfig, or None when it cannot change a crop (enables the fast path)."""
    a = cfg.data.augment
    if tuple(a.modes) == ("none",) and not a.pixel_dropout_p and not a.depth_noise_sigma_mm:
        return None
    return a


def _cache(spec, split: str, cfg: TrainConfig, progress: bool,
           localizer: Localizer | None = None) -> CropCache:
    params = CropParams(size=cfg.model.size, cube_mm=cfg.data.cube_mm, centre=cfg.data.centre)
    reader = open_split(spec, split)
    located = None
    if localizer is not None and cfg.data.centre == "com":
        located = locate_reader(localizer, reader, progress)
    return load_or_build_cache(reader, cfg.data.cache_dir, params, progress=progress,
                               on_bad=cfg.data.on_bad, located=located)


def crop_metadata(cache: CropCache, cfg: TrainConfig) -> dict:
    """What inference needs to crop a new frame the way the training crops were made; saved in
    every checkpoint under ``"crop"`` (plain data, ``weights_only``-safe)."""
    cubes = cache.transforms[:, 3:6]
    intr = cache.intrinsics
    return {
        "size": int(cache.size),
        "cube_mm": [float(c) for c in np.median(cubes, axis=0)] if len(cubes) else None,
        "centre": cfg.data.centre,
        "joint_names": list(cache.joint_names),
        "intrinsics": {"fx": intr.fx, "fy": intr.fy, "cx": intr.cx, "cy": intr.cy,
                       "width": intr.width, "height": intr.height, "y_up": intr.y_up},
        "source": cfg.data.source,
    }


@dataclass
class TrainData:
    """What one run trains and evaluates on."""

    labeled: LabeledCrops          # labelled training crops (augmented)
    unlabeled: UnlabeledPool       # unlabelled training crops (+ any --unlabeled source)
    val: LabeledCrops | None       # held-out training frames that choose best.pt
    test: LabeledCrops | None      # the source's test split: reported, never used to choose
    mean_pose: np.ndarray          # (J, 3) mean normalised labelled pose: the baseline
    crop: dict                     # crop_metadata() of the training crops
    train_cache: CropCache         # the training split's crops (labelled, val and unlabelled)
    train_frames: int              # labelled + unlabelled frames of the training split


def prepare_data(cfg: TrainConfig, run_dir: Path, device: torch.device, progress: bool
                 ) -> tuple[TrainData, Localizer | None, dict | None]:
    """The run's data and its hand localiser (stage 1: trained on the labelled training frames,
    or loaded when a resumed run has it). With ``data.centre == "com"`` the crops are then
    centred by that localiser, so the labelled/validation split is first drawn on crops centred
    by the labels. Returns (data, localizer or None, the localiser's log record or None)."""
    if not cfg.localizer.enabled:
        return load_data(cfg, progress), None, None
    located = cfg.data.centre == "com"
    by_labels = (dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, centre="gt"))
                 if located else cfg)
    data = load_data(by_labels, progress)
    spec = parse_source(cfg.data.source)
    cache = data.train_cache
    localizer, record = fit_run_localizer(
        run_dir, cfg.localizer, open_split(spec, split_names(spec)[0]),
        cache.frame_index[data.labeled.indices],
        cache.frame_index[data.val.indices] if data.val is not None else np.arange(0),
        seed=cfg.seed, device=device, progress=progress)
    if located:
        data = load_data(cfg, progress, localizer)
    return data, localizer, record


def validation_rows(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(training rows, validation rows) of an n-row training cache; no validation rows for
    ``fraction == 0``. Drawn with its own seeded stream, so the labelled draw among the
    training rows does not depend on the hold-out's size."""
    if fraction <= 0:
        return np.arange(n), np.arange(0)
    n_val = max(1, math.floor(fraction * n + 0.5))
    if n_val >= n:
        raise HandganError(f"{n} training frames: too few to hold out {fraction:g} for validation "
                           "(set data.val_fraction=0)")
    order = np.random.default_rng((seed, 0x7A1)).permutation(n)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def load_data(cfg: TrainConfig, progress: bool = True,
              localizer: Localizer | None = None) -> TrainData:
    """Open (building on first use) the crop caches of the configured sources and split them.
    With ``data.centre == "com"`` and a ``localizer``, crops are centred where it finds the hand
    (else where :func:`~handgan.preprocess.localize_hand` does)."""
    spec = parse_source(cfg.data.source)
    names = split_names(spec)
    if spec.kind in ("synthetic", "nyu", "icvl") and "train" not in names and spec.option is None:
        # never train on a test split by accident; nyu:DIR:SPLIT names the split to train on
        hint = f"; to train on it, name it: {spec}:{names[0]}" if spec.kind == "nyu" and names \
            else ""
        raise HandganError(f"{spec}: no train split to train on (found: "
                           f"{', '.join(names) or 'none'}); its frames can "
                           f"join a run as unlabelled ones: --unlabeled {spec}{hint}")
    train_cache = _cache(spec, names[0], cfg, progress, localizer)
    test_name = pick_test_split(names[1:])  # none: the run reports its validation hold-out only
    test_cache = _cache(spec, test_name, cfg, progress, localizer) if test_name else None
    d = cfg.data
    amount = ({"labeled_count": d.labeled_count} if d.labeled_count is not None
              else {"labeled_fraction": d.labeled_fraction})
    augment = _augment(cfg)
    if not train_cache.labeled:
        raise HandganError(f"{spec}: the training split has no labels; give it as --unlabeled "
                           "and train on a labelled source")
    train_rows, val_rows = validation_rows(len(train_cache), d.val_fraction, d.split_seed)
    labeled, unlabeled = split_labeled(train_cache, **amount, seed=d.split_seed, augment=augment,
                                       rows=train_rows)
    parts = [unlabeled]
    if d.unlabeled and d.unlabeled.lower() not in ("none", "null"):
        extra_spec = parse_source(d.unlabeled)
        extra = _cache(extra_spec, split_names(extra_spec)[0], cfg, progress, localizer)
        parts.append(all_unlabeled(extra, augment=augment, seed=d.split_seed))
    mean_pose = np.asarray(train_cache.joints_norm[labeled.indices], np.float64).mean(axis=0)
    val = LabeledCrops(train_cache, val_rows) if len(val_rows) else None
    test = all_labeled(test_cache) if test_cache is not None else None
    return TrainData(labeled, UnlabeledPool(parts), val, test, mean_pose,
                     crop_metadata(train_cache, cfg), train_cache, len(train_rows))


class EpochBatches(Dataset):
    """Batch ``b`` of one epoch, this process's share: (labelled crops, joints, unlabelled crops
    or None). Every batch is a pure function of the epoch's orders, so worker processes can
    prepare batches ahead (augmentation included) and the run is the same with any number of
    workers."""

    def __init__(self, labeled: LabeledCrops, unlabeled: UnlabeledPool | None,
                 order: np.ndarray, order_u: np.ndarray | None, batch: int, share: slice,
                 steps: int, view_augment: AugmentConfig | None = None,
                 rays: bool = False):
        self.labeled, self.unlabeled = labeled, unlabeled
        self.rays = rays  # set: the labelled crops' centre rays come too (the skeleton render)
        self.order, self.order_u, self.batch, self.share = order, order_u, batch, share
        self.steps = steps
        self.view_augment = view_augment  # set: unlabelled crops come as two views (equivariance)

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, b: int):
        window = slice(b * self.batch, (b + 1) * self.batch)
        x_l, j_l, *ray_l = self.labeled.sample_batch(self.order[window][self.share], self.rays)
        ray_l = ray_l[0] if ray_l else None
        x_u = views = None
        if self.order_u is not None:  # one unlabelled crop per labelled crop
            rows = self.order_u[window][self.share]
            if self.view_augment is not None:
                x_a, x_u, maps = self.unlabeled.sample_views(rows, self.view_augment)
                views = (x_a, maps)
            else:
                x_u = self.unlabeled.sample_batch(rows)
        return x_l, j_l, x_u, views, ray_l


def iterate_batches(batches: EpochBatches, start: int, workers: int, pin: bool):
    """Batches ``start..`` of an epoch, prepared by ``workers`` processes ahead of training (in
    order), or in this process for ``workers == 0``."""
    if workers == 0:
        return (batches[b] for b in range(start, len(batches)))
    # A private generator: the loader's seed draw must not move torch's global RNG.
    return iter(DataLoader(batches, batch_size=None, sampler=range(start, len(batches)),
                           num_workers=workers, pin_memory=pin, prefetch_factor=4,
                           generator=torch.Generator()))


# --------------------------------------------------------------------------------------------
# One step
# --------------------------------------------------------------------------------------------

@contextmanager
def batch_norm_stats_frozen(module: nn.Module):
    """Batch norm layers normalise with the batch's statistics as usual, but do not fold them
    into their running statistics. Dis sees generated crops in training mode; without this its
    running statistics (what evaluation and inference normalise with) would mix generated and
    real crops, and the pose estimate in eval mode swings from epoch to epoch."""
    layers = [m for m in unwrap(module).modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in layers]
    for m in layers:
        m.momentum = 0.0  # running = (1 - 0) * running + 0 * batch
    try:
        yield
    finally:
        for m, momentum in zip(layers, saved):
            m.momentum = momentum


def learning_rate(o: OptimConfig, step: int, total_steps: int) -> float:
    """The learning rate of step ``step`` (0-based) of ``total_steps``; a pure function of the
    step, so a resumed run continues the schedule exactly."""
    if o.lr_schedule == "cosine" and total_steps > 1:
        return o.lr * 0.5 * (1.0 + math.cos(math.pi * step / total_steps))
    return o.lr


def set_learning_rate(optimizers: Iterable[torch.optim.Optimizer], lr: float) -> None:
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = lr


def unwrap(module: nn.Module) -> nn.Module:
    """The network inside a DistributedDataParallel wrapper (or the module itself)."""
    return module.module if isinstance(module, DDP) else module


def equivariance_augment(cfg: TrainConfig) -> AugmentConfig:
    """How the equivariance term's view B is drawn from the crop (view A).

    Rotation, scale and shift at once, so that a pair always differs: the ``data.augment``
    amounts, with the rotation range ``loss.equi_rotation_deg``, the centre shift
    ``loss.equi_translation_mm`` and the cube scale ``loss.equi_scale_sigma`` where set; no
    pixel dropout (``data.augment``'s is for the labelled crops).
    """
    w = cfg.loss
    amounts = {"rotation_deg": w.equi_rotation_deg, "translation_sigma_mm": w.equi_translation_mm,
               "scale_sigma": w.equi_scale_sigma}
    return dataclasses.replace(cfg.data.augment, combine=True, pixel_dropout_p=0.0,
                               **{k: v for k, v in amounts.items() if v is not None})


def equivariance_loss(dis: nn.Module, pose_b: torch.Tensor,
                      views: tuple[torch.Tensor, ViewMaps]) -> torch.Tensor:
    """||Dis_pose(x_b) - map(Dis_pose(x_a))||^2 on unlabelled crops: x_b is an augmented copy of
    x_a, and ``map`` carries A's pose into B's crop frame exactly as augmentation carries labels.
    The target is the network's own (fixed) pose on the unaugmented crop, clipped to the crop
    cube: no label is used."""
    x_a, maps = views
    net = unwrap(dis)
    training = net.training
    # The target normalises with the batch's statistics, as the student does; the running
    # statistics do not move.
    net.train()
    try:
        with torch.no_grad(), batch_norm_stats_frozen(net):
            pose_a = net(x_a, heads="pose").float().cpu().numpy()
    finally:
        net.train(training)
    # The crop is centred on the hand, so its joints lie inside the cube ([-1, 1] normalised).
    # Clipping the target there keeps a wild prediction (few labels, early training) from
    # becoming a wild target: mapped through the camera projection, a joint far outside the
    # cube can land anywhere, and such targets fed back on themselves made runs diverge.
    pose_a = np.clip(pose_a, -1.0, 1.0)
    target = torch.as_tensor(maps.apply(pose_a), dtype=torch.float32, device=pose_b.device)
    return joint_loss(pose_b.float(), target)


@dataclass(frozen=True)
class StepPhase:
    """What a GAN step includes at this point of the schedule (see :func:`step_phase`)."""

    gen_adversarial: bool = True  # Gen's adversarial term (off during the reconstruction warm-up)
    synth_weight: float = 0.0     # weight of the skeleton-space term L_synth now


def step_phase(loss: LossConfig, step: int, steps_per_epoch: int) -> StepPhase:
    """The phase of step ``step`` (0-based): a pure function of the step, so resume is exact.

    Gen trains on L_recons alone for ``gen_warmup_epochs``; L_synth is off while Gen warms up,
    then its weight ramps linearly from 0 to ``w_synth`` over ``synth_ramp_epochs`` (Gen's crops
    of new poses start poor, and a pose head trained hard on them early learns Gen's errors).
    """
    epoch = step / max(steps_per_epoch, 1)
    warm = epoch < loss.gen_warmup_epochs
    weight = 0.0
    if loss.w_synth > 0 and not warm:
        since = epoch - loss.gen_warmup_epochs
        ramp = 1.0 if loss.synth_ramp_epochs <= 0 else min(1.0, since / loss.synth_ramp_epochs)
        weight = loss.w_synth * ramp
    return StepPhase(gen_adversarial=not warm, synth_weight=weight)


def recons_weight(joints: torch.Tensor, cfg: TrainConfig) -> torch.Tensor | None:
    """Per-pixel weights of L_recons: ``loss.w_hand`` in the hand region of ``joints``, 1
    elsewhere (None when w_hand = 1)."""
    if cfg.loss.w_hand == 1.0:
        return None
    mask = training_hand_mask(joints.detach().float(), cfg.model.size,
                              cfg.data.cube_mm or DEFAULT_CUBE_MM)
    return 1.0 + (cfg.loss.w_hand - 1.0) * mask


def synth_pose_loss(predicted: torch.Tensor, target: torch.Tensor, gate: float) -> torch.Tensor:
    """L_J on generated pairs; with ``gate`` > 0, pairs whose error exceeds ``gate`` x the
    batch's median error are left out (mean over the pairs kept)."""
    per_pair = (predicted - target).pow(2).flatten(1).sum(dim=1)
    if gate <= 0:
        return per_pair.mean()
    keep = (per_pair <= gate * per_pair.detach().median()).float()
    return (per_pair * keep).sum() / keep.sum().clamp(min=1.0)


def synth_targets(j_l: torch.Tensor, pose_u: torch.Tensor | None,
                  sources: list[str]) -> torch.Tensor:
    """New poses J' (fixed) for the skeleton-space term: drawn from the labelled poses, plus
    the poses Dis reads off the unlabelled crops (clipped to the crop cube) when given; Gen
    turns each into a labelled pair."""
    j_new = [new_poses(j_l.float(), sources)] if sources else []
    if pose_u is not None:
        j_new.append(pose_u.detach().float().clamp(-1.0, 1.0))
    return torch.cat(j_new) if j_new else j_l[:0]


def generator_adversarial_term(dis: nn.Module, x_l: torch.Tensor, x_g: torch.Tensor,
                               kind: str) -> torch.Tensor:
    """Gen's adversarial term on its crops ``x_g``: the non-saturating BCE (``"bce"``), or
    feature matching against the real crops ``x_l`` on the shared trunk. Dis is used without
    its DDP wrapper: its gradients here are never used (they are cleared before its next
    step), so there is nothing to synchronise."""
    d = unwrap(dis)
    with batch_norm_stats_frozen(dis):
        if kind == "feature_matching":
            with torch.no_grad():
                real_features = d.trunk(x_l)
            return feature_matching_loss(real_features, d.trunk(x_g))
        return generator_adversarial_loss(d(x_g, heads="real_fake").float())


def gan_step(gen: nn.Module, dis: nn.Module, opt_g: torch.optim.Optimizer,
             opt_d: torch.optim.Optimizer, x_l: torch.Tensor, j_l: torch.Tensor,
             x_u: torch.Tensor | None, cfg: TrainConfig, autocast=nullcontext,
             views: tuple[torch.Tensor, ViewMaps] | None = None,
             phase: StepPhase = StepPhase(),
             ray_l: torch.Tensor | None = None) -> dict[str, float]:
    """One iteration of the seed's GAN: update Dis, then Gen. Returns the losses as floats.

    ``gen`` and ``dis`` are a Generator and a Discriminator, or their DDP wrappers. Unlabelled
    crops ``x_u`` never reach L_J: by default they only go through the real/fake head; the
    option ``loss.w_equivariance`` (with ``views``: the unaugmented crops of ``x_u`` and the
    maps between the two) also trains the pose branch on them without labels.
    ``phase`` (:func:`step_phase`) switches Gen's adversarial term on after the warm-up and
    weighs the skeleton-space term ``loss.w_synth``: new poses J' (:mod:`handgan.posespace`,
    and with ``unlabeled`` among ``loss.synth_poses`` Dis's poses of ``x_u``) rendered by Gen,
    whose pairs (Gen(J'), J') train the pose head and whose crops are fakes for the real/fake
    head. ``ray_l`` (B, 3): the labelled crops' centre rays, for the skeleton render
    (``model.gen_render``); Gen draws every other pose it renders with these rays in turn.
    """
    w = cfg.loss

    ############################
    # (1) Update Dis: minimise L_Dis = w_joint * L_J(Dis_pose(x_l), J_l)
    #                                + w_gan * L_gan,  L_gan = BCE(Dis(x_l, x_u), 1) + BCE(Dis(Gen(J)), 0)
    ############################
    opt_d.zero_grad(set_to_none=True)
    has_u = x_u is not None and len(x_u) > 0
    equivariance = w.w_equivariance > 0 and has_u and views is not None
    synth = phase.synth_weight > 0
    synth_sources = [x for x in w.synth_pose_sources if x != "unlabeled"]
    synth_from_u = synth and has_u and "unlabeled" in w.synth_pose_sources
    with autocast():
        real_logits, pose_l = dis(x_l)  # labelled crops: both heads
        if equivariance or synth_from_u:
            logits_u, pose_u = dis(x_u)
            real_logits = torch.cat([real_logits, logits_u])
        elif has_u:
            real_logits = torch.cat([real_logits, dis(x_u, heads="real_fake")])  # real/fake only
        if synth:
            j_syn = synth_targets(j_l, pose_u if synth_from_u else None, synth_sources)
            synth = len(j_syn) > 0
        j_gen = torch.cat([j_l, j_syn]) if synth else j_l
        with torch.no_grad():  # no gradient into Gen here
            x_g = gen(j_gen, ray=rays_for(ray_l, len(j_gen)))
        if equivariance:
            loss_equi = equivariance_loss(dis, pose_u, views)
        with batch_norm_stats_frozen(dis):  # running statistics come from real crops only
            if synth:
                fake_logits, pose_g = dis(x_g)
            else:
                fake_logits = dis(x_g, heads="real_fake")
        loss_j = joint_loss(pose_l.float(), j_l)
        loss_gan = discriminator_gan_loss(real_logits.float(), fake_logits.float())
        loss_d = w.w_joint * loss_j + w.w_gan * loss_gan
        if synth:
            # L_synth = L_J on the pairs (Gen(J'), J'), pairs read back worse than synth_gate x
            # the batch median left out (Gen drew something else there).
            loss_synth = synth_pose_loss(pose_g[len(j_l):].float(), j_syn, w.synth_gate)
            loss_d = loss_d + phase.synth_weight * loss_synth
        if equivariance:
            loss_d = loss_d + w.w_equivariance * loss_equi
    loss_d.backward()
    opt_d.step()

    ############################
    # (2) Update Gen: minimise L_Gen = w_recons * L_recons(x_l, Gen(J_l))
    #                                + w_gen_adv * BCE(Dis(Gen(J_l [, J'])), 1)
    #     i.e. L_recons - L_gan in the non-saturating form -log Dis(Gen(J)) (see losses.py);
    #     L_recons compares the clean crop, Dis sees it with the sensor's missing pixels
    ############################
    opt_g.zero_grad(set_to_none=True)
    adversarial = phase.gen_adversarial and w.w_gen_adv > 0
    with autocast():
        # Without the adversarial term only the labelled poses' crops carry a loss.
        j_gen = torch.cat([j_l] + ([j_syn] if synth else [])) if adversarial else j_l
        x_clean = gen(j_gen, ray=rays_for(ray_l, len(j_gen)), clean=True)
        loss_rec = reconstruction_loss(x_l, x_clean[:len(j_l)].float(), w.tau, w.recons_mode,
                                       recons_weight(j_l, cfg))
        loss_g = w.w_recons * loss_rec
        loss_adv = torch.zeros((), device=x_l.device)
        if adversarial:
            x_g = unwrap(gen).sensor(x_clean)
            loss_adv = generator_adversarial_term(dis, x_l, x_g, w.gen_adv)
            loss_g = loss_g + w.w_gen_adv * loss_adv
    loss_g.backward()
    opt_g.step()

    out = {"loss_dis": loss_d.item(), "loss_joint": loss_j.item(), "loss_gan": loss_gan.item(),
           "loss_gen": loss_g.item(), "loss_recons": loss_rec.item(),
           "loss_gen_adv": loss_adv.item()}
    if equivariance:
        out["loss_equivariance"] = loss_equi.item()
    if synth:
        out["loss_synth"] = loss_synth.item()
    return out


def rays_for(ray_l: torch.Tensor | None, count: int) -> torch.Tensor | None:
    """Centre rays for ``count`` poses rendered beside the labelled ones: the labelled crops'
    rays, repeated in order (a new pose is drawn as if seen where a real crop was)."""
    if ray_l is None or count == len(ray_l):
        return ray_l
    return ray_l.repeat(-(-count // len(ray_l)), 1)[:count]


def supervised_step(dis: nn.Module, opt_d: torch.optim.Optimizer, x_l: torch.Tensor,
                    j_l: torch.Tensor, cfg: TrainConfig, autocast=nullcontext,
                    x_u: torch.Tensor | None = None,
                    views: tuple[torch.Tensor, ViewMaps] | None = None) -> dict[str, float]:
    """The baseline: the same pose network (Dis trunk + pose branch) trained on L_J alone
    (plus, with ``loss.w_equivariance`` and unlabelled ``x_u`` + ``views``, the equivariance
    term: what the term does without the GAN)."""
    ############################
    # Update Dis trunk + pose: minimise w_joint * L_J(Dis_pose(x_l), J_l)
    ############################
    opt_d.zero_grad(set_to_none=True)
    has_u = x_u is not None and len(x_u) > 0
    equivariance = cfg.loss.w_equivariance > 0 and has_u and views is not None
    with autocast():
        loss_j = joint_loss(dis(x_l, heads="pose").float(), j_l)
        loss = cfg.loss.w_joint * loss_j
        if equivariance:
            pose_u = dis(x_u, heads="pose")
            loss_equi = equivariance_loss(dis, pose_u, views)
            loss = loss + cfg.loss.w_equivariance * loss_equi
    loss.backward()
    opt_d.step()  # the real/fake head has no gradient, so Adam leaves it as it is
    out = {"loss_dis": loss.item(), "loss_joint": loss_j.item()}
    if equivariance:
        out["loss_equivariance"] = loss_equi.item()
    return out


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------

@torch.no_grad()
def predict(dis: Discriminator, crops: LabeledCrops, device: torch.device,
            progress: bool = False) -> np.ndarray:
    """Normalised joints (N, J, 3) predicted by the pose branch (eval mode)."""
    was_training = dis.training
    dis.eval()
    out = []
    starts = range(0, len(crops), EVAL_BATCH)
    for start in tqdm(starts, desc="predict", unit="batch", disable=not progress,
                      dynamic_ncols=True):
        x, _ = crops.sample_batch(np.arange(start, min(start + EVAL_BATCH, len(crops))))
        out.append(dis.estimate(x.to(device)).float().cpu().numpy())
    dis.train(was_training)
    return np.concatenate(out).astype(np.float64)


def mean_joint_error_mm(pred_norm: np.ndarray, crops: LabeledCrops) -> float:
    """Mean 3D joint error in mm over frames and joints (see ``crops_mean_error_mm``)."""
    return crops_mean_error_mm(pred_norm, crops)


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------

def _sample_set(data: TrainData, count: int = 8) -> LabeledCrops:
    """The fixed crops drawn beside Gen(their joints) every epoch (validation if held out)."""
    source = data.val if data.val is not None else data.labeled
    return LabeledCrops(data.train_cache, source.indices[:count])


def train(cfg: TrainConfig, run_dir: str | Path, resume: bool = False,
          progress: bool = True) -> Path:
    """Train ``cfg`` into ``run_dir`` (created); returns the run folder.

    With ``resume`` the run continues from ``run_dir/checkpoints/last.pt`` with every RNG state
    restored, so it matches an uninterrupted run with the same config. Under torchrun every
    process calls this; rank 0 writes the run folder.
    """
    run_dir = Path(run_dir)
    cfg = with_data_joints(cfg)
    ckpt_dir = run_dir / "checkpoints"
    manager = CheckpointManager(ckpt_dir)
    if resume and manager.latest() is None:
        raise HandganError(f"{ckpt_dir}: no last.pt to resume from")

    device = resolve_device(cfg.device)
    info = init_distributed(device.type)
    if info.enabled and device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
    try:
        # One writer per run folder (rank 0 writes it); checked under the lock, so two commands
        # started together cannot both pass the checks.
        with FolderLock(run_dir) if info.is_main else nullcontext():
            if info.is_main:
                check_run_folder(cfg, run_dir, manager, resume)
            try:
                return _train(cfg, run_dir, manager, resume, progress, device, info)
            except HandganError:
                if info.is_main and not resume and manager.latest() is None:
                    # A refused start (bad data, batch size) leaves no run behind, so the same
                    # command with the mistake fixed is not refused for "an earlier run's files":
                    # check_run_folder found none of them, so this call wrote them.
                    for name in RUN_FILES[:-1]:  # all but checkpoints/
                        (run_dir / name).unlink(missing_ok=True)
                raise
    finally:
        shutdown(info)


def with_data_joints(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with ``model.num_joints`` taken from the training source's joint layout (NYU 14,
    ICVL 16, MSRA 21): the networks are built for the joints the labels hold."""
    spec = parse_source(cfg.data.source)
    if spec.kind not in ("icvl", "msra"):  # synthetic, nyu: NYU's 14 (the default); folder: none
        return cfg
    names = split_names(spec)
    if not names:
        return cfg  # load_data names what is missing
    count = len(open_split(spec, names[0]).joint_names)
    if count in (0, cfg.model.num_joints):
        return cfg
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, num_joints=count))


# What a resumed run cannot change: the networks' shapes and the crops they were trained on.
FIXED_ON_RESUME = ("mode", "seed", "model", "data.source", "data.unlabeled",
                   "data.labeled_fraction", "data.labeled_count", "data.split_seed",
                   "data.val_fraction", "data.size", "data.cube_mm", "data.centre",
                   "optim.batch_size", "localizer")
RUN_FILES = ("config.yaml", "metrics.jsonl", "summary.json", "checkpoints", LOCALIZER_FILE)


def check_run_folder(cfg: TrainConfig, run_dir: Path, manager: CheckpointManager,
                     resume: bool) -> None:
    """Refuse, before anything is written, a fresh run into a folder holding an earlier run's
    files, or a resume whose config changes what :data:`FIXED_ON_RESUME` lists; then remove the
    temp files that killed writers left (the caller holds the folder's lock)."""
    if not resume:
        found = [name for name in RUN_FILES if (run_dir / name).exists()]
        if "checkpoints" in found:
            raise HandganError(f"{run_dir}: already holds a run (use --resume to continue it, "
                               "or choose another --out)")
        if found:
            raise HandganError(f"{run_dir}: holds files of an earlier run that saved no "
                               f"checkpoint ({', '.join(found)}); remove them or choose another "
                               "--out")
    else:
        last = manager.last_path
        ckpt = load_checkpoint(last)
        missing = [k for k in ("config", "generator", "discriminator", "opt_g", "opt_d", "step",
                               "epoch", "batch_in_epoch", "rng", "rng_epoch_start")
                   if k not in ckpt]
        if missing:
            raise HandganError(f"{last}: not a training checkpoint (no {', '.join(missing)}); "
                               "cannot resume from it")
        saved, now = _flat(to_dict(from_dict(ckpt["config"]))), _flat(to_dict(cfg))
        for key in saved:
            if key.startswith(FIXED_ON_RESUME) and saved[key] != now.get(key):
                raise HandganError(f"{run_dir}: --resume cannot change {key} (the run has "
                                   f"{saved[key]!r}, asked {now.get(key)!r}); it shapes the "
                                   "networks or their data: start a new run with another --out")
    for folder in (run_dir, manager.run_dir):
        for tmp in folder.glob(".*.tmp") if folder.is_dir() else ():
            if ATOMIC_TMP.fullmatch(tmp.name):  # atomic_write's, left by a kill mid-write
                tmp.unlink(missing_ok=True)
    if resume:  # a checkpoint folder we cannot write to would only fail after an epoch's work
        _check_writable(manager.run_dir)


def _check_writable(folder: Path) -> None:
    probe = folder / f".handgan-write-probe.{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise HandganError(f"{folder}: cannot write checkpoints there ({e.strerror or e})"
                           ) from None


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _train(cfg: TrainConfig, run_dir: Path, manager: CheckpointManager, resume: bool,
           progress: bool, device: torch.device, info: DistInfo) -> Path:
    main = info.is_main
    progress = progress and main
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_yaml(cfg, run_dir / "config.yaml")

    threads = None
    if device.type == "cpu":  # before the localiser stage, which trains on the CPU too
        threads = cfg.threads or training_threads()
        torch.set_num_threads(threads)
    seed_everything(cfg.seed)
    localizer_record = None
    if main:  # rank 0 builds the caches and trains the localiser; the others then open them
        prepare_sources([cfg.data.source, cfg.data.unlabeled], seed=cfg.seed, progress=progress)
        data, localizer, localizer_record = prepare_data(cfg, run_dir, device, progress)
    barrier(info)
    if not main:
        localizer = (load_checkpoint(run_dir / LOCALIZER_FILE)["localizer"]
                     if cfg.localizer.enabled else None)
        localizer = Localizer.from_state(localizer) if localizer is not None else None
        data = load_data(cfg, progress=False, localizer=localizer)
    labeled, unlabeled = data.labeled, data.unlabeled
    batch = cfg.optim.batch_size
    if batch % info.world_size:
        raise HandganError(f"optim.batch_size={batch} does not split over {info.world_size} "
                           "processes; use a multiple of the process count")
    share = slice(info.rank * batch // info.world_size, (info.rank + 1) * batch // info.world_size)
    # An epoch is one pass over the training split's frames, labelled or not, whatever the
    # labelled share: runs with 1 % and 100 % labels get the same number of steps (the labelled
    # batches then cycle through their smaller set several times per epoch).
    steps_per_epoch = data.train_frames // batch
    if steps_per_epoch == 0:
        raise HandganError(f"{data.train_frames} training frames: fewer than one batch of "
                           f"{batch}; lower optim.batch_size")
    total_steps = planned_steps = steps_per_epoch * cfg.optim.epochs  # the schedule's length
    if cfg.optim.max_steps is not None:
        total_steps = min(total_steps, cfg.optim.max_steps)
    gan = cfg.mode == "gan"
    # The real/fake head and the equivariance term are what unlabelled crops are for.
    use_unlabeled = (gan or cfg.loss.w_equivariance > 0) and len(unlabeled) > 0
    view_augment = None
    if use_unlabeled and cfg.loss.w_equivariance > 0:
        view_augment = equivariance_augment(cfg)

    seed_everything(cfg.seed)
    gen, dis = build_models(cfg, device)  # the same initial weights in every process
    if info.enabled:  # ...but each process its own random draws (Gen's sensor, new poses)
        torch.manual_seed(cfg.seed * info.world_size + info.rank)
    cuda = device.type == "cuda"
    if cuda and cfg.channels_last:
        gen.to(memory_format=torch.channels_last)
        dis.to(memory_format=torch.channels_last)
    opt_g, opt_d = build_optimizers(cfg, gen, dis)
    perm_rng = np.random.default_rng(cfg.seed)  # batch order (labelled, then unlabelled)
    autocast = ((lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cfg.amp and cuda
                else nullcontext)

    epoch, batch_in_epoch, step, best, best_epoch = 0, 0, 0, math.inf, None
    best_test = None  # test error of the best checkpoint (chosen on validation)
    if resume:
        ckpt = load_checkpoint(manager.last_path, map_location=device)
        try:
            gen.load_state_dict(ckpt["generator"])
            dis.load_state_dict(ckpt["discriminator"])
            opt_g.load_state_dict(ckpt["opt_g"])
            opt_d.load_state_dict(ckpt["opt_d"])
        except (KeyError, RuntimeError, ValueError) as e:
            raise HandganError(f"{manager.last_path}: its weights do not fit the run's config "
                               f"({str(e).splitlines()[0]})") from None
        epoch, batch_in_epoch, step = ckpt["epoch"], ckpt["batch_in_epoch"], ckpt["step"]
        epoch_start_state = ckpt["rng_epoch_start"]  # a run with nothing left to train saves it
        best = ckpt["best_metric"] if ckpt["best_metric"] is not None else math.inf
        best_epoch, best_test = ckpt.get("best_epoch"), ckpt.get("best_test_error")
        rng = ckpt["rng"]
        ranks = ckpt.get("rng_ranks")
        if ranks is not None and len(ranks) == info.world_size:
            rng = ranks[info.rank]
        restore_rng_state(ckpt["rng_epoch_start"], {"perm": perm_rng})  # redraw this epoch
        restore_rng_state(rng)  # ...and every other generator where it stopped
        if threads is not None and cfg.threads is None and ckpt.get("threads"):
            # float sums depend on the thread count: resume with the run's, for exact resume
            threads = int(ckpt["threads"])
            torch.set_num_threads(threads)

    if cfg.compile:  # in place, so state dicts and the DDP wrappers see the plain modules
        for module in (gen, dis.trunk, dis.real_fake, dis.pose):
            module.compile()
    gen_t, dis_t = gen, dis  # what the steps call: the networks, or their DDP wrappers
    if info.enabled:
        ids = [device.index] if cuda else None
        gen_t = DDP(gen, device_ids=ids)
        # Supervised mode never uses the real/fake head: DDP must be told to expect that.
        dis_t = DDP(dis, device_ids=ids, find_unused_parameters=not gan)

    first_step = step
    finished = step >= total_steps or epoch >= cfg.optim.epochs
    if resume and finished and (run_dir / "summary.json").is_file():
        return run_dir  # a finished run: nothing to train, nothing to rewrite
    if resume and main:
        # Drop what was logged after the checkpoint (the resumed run logs those steps again);
        # a run with nothing left to train evaluates its checkpoint's step again too.
        keep_records(run_dir / "metrics.jsonl",
                     lambda r: r.get("step", 0) < step
                     or (r.get("step") == step and not (finished and r.get("event") == "eval")))
    gen.train()
    dis.train()
    metrics = JsonlWriter(run_dir / "metrics.jsonl") if main else None
    scalars = ScalarWriter(run_dir / "tb") if main else None
    if localizer_record is not None and main:
        metrics.write(localizer_record)
    bar = progress_bar(total_steps, initial=step, enabled=progress)
    baseline = mean_joint_error_mm(data.mean_pose, data.test) if data.test is not None else None
    selection = "val" if data.val is not None else "test"
    samples = _sample_set(data) if gan and cfg.sample_every_epochs and main else None
    last_eval: dict[str, float | None] = {}
    train_seconds, crops_seen = 0.0, 0
    started = time.perf_counter()
    earlier_seconds = ckpt.get("wall_seconds_total", 0.0) if resume else 0.0  # before the resume

    def evaluate(epoch_done: int) -> float | None:
        """Rank 0: validation and test error; returns the error that chooses best.pt."""
        errors = {f"{name}_mean_error_mm": mean_joint_error_mm(predict(dis, crops, device), crops)
                  for name, crops in (("val", data.val), ("test", data.test)) if crops is not None}
        if not errors:
            return None
        last_eval.clear()
        last_eval.update(errors)
        fidelity = {}
        if gan:  # how faithful Gen(J) is on the selection split (fidelity.py; RNG untouched)
            f = generator_fidelity(gen, data.val if data.val is not None else data.test,
                                   {"run": dis}, device)
            fidelity = {"generator_hand_depth_error_mm": f["hand_depth_error_mm"],
                        "generator_readback_mean_error_mm": f["readback_mean_error_mm"]["run"]}
        metrics.write({"event": "eval", "step": step, "epoch": epoch_done, **errors,
                       "mean_error_mm": errors.get("test_mean_error_mm"),
                       "mean_pose_baseline_mm": baseline, **fidelity})
        scalars.add_scalars({**errors, **fidelity}, step, "eval/")
        return errors[f"{selection}_mean_error_mm"]

    def draw_samples(epoch_done: int) -> None:
        x, j, ray = samples.sample_batch(np.arange(len(samples)), rays=True)
        gen.eval()
        with torch.no_grad():
            fake = gen(j.to(device), ray.to(device)).float().cpu().numpy()[:, 0]
        gen.train()
        image = crop_pairs_image(x.numpy()[:, 0], fake)
        write_grey_png(run_dir / "samples" / f"epoch_{epoch_done:03d}.png", image)
        scalars.add_image("samples/real_vs_generated", image, step)

    def checkpoint(epoch_next: int, batch_next: int, epoch_start_state: dict,
                   is_best: bool) -> None:
        rng_ranks = gather_objects(capture_rng_state(), info)  # every process calls this
        if main:
            manager.save({
                "config": to_dict(cfg), "mode": cfg.mode, "crop": data.crop,
                "mean_pose": torch.from_numpy(data.mean_pose),  # the baseline, for evaluate
                "generator": gen.state_dict(), "discriminator": dis.state_dict(),
                "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(),
                "epoch": epoch_next, "batch_in_epoch": batch_next, "step": step,
                "best_metric": best if math.isfinite(best) else None, "best_epoch": best_epoch,
                "best_test_error": best_test,
                "selection_split": selection, "world_size": info.world_size,
                "rng": rng_ranks[0], "rng_ranks": rng_ranks if info.enabled else None,
                "rng_epoch_start": epoch_start_state,
                "localizer": localizer.state() if localizer is not None else None,
                "wall_seconds_total": earlier_seconds + time.perf_counter() - started,
                "threads": threads,
            }, is_best=is_best)
        barrier(info)

    def end_of_epoch(epoch_done: int, batch_next: int, epoch_start_state: dict,
                     force_eval: bool) -> None:
        nonlocal best, best_epoch, best_test
        is_best = False
        if main and (force_eval or epoch_done % cfg.eval_every_epochs == 0
                     or epoch_done == cfg.optim.epochs):
            err = evaluate(epoch_done)
            if err is not None and err < best:
                best, best_epoch, is_best = err, epoch_done, True
                best_test = last_eval.get("test_mean_error_mm")
        if samples is not None and batch_next == 0 and epoch_done % cfg.sample_every_epochs == 0:
            draw_samples(epoch_done)
        checkpoint(epoch_done, batch_next, epoch_start_state, is_best)

    pin = cuda
    try:
        while epoch < cfg.optim.epochs and step < total_steps:
            # This epoch's batch order; its generator state is what a checkpoint saved mid-epoch
            # needs to redraw it.
            epoch_start_state = capture_rng_state({"perm": perm_rng})
            labeled.set_epoch(epoch)
            unlabeled.set_epoch(epoch)
            reps = math.ceil(steps_per_epoch * batch / len(labeled))
            order = np.concatenate([perm_rng.permutation(len(labeled)) for _ in range(reps)])
            order_u = None
            if use_unlabeled:
                reps = math.ceil(steps_per_epoch * batch / len(unlabeled))
                order_u = np.concatenate([perm_rng.permutation(len(unlabeled))
                                          for _ in range(reps)])
            start_batch = batch_in_epoch
            n_batches = min(steps_per_epoch - start_batch, total_steps - step)
            batches = EpochBatches(labeled, unlabeled, order, order_u, batch, share,
                                   start_batch + n_batches, view_augment,
                                   rays=gan and cfg.model.gen_render)
            loader = iterate_batches(batches, start_batch, cfg.num_workers if n_batches > 1 else 0,
                                     pin)
            for b in range(start_batch, start_batch + n_batches):
                x_l, j_l, x_u, views, ray_l = next(loader)
                t0 = time.perf_counter()
                mf = torch.channels_last if cuda and cfg.channels_last else torch.preserve_format
                set_learning_rate((opt_g, opt_d), learning_rate(cfg.optim, step, planned_steps))
                x_l = x_l.to(device, non_blocking=True, memory_format=mf)
                j_l = j_l.to(device, non_blocking=True)
                if ray_l is not None:
                    ray_l = ray_l.to(device, non_blocking=True)
                if x_u is not None:
                    x_u = x_u.to(device, non_blocking=True, memory_format=mf)
                if views is not None:
                    views = (views[0].to(device, non_blocking=True, memory_format=mf), views[1])
                if gan:
                    losses = gan_step(gen_t, dis_t, opt_g, opt_d, x_l, j_l, x_u, cfg, autocast,
                                      views, step_phase(cfg.loss, step, steps_per_epoch),
                                      ray_l)
                else:
                    losses = supervised_step(dis_t, opt_d, x_l, j_l, cfg, autocast, x_u, views)
                train_seconds += time.perf_counter() - t0
                crops_seen += batch
                step += 1
                batch_in_epoch = b + 1
                if step % cfg.log_every == 0:
                    if threads is not None:  # say so when other jobs slow this run down
                        bar.set_description("train (CPU shared with other jobs)"
                                            if oversubscribed(threads) else "train")
                    losses = mean_over_ranks(losses, info, device)
                    if main:
                        metrics.write({"event": "train", "step": step, "epoch": epoch, **losses})
                        scalars.add_scalars(losses, step, "train/")
                bar.update(1)
                bar.set_postfix({k.removeprefix("loss_"): f"{v:.4f}" for k, v in losses.items()},
                                refresh=False)
            del loader  # stops its workers
            if batch_in_epoch < steps_per_epoch:  # stopped mid-epoch by max_steps
                break
            epoch, batch_in_epoch = epoch + 1, 0
            end_of_epoch(epoch, 0, capture_rng_state({"perm": perm_rng}), force_eval=False)

        # The end (all epochs, or max_steps): a final evaluation and a loadable checkpoint.
        if batch_in_epoch:  # mid-epoch: resume redraws this epoch's order and skips what is done
            end_of_epoch(epoch, batch_in_epoch, epoch_start_state, force_eval=True)
        elif main and not last_eval and (data.val is not None or data.test is not None):
            end_of_epoch(epoch, 0, capture_rng_state({"perm": perm_rng}), force_eval=True)
    finally:
        bar.close()
        if main:
            metrics.close()
            scalars.close()

    if main:
        summary = {
            "mode": cfg.mode,
            "final_mean_error_mm": last_eval.get("test_mean_error_mm"),
            "final_val_mean_error_mm": last_eval.get("val_mean_error_mm"),
            "mean_pose_baseline_mm": baseline,
            "selection_split": selection,
            "best_selection_error_mm": best if math.isfinite(best) else None,
            "best_mean_error_mm": best_test,  # test error of best.pt
            "best_epoch": best_epoch,
            "steps": step, "epochs_done": epoch,
            "steps_this_session": step - first_step,
            "wall_seconds": round(time.perf_counter() - started, 3),  # this session
            "wall_seconds_total": round(earlier_seconds + time.perf_counter() - started, 3),
            "train_seconds": round(train_seconds, 3),
            "crops_per_s": round(crops_seen / train_seconds, 1) if train_seconds > 0 else None,
            "device": str(device), "world_size": info.world_size, "threads": threads,
        }
        text = json.dumps(summary, indent=2) + "\n"
        atomic_write(run_dir / "summary.json", lambda f: f.write(text.encode("utf-8")))
    barrier(info)
    return run_dir
