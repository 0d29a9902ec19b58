"""How faithful Gen(J) gets from reconstruction alone, per generator choice (issue 12, item 2).

Trains only the generator, on L_recons of the labelled training crops (augmented as in
training) for ``--steps`` steps, then prints its fidelity on the test split (handgan.fidelity:
hand-region and full-crop depth error of Gen(J_test), and the read-back error of a reference
pose network on Gen(J_test) beside its error on the real test crops):

    python benchmarks/bench_generator_fidelity.py --reference runs/ref/checkpoints/best.pt \\
        --labeled-fraction 0.1 --steps 1180 --set model.gen_render=false --set loss.w_hand=5

``--set`` takes the training config's keys (preset quick by default); the relevant ones are
``loss.recons_mode``, ``loss.tau``, ``loss.w_hand`` and ``model.gen_render``. Or evaluate a
trained run's generator: ``--run RUN`` (no training).
"""
from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import torch

from handgan.batches import load_data
from handgan.checkpoint import resolve_checkpoint
from handgan.config import apply_overrides, preset
from handgan.data.sources import prepare_sources
from handgan.device import resolve_device
from handgan.fidelity import generator_fidelity
from handgan.losses import reconstruction_loss
from handgan.networks import load_networks
from handgan.steps import recons_weight
from handgan.train import build_models, seed_everything


def train_generator(cfg, data, steps: int, device: torch.device) -> torch.nn.Module:
    seed_everything(cfg.seed)
    gen, _ = build_models(cfg, device)
    opt = torch.optim.Adam(gen.parameters(), lr=cfg.optim.lr, betas=tuple(cfg.optim.betas))
    labeled, batch = data.labeled, cfg.optim.batch_size
    steps_per_epoch = max(1, data.train_frames // batch)
    rng = np.random.default_rng(cfg.seed)
    for step in range(steps):
        if step % steps_per_epoch == 0:
            labeled.set_epoch(step // steps_per_epoch)
        x, j, ray = labeled.sample_batch(rng.integers(0, len(labeled), batch), rays=True)
        x, j, ray = x.to(device), j.to(device), ray.to(device)
        lr = cfg.optim.lr * 0.5 * (1 + math.cos(math.pi * step / steps))
        for group in opt.param_groups:
            group["lr"] = lr
        drawn = gen(j, ray=ray, clean=True).float()
        loss = reconstruction_loss(x, drawn, cfg.loss.tau, cfg.loss.recons_mode,
                                   recons_weight(j, cfg))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return gen


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reference", help="a pose network checkpoint (or run) that reads Gen(J)")
    p.add_argument("--run", help="evaluate this run's generator instead of training one")
    p.add_argument("--preset", default="quick")
    p.add_argument("--labeled-fraction", type=float, default=0.1)
    p.add_argument("--steps", type=int, default=1180)
    p.add_argument("--set", action="append", default=[], dest="overrides")
    p.add_argument("--device", default="auto")
    p.add_argument("--name", default="", help="a label printed with the figures")
    args = p.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    device = resolve_device(args.device)
    estimators = {}
    if args.reference:
        _, _, ref = load_networks(resolve_checkpoint(args.reference), device=device)
        estimators["reference"] = ref
    started = time.perf_counter()
    if args.run:
        cfg, gen, dis = load_networks(resolve_checkpoint(args.run), device=device)
        prepare_sources([cfg.data.source, cfg.data.unlabeled], seed=cfg.seed)
        estimators["run"] = dis
    else:
        cfg = apply_overrides(preset(args.preset),
                              [f"data.labeled_fraction={args.labeled_fraction}", *args.overrides])
        prepare_sources([cfg.data.source, cfg.data.unlabeled], seed=cfg.seed)
        data = load_data(cfg, progress=False)
        gen = train_generator(cfg, data, args.steps, device)
    data = load_data(cfg, progress=False)
    report = generator_fidelity(gen, data.test, estimators, device)
    report.update(name=args.name or args.run or " ".join(args.overrides) or "default",
                  steps=0 if args.run else args.steps,
                  seconds=round(time.perf_counter() - started, 1), device=str(device))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
