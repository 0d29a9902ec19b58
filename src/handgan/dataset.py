"""Crop caches as torch datasets: :class:`LabeledCrops` (crop, joints) and
:class:`UnlabeledCrops` (crop only) over the memory-mapped rows of a
:class:`~handgan.cachestore.CropCache`, and the seeded semi-supervised split
(:func:`split_labeled`). The unlabelled part is built from the crops array and its rows only: it
never holds the cache or the joints array, so labels cannot leak through it.

The data flow, one module a step: a reader (``handgan.data``) and crop parameters give a cache
key (:mod:`handgan.cachesource`); :mod:`handgan.cachebuild` crops every frame into a cache folder
(:mod:`handgan.cachestore`); this module serves its rows (the cache's entry points are importable
from here too); :mod:`handgan.views` maps poses between two views of an unlabelled crop.
"""
from __future__ import annotations

import math
import mmap
import numbers
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from handgan.augment import AugmentConfig, augment_crop, augment_view, draw_transform
from handgan.cachebuild import build_cache, load_or_build_cache  # noqa: F401  (the data API)
from handgan.cachesource import CropParams, LocatedCentres  # noqa: F401  (the data API)
from handgan.cachestore import CropCache, open_array, transform_from_row, transform_row
from handgan.camera import Intrinsics
from handgan.errors import HandganError
from handgan.preprocess import CropTransform, centre_rays
from handgan.views import ViewMaps


