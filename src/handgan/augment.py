"""Online augmentation of cached crops: in-plane rotation, cube scale and 3D translation of the
centre, applied to the crop and its joints together (DeepPrior++ section 4).

As in DeepPrior++, the new crop is the cached one re-warped
(:func:`~handgan.preprocess.rewarp_crop`) rather than cut anew from the full frame: what was
outside the old crop is background. It comes with its :class:`~handgan.preprocess.CropTransform`,
so ``transform_new.norm_to_xyz(joints_new)`` gives back the original joints in mm (to float
error), and augmentations can be chained.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from handgan.preprocess import BACKGROUND, CropTransform, rewarp_crop

MODES = ("com", "rot", "sc", "none")


@dataclass
class AugmentConfig:
    """How crops are augmented.

    ``combine=False`` (default) is DeepPrior++'s recipe: each sample gets **one** mode drawn
    uniformly from ``modes``; 'com' moves the centre, 'rot' rotates, 'sc' rescales the cube,
    'none' keeps the crop. It is the default because it is the recipe behind the published
    DeepPrior++ numbers we compare with, and it keeps a 1/len(modes) share of the crops exactly as
    the network sees them at test time. ``combine=True`` applies rotation, scale and translation to
    every sample at once (more variety per epoch; more of the crop border lost to the re-warp).
    DeepPrior++'s scripts use ('com', 'rot', 'none') ('sc' commented out); the default here keeps
    'sc' because its sigma of 0.02 is mild and it teaches some hand-size invariance.
    """

    modes: tuple[str, ...] = MODES
    combine: bool = False
    rotation_deg: float = 180.0  # angle ~ U(-rotation_deg, +rotation_deg)
    scale_sigma: float = 0.02  # cube *= |1 + N(0, scale_sigma^2)|
    translation_sigma_mm: float = 5.0  # centre += N(0, sigma^2) per axis, 3D
    pixel_dropout_p: float = 0.0  # share of pixels set to background (missing depth)
    depth_noise_sigma_mm: float = 0.0  # additive Gaussian noise on foreground pixels

    def __post_init__(self) -> None:
        self.modes = tuple(self.modes)
        if not self.modes or not set(self.modes) <= set(MODES):
            raise ValueError(f"augment modes must be a non-empty subset of {MODES}, "
                             f"got {self.modes}")
        if not 0.0 <= self.pixel_dropout_p < 1.0:
            raise ValueError(f"pixel_dropout_p must be in [0, 1), got {self.pixel_dropout_p}")
        for name in ("rotation_deg", "scale_sigma", "translation_sigma_mm",
                     "depth_noise_sigma_mm"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


def augment_crop(crop: np.ndarray, transform: CropTransform, joints_norm: np.ndarray | None,
                 rng: np.random.Generator, cfg: AugmentConfig
                 ) -> tuple[np.ndarray, CropTransform, np.ndarray | None]:
    """Augment one (S, S) crop made with ``transform`` and its (J, 3) joints normalised by it (or
    None: an unlabelled crop) consistently: ((S, S) float32 crop in [-1, 1], its new
    :class:`CropTransform`, the joints normalised by that or None)."""
    out, new_t = augment_view(crop, transform, rng, cfg)
    if joints_norm is not None and new_t is transform:
        joints_norm = np.array(joints_norm, dtype=np.float64)  # a copy, as for the crop
    elif joints_norm is not None:
        joints_norm = map_joints(joints_norm, transform, new_t)
    return out, new_t, joints_norm


def augment_view(crop: np.ndarray, transform: CropTransform, rng: np.random.Generator,
                 cfg: AugmentConfig) -> tuple[np.ndarray, CropTransform]:
    """:func:`augment_crop` without joints: (crop, transform). A pose p in ``transform``'s
    normalised frame is ``map_joints(p, transform, new_transform)`` in the new crop's."""
    new_t = draw_transform(transform, rng, cfg)
    if new_t is transform:
        out = np.array(crop, dtype=np.float32)  # a copy: the cached crop is never changed
    else:
        out = rewarp_crop(crop, transform, new_t)
    return _sensor_noise(out, new_t, rng, cfg), new_t


def map_joints(joints_norm: np.ndarray, src: CropTransform, dst: CropTransform) -> np.ndarray:
    """(..., J, 3) joints normalised by ``src`` -> the same 3D joints normalised by ``dst``
    (through uvd: one fewer projection than through xyz when either transform is rotated)."""
    return dst.uvd_to_norm(src.norm_to_uvd(joints_norm))


def draw_transform(t: CropTransform, rng: np.random.Generator,
                    cfg: AugmentConfig) -> CropTransform:
    """The transform of the augmented crop: centre moved in 3D, cube scaled, rotation added."""
    if cfg.combine:
        do_com = do_rot = do_sc = True
    else:
        mode = cfg.modes[int(rng.integers(len(cfg.modes)))]
        do_com, do_rot, do_sc = mode == "com", mode == "rot", mode == "sc"
    if not (do_com or do_rot or do_sc):
        return t

    centre_uvd, cube_mm, angle_deg = t.centre_uvd, t.cube_mm, t.rotation_deg
    if do_com:
        offset_mm = rng.normal(0.0, cfg.translation_sigma_mm, size=3)
        centre_uvd = t.intr.xyz_to_uvd(t.centre_xyz + offset_mm)
    if do_sc:
        cube_mm = cube_mm * abs(1.0 + rng.normal(0.0, cfg.scale_sigma))
    if do_rot:
        angle_deg = angle_deg + rng.uniform(-cfg.rotation_deg, cfg.rotation_deg)
        angle_deg = (angle_deg + 180.0) % 360.0 - 180.0  # keep it in [-180, 180)
    return CropTransform(centre_uvd, cube_mm, t.size, t.intr, angle_deg)


def _sensor_noise(crop: np.ndarray, t: CropTransform, rng: np.random.Generator,
                  cfg: AugmentConfig) -> np.ndarray:
    """Optional additive depth noise on foreground pixels and pixel dropout, in place."""
    if cfg.depth_noise_sigma_mm > 0:
        fg = crop < BACKGROUND
        noise = rng.standard_normal(crop.shape, dtype=np.float32)
        noise *= np.float32(cfg.depth_noise_sigma_mm / t.half_depth_mm)  # mm -> normalised
        crop[fg] = np.clip(crop[fg] + noise[fg], -1.0, 1.0)
    if cfg.pixel_dropout_p > 0:
        crop[rng.random(crop.shape, dtype=np.float32) < cfg.pixel_dropout_p] = BACKGROUND
    return crop
