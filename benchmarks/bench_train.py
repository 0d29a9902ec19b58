"""Training throughput: labelled crops per second through one full training step (forward and
backward of both networks, both optimiser steps), per preset, on random crops in memory; and
with ``--end-to-end`` through ``handgan train``'s own loop on synthetic frames.

    python benchmarks/bench_train.py                       # quick and seed presets, this machine
    python benchmarks/bench_train.py --preset seed --batch 256 --steps 200 --compile   # on a GPU
    python benchmarks/bench_train.py --preset seed --end-to-end --pipeline device   # the real loop

A GAN step takes B labelled crops (pose + real/fake), B unlabelled crops (real/fake) and B
generated crops (D's fake batch, then G's step): the figure counts the B labelled crops, as the
seed's "50 epochs x 140k crops in 3.42 h" (about 570 crops/s) does. Data loading is left out
(see bench_cache.py for the crop pipeline's own rate). Each line also gives the step's FLOPs per
labelled crop (``torch.utils.flop_counter``), the fraction of the device's compute bound they
imply (``--peak-tflops``) and, on CUDA, the peak memory.

``--end-to-end`` then runs ``train()`` (what ``handgan train`` runs: crops from the cache, the
augmentation, unlabelled crops, both networks; no localiser, no sample images) for
``--e2e-steps`` steps on the synthetic frames in ``--data`` (rendered there first if it holds
none) with each ``--pipeline``, and prints its ``summary.json``: labelled crops/s over the
epochs' whole loop time, the same fraction of the bound, and the peak GPU memory.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import warnings
from contextlib import nullcontext
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

import handgan.train as train_mod
from handgan.batches import Batch
from handgan.config import apply_overrides, preset
from handgan.device import resolve_device
from handgan.steps import gan_step, supervised_step
from handgan.synth.generate import synthesize_dataset


def bench(preset_name: str, mode: str, batch: int, steps: int, warmup: int, device: str,
          amp: bool, channels_last: bool, compile_: bool, repeats: int,
          sync_debug: bool = False) -> dict:
    cfg = apply_overrides(preset(preset_name), [f"mode={mode}", f"optim.batch_size={batch}",
                                                f"device={device}"])
    dev = resolve_device(device)
    train_mod.seed_everything(0)
    gen, dis = train_mod.build_models(cfg, dev)
    cuda = dev.type == "cuda"
    fmt = torch.channels_last if cuda and channels_last else torch.preserve_format
    if fmt is torch.channels_last:
        gen.to(memory_format=fmt)
        dis.to(memory_format=fmt)
    if compile_:
        for m in (gen, dis.trunk, dis.real_fake, dis.pose):
            m.compile()
    opt_g, opt_d = train_mod.build_optimizers(cfg, gen, dis)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if amp and cuda \
        else nullcontext
    s = cfg.model.size
    x_l = (torch.rand(batch, 1, s, s, device=dev) * 2 - 1).contiguous(memory_format=fmt)
    x_u = (torch.rand(batch, 1, s, s, device=dev) * 2 - 1).contiguous(memory_format=fmt)
    j_l = torch.randn(batch, cfg.model.num_joints, 3, device=dev) * 0.3
    batch_ = Batch(x_l, j_l, x_u)

    def step():
        if mode == "gan":
            gan_step(gen, dis, opt_g, opt_d, batch_, cfg, autocast=autocast)
        else:
            supervised_step(dis, opt_d, batch_, cfg, autocast)

    for _ in range(warmup):
        step()
    waits = host_waits(step) if sync_debug and cuda else None
    with FlopCounterMode(display=False) as flops:  # one step's matrix work, forward + backward
        step()
    rates = []
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(steps):
            step()  # the losses stay on the device, as in training (read when logged)
        if cuda:
            torch.cuda.synchronize()
        rates.append(batch * steps / (time.perf_counter() - t0))
    return {"preset": preset_name, "mode": mode, "batch": batch, "size": s,
            "device": str(dev), "crops_per_s": statistics.median(rates),
            "spread": (min(rates), max(rates)), "gflop_per_crop": flops.get_total_flops() / batch / 1e9,
            "memory_gb": torch.cuda.max_memory_allocated(dev) / 1e9 if cuda else None,
            "host_waits": waits}


def host_waits(step) -> list[str]:
    """Where one step waits for the GPU: torch's sync debug mode's warnings, as file:line."""
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    return [f"{Path(w.filename).name}:{w.lineno}" for w in caught
            if "synchroniz" in str(w.message)]


def end_to_end(preset_name: str, mode: str, batch: int, steps: int, device: str, data: Path,
               pipeline: str, workers: int) -> dict:
    """``train()`` for ``steps`` steps in a temporary run folder: its summary.json."""
    cfg = apply_overrides(preset(preset_name), [
        f"mode={mode}", f"optim.batch_size={batch}", f"device={device}",
        f"data.source=synthetic:{data}", f"data.cache_dir={data / '.handgan-cache'}",
        f"optim.max_steps={steps}", f"data.pipeline={pipeline}", f"num_workers={workers}",
        "localizer.enabled=false", "sample_every_epochs=0", "eval_every_epochs=1000"])
    with tempfile.TemporaryDirectory() as out:
        run = train_mod.train(cfg, Path(out) / "run", progress=False)
        return json.loads((run / "summary.json").read_text())


def synthetic_frames(data: Path, frames: int) -> None:
    """Render ``frames`` training (and a tenth as many test) frames into ``data`` unless it
    already holds a synthetic set."""
    if not (data / "handgan_synth.json").is_file():
        print(f"rendering {frames} synthetic frames into {data} ...", flush=True)
        synthesize_dataset(data, frames, max(frames // 10, 1), seed=0, progress=False)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", action="append", choices=("quick", "seed"),
                   help="preset(s) to time (default both)")
    p.add_argument("--mode", action="append", choices=("gan", "supervised"),
                   help="mode(s) to time (default both)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=None, help="timed steps per repeat "
                   "(default 30 on CPU, 200 on CUDA)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="auto")
    p.add_argument("--no-amp", action="store_true", help="CUDA: fp32 instead of bf16 autocast")
    p.add_argument("--no-channels-last", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile the networks")
    p.add_argument("--peak-tflops", type=float, default=None, help="the device's dense bf16 "
                   "peak, for the fraction of the compute bound (default 790 on CUDA: H100/H200)")
    p.add_argument("--end-to-end", action="store_true", help="also time handgan train's own "
                   "loop on synthetic frames")
    p.add_argument("--e2e-steps", type=int, default=None,
                   help="steps of the end-to-end run (default 20 on CPU, 400 on CUDA)")
    p.add_argument("--pipeline", action="append", choices=("host", "device"),
                   help="end to end: data.pipeline(s) to time (default host)")
    p.add_argument("--data", type=Path, default=Path("data/bench-train"),
                   help="end to end: synthetic frames (rendered there if absent; default "
                   "data/bench-train)")
    p.add_argument("--frames", type=int, default=2000,
                   help="end to end: training frames to render into --data if absent")
    p.add_argument("--workers", type=int, default=2, help="end to end: num_workers")
    p.add_argument("--sync-debug", action="store_true", help="CUDA: list where one step waits "
                   "for the GPU (torch.cuda.set_sync_debug_mode)")
    args = p.parse_args()
    cuda = resolve_device(args.device).type == "cuda"
    steps = args.steps or (200 if cuda else 30)
    peak = args.peak_tflops or (790.0 if cuda else None)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"device {resolve_device(args.device)}"
          + (f" ({torch.cuda.get_device_name()})" if cuda else ""))
    for name in args.preset or ["quick", "seed"]:
        for mode in args.mode or ["gan", "supervised"]:
            r = bench(name, mode, args.batch, steps, args.warmup, args.device, not args.no_amp,
                      not args.no_channels_last, args.compile, args.repeats, args.sync_debug)
            bound = peak * 1e12 / (r["gflop_per_crop"] * 1e9) if peak else None
            print(f"{r['preset']:5s} {r['size']:3d}px {r['mode']:10s} batch {r['batch']:4d}: "
                  f"{r['crops_per_s']:9.1f} labelled crops/s "
                  f"(min {r['spread'][0]:.1f}, max {r['spread'][1]:.1f}, {args.repeats} x "
                  f"{steps} steps); {r['gflop_per_crop']:.2f} GFLOP per crop"
                  + (f", {r['crops_per_s'] / bound:.1%} of the {peak:g}-TFLOP/s bound "
                     f"({bound:,.0f} crops/s)" if bound else "")
                  + (f", {r['memory_gb']:.2f} GB peak memory" if r["memory_gb"] is not None
                     else ""), flush=True)
            if r["host_waits"] is not None:
                print(f"      {len(r['host_waits'])} host waits in one step: "
                      + (", ".join(r["host_waits"]) or "none"), flush=True)
            if not args.end_to_end:
                continue
            synthetic_frames(args.data, args.frames)
            for pipeline in args.pipeline or ["host"]:
                e2e_steps = args.e2e_steps or (400 if cuda else 20)
                s = end_to_end(name, mode, args.batch, e2e_steps, args.device, args.data,
                               pipeline, args.workers)
                rate = s["crops_per_s"]
                print(f"{r['preset']:5s} {r['size']:3d}px {r['mode']:10s} batch {r['batch']:4d}, "
                      f"end to end (handgan train, data.pipeline={pipeline}, {s['steps']} steps "
                      f"in {s['train_seconds']:.1f} s of loop): {rate:9.1f} labelled crops/s"
                      + (f", {rate / bound:.1%} of the bound" if bound else "")
                      + (f", {s['gpu_memory_gb']:.2f} GB peak memory"
                         if s.get("gpu_memory_gb") is not None else ""), flush=True)


if __name__ == "__main__":
    main()
