"""A training checkpoint's networks: the one way from a checkpoint to Gen, Dis or the pose
estimator, for training's resume, evaluation, inference, generation and export.

    ckpt = load_checkpoint(path)
    cfg, gen, dis = load_networks(path, ckpt=ckpt)                 # both networks, eval mode
    cfg, estimator = load_networks(path, ["estimator"])            # Dis's trunk + pose branch
    load_weights(ckpt, path, {"generator": gen, "discriminator": dis})   # into built networks
    spec = read_crop_spec(ckpt, cfg.model, path)                   # how its crops were made
    pred_norm = predict(dis, crops)                                # the pose branch on a crop set

Networks are built on the meta device and filled from the checkpoint (no random initialisation),
strictly: weights that do not fit the saved config are refused in one line naming the file.
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from handgan.camera import NYU, Intrinsics
from handgan.checkpoint import check_networks, load_checkpoint
from handgan.config import TrainConfig, from_dict
from handgan.dataset import LabeledCrops
from handgan.errors import HandganError
from handgan.joints import NYU14_NAMES, layout_of_names, readable_names
from handgan.models import Discriminator, Generator, ModelConfig, PoseEstimator
from handgan.preprocess import DEFAULT_CUBE_MM

PARTS = ("generator", "discriminator", "estimator")
EVAL_BATCH = 256


def load_networks(path: str | os.PathLike, parts: Sequence[str] = ("generator", "discriminator"),
                  device: str | torch.device = "cpu", ckpt: Mapping[str, Any] | None = None
                  ) -> tuple:
    """(config, *networks): the run config and the ``parts`` of a training checkpoint (or of
    ``ckpt``, the checkpoint ``path`` holds if already loaded), in the order of ``parts``, in
    eval mode with gradients off. "estimator" is the discriminator's trunk + pose branch as a
    ``PoseEstimator``. A HandganError for an unreadable or foreign checkpoint, missing keys, a
    bad config, or weights that do not fit it."""
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise ValueError(f"parts must be among {', '.join(PARTS)}, got {unknown}")
    ckpt = load_checkpoint(path) if ckpt is None else ckpt
    keys = tuple(dict.fromkeys("generator" if p == "generator" else "discriminator" for p in parts))
    check_networks(ckpt, path, keys)
    cfg = read_config(ckpt, path)
    with torch.device("meta"):  # no random init: every tensor comes from the checkpoint
        nets = {part: Generator(cfg.model) if part == "generator" else
                Discriminator(cfg.model) if part == "discriminator" else
                PoseEstimator(Discriminator(cfg.model)) for part in parts}
    nets = {part: net.to_empty(device=device) for part, net in nets.items()}
    load_weights(ckpt, path, nets)
    return (cfg, *(nets[p].eval().requires_grad_(False) for p in parts))


def load_weights(ckpt: Mapping[str, Any], path: str | os.PathLike,
                 networks: Mapping[str, nn.Module], config: str = "the saved model config"
                 ) -> None:
    """Copy a checkpoint's weights into built ``networks`` (keyed as :func:`load_networks`'s
    parts), strictly: a one-line HandganError naming ``path`` and ``config`` (what the networks
    were built from) for weights that do not fit."""
    for part, net in networks.items():
        try:
            if part == "estimator":  # its keys (trunk.*, pose.*) are the discriminator's
                state = {k: v for k, v in ckpt["discriminator"].items()
                         if k.startswith(("trunk.", "pose."))}
            else:
                state = ckpt[part]
            net.load_state_dict(state, strict=True)
        except (KeyError, RuntimeError, TypeError, AttributeError, ValueError) as e:
            first = " ".join(str(e).split())[:200]
            raise HandganError(f"{path}: the {part} weights do not fit {config} "
                               f"({first})") from None


def read_config(ckpt: Mapping[str, Any], path: str | os.PathLike) -> TrainConfig:
    """The run's config saved in a checkpoint."""
    try:
        return from_dict(ckpt["config"])
    except (ValueError, TypeError) as e:  # from_dict reports bad keys itself as HandganError
        raise HandganError(f"{path}: bad config in the checkpoint ({e})") from None


