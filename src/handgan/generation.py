"""Depth crops from chosen poses with the trained generator, and pose interpolation strips.

    crops = generate_crops("runs/x/checkpoints/best.pt", joints_uvd, space="uvd")  # (N, S, S)
    poses = read_poses("poses.txt")                       # the field's format: u v d per joint
    steps = interpolate_poses(a_norm, b_norm, 8)          # (8, J, 3), A and B included

The generator takes joints normalised to the crop cube (as in training): x, y, z relative to the
crop centre, divided by cube_z / 2. Poses in uvd (px, px, mm) or xyz (mm) are normalised with a
``CropTransform`` centred on the palm joint (NYU 14: ``palm_centre``, the last joint) with the
checkpoint's cube and camera, which is how training crops were centred (``centre: gt``).

The command ``handgan generate`` writes a PNG grid or strip, an animated GIF for interpolations,
and the crops as ``.npy`` (normalised depth, background +1).
"""
from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from handgan.atomic import atomic_write
from handgan.checkpoint import load_checkpoint
from handgan.errors import HandganError
from handgan.models import Generator
from handgan.networks import CropSpec, load_networks, read_crop_spec
from handgan.outputs import check_outputs
from handgan.overlay import write_png
from handgan.plots import plt, tile
from handgan.preprocess import CropTransform

SPACES = ("uvd", "xyz", "norm")
MAX_FRAMES = 1000  # crops per run: all are held in memory and drawn into one picture
MAX_POSE_VALUE = 1e6  # px or mm: larger is a unit mistake (or an overflow to come)
MAX_NORM = 10.0  # normalised joints (1 = half the crop cube); real hands lie within 1
_MIN_IMAGE_PX = 128  # smaller crops are scaled up (nearest) in the PNG / GIF so they are visible


def read_poses(spec: str | os.PathLike) -> tuple[np.ndarray, str]:
    """(N, J, 3) float64 poses and their space ("uvd", "xyz" or "norm") from a file, or one
    pose as ``FILE:LINE`` (1-based line / frame number).

    Formats:

    * text (any suffix but ``.json``): the field's prediction format, one frame per line,
      J x 3 numbers ``u v d`` (read with ``evaluation.predfile.read_predictions``);
    * ``.json``: a list of frames, each J x 3 numbers (uvd), or ``{"frames": [...], "space":
      "uvd" | "xyz" | "norm"}``; a frame may also be a ``handgan predict`` record (``{"joints":
      {name: {"uvd": [...], ...}}}``), so ``predict --json`` output reads back as poses.
    """
    from handgan.evaluation.predfile import read_predictions

    path, line = _split_line_spec(str(spec))
    if path.suffix.lower() == ".json":
        poses, space = _read_json_poses(path)
    else:
        poses, space = read_predictions(path), "uvd"
    if line is not None:
        if not 1 <= line <= len(poses):
            raise HandganError(f"{path}: no frame {line} (the file has {len(poses)})")
        poses = poses[line - 1:line]
    return poses, space


def _split_line_spec(text: str) -> tuple[Path, int | None]:
    """``"a/b.txt:3"`` -> (a/b.txt, 3); a path whose own name holds ':' is kept whole."""
    head, sep, tail = text.rpartition(":")
    if sep and head and tail.isdigit() and not Path(text).exists():
        return Path(head), int(tail)
    return Path(text), None


