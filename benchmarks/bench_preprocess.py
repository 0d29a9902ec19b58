"""Hand localisation accuracy and full-frame -> normalised-crop throughput on a synthetic dataset.

    python benchmarks/bench_preprocess.py DATASET [--split test] [--size 128] [--workers 2]

DATASET is a `handgan synth` output (or real NYU). Prints human lines and one JSON line:
mean/median/p90 distance from the CoM centre to the true palm centre (NYU id 32), for the default
refinement and for DeepPrior++'s plain cube CoM, and frames/s of localise + crop (PNG decoding
excluded: frames are decoded first), in one process and in `--workers` processes.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from handgan.data.nyu import NYUSplit
from handgan.preprocess import DEFAULT_CUBE_MM, crop_depth, localize_hand

_FRAMES: list[np.ndarray] = []


def _crop_all(args: tuple) -> int:
    intr, size, repeats = args
    for _ in range(repeats):
        for depth in _FRAMES:
            crop_depth(depth, localize_hand(depth, intr), DEFAULT_CUBE_MM, size, intr=intr)
    return repeats * len(_FRAMES)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset")
    parser.add_argument("--split", default="test")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    data = NYUSplit(args.dataset, args.split, joints="all36")
    intr = data.intrinsics
    _FRAMES.extend(data.depth(i) for i in range(len(data)))
    truth = data.joints_xyz()[:, 32]
    errors = {}
    for name, margin in (("default", 30.0), ("plain_cube_com", None)):
        centres = np.stack([intr.uvd_to_xyz(localize_hand(d, intr, near_margin_mm=margin)) for d in _FRAMES])
        e = np.linalg.norm(centres - truth, axis=1)
        errors[name] = {"mean_mm": round(float(e.mean()), 1), "median_mm": round(float(np.median(e)), 1),
                        "p90_mm": round(float(np.percentile(e, 90)), 1),
                        "within_40mm": round(float((e <= 40).mean()), 3)}
        print(f"localisation ({name}): mean {e.mean():.1f} mm, median {np.median(e):.1f} mm, "
              f"p90 {np.percentile(e, 90):.1f} mm over {len(e)} frames")

    start = time.perf_counter()
    n = _crop_all((intr, args.size, args.repeats))
    one = n / (time.perf_counter() - start)
    with ProcessPoolExecutor(args.workers) as pool:  # forked workers inherit the decoded frames
        start = time.perf_counter()
        n = sum(pool.map(_crop_all, [(intr, args.size, args.repeats)] * args.workers))
        many = n / (time.perf_counter() - start)
    print(f"frames -> {args.size}x{args.size} crops: {one:.0f}/s in 1 process, "
          f"{many:.0f}/s in {args.workers} processes")
    print(json.dumps({"bench": "preprocess", "frames": len(_FRAMES), "size": args.size,
                      "localisation": errors, "crops_per_s_1proc": round(one),
                      "crops_per_s": round(many), "workers": args.workers}))


if __name__ == "__main__":
    main()