@torch.no_grad()
def predict(dis: Discriminator, crops: LabeledCrops, device: torch.device | str = "cpu",
            progress: bool = False) -> np.ndarray:
    """Normalised joints (N, J, 3) float64 of a crop set, predicted by Dis's pose branch in eval
    mode (the network is left in the mode it was in)."""
    was_training = dis.training
    dis.eval()
    out = []
    for start in tqdm(range(0, len(crops), EVAL_BATCH), desc="predict", unit="batch",
                      disable=not progress, dynamic_ncols=True):
        x, _ = crops.sample_batch(np.arange(start, min(start + EVAL_BATCH, len(crops))))
        out.append(dis.estimate(x.to(device)).float().cpu().numpy())
    dis.train(was_training)
    return np.concatenate(out).astype(np.float64)


@dataclass(frozen=True)
class CropSpec:
    """How the training crops were made, so new frames are cropped the same way."""

    size: int                            # S, crop side in px (= the model's input size)
    cube_mm: tuple[float, float, float]  # (x, y, z) cube sides in mm
    intrinsics: Intrinsics               # the training camera (the default for new frames)
    joint_names: tuple[str, ...]         # the J joints, in the network's output order
    centre: str = "gt"                   # "gt" (a labelled joint) or "com" (localisation)
    source: str = "unknown"              # the training data source, for information

    @property
    def centre_joint(self) -> int | None:
        """The joint training crops were centred on (the palm) of a known joint set, else None."""
        layout = layout_of_names(self.joint_names)
        return layout.centre if layout is not None else None


def read_crop_spec(ckpt: dict[str, Any], model: ModelConfig, path: str | os.PathLike) -> CropSpec:
    """The crop spec saved under ``ckpt["crop"]`` by training; a HandganError naming ``path``
    when it contradicts the model (size, joint count) or is malformed. Checkpoints without it
    get the NYU set-up's defaults: ``model.size``, a 300 mm cube (also for a ``cube_mm`` of
    None), the NYU camera and the 14 NYU evaluation joints."""
    default_names = NYU14_NAMES if model.num_joints == 14 else \
        tuple(f"joint_{j}" for j in range(model.num_joints))
    crop = ckpt.get("crop")
    if crop is None:
        return CropSpec(model.size, (DEFAULT_CUBE_MM,) * 3, NYU, default_names, "gt", "unknown")
    try:
        size = int(crop.get("size", model.size))
        cube = crop.get("cube_mm")
        cube = (DEFAULT_CUBE_MM,) * 3 if cube is None else \
            tuple(float(c) for c in np.broadcast_to(np.asarray(cube, dtype=np.float64), (3,)))
        intr = crop.get("intrinsics")
        intrinsics = NYU if intr is None else Intrinsics(
            fx=float(intr["fx"]), fy=float(intr["fy"]), cx=float(intr["cx"]),
            cy=float(intr["cy"]), width=int(intr["width"]), height=int(intr["height"]),
            y_up=bool(intr.get("y_up", True)))
        names = tuple(str(n) for n in crop.get("joint_names") or ())
        centre, source = str(crop.get("centre", "gt")), str(crop.get("source", "unknown"))
    except (TypeError, ValueError, KeyError, AttributeError) as e:
        raise HandganError(f"{path}: malformed crop metadata in the checkpoint "
                           f"({type(e).__name__}: {e})") from None
    if size != model.size:
        raise HandganError(f"{path}: crop size {size} does not match the model's input size "
                           f"{model.size}")
    if not all(math.isfinite(c) and c > 0 for c in cube):
        raise HandganError(f"{path}: crop cube_mm must be positive, got {list(cube)}")
    names = names or default_names
    if len(names) != model.num_joints:
        raise HandganError(f"{path}: {len(names)} joint names but the model predicts "
                           f"{model.num_joints} joints")
    # Checkpoints save the dataset's names (F1_KNU3_A ..., C, T1 ...): print the readable ones.
    return CropSpec(size, cube, intrinsics, readable_names(names), centre, source)
