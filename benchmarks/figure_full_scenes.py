"""Whole synthetic frames (``--scene full``) with their joints: docs/figures/synthetic_full_frames.png.

    PYTHONPATH=src python benchmarks/figure_full_scenes.py [--count 8] [--out PATH]
"""
from __future__ import annotations

import argparse

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from handgan.synth.frame import SynthConfig, frame_rng, subject_shapes, synthesize_frame  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=8)
    parser.add_argument("--out", default="docs/figures/synthetic_full_frames.png")
    args = parser.parse_args()
    cfg = SynthConfig(scene="full")
    people = subject_shapes(0, "train", cfg.train_subjects)
    cols = 4
    rows = (args.count + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.2 * rows))
    for i, ax in enumerate(np.ravel(axes)):
        ax.axis("off")
        if i >= args.count:
            continue
        rng = frame_rng(0, "train", i)
        f = synthesize_frame(rng, people[int(rng.integers(len(people)))], cfg)
        d = f.depth_mm.astype(float)
        d[d == 0] = np.nan  # no depth: white
        ax.imshow(d, cmap="viridis", vmin=400, vmax=4000)
        ax.plot(f.joints_uvd[:, 0], f.joints_uvd[:, 1], "r.", ms=2)
        ax.set_title(f.background, fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out, dpi=70)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
