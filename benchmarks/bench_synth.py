"""Frames per second of `handgan synth`: render + sensor model + NYU-format PNG written, end to end.

    python benchmarks/bench_synth.py [--frames 2000] [--workers 2]

Prints one human line and one JSON line. The figure includes process start-up of the workers and
the final joint_data.mat, i.e. what a user waits for.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

from handgan.synth.generate import synthesize_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--background", default="mixed")
    args = parser.parse_args()
    from handgan.synth.frame import SynthConfig

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        synthesize_dataset(os.path.join(tmp, "ds"), args.frames, 0, seed=0, workers=args.workers,
                           config=SynthConfig(background=args.background), progress=False)
        seconds = time.perf_counter() - start
        size_mb = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(tmp) for f in fs) / 1e6
    fps = args.frames / seconds
    print(f"synth: {args.frames} frames in {seconds:.1f} s = {fps:.0f} frames/s "
          f"({args.workers} workers, {os.cpu_count()} cores, {size_mb / args.frames * 1000:.0f} kB/frame)")
    print(json.dumps({"bench": "synth", "frames": args.frames, "workers": args.workers,
                      "background": args.background, "seconds": round(seconds, 2),
                      "frames_per_s": round(fps, 1), "kb_per_frame": round(size_mb / args.frames * 1000, 1),
                      "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()}))


if __name__ == "__main__":
    main()
