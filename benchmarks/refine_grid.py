"""Refinement's effect on the mean 3D error over a grid of (steps, lr, prior weight), for one
trained GAN checkpoint: how ``refine.DEFAULT_LR`` and ``DEFAULT_PRIOR_WEIGHT`` were chosen.

    python benchmarks/refine_grid.py RUN/checkpoints/best.pt --data synthetic:DIR [--split train]
        [--frames 300] [--grid 10:0.01:1,10:0.003:100,...]

Two measurements on ``--frames`` evenly spread frames of ``--split`` (cropped as in training,
ground-truth centres):

* real crops, starting from the pose network's estimate J0: what refinement does in use;
* crops the generator drew itself, x = Gen(J): a generator faithful by construction, so this
  measures the optimiser alone, from J + 10 mm Gaussian noise per coordinate and from the pose
  network's read-back of Gen(J).

Prints one line per grid point and one JSON line. Run it from the folder holding the run's crop
cache (``data.cache_dir``), so the cache is reused.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from handgan.cachebuild import load_or_build_cache
from handgan.cachesource import CropParams
from handgan.data.sources import open_split, parse_source
from handgan.dataset import LabeledCrops
from handgan.evaluation.metrics import crops_mean_error_mm
from handgan.networks import load_networks
from handgan.refine import refine_poses

DEFAULT_GRID = ("10:0.003:0,10:0.01:0,10:0.03:0,10:0.01:1,10:0.01:10,10:0.01:100,"
                "10:0.003:100,30:0.01:1")
NOISE_MM = 10.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--data", required=True, help="data source spec, e.g. synthetic:DIR")
    parser.add_argument("--split", default="train", help="default train (choose on train, "
                        "report on test)")
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--grid", default=DEFAULT_GRID, help="STEPS:LR:PRIOR,...")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    grid = [(int(a), float(b), float(c)) for a, b, c in
            (item.split(":") for item in args.grid.split(","))]

    cfg, gen, dis = load_networks(args.checkpoint)
    cache = load_or_build_cache(open_split(parse_source(args.data), args.split),
                                cfg.data.cache_dir, CropParams(size=cfg.model.size,
                                                               cube_mm=cfg.data.cube_mm,
                                                               centre="gt"), progress=False)
    rows = np.unique(np.linspace(0, len(cache) - 1, args.frames).round().astype(int))
    crops = LabeledCrops(cache, rows)
    x, j, rays = crops.sample_batch(np.arange(len(crops)), rays=True)
    cube_x = float(cache.transform(0).cube_mm[0])
    torch.manual_seed(0)
    with torch.no_grad():
        fake = gen(j, rays)
        starts = {"real crops, J0 = network": (x, dis.estimate(x)),
                  f"Gen(J), J0 = J + {NOISE_MM:.0f} mm noise":
                      (fake, j + torch.randn_like(j) * (NOISE_MM / (cube_x / 2))),
                  "Gen(J), J0 = network's read-back": (fake, dis.estimate(fake))}

    def error(joints: torch.Tensor) -> float:
        return round(crops_mean_error_mm(joints.double().numpy(), crops), 3)

    out = {"bench": "refine_grid", "checkpoint": args.checkpoint, "split": args.split,
           "frames": len(crops), "threads": args.threads, "results": {}}
    for name, (target, j0) in starts.items():
        print(f"{name}: {error(j0):.2f} mm before refinement")
        rows_out = out["results"][name] = {"initial_mm": error(j0), "grid": []}
        for steps, lr, prior in grid:
            t0 = time.perf_counter()
            refined = refine_poses(gen, target, j0, steps, lr=lr, prior_weight=prior, rays=rays,
                                   cube_mm=cube_x)
            ms = 1e3 * (time.perf_counter() - t0) / len(target)
            print(f"  steps {steps:3d}  lr {lr:<6g} prior {prior:<6g} -> {error(refined):.2f} mm "
                  f"({ms:.1f} ms per crop)")
            rows_out["grid"].append({"steps": steps, "lr": lr, "prior_weight": prior,
                                     "mean_error_mm": error(refined)})
    print(json.dumps(out))


if __name__ == "__main__":
    main()
