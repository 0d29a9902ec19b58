"""How faithful Gen(J) is to J: the hand region of a crop, depth errors, and read-back error.

    region = hand_region_mask(crop_px, size=64, edges=skeleton_edges(14), radius_px=4.3)
    report = generator_fidelity(gen, test_crops, {"run": dis, "reference": ref_dis})

The *hand region* of a crop is every pixel within ``HAND_RADIUS_MM`` (in the crop plane) of a
bone of the skeleton projected into the crop: the fingers and palm the joints describe, not the
forearm or the background, which the joints barely constrain but which fill most of a crop.
Where the crop's transform is known (evaluation), joints are projected exactly
(``CropTransform.norm_to_crop_px``); during training, on augmented or generated poses, the
orthographic approximation :func:`approx_crop_px` is used (it ignores perspective: up to ~9 px
off at 64 px for joints far in front of the centre), so the training mask is a soft emphasis,
not a measurement.

Depth errors are in mm: |real - Gen(J)| in normalised depth times half the cube's depth
(150 mm for a 300 mm cube); the background is the cube's back face (+1), so a finger drawn where
the real crop has background counts as the distance to the back face.

*Read-back error*: a pose estimator's mean 3D joint error (mm) on Gen(J) against J itself. A
faithful generator draws crops from which an estimator reads the joints it was given about as
well as from real crops.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

# the bones of a known layout, or none (the hand region is then discs around the joints)
from handgan.joints import skeleton_edges
from handgan.preprocess import DEFAULT_CUBE_MM

HAND_RADIUS_MM = 20.0  # hand region: pixels within this distance (crop plane) of a bone
FIDELITY_BATCH = 256


def approx_crop_px(joints_norm: torch.Tensor, size: int) -> torch.Tensor:
    """(..., J, 3) normalised joints -> (..., J, 2) crop px (x right, y down), orthographically:
    the cube's x and y span the crop; depth and perspective are ignored."""
    x = (joints_norm[..., 0] + 1.0) * (size / 2)
    y = (1.0 - joints_norm[..., 1]) * (size / 2)  # joints' y points up, image rows down
    return torch.stack([x, y], dim=-1)


def radius_px(size: int, cube_mm: float = DEFAULT_CUBE_MM,
              radius_mm: float = HAND_RADIUS_MM) -> float:
    """``radius_mm`` in crop px for a crop of ``size`` px over a cube of ``cube_mm``."""
    return radius_mm * size / cube_mm


def hand_region_mask(crop_px: torch.Tensor, size: int, edges: Sequence[tuple[int, int]],
                     radius: float) -> torch.Tensor:
    """(B, J, 2) joints in crop px -> (B, 1, S, S) float mask: 1 where a pixel centre lies within
    ``radius`` px of a bone (a segment between two joints), or of a joint when ``edges`` is
    empty. No gradient flows through it."""
    crop_px = crop_px.detach().float()
    coords = torch.arange(size, dtype=torch.float32, device=crop_px.device) + 0.5
    ys, xs = torch.meshgrid(coords, coords, indexing="ij")
    xs, ys = xs.reshape(1, -1), ys.reshape(1, -1)  # (1, S*S) pixel centres
    segments = edges or [(j, j) for j in range(crop_px.shape[1])]
    # One bone at a time on (B, S*S) tensors with x and y apart: a (B, E, S*S, 2) tensor is
    # ~100 MB for 256 crops of 64 px and made evaluation 6x slower.
    nearest = torch.full((crop_px.shape[0], size * size), float("inf"), device=crop_px.device)
    for i, k in segments:
        ax, ay = crop_px[:, i, 0:1], crop_px[:, i, 1:2]  # (B, 1)
        abx, aby = crop_px[:, k, 0:1] - ax, crop_px[:, k, 1:2] - ay
        # Closest point of the segment to each pixel: a + t (b - a), t clamped to [0, 1].
        t = (((xs - ax) * abx + (ys - ay) * aby) / (abx * abx + aby * aby).clamp(min=1e-9)
             ).clamp(0.0, 1.0)
        dx, dy = xs - (ax + t * abx), ys - (ay + t * aby)
        torch.minimum(nearest, dx * dx + dy * dy, out=nearest)
    return (nearest.sqrt() <= radius).float().view(-1, 1, size, size)


