"""Crop augmentation throughput: the batched torch path (handgan.deviceaugment.augment_batch) on
the CPU, and on CUDA when present, against the CPU path (augment_crop, crop by crop, as the
datasets call it), for batches of 64 and 256 crops at S = 64 and 128.

    python benchmarks/bench_device_augment.py [--recipe default|combine] [--threads N]

Each batch: float16 cached crops with their transform rows (centres around the image centre,
600-900 mm, 300 mm cube) and 14 joints; the new transforms are drawn, the crops re-warped and the
joints mapped. The per-crop path includes building each row's CropTransform and stacking the
results; the torch path includes the draw and (CUDA) a synchronize after each batch. Prints one
human line per case and one JSON line. Figures are crops per second, the median of --repeats.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import numpy as np
import torch

from handgan.augment import AugmentConfig, augment_crop
from handgan.cachestore import transform_from_row
from handgan.camera import NYU
from handgan.deviceaugment import augment_batch

RECIPES = {"default": AugmentConfig(), "combine": AugmentConfig(combine=True)}


def make_batch(batch: int, size: int, seed: int = 0):
    """Random crops (B, S, S) float16, transform rows (B, 8) float64, joints (B, 14, 3)."""
    rng = np.random.default_rng(seed)
    crops = rng.uniform(-1.0, 1.0, (batch, size, size)).astype(np.float16)
    crops[:, : size // 4] = 1.0  # some background
    rows = np.column_stack([rng.uniform(260, 380, batch), rng.uniform(190, 290, batch),
                            rng.uniform(600, 900, batch), np.full((batch, 3), 300.0),
                            np.full(batch, float(size)), np.zeros(batch)])
    joints = rng.uniform(-0.8, 0.8, (batch, 14, 3)).astype(np.float32)
    return crops, rows, joints


def cpu_path_rate(crops, rows, joints, cfg: AugmentConfig, repeats: int) -> float:
    rng = np.random.default_rng(0)
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = [augment_crop(np.asarray(c, np.float32), transform_from_row(r, NYU), j, rng, cfg)
               for c, r, j in zip(crops, rows, joints)]
        np.stack([o[0] for o in out])
        np.stack([o[2] for o in out])
        rates.append(len(crops) / (time.perf_counter() - t0))
    return statistics.median(rates)


def torch_rate(crops, rows, joints, cfg: AugmentConfig, device: torch.device,
               repeats: int, steps: int) -> float:
    c = torch.from_numpy(crops)[:, None].to(device)
    r = torch.from_numpy(rows).to(device)
    j = torch.from_numpy(joints).to(device)
    gen = torch.Generator(device).manual_seed(0)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    augment_batch(c, r, j, NYU, cfg, gen)  # warm-up
    sync()
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(steps):
            augment_batch(c, r, j, NYU, cfg, gen)
        sync()
        rates.append(steps * len(crops) / (time.perf_counter() - t0))
    return statistics.median(rates)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe", choices=tuple(RECIPES), default="default")
    p.add_argument("--batches", type=int, nargs="+", default=[64, 256])
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--steps", type=int, default=10, help="batches per timed torch repeat")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = RECIPES[args.recipe]
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, recipe {args.recipe}"
          + (f", GPU {gpu}" if gpu else ""))
    rows = []
    for size in args.sizes:
        for batch in args.batches:
            crops, params, joints = make_batch(batch, size)
            row = {"size": size, "batch": batch,
                   "cpu_per_crop": round(cpu_path_rate(crops, params, joints, cfg, args.repeats))}
            for dev in devices:
                row[f"torch_{dev.type}"] = round(torch_rate(crops, params, joints, cfg, dev,
                                                            args.repeats, args.steps))
            rows.append(row)
            print(f"S={size:3d} B={batch:3d}: augment_crop loop {row['cpu_per_crop']:8d} crops/s, "
                  + ", ".join(f"augment_batch {d.type} {row[f'torch_{d.type}']:9d} crops/s "
                              f"(x{row[f'torch_{d.type}'] / row['cpu_per_crop']:.1f})"
                              for d in devices))
    print(json.dumps({
        "bench": "device_augment", "recipe": args.recipe, "cases": rows,
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                    "torch_threads": torch.get_num_threads(), "gpu": gpu,
                    "python": platform.python_version(), "torch": torch.__version__},
    }))


if __name__ == "__main__":
    main()
