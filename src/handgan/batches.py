"""A run's data, from the configured sources to the batches of each training step.

    data = load_data(cfg)                                   # crop caches, split, baseline pose
    order = epoch_order(rng, len(data.labeled), count)      # one epoch's batch order
    batches = EpochBatches(data.labeled, data.unlabeled, order, order_u, batch, share, steps)
    x_l, j_l, x_u, views, ray_l = batches[b]                # a Batch
    # data.pipeline=device: EpochBatches(..., plans=True)[b] is a BatchPlan (rows, transforms),
    # DeviceCrops(data, device).batch(plan) the same Batch made on the device

This module splits the training split into labelled, validation and unlabelled rows
(:mod:`handgan.dataset`'s crop sets), adds any ``--unlabeled`` source, and cuts each epoch into
batches: each a pure function of the epoch's orders, which the training loop draws from one
seeded, checkpointed generator.
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from handgan.augment import AugmentConfig
from handgan.cachebuild import load_or_build_cache
from handgan.cachesource import CropParams
from handgan.cachestore import CropCache
from handgan.config import TrainConfig
from handgan.data.sources import open_split, parse_source, pick_test_split, split_names
from handgan.dataset import LabeledCrops, UnlabeledCrops, all_labeled, all_unlabeled, split_labeled
from handgan.deviceaugment import map_joints, rewarp_crops
from handgan.errors import HandganError
from handgan.localize import Localizer, fit_run_localizer, locate_reader
from handgan.preprocess import centre_rays
from handgan.views import ViewMaps


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


def prepare_data(cfg: TrainConfig, run_dir: Path, device: torch.device, progress: bool
                 ) -> tuple[TrainData, Localizer | None, dict | None]:
    """(data, localizer or None, its log record or None): the run's data and its hand localiser
    (stage 1: trained on the labelled training frames, or loaded when a resumed run has it).
    With ``data.centre == "com"`` the crops are then centred by that localiser, so the
    labelled/validation split is first drawn on crops centred by the labels."""
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


def _cache(spec, split: str, cfg: TrainConfig, progress: bool,
           localizer: Localizer | None = None) -> CropCache:
    params = CropParams(size=cfg.model.size, cube_mm=cfg.data.cube_mm, centre=cfg.data.centre)
    reader = open_split(spec, split)
    located = (locate_reader(localizer, reader, progress)
               if localizer is not None and cfg.data.centre == "com" else None)
    return load_or_build_cache(reader, cfg.data.cache_dir, params, progress=progress,
                               on_bad=cfg.data.on_bad, located=located)


def _augment(cfg: TrainConfig) -> AugmentConfig | None:
    """The AugmentConfig, or None when it cannot change a crop (enables the fast path)."""
    a = cfg.data.augment
    if tuple(a.modes) == ("none",) and not a.pixel_dropout_p and not a.depth_noise_sigma_mm:
        return None
    return a


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

    def by_part(self, positions: np.ndarray, sample) -> tuple[list, np.ndarray]:
        """([(part index, its places in ``positions``, ``sample(part, local positions)``) for
        each part that ``positions`` touch], the order that puts their concatenation back in
        ``positions`` order)."""
        positions = np.asarray(positions, dtype=np.int64)
        part = np.searchsorted(self.offsets, positions, side="right") - 1
        pieces = [(k, rows, sample(p, positions[rows] - self.offsets[k]))
                  for k, p in enumerate(self.parts) if len(rows := np.flatnonzero(part == k))]
        return pieces, np.argsort(np.concatenate([w for _, w, _ in pieces]), kind="stable")

    def sample_batch(self, positions: np.ndarray) -> torch.Tensor:
        pieces, back = self.by_part(positions, lambda p, local: p.sample_batch(local))
        return torch.cat([crops for *_, crops in pieces])[back]

    def sample_views(self, positions: np.ndarray, view_augment: AugmentConfig
                     ) -> tuple[torch.Tensor, torch.Tensor, ViewMaps]:
        """:meth:`UnlabeledCrops.sample_views` over the parts, in ``positions`` order."""
        pieces, back = self.by_part(positions, lambda p, local: p.sample_views(local, view_augment))
        a, b, maps = zip(*(views for *_, views in pieces))
        return torch.cat(a)[back], torch.cat(b)[back], ViewMaps.concat(list(maps), back)


def equivariance_augment(cfg: TrainConfig) -> AugmentConfig:
    """How the equivariance term's view B is drawn from the crop (view A): rotation, scale and
    shift at once, so that a pair always differs (``data.augment``'s amounts, the rotation
    ``loss.equi_rotation_deg`` where set), without pixel dropout (that is for the labelled
    crops)."""
    rotation = cfg.loss.equi_rotation_deg
    return dataclasses.replace(cfg.data.augment, combine=True, pixel_dropout_p=0.0,
                               **({"rotation_deg": rotation} if rotation is not None else {}))


class Batch(NamedTuple):
    """One training batch: this process's share of a global batch."""

    x_l: torch.Tensor                   # (B, 1, S, S) labelled crops in [-1, 1]
    j_l: torch.Tensor                   # (B, J, 3) their normalised joints
    x_u: torch.Tensor | None = None     # (B, 1, S, S) unlabelled crops (view B with ``views``)
    views: tuple[torch.Tensor, ViewMaps] | None = None  # equivariance: view A of x_u, A -> B maps
    ray_l: torch.Tensor | None = None   # (B, 3) the labelled crops' centre rays (skeleton render)

    def to(self, device: torch.device, memory_format=torch.preserve_format) -> Batch:
        """The batch on ``device`` (crops in ``memory_format``; the view maps stay numpy)."""
        def crops(x):
            return x.to(device, non_blocking=True, memory_format=memory_format)

        ray_l = None if self.ray_l is None else self.ray_l.to(device, non_blocking=True)
        return Batch(crops(self.x_l), self.j_l.to(device, non_blocking=True),
                     None if self.x_u is None else crops(self.x_u),
                     None if self.views is None else (crops(self.views[0]), self.views[1]),
                     ray_l)


