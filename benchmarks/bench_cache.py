"""Crop cache build speed and cache -> training-loop throughput on a synthetic dataset.

    python benchmarks/bench_cache.py DATASET [--split train] [--size 128] [--epochs 3] [--repeat 4]

DATASET is a `handgan synth` output (or real NYU). The cache is built in a temp folder (unless
--cache is given), once in one process and once with --build-workers processes. Then batches of
128 labelled crops are drawn from it as a training loop would:

* ``DataLoader(LabeledCrops)``: the standard per-item path, shuffled, without and with
  augmentation, num_workers 0 and 2 (fresh workers each epoch, as ``set_epoch`` needs);
* ``sample_batch``: the batched path, one memmap gather per batch in the main process (no
  augmentation).

Prints a human table and one JSON line. Each figure is crops per second over --epochs epochs,
after one warm-up epoch. An epoch visits every crop --repeat times (default 4: 8,000 items for a
2,000-frame dataset), so that the DataLoader workers' start-up, paid again every epoch, weighs
about as little as in a real-size epoch (NYU: 72k crops); it is included in every figure.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, RandomSampler

from handgan.augment import AugmentConfig
from handgan.cachebuild import build_cache, load_or_build_cache
from handgan.cachesource import CropParams
from handgan.data.nyu import NYUSplit
from handgan.dataset import LabeledCrops


def loader_rate(data, batch: int, workers: int, epochs: int) -> float:
    loader = DataLoader(data, batch_size=batch, shuffle=True, num_workers=workers,
                        drop_last=True, generator=torch.Generator().manual_seed(0))
    seen, elapsed = 0, 0.0
    for epoch in range(epochs + 1):  # epoch 0 warms up
        data.set_epoch(epoch)
        start = time.perf_counter()
        n = 0
        for crops, _joints in loader:
            n += crops.shape[0]  # a training step would start here
        if epoch:
            seen, elapsed = seen + n, elapsed + time.perf_counter() - start
    return seen / elapsed


def batched_rate(data, batch: int, epochs: int) -> float:
    sampler = BatchSampler(RandomSampler(data, generator=torch.Generator().manual_seed(0)),
                           batch, drop_last=True)
    seen, elapsed = 0, 0.0
    for epoch in range(epochs + 1):
        start = time.perf_counter()
        n = 0
        for positions in sampler:
            crops, joints = data.sample_batch(positions)
            n += crops.shape[0]
        if epoch:
            seen, elapsed = seen + n, elapsed + time.perf_counter() - start
    return seen / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset")
    parser.add_argument("--split", default="train")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=4, help="visits of each crop per epoch")
    parser.add_argument("--build-workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--cache", help="cache root to reuse (default: a fresh temp folder)")
    args = parser.parse_args()

    reader = NYUSplit(args.dataset, args.split)
    params = CropParams(size=args.size)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.cache or tmp
        build = {}
        if not args.cache:
            for workers in sorted({1, args.build_workers}):
                start = time.perf_counter()
                build_cache(reader, root, params, progress=False, workers=workers)
                build[f"workers_{workers}"] = round(len(reader) / (time.perf_counter() - start))
                print(f"build: {build[f'workers_{workers}']} frames/s with {workers} process(es)")
        start = time.perf_counter()
        cache = load_or_build_cache(reader, root, params, progress=False)
        reuse_s = time.perf_counter() - start
        print(f"reuse (quick checksum): {reuse_s * 1e3:.1f} ms for {len(cache)} crops")

        rows = []
        indices = np.tile(np.arange(len(cache)), args.repeat)
        for augment in (None, AugmentConfig()):
            for workers in (0, 2):
                data = LabeledCrops(cache, indices, augment=augment)
                rate = loader_rate(data, args.batch, workers, args.epochs)
                rows.append({"path": "DataLoader per item", "augment": augment is not None,
                             "num_workers": workers, "crops_per_s": round(rate)})
        rate = batched_rate(LabeledCrops(cache, indices), args.batch, args.epochs)
        rows.append({"path": "sample_batch", "augment": False, "num_workers": 0,
                     "crops_per_s": round(rate)})

    print(f"\n{'path':<22}{'augment':>8}{'workers':>9}{'crops/s':>10}")
    for r in rows:
        print(f"{r['path']:<22}{str(r['augment']):>8}{r['num_workers']:>9}{r['crops_per_s']:>10}")
    print(json.dumps({
        "bench": "cache", "frames": len(cache), "size": args.size, "batch": args.batch,
        "epoch_items": len(cache) * args.repeat,
        "build_frames_per_s": build, "reuse_ms": round(reuse_s * 1e3, 1), "loops": rows,
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                    "python": platform.python_version(), "torch": torch.__version__},
    }))


if __name__ == "__main__":
    main()
