"""Training throughput: labelled crops per second through one full training step (forward and
backward of both networks, both optimiser steps), per preset, on random crops in memory.

    python benchmarks/bench_train.py                       # quick and seed presets, this machine
    python benchmarks/bench_train.py --preset seed --batch 256 --steps 200 --compile   # on a GPU

A GAN step takes B labelled crops (pose + real/fake), B unlabelled crops (real/fake) and B
generated crops (D's fake batch, then G's step): the figure counts the B labelled crops, as the
seed's "50 epochs x 140k crops in 3.42 h" (about 570 crops/s) does. Data loading is left out
(see bench_cache.py for the crop pipeline's own rate; scripts/gpu-check.sh times the real
training loop end to end). Each line also gives the step's FLOPs per labelled crop
(``torch.utils.flop_counter``), the fraction of the device's compute bound they imply
(``--peak-tflops``) and, on CUDA, the peak memory.
"""
from __future__ import annotations

import argparse
import statistics
import time
from contextlib import nullcontext

import torch
from torch.utils.flop_counter import FlopCounterMode

import handgan.train as train_mod
from handgan.batches import Batch
from handgan.config import apply_overrides, preset
from handgan.device import resolve_device
from handgan.steps import gan_step, supervised_step


def bench(preset_name: str, mode: str, batch: int, steps: int, warmup: int, device: str,
          amp: bool, channels_last: bool, compile_: bool, repeats: int) -> dict:
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
            "memory_gb": torch.cuda.max_memory_allocated(dev) / 1e9 if cuda else None}


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
                      not args.no_channels_last, args.compile, args.repeats)
            bound = peak * 1e12 / (r["gflop_per_crop"] * 1e9) if peak else None
            print(f"{r['preset']:5s} {r['size']:3d}px {r['mode']:10s} batch {r['batch']:4d}: "
                  f"{r['crops_per_s']:9.1f} labelled crops/s "
                  f"(min {r['spread'][0]:.1f}, max {r['spread'][1]:.1f}, {args.repeats} x "
                  f"{steps} steps); {r['gflop_per_crop']:.2f} GFLOP per crop"
                  + (f", {r['crops_per_s'] / bound:.1%} of the {peak:g}-TFLOP/s bound "
                     f"({bound:,.0f} crops/s)" if bound else "")
                  + (f", {r['memory_gb']:.2f} GB peak memory" if r["memory_gb"] is not None
                     else ""))


if __name__ == "__main__":
    main()