def epoch_order(rng: np.random.Generator, n: int, count: int) -> np.ndarray:
    """At least ``count`` positions of ``range(n)`` for one epoch: whole permutations, end to end
    (a set smaller than an epoch's draws is cycled through several times)."""
    return np.concatenate([rng.permutation(n) for _ in range(math.ceil(count / n))])


class EpochBatches(Dataset):
    """Batch ``b`` of one epoch, this process's share: a :class:`Batch`. Every batch is a pure
    function of the epoch's orders, so worker processes can prepare batches ahead (augmentation
    included) and the run is the same with any number of workers."""

    def __init__(self, labeled: LabeledCrops, unlabeled: UnlabeledPool | None,
                 order: np.ndarray, order_u: np.ndarray | None, batch: int, share: slice,
                 steps: int, view_augment: AugmentConfig | None = None,
                 rays: bool = False, plans: bool = False):
        self.labeled, self.unlabeled, self.steps = labeled, unlabeled, steps
        self.order, self.order_u, self.batch, self.share = order, order_u, batch, share
        self.rays = rays  # set: the labelled crops' centre rays come too (the skeleton render)
        self.view_augment = view_augment  # set: unlabelled crops come as two views (equivariance)
        self.plans = plans  # set: BatchPlans (rows and transforms) for DeviceCrops, not Batches

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, b: int) -> Batch | BatchPlan:
        window = slice(b * self.batch, (b + 1) * self.batch)
        if self.plans:
            return self._plan(window)
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
        return Batch(x_l, j_l, x_u, views, ray_l)


    def _plan(self, window: slice) -> BatchPlan:
        """The batch's :class:`BatchPlan`: what :meth:`__getitem__` makes, less the pixels."""
        pos = self.order[window][self.share]
        labeled = _rows(*self.labeled.draw(pos, self.labeled.augment)[:3])
        unlabeled, maps = [], None
        if self.order_u is not None:
            pool, rows = self.unlabeled, self.order_u[window][self.share]
            views = self.view_augment
            pieces, _ = pool.by_part(rows, lambda p, local: p.draw(local, views, (1,)) if views
                                     else p.draw(local, p.augment))
            pairs = [None] * len(rows)
            for k, where, drawn in pieces:
                unlabeled.append((k, torch.from_numpy(where), *_rows(*drawn[:3])))
                for w, pair in zip(where, drawn[3]):  # the views' (A, B) transforms
                    pairs[w] = pair
            maps = ViewMaps(pairs) if views is not None else None
        return BatchPlan(labeled, unlabeled if self.order_u is not None else None, maps,
                         self.rays)


def _rows(rows: np.ndarray, src: np.ndarray, dst: np.ndarray) -> tuple[torch.Tensor, ...]:
    return torch.from_numpy(rows), torch.from_numpy(src), torch.from_numpy(dst)


