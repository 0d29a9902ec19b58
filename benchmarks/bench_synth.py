"""Frames per second of `handgan synth`: render + sensor model + NYU-format PNG written, end to end.

    python benchmarks/bench_synth.py [--frames 2000] [--workers 2] [--scene full|hand]

Prints one human line and one JSON line. The figure includes process start-up of the workers and
the final joint_data.mat, i.e. what a user waits for. It also prints the CPU time per frame of
one process (render + sensor + PNG encoding, no writing), which shared machines disturb less; that
process is set up as the workers are (generate._worker_init: on Linux, freed frame buffers stay
in the heap) and encodes as they do (generate.PNG_DEFLATE).
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
    parser.add_argument("--scene", choices=("full", "hand"), default="full")
    parser.add_argument("--background", default="mixed", help="--scene hand only")
    args = parser.parse_args()
    from handgan.data.nyu import encode_nyu_depth, encode_png_rgb
    from handgan.synth.frame import SynthConfig, frame_rng, subject_shapes, synthesize_frame
    from handgan.synth.generate import PNG_DEFLATE, _worker_init

    _worker_init()

    cfg = SynthConfig(scene=args.scene, background=args.background)
    people = subject_shapes(0, "train", cfg.train_subjects)
    cpu = time.process_time()
    n_cpu = min(args.frames, 200)
    for i in range(n_cpu):
        rng = frame_rng(0, "train", i)
        frame = synthesize_frame(rng, people[int(rng.integers(len(people)))], cfg)
        encode_png_rgb(encode_nyu_depth(frame.depth_mm), deflate=PNG_DEFLATE[cfg.scene])
    cpu_ms = (time.process_time() - cpu) / n_cpu * 1000

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        synthesize_dataset(os.path.join(tmp, "ds"), args.frames, 0, seed=0, workers=args.workers,
                           config=cfg, progress=False)
        seconds = time.perf_counter() - start
        size_mb = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(tmp) for f in fs) / 1e6
    fps = args.frames / seconds
    print(f"synth --scene {args.scene}: {args.frames} frames in {seconds:.1f} s = {fps:.0f} "
          f"frames/s ({args.workers} workers, {os.cpu_count()} cores, "
          f"{size_mb / args.frames * 1000:.0f} kB/frame); one process: {cpu_ms:.1f} ms CPU/frame")
    print(json.dumps({"bench": "synth", "frames": args.frames, "workers": args.workers,
                      "scene": args.scene, "background": args.background,
                      "cpu_ms_per_frame": round(cpu_ms, 2), "seconds": round(seconds, 2),
                      "frames_per_s": round(fps, 1), "kb_per_frame": round(size_mb / args.frames * 1000, 1),
                      "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()}))


if __name__ == "__main__":
    main()
