"""Inference latency (one 640x480 frame -> 3D joints) and batched throughput, PyTorch and
onnxruntime, for the pose network of a preset's model size and the learned hand localiser.

    python benchmarks/bench_inference.py --preset seed [--frames 200] [--batch 64] [--threads N]
                                         [--localizer learned|com]

The networks have random (DCGAN-initialised) weights: the timings do not depend on the weights,
and the output says so. With ``--localizer learned`` (the default, what a trained run's
checkpoint holds) the hand is found by the localiser's detector, refiners and verifier at their
default settings; with ``com`` by the centre of mass (``localize_hand``). Frames are synthetic
NYU-camera renders (cycled). Per frame it times the three steps of ``Estimator.estimate``
separately (hand localisation, crop, network + mapping back to mm) and end to end, and reports
median and p90 over ``--frames`` frames after a warm-up; then ``--batch`` frames at once through
``Estimator.estimate_batch`` (frames/s: on a GPU the frames are copied once and every crop is cut
there), and crops/s of the network alone at ``--batch``. Backends: PyTorch on CPU (and CUDA when
available) and onnxruntime on CPU (``Estimator(backend="onnxruntime")``, skipped if not
installed). Prints human lines and one JSON line.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from handgan.camera import NYU
from handgan.checkpoint import save_checkpoint
from handgan.config import preset, to_dict
from handgan.errors import HandganError
from handgan.inference import Estimator
from handgan.localize import PARTS, Localizer, LocalizerConfig, _new_part
from handgan.models import Discriminator, Generator, init_weights
from handgan.preprocess import DEFAULT_CUBE_MM
from handgan.synth.frame import SynthConfig, frame_rng, subject_shapes, synthesize_frame

DISTINCT_FRAMES = 16  # rendered once, then cycled


def random_checkpoint(path: Path, preset_name: str, localizer: bool = True) -> None:
    """A checkpoint of the preset's model with random weights (NYU camera, 300 mm cube), with
    a localiser of random weights (the default settings) if ``localizer``."""
    cfg = preset(preset_name)
    torch.manual_seed(0)
    gen, dis = Generator(cfg.model), Discriminator(cfg.model)
    gen.apply(init_weights)
    dis.apply(init_weights)
    loc_config = LocalizerConfig()
    parts = {part: _new_part(loc_config, part) for part in PARTS}
    intr = dataclasses.asdict(NYU)
    crop = {"size": cfg.model.size, "cube_mm": [DEFAULT_CUBE_MM] * 3, "centre": "gt",
            "joint_names": [f"joint_{j}" for j in range(cfg.model.num_joints)],
            "intrinsics": intr, "source": "random weights (benchmark)"}
    save_checkpoint(path, {"config": to_dict(cfg), "generator": gen.state_dict(),
                           "discriminator": dis.state_dict(), "crop": crop,
                           "localizer": Localizer(loc_config, **parts).state() if localizer
                           else None})


def render_frames(n: int) -> list[np.ndarray]:
    people = subject_shapes(0, "test", 4)
    frames = []
    for i in range(n):
        rng = frame_rng(0, "test", i)
        frames.append(synthesize_frame(rng, people[int(rng.integers(len(people)))],
                                       SynthConfig(scene="hand")).depth_mm)
    return frames


def stats_ms(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1e3
    return {"median_ms": round(float(np.median(ms)), 2),
            "p90_ms": round(float(np.percentile(ms, 90)), 2)}


def time_frames(frames: list[np.ndarray], n: int, warmup: int, locate: Callable, crop: Callable,
                predict: Callable) -> dict[str, dict[str, float]]:
    """Median / p90 of each step and of the sum, over n frames (after warmup frames)."""
    steps: dict[str, list[float]] = {"localise": [], "crop": [], "network": [], "total": []}
    clock = time.perf_counter
    for k in range(warmup + n):
        depth = frames[k % len(frames)]
        t0 = clock()
        centre = locate(depth)
        t1 = clock()
        c, t = crop(depth, centre)
        t2 = clock()
        predict(c, t)
        t3 = clock()
        if k >= warmup:
            for name, dt in (("localise", t1 - t0), ("crop", t2 - t1), ("network", t3 - t2),
                             ("total", t3 - t0)):
                steps[name].append(dt)
    return {name: stats_ms(v) for name, v in steps.items()}


def time_end_to_end(frames: list[np.ndarray], n: int, warmup: int, estimate: Callable
                    ) -> dict[str, float]:
    times = []
    for k in range(warmup + n):
        depth = frames[k % len(frames)]
        t0 = time.perf_counter()
        estimate(depth)
        if k >= warmup:
            times.append(time.perf_counter() - t0)
    return stats_ms(times)


def crops_per_s(run: Callable[[], object], batch: int, repeats: int) -> float:
    run()  # warm-up (kernel selection for this batch size)
    t0 = time.perf_counter()
    for _ in range(repeats):
        run()
    return batch * repeats / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=("quick", "seed"), default="seed")
    parser.add_argument("--frames", type=int, default=200, help="timed frames (default 200)")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5, help="timed batches (default 5)")
    parser.add_argument("--threads", type=int, help="torch / onnxruntime CPU threads "
                        "(default: torch's default, the physical cores)")
    parser.add_argument("--localizer", choices=("learned", "com"), default="learned",
                        help="how the hand is found: the learned localiser (default) or the "
                        "centre of mass")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()

    frames = render_frames(DISTINCT_FRAMES)
    results: dict = {"bench": "inference", "preset": args.preset, "weights": "random",
                     "frame": "640x480", "frames": args.frames, "batch": args.batch,
                     "localizer": args.localizer,
                     "threads": threads, "torch": torch.__version__,
                     "cpu": platform.processor() or platform.machine()}
    runs = [("torch", "cpu"), ("onnxruntime", "cpu")]
    if torch.cuda.is_available():
        runs.insert(1, ("torch", "cuda"))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "random.pt"
        random_checkpoint(path, args.preset, localizer=args.localizer == "learned")
        print(f"[{args.preset} preset, random weights: timing only; hand found by the "
              f"{args.localizer} localiser; {threads} CPU threads]")
        for backend, device in runs:
            try:
                est = Estimator.from_checkpoint(path, device=device, backend=backend,
                                                threads=threads)
            except HandganError as e:  # onnxruntime not installed
                print(f"  {backend}: skipped ({e})")
                continue
            results[f"{backend}_{device}"] = bench_estimator(est, frames, args)
    print(json.dumps(results))


def bench_estimator(est: Estimator, frames: list[np.ndarray], args) -> dict:
    """Single-frame latency (split and end to end) and batched crops/s of one estimator."""
    split = time_frames(frames, args.frames, args.warmup, est.locate, est.crop,
                        est.estimate_crop)
    e2e = time_end_to_end(frames, args.frames, args.warmup, est.estimate)
    many = [frames[k % len(frames)] for k in range(args.batch)]
    frame_rate = crops_per_s(lambda: est.estimate_batch(many), args.batch, args.repeats)
    crops = np.stack([est.crop(f, est.locate(f))[0] for f in frames])  # (F, S, S)
    batch = np.resize(crops, (args.batch, est.size, est.size))
    rate = crops_per_s(lambda: est.predict_norm(batch), args.batch, args.repeats)
    s = split
    print(f"  {est.backend} {est.device.type}, {est.size}x{est.size} crops: one frame -> joints "
          f"median {e2e['median_ms']:.2f} ms, p90 {e2e['p90_ms']:.2f} ms over {args.frames} "
          f"frames (localise {s['localise']['median_ms']:.2f} + crop "
          f"{s['crop']['median_ms']:.2f} + network and mapping {s['network']['median_ms']:.2f} "
          f"ms, medians); {args.batch} frames at once: {frame_rate:.0f} frames/s; network "
          f"alone, batch {args.batch}: {rate:.0f} crops/s")
    return {"estimate": e2e, "split": split, "frames_per_s": round(frame_rate, 1),
            "crops_per_s": round(rate, 1)}


if __name__ == "__main__":
    main()