class BatchPlan(NamedTuple):
    """A batch as rows and crop transforms (host-side, small): its labelled crops' (cache rows,
    transform rows, augmented transform rows); per unlabelled part touched, (part, places in the
    batch, rows, transform rows, augmented or view-B rows); the view maps; whether rays come."""

    labeled: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    unlabeled: list[tuple] | None
    maps: ViewMaps | None
    rays: bool


class DeviceCrops:
    """The data pipeline on the training device (``data.pipeline=device``, issue 16): the
    training caches' crops (float16) and labelled joints held on ``device``, and batches made
    there from :class:`BatchPlan` s by ``deviceaugment``: gathered by row and re-warped in one
    batched call. The plans come from the host path's own draws, so its batches are the host
    path's: crops pixel for pixel, joints to float64 rounding (tests/test_device_pipeline.py)."""

    def __init__(self, data: TrainData, device: torch.device) -> None:
        on_device: dict[int, torch.Tensor] = {}  # one copy of a crops array its parts share

        def upload(array: np.ndarray) -> torch.Tensor:
            if id(array) not in on_device:
                with warnings.catch_warnings():  # a read-only memmap: on the CPU the tensor
                    warnings.simplefilter("ignore", UserWarning)  # shares it, never writes it
                    on_device[id(array)] = torch.from_numpy(np.asarray(array)).to(device)
            return on_device[id(array)]

        self.device = device
        self.labeled = (upload(data.labeled.crops), data.labeled.intrinsics)
        self.joints = upload(data.labeled.joints_norm)
        self.unlabeled = [(upload(p.crops), p.intrinsics) for p in data.unlabeled.parts]

    def batch(self, plan: BatchPlan) -> Batch:
        """The :class:`Batch` of ``plan``, on the device."""
        (crops, intr), (rows, src, dst) = self.labeled, plan.labeled
        x_l, kept, src_d, dst_d, _ = self._crops(crops, rows, src, dst, intr)
        j = self.joints[rows.to(self.device)].to(torch.float64)
        j_l = torch.where(kept[:, None, None], j, map_joints(j, src_d, dst_d, intr)).float()
        ray_l = None
        if plan.rays:  # from the plan's host rows: no copy back from the device
            d = dst.numpy()
            ray_l = torch.from_numpy(centre_rays(d[:, 0:3], d[:, 5], intr)).to(self.device)
        x_u = views = None
        if plan.unlabeled is not None:
            x_u = torch.empty((len(rows),) + x_l.shape[1:], device=self.device)
            x_a = torch.empty_like(x_u) if plan.maps is not None else None
            for part, where, u_rows, u_src, u_dst in plan.unlabeled:
                crops, intr = self.unlabeled[part]
                where = where.to(self.device)
                x, _, _, _, cached = self._crops(crops, u_rows, u_src, u_dst, intr)
                x_u[where] = x
                if x_a is not None:  # view A: the cached crop
                    x_a[where] = cached
            views = (x_a, plan.maps) if plan.maps is not None else None
        return Batch(x_l, j_l, x_u, views, ray_l)

    def _crops(self, crops: torch.Tensor, rows: torch.Tensor, src: torch.Tensor,
               dst: torch.Tensor, intr) -> tuple[torch.Tensor, ...]:
        """(B, 1, S, S) float32 crops of ``rows`` re-warped from the host rows ``src`` to
        ``dst`` (rows whose transform is kept keep their crop, as the host path's), and on the
        device: the kept mask, src, dst and the cached crops."""
        kept = (src == dst).all(dim=1)  # on the host: no wait for the device
        cached = crops[rows.to(self.device)].float()[:, None]
        src, dst, kept_d = src.to(self.device), dst.to(self.device), kept.to(self.device)
        x = cached
        if not bool(kept.all()):
            x = torch.where(kept_d[:, None, None, None], x, rewarp_crops(x, src, dst, intr))
        return x, kept_d, src, dst, cached


def iterate_batches(batches: EpochBatches, start: int, workers: int, pin: bool):
    """Batches ``start..`` of an epoch, prepared by ``workers`` processes ahead of training (in
    order), or in this process for ``workers == 0``."""
    if workers == 0:
        return (batches[b] for b in range(start, len(batches)))
    # A private generator: the loader's seed draw must not move torch's global RNG.
    return iter(DataLoader(batches, batch_size=None, sampler=range(start, len(batches)),
                           num_workers=workers, pin_memory=pin, prefetch_factor=4,
                           generator=torch.Generator()))