def _read_json_poses(path: Path) -> tuple[np.ndarray, str]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise HandganError(f"{path}: pose file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise HandganError(f"{path}: not a readable JSON pose file ({type(e).__name__}: "
                           f"{' '.join(str(e).split())})") from None
    space = "uvd"
    if isinstance(data, dict) and "frames" in data:
        space = data.get("space", "uvd")
        if space not in SPACES:
            raise HandganError(f"{path}: space must be one of {', '.join(SPACES)}, got {space!r}")
        data = data["frames"]
    elif isinstance(data, dict):
        data = [data]  # one predict record
    if not isinstance(data, list) or not data:
        raise HandganError(f"{path}: expected a non-empty list of frames (each J x 3 numbers) "
                           "or {\"frames\": [...]}")
    frames = [_json_frame(f, path, k) for k, f in enumerate(data, start=1)]
    if len({f.shape for f in frames}) != 1:
        raise HandganError(f"{path}: frames have different joint counts "
                           f"{sorted({len(f) for f in frames})}")
    return np.stack(frames), space


def _json_frame(frame: Any, path: Path, k: int) -> np.ndarray:
    if isinstance(frame, dict) and isinstance(frame.get("joints"), dict):
        try:
            frame = [j["uvd"] for j in frame["joints"].values()]
        except (TypeError, KeyError):
            raise HandganError(f"{path}: frame {k}: every joint needs a \"uvd\" entry") from None
    try:
        joints = np.asarray(frame, dtype=np.float64)
    except (TypeError, ValueError):
        raise HandganError(f"{path}: frame {k}: expected J x 3 numbers") from None
    if joints.ndim == 1 and joints.size % 3 == 0 and joints.size:
        joints = joints.reshape(-1, 3)  # a flat list of u v d numbers, as in the text format
    if joints.ndim != 2 or joints.shape[1] != 3 or not len(joints):
        raise HandganError(f"{path}: frame {k}: expected J x 3 numbers, got shape {joints.shape}")
    if not np.all(np.isfinite(joints)):
        raise HandganError(f"{path}: frame {k}: NaN or infinite values")
    return joints


def normalise_poses(joints: np.ndarray, space: str, spec: CropSpec) -> np.ndarray:
    """(N, J, 3) poses in ``space`` -> (N, J, 3) joints normalised to each pose's crop cube.

    uvd / xyz poses get a ``CropTransform`` centred on their palm joint (``spec.centre_joint``)
    with the checkpoint's cube, size and camera; "norm" poses are returned as they are.
    """
    joints = np.asarray(joints, dtype=np.float64)
    if joints.ndim == 2:
        joints = joints[None]
    if joints.ndim != 3 or joints.shape[1:] != (len(spec.joint_names), 3):
        raise HandganError(f"poses must be (N, {len(spec.joint_names)}, 3) for this checkpoint's "
                           f"{len(spec.joint_names)} joints, got shape {joints.shape}")
    if np.abs(joints).max(initial=0.0) > MAX_POSE_VALUE:  # transforms would overflow
        raise HandganError(f"pose values up to {np.abs(joints).max():.3g}: not pixels or mm "
                           f"(at most {MAX_POSE_VALUE:g})")
    if space == "norm":
        return _near_the_cube(joints)
    if space not in SPACES:
        raise HandganError(f"pose space must be one of {', '.join(SPACES)}, got {space!r}")
    centre = spec.centre_joint
    if centre is None:
        raise HandganError("cannot tell which joint is the palm (crop centre) of this "
                           "checkpoint's joint set; give normalised joints (space \"norm\")")
    out = np.empty_like(joints)
    for k, pose in enumerate(joints):
        centre_uvd = pose[centre] if space == "uvd" else spec.intrinsics.xyz_to_uvd(pose[centre])
        t = CropTransform(centre_uvd, spec.cube_mm, spec.size, spec.intrinsics)
        out[k] = t.uvd_to_norm(pose) if space == "uvd" else t.xyz_to_norm(pose)
    return _near_the_cube(out)


def _near_the_cube(norm: np.ndarray) -> np.ndarray:
    """Normalised poses, if their joints lie within a few cube sizes of the crop."""
    far = np.abs(norm).max(initial=0.0)
    if not far <= MAX_NORM:
        raise HandganError(f"a pose's joints lie {far:.3g} half-cubes from the crop centre (at "
                           f"most {MAX_NORM:g}): not a hand pose for this camera and cube")
    return norm


def interpolate_poses(a: np.ndarray, b: np.ndarray, steps: int) -> np.ndarray:
    """(steps, J, 3) float64: ``steps`` >= 2 poses from ``a`` to ``b`` (both included, (J, 3)
    normalised joints), linearly."""
    if steps < 2:
        raise HandganError(f"interpolation needs at least 2 steps, got {steps}")
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    w = np.linspace(0.0, 1.0, steps)[:, None, None]  # (steps, 1, 1)
    return (1.0 - w) * a + w * b


def load_generator(path: str | os.PathLike, device: str | torch.device = "cpu"
                   ) -> tuple[Generator, CropSpec]:
    """The generator of a training checkpoint (eval mode) and its crop spec."""
    ckpt = load_checkpoint(path)
    cfg, net = load_networks(path, ["generator"], device, ckpt=ckpt)
    return net, read_crop_spec(ckpt, cfg.model, path)


def generate_crops(generator: str | os.PathLike | Generator, joints: np.ndarray,
                   space: str = "norm", spec: CropSpec | None = None,
                   batch_size: int = 256, seed: int = 0) -> np.ndarray:
    """(N, S, S) float32 depth crops (normalised depth in [-1, 1], background +1) from
    (N, J, 3) or (J, 3) poses in ``space`` (:func:`normalise_poses`) with the generator (a
    checkpoint path, or a ``Generator``: then uvd / xyz poses need ``spec``). ``seed`` seeds the
    missing pixels of Gen's sensor (``model.gen_*_dropout``): the same poses and seed give the
    same crops; the caller's torch RNG is left as it was."""
    if isinstance(generator, Generator):
        gen = generator.eval()
    else:
        gen, spec = load_generator(generator)
    if space != "norm":
        if spec is None:
            raise ValueError("uvd / xyz poses need the crop spec (pass spec=...)")
        joints = normalise_poses(joints, space, spec)
    joints = np.asarray(joints, dtype=np.float32)
    if joints.ndim == 2:
        joints = joints[None]
    cfg = gen.cfg
    if joints.ndim != 3 or joints.shape[1:] != (cfg.num_joints, 3):
        raise HandganError(f"poses must be (N, {cfg.num_joints}, 3), got shape {joints.shape}")
    device = next(gen.parameters()).device
    out = []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), \
            torch.inference_mode():
        torch.manual_seed(seed)
        for start in range(0, len(joints), batch_size):
            j = torch.from_numpy(joints[start:start + batch_size]).to(device)
            out.append(gen(j)[:, 0].float().cpu().numpy())  # (b, S, S)
    if not out:
        return np.empty((0, cfg.size, cfg.size), np.float32)
    return np.concatenate(out)