class _CropRows(Dataset):
    """Rows ``indices`` of a crops array (``transforms``: item k's crop transform in row k).

    Each item is augmented with its own RNG seeded with (seed, epoch, cache row): an epoch is the
    same whatever the DataLoader workers or the items' order. Pickling keeps memmaps as file
    references, so spawned workers reopen the file instead of receiving a copy of the crops.
    """

    def __init__(self, crops: np.ndarray, indices: np.ndarray, *,
                 transforms: np.ndarray | None = None, intrinsics: Intrinsics | None = None,
                 augment: AugmentConfig | None = None, seed: int = 0) -> None:
        self.indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(self.indices) and not (0 <= self.indices.min() and self.indices.max() < len(crops)):
            raise IndexError(f"row indices must be in [0, {len(crops)})")
        if transforms is not None and len(transforms) != len(self.indices):
            raise ValueError(f"{len(transforms)} transform rows for {len(self.indices)} indices")
        if augment is not None and (transforms is None or intrinsics is None):
            raise ValueError("augmentation needs the rows' transforms and the intrinsics")
        _check_seed(seed)
        self.crops, self.transforms, self.intrinsics = crops, transforms, intrinsics
        self.augment, self.seed, self.epoch = augment, int(seed), 0

    def __len__(self) -> int:
        return len(self.indices)

    def set_epoch(self, epoch: int) -> None:
        """Draw another augmentation per item (reproducibly) for ``epoch``."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.epoch = int(epoch)

    def _rng(self, row: int) -> np.random.Generator:
        return np.random.default_rng((self.seed, self.epoch, int(row)))

    def _crop(self, k: int) -> np.ndarray:
        return np.asarray(self.crops[self.indices[k]], dtype=np.float32)  # (S, S), a copy

    def transform(self, k: int) -> CropTransform:
        """The crop transform of item ``k`` (maps its normalised joints back to mm)."""
        return transform_from_row(self.transforms[k], self.intrinsics)

    def draw(self, positions: np.ndarray, augment: AugmentConfig | None, stream: tuple = ()
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list]:
        """Items ``positions``: (B,) cache rows, (B, 8) float64 transform rows, the rows of their
        augmented crops, drawn by ``augment`` with the RNG the host path's sampling uses
        (``stream`` (1,): an equivariance view's), and the (transform, augmented transform)
        pairs (none without ``augment``), so the device pipeline (``deviceaugment``) makes the
        same crops; the pixels are left to it. Sensor noise is not drawn."""
        positions = np.asarray(positions, dtype=np.int64).reshape(-1)
        rows = self.indices[positions]
        src = np.asarray(self.transforms[positions], dtype=np.float64).reshape(-1, 8)
        if augment is None:
            return rows, src, src, []
        pairs = [(t, draw_transform(t, np.random.default_rng(
            (self.seed, self.epoch, int(row), *stream)), augment))
            for t, row in ((self.transform(int(k)), row) for k, row in zip(positions, rows))]
        dst = np.stack([transform_row(b) for _, b in pairs]).reshape(-1, 8)
        return rows, src, dst, pairs

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        for name, value in state.items():
            if isinstance(value, np.memmap) and isinstance(value.base, mmap.mmap):  # whole file
                state[name] = _MemmapFile(str(value.filename))
        return state

    def __setstate__(self, state: dict) -> None:
        for name, value in state.items():
            if isinstance(value, _MemmapFile):
                state[name] = open_array(Path(value.path), mmap=True)
        self.__dict__.update(state)


@dataclass(frozen=True)
class _MemmapFile:
    path: str


class LabeledCrops(_CropRows):
    """Labelled rows ``indices`` of a cache: item k -> (crop (1, S, S) float32, joints_norm
    (J, 3) float32), with ``augment`` augmented together (the joints normalised by the augmented
    crop's transform)."""

    def __init__(self, cache: CropCache, indices: np.ndarray | None = None, *,
                 augment: AugmentConfig | None = None, seed: int = 0) -> None:
        if not cache.labeled:
            raise HandganError(f"{cache.path}: the cache has no labels (unlabelled source)")
        indices = np.arange(len(cache)) if indices is None else np.asarray(indices, np.int64)
        super().__init__(cache.crops, indices, transforms=cache.transforms[indices],
                         intrinsics=cache.intrinsics, augment=augment, seed=seed)
        self.joints_norm = cache.joints_norm

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        crop, joints, _ = self._item(k)
        return crop, joints

    def _item(self, k: int, ray: bool = False
              ) -> tuple[torch.Tensor, torch.Tensor, np.ndarray | None]:
        """Item k's crop, joints and (``ray``) centre ray, else None."""
        row = self.indices[k]
        crop = self._crop(k)
        joints = np.asarray(self.joints_norm[row], dtype=np.float64)  # (J, 3)
        t = None
        if self.augment is not None:
            crop, t, joints = augment_crop(crop, self.transform(k), joints, self._rng(row),
                                           self.augment)
        elif ray:
            t = self.transform(k)
        return (torch.from_numpy(crop[None]), torch.from_numpy(joints.astype(np.float32)),
                t.ray if ray else None)

    def sample_batch(self, positions: np.ndarray, rays: bool = False
                     ) -> tuple[torch.Tensor, ...]:
        """Items ``positions`` as one batch: (B, 1, S, S) crops, (B, J, 3) joints and with
        ``rays`` their (B, 3) centre rays (after augmentation). Without augmentation the rows
        are gathered from the memmaps in one read each: the training loop's fast path."""
        positions = np.asarray(positions, dtype=np.int64).reshape(-1)
        if self.augment is not None:
            crops, joints, centre_ray = zip(*(self._item(int(k), rays) for k in positions))
            ray = (torch.from_numpy(np.stack(centre_ray)),) if rays else ()
            return torch.stack(crops), torch.stack(joints), *ray
        rows = self.indices[positions]
        crops = _gather(self.crops, rows)  # (B, S, S) float16
        joints = _gather(self.joints_norm, rows)  # (B, J, 3)
        if not rays:
            return crops.float().unsqueeze(1), joints
        t = self.transforms[positions]  # (B, 8): centre uvd, cube, size, rotation
        centre_ray = torch.from_numpy(centre_rays(t[:, 0:3], t[:, 5], self.intrinsics))
        return crops.float().unsqueeze(1), joints, centre_ray


class UnlabeledCrops(_CropRows):
    """Crops without labels: item k -> crop (1, S, S) float32 (augmented image-only). Built from
    the crops array and its rows only (and their transforms and the camera): it never receives
    the cache or the joints, so no label can be reached through it."""

    def __getitem__(self, k: int) -> torch.Tensor:
        crop = self._crop(k)
        if self.augment is not None:
            crop, _, _ = augment_crop(crop, self.transform(k), None,
                                      self._rng(self.indices[k]), self.augment)
        return torch.from_numpy(crop[None])

    def sample_views(self, positions: np.ndarray, view_augment: AugmentConfig
                     ) -> tuple[torch.Tensor, torch.Tensor, ViewMaps]:
        """(B, 1, S, S) view A (the cached crop), (B, 1, S, S) view B (augmented by
        ``view_augment``, seeded per epoch and row) and the :class:`ViewMaps` from A to B."""
        if self.transforms is None or self.intrinsics is None:
            raise ValueError("two-view sampling needs the rows' transforms and the intrinsics")
        positions = np.asarray(positions, dtype=np.int64).reshape(-1)
        views_a, views_b, pairs = [], [], []
        for k in positions:
            crop, t = self._crop(int(k)), self.transform(int(k))
            rng = np.random.default_rng((self.seed, self.epoch, int(self.indices[k]), 1))
            crop_b, t_b = augment_view(crop, t, rng, view_augment)
            views_a.append(crop)
            views_b.append(crop_b)
            pairs.append((t, t_b))
        return (torch.from_numpy(np.stack(views_a))[:, None],
                torch.from_numpy(np.stack(views_b))[:, None], ViewMaps(pairs))

    def sample_batch(self, positions: np.ndarray) -> torch.Tensor:
        """Items ``positions`` as one (B, 1, S, S) batch (one memmap read without augmentation)."""
        positions = np.asarray(positions, dtype=np.int64).reshape(-1)
        if self.augment is not None:
            return torch.stack([self[int(k)] for k in positions])
        return _gather(self.crops, self.indices[positions]).float().unsqueeze(1)


def split_labeled(cache: CropCache, labeled_fraction: float | None = None,
                  labeled_count: int | None = None, seed: int = 0, *,
                  augment: AugmentConfig | None = None, rows: np.ndarray | None = None
                  ) -> tuple[LabeledCrops, UnlabeledCrops]:
    """(LabeledCrops, UnlabeledCrops): a labelled cache's ``rows`` (default all) split into a
    seeded random labelled subset and the unlabelled rest, both augmented by ``augment``.

    The subset is the first ``count`` rows of one seeded permutation, so for a given seed a
    smaller labelled set is contained in every larger one (a label-efficiency study adds labels
    rather than redrawing them): count = ``labeled_count`` in [1, N], or round(fraction * N)
    (halves round up, at least 1) for a ``labeled_fraction`` in (0, 1].
    """
    if not cache.labeled:
        raise HandganError(f"{cache.path}: the cache has no labels (unlabelled source); "
                           "use all_unlabeled(cache)")
    rows = np.arange(len(cache)) if rows is None else np.sort(np.asarray(rows, np.int64))
    n = len(rows)
    if n == 0:
        raise HandganError(f"{cache.path}: no rows to split")
    if (labeled_fraction is None) == (labeled_count is None):
        raise HandganError("give either labeled_fraction or labeled_count, not "
                           f"{'both' if labeled_count is not None else 'neither'}")
    if labeled_fraction is not None:
        f = labeled_fraction
        if isinstance(f, bool) or not isinstance(f, numbers.Real) or not 0 < f <= 1:
            raise HandganError(f"labeled_fraction must be in (0, 1], got {f!r}")
        count = max(1, math.floor(f * n + 0.5))
    else:
        count = labeled_count
        if isinstance(count, bool) or not isinstance(count, numbers.Integral) or \
                not 1 <= count <= n:
            raise HandganError(f"labeled_count must be a whole number in [1, {n}] (the cache has "
                               f"{n} crops), got {count!r}")
    _check_seed(seed)
    order = rows[np.random.default_rng(seed).permutation(n)]
    labeled_rows, unlabeled_rows = np.sort(order[:count]), np.sort(order[count:])
    labeled = LabeledCrops(cache, labeled_rows, augment=augment, seed=seed)
    unlabeled = UnlabeledCrops(cache.crops, unlabeled_rows,
                               transforms=cache.transforms[unlabeled_rows],
                               intrinsics=cache.intrinsics, augment=augment, seed=seed)
    return labeled, unlabeled


def all_labeled(cache: CropCache) -> LabeledCrops:
    """Every row with its labels: the supervised 100 % case and test sets."""
    return LabeledCrops(cache, np.arange(len(cache)))


def all_unlabeled(cache: CropCache, *, augment: AugmentConfig | None = None,
                  seed: int = 0) -> UnlabeledCrops:
    """Every row as an unlabelled crop (e.g. a folder of the user's own frames)."""
    return UnlabeledCrops(cache.crops, np.arange(len(cache)), transforms=cache.transforms,
                          intrinsics=cache.intrinsics, augment=augment, seed=seed)


def _check_seed(seed: int) -> None:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise HandganError(f"seed must be a whole number >= 0, got {seed!r}")


def _gather(array: np.ndarray, rows: np.ndarray) -> torch.Tensor:
    """``array[rows]`` as a tensor, read from a memmap in one pass in file order."""
    order = np.argsort(rows, kind="stable")
    return torch.from_numpy(array[rows[order]])[np.argsort(order)]  # back in ``rows`` order
