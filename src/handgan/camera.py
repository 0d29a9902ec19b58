"""Pinhole cameras of the depth hand datasets and the uvd <-> xyz conversions.

Conventions (those of NYU and DeepPrior++):

* ``uvd``: u = column, v = row in full-image pixels (integer index = pixel centre), d = depth in mm.
* ``xyz``: camera frame in mm. x right, z forward (= depth). The sign of y is per dataset:
  NYU and MSRA store y **up** (y = (cy - v) z / fy); ICVL stores y **down** (y = (v - cy) z / fy).

``Intrinsics.y_up`` carries that choice so no caller ever flips a sign by hand.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Intrinsics:
    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int
    y_up: bool = True  # NYU/MSRA label convention; ICVL is y-down

    def uvd_to_xyz(self, uvd: np.ndarray) -> np.ndarray:
        """(..., 3) u, v px and d mm -> (..., 3) x, y, z mm."""
        xp, uvd = _float64(uvd)
        u, v, d = uvd[..., 0], uvd[..., 1], uvd[..., 2]
        x = (u - self.cx) * d / self.fx
        y = (v - self.cy) * d / self.fy
        return xp.stack([x, -y if self.y_up else y, d], axis=-1)

    def xyz_to_uvd(self, xyz: np.ndarray) -> np.ndarray:
        """(..., 3) x, y, z mm -> (..., 3) u, v px and d mm. Points at z = 0 map to (cx, cy, 0)."""
        xp, xyz = _float64(xyz)
        x, y, z = xyz[..., 0], xyz[..., 1], xyz[..., 2]
        safe_z = xp.where(z == 0, 1.0, z)
        u = xp.where(z == 0, self.cx, self.cx + self.fx * x / safe_z)
        sign = -1.0 if self.y_up else 1.0
        v = xp.where(z == 0, self.cy, self.cy + sign * self.fy * y / safe_z)
        return xp.stack([u, v, z], axis=-1)


def _float64(a: Any) -> tuple[Any, Any]:
    """(the array module, ``a`` as float64 in it): a torch tensor (deviceaugment's batches,
    float64 there) stays one, on its device; anything else becomes a numpy array."""
    if type(a).__module__.startswith("torch"):
        import torch

        return torch, a
    return np, np.asarray(a, dtype=np.float64)


# NYU hand dataset (Kinect/PrimeSense 1.09, 640x480), as DeepPrior++ and the field's evaluator use
NYU = Intrinsics(fx=588.03, fy=587.07, cx=320.0, cy=240.0, width=640, height=480, y_up=True)
# ICVL (Intel Creative, 320x240), y-down labels.
ICVL = Intrinsics(fx=241.42, fy=241.42, cx=160.0, cy=120.0, width=320, height=240, y_up=False)
# MSRA 2015 (Creative, 320x240), y-up labels as DeepPrior++ reads them.
MSRA = Intrinsics(fx=241.42, fy=241.42, cx=160.0, cy=120.0, width=320, height=240, y_up=True)

CAMERAS = {"nyu": NYU, "icvl": ICVL, "msra": MSRA}
