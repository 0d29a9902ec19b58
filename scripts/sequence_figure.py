"""The sequence figure of docs/inference.md: render a short labelled sequence, run `handgan
predict` on it, and tile a few of its overlays.

    python scripts/sequence_figure.py RUN|CHECKPOINT --out /tmp/seq \\
        [--frames 30] [--seed 1] [--figure docs/figures/predict-sequence.png]

The sequence is one synthetic hand (the renderer and sensor model of `handgan synth`) moving
across the NYU camera in front of a wall while it turns and changes pose smoothly: a linear
path of its palm centre, its joint angles and its roll from one sampled pose to another.
It is written in NYU's format (depth PNGs + joint_data.mat) into OUT/seq, so predict reads its
labels and draws the true skeleton. Then

    handgan predict RUN OUT/seq --out OUT/pred --video OUT/sequence.gif --smooth 0.5

runs, and frames 1, 10, 20 and 30 (of 30) of OUT/pred are tiled 2 x 2 into --figure.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from handgan.camera import NYU
from handgan.cli import main as handgan
from handgan.data.nyu import depth_png_name, write_depth_png, write_joint_data
from handgan.synth import hand as H
from handgan.synth.render import Scene, SensorConfig, apply_sensor, render_depth

WALL_MM = 1100.0  # the wall behind the hand
LABEL_WALL = 2


def render_sequence(folder: Path, frames: int, seed: int) -> Path:
    """``frames`` depth frames of one moving hand, labelled, in NYU's format -> the folder."""
    rng = np.random.default_rng(seed)
    shape = H.sample_shape(rng)
    a0, a1 = H.sample_articulation(rng), H.sample_articulation(rng)
    rotation = H.sample_rotation(rng)
    start, end = np.array([-70.0, -10.0, 650.0]), np.array([70.0, 30.0, 780.0])  # palm, mm
    wall = Scene(planes=np.array([[0.0, 0.0, 1.0, WALL_MM]]), plane_labels=np.array([LABEL_WALL]))
    folder.mkdir(parents=True, exist_ok=True)
    uvd, xyz = [], []
    for k in range(frames):
        t = k / max(frames - 1, 1)
        pose = H.pose_from_angles((1 - t) * a0 + t * a1, H.rot_z(40.0 * t) @ rotation,
                                  (1 - t) * start + t * end)
        skeleton = H.forward_kinematics(pose, shape)
        g = H.hand_geometry(skeleton)
        hand = Scene(cone_a=g.a, cone_b=g.b, cone_ra=g.ra, cone_rb=g.rb, cone_labels=g.labels)
        clean, _ = render_depth(hand + wall, NYU)
        depth = apply_sensor(clean, NYU, np.random.default_rng([seed, k]), SensorConfig())
        write_depth_png(folder / depth_png_name(k), depth)
        xyz.append(skeleton.nyu36())
        uvd.append(NYU.xyz_to_uvd(xyz[-1]))
    write_joint_data(folder / "joint_data.mat", np.stack(uvd), np.stack(xyz))
    return folder


def tile(pictures: list[Path], out: Path, cols: int = 2) -> Path:
    """Pictures of one size, ``cols`` per row, into one PNG."""
    images = [Image.open(p).convert("RGB") for p in pictures]
    w, h = images[0].size
    rows = (len(images) + cols - 1) // cols
    sheet = Image.new("RGB", (cols * w, rows * h), "white")
    for k, image in enumerate(images):
        sheet.paste(image, ((k % cols) * w, (k // cols) * h))
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out, format="PNG", optimize=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", metavar="RUN|CHECKPOINT")
    parser.add_argument("--out", required=True, type=Path, help="working folder")
    parser.add_argument("--frames", type=int, default=30)
    parser.add_argument("--seed", type=int, default=1)  # the hand, not the forearm, in front
    parser.add_argument("--figure", type=Path, default=Path("docs/figures/predict-sequence.png"))
    args = parser.parse_args(argv)
    seq = render_sequence(args.out / "seq", args.frames, args.seed)
    pred = args.out / "pred"
    code = handgan(["predict", args.checkpoint, str(seq), "--out", str(pred),
                    "--video", str(args.out / "sequence.gif"), "--smooth", "0.5"])
    picks = sorted({0, args.frames // 3, 2 * args.frames // 3, args.frames - 1})
    names = [depth_png_name(k).removesuffix(".png") for k in picks]
    print(f"wrote {tile([pred / f'{n}.overlay.png' for n in names], args.figure)}")
    return code


if __name__ == "__main__":
    sys.exit(main())