def training_hand_mask(joints_norm: torch.Tensor, size: int, cube_mm: float = DEFAULT_CUBE_MM
                       ) -> torch.Tensor:
    """The hand region of (B, J, 3) normalised poses for a training loss (orthographic)."""
    return hand_region_mask(approx_crop_px(joints_norm, size), size,
                            skeleton_edges(joints_norm.shape[1]), radius_px(size, cube_mm))


@torch.no_grad()
def generator_fidelity(gen: nn.Module, crops, estimators: Mapping[str, nn.Module] | None = None,
                       device: torch.device | str = "cpu") -> dict:
    """Gen(J) against the real crops of ``crops`` (a LabeledCrops, unaugmented), J their labels.

    Returns ``hand_depth_error_mm`` (mean |real - Gen(J)| over hand-region pixels),
    ``full_depth_error_mm`` (over every pixel), ``blank_hand_depth_error_mm`` (what a blank crop
    scores on the same region: the floor a generator must beat), and for each named estimator
    (a Discriminator or PoseEstimator) ``readback_mean_error_mm[name]`` on Gen(J) beside
    ``real_mean_error_mm[name]`` on the real crops, both against J. The depth errors compare
    Gen's clean crop; the estimators read the crop as Gen makes it, with its sensor model's
    missing pixels (``model.gen_edge_dropout``; drawn from seed 0, so repeatable). Networks are
    used in eval mode and left in the mode they were in.
    """
    from handgan.evaluation.metrics import crops_mean_error_mm

    estimators = dict(estimators or {})
    nets = [gen, *estimators.values()]
    modes = [m.training for m in nets]
    for m in nets:
        m.eval()
    size = gen.cfg.size
    edges = skeleton_edges(gen.cfg.num_joints)
    hand_sum = hand_blank = hand_px = full_sum = 0.0
    full_px = 0
    preds_real = {name: [] for name in estimators}
    preds_gen = {name: [] for name in estimators}
    # The sensor's missing pixels are random: the same ones every time, training's RNG untouched.
    with torch.random.fork_rng(devices=[] if torch.device(device).type == "cpu" else None):
        torch.manual_seed(0)
        try:
            for start in range(0, len(crops), FIDELITY_BATCH):
                rows = np.arange(start, min(start + FIDELITY_BATCH, len(crops)))
                x, j, ray = crops.sample_batch(rows, rays=True)
                x, j = x.to(device), j.to(device)
                # each crop's J seen from its own centre; the depth error on the clean crop, the
                # read-back on the crop as Gen makes it (with its sensor's missing pixels, if any)
                g = gen(j, ray=ray.to(device), clean=True).float()
                seen = gen.sensor(g)
                half = torch.as_tensor([crops.transform(int(k)).half_depth_mm for k in rows],
                                       dtype=torch.float32, device=device).view(-1, 1, 1, 1)
                joints64 = j.double().cpu().numpy()
                px = np.stack([crops.transform(int(k)).norm_to_crop_px(joints64[i])
                               for i, k in enumerate(rows)])
                region = hand_region_mask(torch.as_tensor(px, device=device), size, edges,
                                          radius_px(size, 2 * float(half.mean())))
                err = (x - g).abs() * half
                hand_sum += float((err * region).sum())
                hand_blank += float(((x - 1.0).abs() * half * region).sum())
                hand_px += float(region.sum())
                full_sum += float(err.sum())
                full_px += err.numel()
                for name, net in estimators.items():
                    preds_real[name].append(_pose(net, x))
                    preds_gen[name].append(_pose(net, seen))
        finally:
            for m, mode in zip(nets, modes):
                m.train(mode)
    out = {
        "hand_depth_error_mm": hand_sum / max(hand_px, 1.0),
        "full_depth_error_mm": full_sum / max(full_px, 1),
        "blank_hand_depth_error_mm": hand_blank / max(hand_px, 1.0),
        "hand_radius_mm": HAND_RADIUS_MM,
        "frames": len(crops),
    }
    if estimators:
        out["readback_mean_error_mm"] = {
            n: crops_mean_error_mm(np.concatenate(preds_gen[n]), crops) for n in estimators}
        out["real_mean_error_mm"] = {
            n: crops_mean_error_mm(np.concatenate(preds_real[n]), crops) for n in estimators}
    return out


def _pose(net: nn.Module, x: torch.Tensor) -> np.ndarray:
    joints = net(x, heads="pose") if hasattr(net, "real_fake") else net(x)
    return joints.float().cpu().numpy().astype(np.float64)
