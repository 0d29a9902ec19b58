"""Two views of one unlabelled crop for equivariance training: view A, the cached crop, and view
B, a seeded augmentation of it (:meth:`~handgan.dataset.UnlabeledCrops.sample_views`). The pose
network's output on A, carried into B's frame by :class:`ViewMaps`, must equal its output on B.
"""
from __future__ import annotations

import numpy as np
import torch

from handgan.augment import map_joints
from handgan.cachestore import transform_row
from handgan.device import to_device_async
from handgan.deviceaugment import map_joints as map_batch
from handgan.preprocess import CropTransform


class ViewMaps:
    """Per crop, its two views' crop transforms (A, B) and the map of normalised joints from A
    to B. Not a sequence, so a DataLoader passes it through."""

    def __init__(self, pairs: list[tuple[CropTransform, CropTransform]]) -> None:
        self.pairs = pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def apply(self, joints_a: np.ndarray) -> np.ndarray:
        """(B, J, 3) joints in view A's normalised frame -> (B, J, 3) in view B's."""
        if len(joints_a) != len(self.pairs):
            raise ValueError(f"{len(joints_a)} poses for {len(self.pairs)} view pairs")
        return np.stack([map_joints(j, a, b) for j, (a, b) in zip(joints_a, self.pairs)])

    def apply_on_device(self, joints_a: torch.Tensor) -> torch.Tensor:
        """:meth:`apply` for a (B, J, 3) tensor, on its device, in one batched map
        (``deviceaugment.map_joints``: the same map to float64 rounding) -> float64; only the
        views' transform rows travel to the device, so a GPU step waits for nothing."""
        if len(joints_a) != len(self.pairs):
            raise ValueError(f"{len(joints_a)} poses for {len(self.pairs)} view pairs")
        rows = to_device_async(torch.from_numpy(np.stack(
            [[transform_row(a), transform_row(b)] for a, b in self.pairs])), joints_a.device)
        return map_batch(joints_a, rows[:, 0], rows[:, 1], self.pairs[0][0].intr)

    @staticmethod
    def concat(parts: list[ViewMaps], order: np.ndarray) -> ViewMaps:
        """The pairs of ``parts`` laid end to end, then taken in ``order``."""
        pairs = [p for part in parts for p in part.pairs]
        return ViewMaps([pairs[int(k)] for k in order])