def crops_to_rgb(crops: np.ndarray) -> np.ndarray:
    """(N, S, S) normalised crops -> (N, S', S', 3) uint8: the cube's front face yellow, its back
    face (= background) dark purple (viridis reversed, as plots.depth_to_rgb); S' >= 128
    (nearest-neighbour upscale). Background is not singled out: a generator's tanh output only
    approaches +1, so a threshold would speckle it."""
    crops = np.asarray(crops, dtype=np.float32)
    rgb = plt.get_cmap("viridis_r")(np.clip((crops + 1.0) / 2.0, 0.0, 1.0))[..., :3]
    scale = max(1, -(-_MIN_IMAGE_PX // crops.shape[-1]))
    rgb = rgb.repeat(scale, axis=1).repeat(scale, axis=2)
    return (rgb * 255.0 + 0.5).astype(np.uint8)


def write_gif(path: str | os.PathLike, frames: np.ndarray, duration_ms: int = 150) -> Path:
    """(N, H, W, 3) uint8 frames as a looping animated GIF, written atomically (Pillow merges
    consecutive identical frames into one, so the GIF has N frames when they all differ)."""
    from PIL import Image

    images = [Image.fromarray(frame) for frame in frames]
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:],
                   duration=duration_ms, loop=0)
    path = Path(path)
    atomic_write(path, lambda f: f.write(buffer.getvalue()), durable=False)
    return path


def _save_crops(path: Path, crops: np.ndarray) -> Path:
    atomic_write(path, lambda f: np.save(f, crops.astype(np.float32)), durable=False)
    return path


def generate_from_files(checkpoint: str | os.PathLike, out: str | os.PathLike,
                        poses: str | os.PathLike | None = None,
                        interpolate: tuple[str, str] | None = None, steps: int = 8,
                        seed: int = 0) -> list[Path]:
    """What ``handgan generate`` does: poses from files -> crops -> pictures in ``out``.

    With ``poses``: ``OUT/generated.png`` (a grid, 8 per row) and ``OUT/generated.npy``
    ((N, S, S) normalised crops). With ``interpolate=(A, B)`` (pose files holding one frame each,
    or ``FILE:LINE``): ``OUT/interpolation.png`` (a strip of ``steps`` crops, A to B),
    ``OUT/interpolation.gif`` (the same, animated) and ``OUT/interpolation.npy``. ``seed``: as
    in :func:`generate_crops`. Returns the files written.
    """
    if (poses is None) == (interpolate is None):
        raise HandganError("give poses or interpolate=(A, B), not both or neither")
    if interpolate is not None and steps > MAX_FRAMES:
        raise HandganError(f"--steps {steps}: at most {MAX_FRAMES} (every crop is held in "
                           "memory and drawn into one strip)")
    out = Path(out)
    names = ("generated.png", "generated.npy") if poses is not None else (
        "interpolation.png", "interpolation.gif", "interpolation.npy")
    pose_files = [_split_line_spec(str(p))[0] for p in ([poses] if poses else interpolate)]
    check_outputs([out / n for n in names], [checkpoint, *pose_files])
    gen, spec = load_generator(checkpoint)
    out.mkdir(parents=True, exist_ok=True)
    if poses is not None:
        joints, space = read_poses(poses)
        if len(joints) > MAX_FRAMES:  # the grid and the crops are held in memory
            raise HandganError(f"{poses}: {len(joints)} poses; at most {MAX_FRAMES} per run "
                               "(split the file)")
        crops = generate_crops(gen, normalise_poses(joints, space, spec), seed=seed)
        return [write_png(out / "generated.png", tile(crops_to_rgb(crops), cols=8)),
                _save_crops(out / "generated.npy", crops)]
    ends = []
    for item in interpolate:
        joints, space = read_poses(item)
        if len(joints) != 1:
            raise HandganError(f"{item}: holds {len(joints)} poses; give a file with one, or "
                               "FILE:LINE")
        ends.append(normalise_poses(joints, space, spec)[0])
    crops = generate_crops(gen, interpolate_poses(ends[0], ends[1], steps), seed=seed)
    rgb = crops_to_rgb(crops)
    return [write_png(out / "interpolation.png", tile(rgb, cols=len(rgb))),
            write_gif(out / "interpolation.gif", rgb),
            _save_crops(out / "interpolation.npy", crops)]
