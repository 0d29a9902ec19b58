"""Two views of one unlabelled crop for equivariance training: view A, the cached crop, and view
B, a seeded augmentation of it (:meth:`~handgan.dataset.UnlabeledCrops.sample_views`). The pose
network's output on A, carried into B's frame by :class:`ViewMaps`, must equal its output on B.
"""
from __future__ import annotations

import numpy as np

from handgan.augment import map_joints
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

    @staticmethod
    def concat(parts: list[ViewMaps], order: np.ndarray) -> ViewMaps:
        """The pairs of ``parts`` laid end to end, then taken in ``order``."""
        pairs = [p for part in parts for p in part.pairs]
        return ViewMaps([pairs[int(k)] for k in order])
