"""What several test modules share (test modules never import each other): the hand-only synthetic
frames most tests render, and tiny checkpoints from random networks. ``helpers/`` also holds
scripts the tests run in other processes (ddp_sync_check.py, under torchrun)."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import torch

from handgan.camera import NYU, Intrinsics
from handgan.checkpoint import save_checkpoint
from handgan.config import preset, to_dict
from handgan.joints import NYU_EVAL_IDS, NYU_JOINT_NAMES
from handgan.models import Discriminator, Generator, ModelConfig, init_weights
from handgan.preprocess import CropTransform, crop_depth, localize_hand
from handgan.synth.frame import SynthConfig

HAND = SynthConfig(scene="hand")  # hand-only frames: faster, and enough for these tests

TINY = ModelConfig(size=64, width=8, pose_hidden=32)
CUBE = [250.0, 250.0, 250.0]  # not the 300 mm fallback, so the tests see the metadata is used


def crop_meta(cfg: ModelConfig = TINY, cube=CUBE, intr=NYU, names=None) -> dict:
    """The ``ckpt["crop"]`` entry as training writes it."""
    return {"size": cfg.size, "cube_mm": list(cube), "centre": "gt",
            "joint_names": list(names or [NYU_JOINT_NAMES[i] for i in NYU_EVAL_IDS]),
            "intrinsics": {"fx": intr.fx, "fy": intr.fy, "cx": intr.cx, "cy": intr.cy,
                           "width": intr.width, "height": intr.height, "y_up": intr.y_up},
            "source": "synthetic"}


def save_tiny_checkpoint(path, cfg: ModelConfig = TINY, crop: dict | None | str = "default",
                         seed: int = 0, mode: str = "gan") -> None:
    """A checkpoint with the training contract's keys, from random (DCGAN-initialised) nets.
    Batch-norm statistics are randomised too, so eval-mode batch norm is not an identity."""
    torch.manual_seed(seed)
    gen, dis = Generator(cfg), Discriminator(cfg)
    for net in (gen, dis):
        net.apply(init_weights)
        for m in net.modules():
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                m.running_mean.normal_(0.0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
    train_cfg = dataclasses.replace(preset("quick"), model=cfg, mode=mode,
                                    data=dataclasses.replace(preset("quick").data, size=cfg.size))
    state = {"config": to_dict(train_cfg), "generator": gen.state_dict(),
             "discriminator": dis.state_dict()}
    if crop is not None:
        state["crop"] = crop_meta(cfg) if crop == "default" else crop
    save_checkpoint(path, state)


def read_jsonl(path: str | Path) -> list[dict]:
    """Every record of a JSON-lines file such as a run's ``metrics.jsonl`` (blank lines skipped)."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def pixel_rays(intr: Intrinsics, u, v) -> np.ndarray:
    """Unnormalised ray directions (..., 3) through pixels (u, v), with z component 1: a point at
    depth z on the ray through (u, v) is ``z * ray``."""
    x = (np.asarray(u, dtype=np.float64) - intr.cx) / intr.fx
    y = (np.asarray(v, dtype=np.float64) - intr.cy) / intr.fy
    if intr.y_up:
        y = -y
    return np.stack([x, y, np.ones_like(x)], axis=-1)


def preprocess_frame(depth_mm: np.ndarray, intr: Intrinsics, cube_mm, size: int = 128,
                     centre_uvd=None, joints_uvd=None, *, joints_xyz=None,
                     ) -> tuple[np.ndarray, CropTransform, np.ndarray | None]:
    """Full frame -> (crop, its transform, the normalised joints or None), as the cache crops a
    frame: the centre is ``centre_uvd``, or :func:`localize_hand` with the cube's z side."""
    if centre_uvd is None:
        cube_z = float(np.broadcast_to(np.asarray(cube_mm, dtype=np.float64), (3,))[2])
        centre_uvd = localize_hand(depth_mm, intr, cube_mm=cube_z)
    crop, transform = crop_depth(depth_mm, centre_uvd, cube_mm, size, intr=intr)
    joints_norm = None
    if joints_uvd is not None:
        joints_norm = transform.uvd_to_norm(joints_uvd)
    elif joints_xyz is not None:
        joints_norm = transform.xyz_to_norm(joints_xyz)
    return crop, transform, joints_norm
