"""The training loop: the seed's pose-conditioned GAN, or the supervised-only baseline.

    run_dir = train(preset("quick"), "runs/quick")            # GAN mode, the seed's method
    train(cfg, "runs/quick", resume=True)                      # continue from checkpoints/last.pt

One run: :func:`~handgan.batches.load_data` (crop caches; labelled, validation and unlabelled
rows) -> each epoch a seeded batch order (:class:`~handgan.batches.EpochBatches`) -> one step per
batch (:func:`~handgan.steps.gan_step` or :func:`~handgan.steps.supervised_step`) -> after each
epoch an evaluation, a sample grid and a checkpoint. The batch-order generator's state is
checkpointed with every other RNG, so a resumed run takes exactly the batches, augmentations and
noise an uninterrupted run would have taken.

Run folder::

    config.yaml            the resolved config
    metrics.jsonl          one JSON line per log event (losses) and per evaluation
    checkpoints/last.pt    after every epoch and at the end; best.pt = lowest test error so far
    summary.json           final and best mean joint error, baseline, steps, wall time, crops/s
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from handgan.atomic import ATOMIC_TMP, atomic_write_text
from handgan.batches import (
    DeviceCrops,
    EpochBatches,
    TrainData,
    epoch_order,
    equivariance_augment,
    iterate_batches,
    load_data,
    prepare_data,
)
from handgan.checkpoint import (
    CheckpointManager,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
)
from handgan.config import OptimConfig, TrainConfig, from_dict, save_yaml, to_dict
from handgan.data.sources import open_split, parse_source, prepare_sources, split_names
from handgan.dataset import LabeledCrops
from handgan.device import oversubscribed, resolve_device, training_threads
from handgan.distributed import (
    DistInfo,
    barrier,
    broadcast_object,
    gather_objects,
    init_distributed,
    mean_over_ranks,
    shutdown,
)
from handgan.errors import HandganError
from handgan.evaluation.metrics import crops_mean_error_mm
from handgan.fidelity import generator_fidelity
from handgan.localize import LOCALIZER_FILE, Localizer
from handgan.models import Discriminator, Generator, init_weights
from handgan.monitor import JsonlWriter, ScalarWriter, keep_records, progress_bar
from handgan.networks import load_weights, predict
from handgan.plots import crop_pairs_image, write_grey_png
from handgan.runlock import FolderLock
from handgan.steps import gan_step, step_phase, supervised_step

# What a resumed run cannot change: the networks' shapes and the crops they were trained on.
FIXED_ON_RESUME = ("mode", "seed", "model", "data.source", "data.unlabeled",
                   "data.labeled_fraction", "data.labeled_count", "data.split_seed",
                   "data.val_fraction", "data.size", "data.cube_mm", "data.centre",
                   "optim.batch_size", "localizer")
RUN_FILES = ("config.yaml", "metrics.jsonl", "summary.json", "checkpoints", LOCALIZER_FILE)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def build_models(cfg: TrainConfig, device: torch.device | str = "cpu"
                 ) -> tuple[Generator, Discriminator]:
    """Gen and Dis with DCGAN initialisation (draws from torch's RNG: seed first)."""
    gen, dis = Generator(cfg.model), Discriminator(cfg.model)
    return gen.apply(init_weights).to(device), dis.apply(init_weights).to(device)


def build_optimizers(cfg: TrainConfig, gen: nn.Module, dis: nn.Module
                     ) -> tuple[torch.optim.Adam, torch.optim.Adam]:
    """Adam for each network; on CUDA fused (one kernel a step for all the parameters), else
    torch's default implementation."""
    o = cfg.optim

    def adam(m: nn.Module) -> torch.optim.Adam:
        fused = all(q.is_cuda for q in m.parameters()) or None
        return torch.optim.Adam(m.parameters(), lr=o.lr, betas=tuple(o.betas),
                                weight_decay=o.weight_decay, fused=fused)

    return adam(gen), adam(dis)


def learning_rate(o: OptimConfig, step: int, total_steps: int) -> float:
    """The learning rate of step ``step`` (0-based) of ``total_steps``; a pure function of the
    step, so a resumed run continues the schedule exactly."""
    if o.lr_schedule == "cosine" and total_steps > 1:
        return o.lr * 0.5 * (1.0 + math.cos(math.pi * step / total_steps))
    return o.lr


@dataclass(frozen=True)
class Plan:
    """How many steps of which batches (the same in every process)."""

    batch: int             # the global batch size
    share: slice           # this process's rows of each batch
    steps_per_epoch: int
    total_steps: int       # this run's steps: the schedule, cut short by optim.max_steps
    planned_steps: int     # the schedule's length, epochs x steps per epoch


def plan_steps(cfg: TrainConfig, data: TrainData, info: DistInfo) -> Plan:
    batch, world = cfg.optim.batch_size, info.world_size
    if batch % world:
        raise HandganError(f"optim.batch_size={batch} does not split over {world} "
                           "processes; use a multiple of the process count")
    # An epoch is one pass over the training split's frames, labelled or not, whatever the
    # labelled share: runs with 1 % and 100 % labels get the same number of steps (the labelled
    # batches then cycle through their smaller set several times per epoch).
    steps_per_epoch = data.train_frames // batch
    if steps_per_epoch == 0:
        raise HandganError(f"{data.train_frames} training frames: fewer than one batch of "
                           f"{batch}; lower optim.batch_size")
    planned = steps_per_epoch * cfg.optim.epochs
    total = planned if cfg.optim.max_steps is None else min(planned, cfg.optim.max_steps)
    share = slice(info.rank * batch // world, (info.rank + 1) * batch // world)
    return Plan(batch, share, steps_per_epoch, total, planned)


def open_data(cfg: TrainConfig, run_dir: Path, device: torch.device, info: DistInfo,
              progress: bool) -> tuple[TrainData, Localizer | None, dict | None]:
    """:func:`~handgan.batches.prepare_data` on rank 0, which builds the crop caches and trains
    the localiser; the other processes then open what it made."""
    if info.is_main:
        prepare_sources([cfg.data.source, cfg.data.unlabeled], seed=cfg.seed, progress=progress)
        data, localizer, record = prepare_data(cfg, run_dir, device, progress)
    barrier(info)
    if not info.is_main:
        state = (load_checkpoint(run_dir / LOCALIZER_FILE)["localizer"]
                 if cfg.localizer.enabled else None)
        localizer = Localizer.from_state(state) if state is not None else None
        data, record = load_data(cfg, progress=False, localizer=localizer), None
    return data, localizer, record


def wrap_networks(cfg: TrainConfig, gen: Generator, dis: Discriminator, info: DistInfo,
                  device: torch.device) -> tuple[nn.Module, nn.Module]:
    """What the steps call: the networks (compiled in place with ``compile``, so state dicts
    and the DDP wrappers see the plain modules), or their DDP wrappers."""
    if cfg.compile:
        for module in (gen, dis.trunk, dis.real_fake, dis.pose):
            module.compile()
    if not info.enabled:
        return gen, dis
    ids = [device.index] if device.type == "cuda" else None
    # Supervised mode never uses the real/fake head: DDP must be told to expect that.
    return (DDP(gen, device_ids=ids),
            DDP(dis, device_ids=ids, find_unused_parameters=cfg.mode != "gan"))


@dataclass
class Progress:
    """Where a run is: what a checkpoint saves and a resume restores."""

    epoch: int = 0
    batch_in_epoch: int = 0
    step: int = 0
    best: float = math.inf             # the selection split's error of best.pt
    best_epoch: int | None = None
    best_test: float | None = None     # the test error of best.pt (chosen on validation)
    epoch_start: dict | None = None    # RNG states at this epoch's start: they redraw its order
    seconds_before: float = 0.0        # wall time of the sessions before this one


def resume_progress(ckpt: dict, path: Path, gen: Generator, dis: Discriminator,
                    opt_g: torch.optim.Optimizer, opt_d: torch.optim.Optimizer,
                    perm_rng: np.random.Generator, info: DistInfo) -> Progress:
    """Networks, optimisers and RNGs as the checkpoint left them (the batch order's at the
    start of its epoch); returns the run's progress."""
    load_weights(ckpt, path, {"generator": gen, "discriminator": dis}, "the run's config")
    try:
        opt_g.load_state_dict(ckpt["opt_g"])
        opt_d.load_state_dict(ckpt["opt_d"])
    except (KeyError, RuntimeError, ValueError) as e:
        raise HandganError(f"{path}: its optimiser states do not fit the run's config "
                           f"({str(e).splitlines()[0]})") from None
    ranks = ckpt.get("rng_ranks")
    restore_rng_state(ckpt["rng_epoch_start"], {"perm": perm_rng})  # redraw this epoch
    # ...and every other generator where it stopped
    restore_rng_state(ranks[info.rank] if ranks is not None and len(ranks) == info.world_size
                      else ckpt["rng"])
    best = ckpt["best_metric"] if ckpt["best_metric"] is not None else math.inf
    return Progress(ckpt["epoch"], ckpt["batch_in_epoch"], ckpt["step"], best,
                    ckpt.get("best_epoch"), ckpt.get("best_test_error"),
                    ckpt["rng_epoch_start"],  # a run with nothing left to train saves it
                    ckpt.get("wall_seconds_total", 0.0))


@dataclass
class Run:
    """One call of :func:`train`: what the end-of-epoch work uses (set up in :func:`_start`)."""

    cfg: TrainConfig
    run_dir: Path
    info: DistInfo
    device: torch.device
    data: TrainData
    plan: Plan
    gen: Generator
    dis: Discriminator
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    manager: CheckpointManager
    localizer: Localizer | None
    threads: int | None                # CPU threads (None on a GPU)
    baseline: float | None = None      # test error of always predicting the mean training pose
    samples: LabeledCrops | None = None  # GAN runs: crops drawn beside Gen(their joints)
    metrics: JsonlWriter | None = None   # rank 0 writes the run folder
    scalars: ScalarWriter | None = None
    started: float = 0.0               # time.perf_counter() as this session's steps start
    last_eval: dict = field(default_factory=dict)  # this session's latest evaluation

    @property
    def selection(self) -> str:
        """The split whose error chooses best.pt: validation if held out, else test."""
        return "val" if self.data.val is not None else "test"


def save(run: Run, p: Progress, epoch_start: dict, is_best: bool) -> None:
    """``last.pt`` (and ``best.pt``): everything a resume needs (every process calls this)."""
    rng_ranks = gather_objects(capture_rng_state(), run.info)
    if run.info.is_main:
        run.manager.save({
            "config": to_dict(run.cfg), "mode": run.cfg.mode, "crop": run.data.crop,
            "mean_pose": torch.from_numpy(run.data.mean_pose),  # the baseline, for evaluate
            "generator": run.gen.state_dict(), "discriminator": run.dis.state_dict(),
            "opt_g": run.opt_g.state_dict(), "opt_d": run.opt_d.state_dict(),
            "epoch": p.epoch, "batch_in_epoch": p.batch_in_epoch, "step": p.step,
            "best_metric": p.best if math.isfinite(p.best) else None, "best_epoch": p.best_epoch,
            "best_test_error": p.best_test,
            "selection_split": run.selection, "world_size": run.info.world_size,
            "rng": rng_ranks[0], "rng_ranks": rng_ranks if run.info.enabled else None,
            "rng_epoch_start": epoch_start,
            "localizer": run.localizer.state() if run.localizer is not None else None,
            "wall_seconds_total": p.seconds_before + time.perf_counter() - run.started,
            "threads": run.threads,
        }, is_best=is_best)
    barrier(run.info)


def end_of_epoch(run: Run, p: Progress, epoch_start: dict, force_eval: bool) -> None:
    """Evaluate (rank 0; every ``eval_every_epochs``, at the last epoch, or ``force_eval``),
    choose best.pt, draw the samples at an epoch's end, then save the checkpoint."""
    cfg, is_best = run.cfg, False
    if run.info.is_main and (force_eval or p.epoch % cfg.eval_every_epochs == 0
                             or p.epoch == cfg.optim.epochs):
        err = evaluate(run, p)
        if err is not None and err < p.best:
            p.best, p.best_epoch, is_best = err, p.epoch, True
            p.best_test = run.last_eval.get("test_mean_error_mm")
    if run.samples is not None and p.batch_in_epoch == 0 and p.epoch % cfg.sample_every_epochs == 0:
        draw_samples(run, p)
    save(run, p, epoch_start, is_best)


def evaluate(run: Run, p: Progress) -> float | None:
    """Rank 0: validation and test error; returns the error that chooses best.pt."""
    data = run.data
    errors = {f"{name}_mean_error_mm": crops_mean_error_mm(predict(run.dis, crops, run.device),
                                                           crops)
              for name, crops in (("val", data.val), ("test", data.test)) if crops is not None}
    if not errors:
        return None
    run.last_eval.clear()
    run.last_eval.update(errors)
    fidelity = {}
    if run.cfg.mode == "gan":  # how faithful Gen(J) is on the selection split (RNG untouched)
        f = generator_fidelity(run.gen, data.val if data.val is not None else data.test,
                               {"run": run.dis}, run.device)
        fidelity = {"generator_hand_depth_error_mm": f["hand_depth_error_mm"],
                    "generator_readback_mean_error_mm": f["readback_mean_error_mm"]["run"]}
    run.metrics.write({"event": "eval", "step": p.step, "epoch": p.epoch, **errors,
                       "mean_error_mm": errors.get("test_mean_error_mm"),
                       "mean_pose_baseline_mm": run.baseline, **fidelity})
    run.scalars.add_scalars({**errors, **fidelity}, p.step, "eval/")
    return errors[f"{run.selection}_mean_error_mm"]


def draw_samples(run: Run, p: Progress) -> None:
    """samples/epoch_NNN.png: the sample crops beside Gen(their joints)."""
    x, j, ray = run.samples.sample_batch(np.arange(len(run.samples)), rays=True)
    run.gen.eval()
    with torch.no_grad():
        fake = run.gen(j.to(run.device), ray.to(run.device)).float().cpu().numpy()[:, 0]
    run.gen.train()
    image = crop_pairs_image(x.numpy()[:, 0], fake)
    write_grey_png(run.run_dir / "samples" / f"epoch_{p.epoch:03d}.png", image)
    run.scalars.add_image("samples/real_vs_generated", image, p.step)


def write_summary(run: Run, p: Progress, first_step: int, train_seconds: float,
                  crops_seen: int) -> None:
    """summary.json: the final and best errors, the steps and the time they took."""
    now = time.perf_counter()
    summary = {
        "mode": run.cfg.mode,
        "final_mean_error_mm": run.last_eval.get("test_mean_error_mm"),
        "final_val_mean_error_mm": run.last_eval.get("val_mean_error_mm"),
        "mean_pose_baseline_mm": run.baseline,
        "selection_split": run.selection,
        "best_selection_error_mm": p.best if math.isfinite(p.best) else None,
        "best_mean_error_mm": p.best_test,  # test error of best.pt
        "best_epoch": p.best_epoch,
        "steps": p.step, "epochs_done": p.epoch,
        "steps_this_session": p.step - first_step,
        "wall_seconds": round(now - run.started, 3),  # this session
        "wall_seconds_total": round(p.seconds_before + now - run.started, 3),
        "train_seconds": round(train_seconds, 3),
        "crops_per_s": round(crops_seen / train_seconds, 1) if train_seconds > 0 else None,
        "device": str(run.device), "world_size": run.info.world_size, "threads": run.threads,
        "gpu_memory_gb": (round(torch.cuda.max_memory_allocated(run.device) / 1e9, 3)
                          if run.device.type == "cuda" else None),  # this process's peak
    }
    atomic_write_text(run.run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")


def train(cfg: TrainConfig, run_dir: str | Path, resume: bool = False,
          progress: bool = True) -> Path:
    """Train ``cfg`` into ``run_dir`` (created); returns the run folder. With ``resume`` the run
    continues from ``checkpoints/last.pt`` with every RNG state restored, exactly as an
    uninterrupted run. Under torchrun every process calls this; rank 0 writes the run folder."""
    run_dir = Path(run_dir)
    cfg = with_data_joints(cfg)
    manager = CheckpointManager(run_dir / "checkpoints")
    if resume and manager.latest() is None:
        raise HandganError(f"{manager.run_dir}: no last.pt to resume from")
    device = resolve_device(cfg.device)
    info = init_distributed(device.type)
    if info.enabled and device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
    try:
        # One writer per run folder (rank 0 writes it); checked under the lock, so two commands
        # started together cannot both pass the checks.
        with FolderLock(run_dir) if info.is_main else nullcontext():
            if info.is_main:
                check_run_folder(cfg, run_dir, manager, resume)
            try:
                return _train(cfg, run_dir, manager, resume, progress, device, info)
            except HandganError:
                if info.is_main and not resume and manager.latest() is None:
                    # A refused start (bad data, batch size) leaves no run behind, so the same
                    # command with the mistake fixed is not refused for "an earlier run's files":
                    # check_run_folder found none of them, so this call wrote them.
                    for name in RUN_FILES[:-1]:  # all but checkpoints/
                        (run_dir / name).unlink(missing_ok=True)
                raise
    finally:
        shutdown(info)


def with_data_joints(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with ``model.num_joints`` taken from the training source's joint layout (NYU 14,
    ICVL 16, MSRA 21): the networks are built for the joints the labels hold."""
    spec = parse_source(cfg.data.source)
    if spec.kind not in ("icvl", "msra"):  # synthetic, nyu: NYU's 14 (the default); folder: none
        return cfg
    names = split_names(spec)
    if not names:
        return cfg  # load_data names what is missing
    count = len(open_split(spec, names[0]).joint_names)
    if count in (0, cfg.model.num_joints):
        return cfg
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, num_joints=count))


def check_run_folder(cfg: TrainConfig, run_dir: Path, manager: CheckpointManager,
                     resume: bool) -> None:
    """Refuse, before anything is written, a fresh run into a folder holding an earlier run's
    files, or a resume whose config changes what :data:`FIXED_ON_RESUME` lists; then remove the
    temp files that killed writers left (the caller holds the folder's lock)."""
    if not resume:
        found = [name for name in RUN_FILES if (run_dir / name).exists()]
        if "checkpoints" in found:
            raise HandganError(f"{run_dir}: already holds a run (use --resume to continue it, "
                               "or choose another --out)")
        if found:
            raise HandganError(f"{run_dir}: holds files of an earlier run that saved no "
                               f"checkpoint ({', '.join(found)}); remove them or choose another "
                               "--out")
    else:
        last = manager.last_path
        ckpt = load_checkpoint(last)
        missing = [k for k in ("config", "generator", "discriminator", "opt_g", "opt_d", "step",
                               "epoch", "batch_in_epoch", "rng", "rng_epoch_start")
                   if k not in ckpt]
        if missing:
            raise HandganError(f"{last}: not a training checkpoint (no {', '.join(missing)}); "
                               "cannot resume from it")
        saved, now = _flat(to_dict(from_dict(ckpt["config"]))), _flat(to_dict(cfg))
        for key in saved:
            if key.startswith(FIXED_ON_RESUME) and saved[key] != now.get(key):
                raise HandganError(f"{run_dir}: --resume cannot change {key} (the run has "
                                   f"{saved[key]!r}, asked {now.get(key)!r}); it shapes the "
                                   "networks or their data: start a new run with another --out")
    for folder in (run_dir, manager.run_dir):
        for tmp in folder.glob(".*.tmp") if folder.is_dir() else ():
            if ATOMIC_TMP.fullmatch(tmp.name):  # atomic_write's, left by a kill mid-write
                tmp.unlink(missing_ok=True)
    if resume:  # a checkpoint folder we cannot write to would only fail after an epoch's work
        probe = manager.run_dir / f".handgan-write-probe.{os.getpid()}"
        try:
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            raise HandganError(f"{manager.run_dir}: cannot write checkpoints there "
                               f"({e.strerror or e})") from None


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def _start(cfg: TrainConfig, run_dir: Path, manager: CheckpointManager, resume: bool,
           progress: bool, device: torch.device, info: DistInfo
           ) -> tuple[Run, Progress, np.random.Generator, dict | None]:
    """Everything before the first step (on resume: the saved states). Returns (the run, its
    progress, the batch-order generator, the localiser's log record)."""
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_yaml(cfg, run_dir / "config.yaml")
    threads = None
    if device.type == "cpu":  # before the localiser stage, which trains on the CPU too
        threads = cfg.threads or training_threads()
        torch.set_num_threads(threads)
    seed_everything(cfg.seed)
    data, localizer, localizer_record = open_data(cfg, run_dir, device, info, progress)
    plan = plan_steps(cfg, data, info)
    seed_everything(cfg.seed)
    gen, dis = build_models(cfg, device)  # the same initial weights in every process
    if info.enabled:  # ...but each process its own random draws (Gen's sensor, new poses)
        torch.manual_seed(cfg.seed * info.world_size + info.rank)
    if device.type == "cuda" and cfg.channels_last:
        gen.to(memory_format=torch.channels_last)
        dis.to(memory_format=torch.channels_last)
    opt_g, opt_d = build_optimizers(cfg, gen, dis)
    perm_rng = np.random.default_rng(cfg.seed)  # batch order (labelled, then unlabelled)
    p = Progress()
    if resume:
        ckpt = load_checkpoint(manager.last_path, map_location=device)
        p = resume_progress(ckpt, manager.last_path, gen, dis, opt_g, opt_d, perm_rng, info)
        if threads is not None and cfg.threads is None and ckpt.get("threads"):
            # float sums depend on the thread count: resume with the run's, for exact resume
            threads = int(ckpt["threads"])
            torch.set_num_threads(threads)
    run = Run(cfg, run_dir, info, device, data, plan, gen, dis, opt_g, opt_d, manager, localizer,
              threads)
    return run, p, perm_rng, localizer_record


def epoch_batches(run: Run, p: Progress, perm_rng: np.random.Generator, unlabeled: bool,
                  view_augment) -> EpochBatches:
    """This epoch's batches up to the run's last step: the whole epoch's order is drawn, so a
    resumed epoch (from ``p.batch_in_epoch``) takes the batches it would have."""
    data, plan, cfg = run.data, run.plan, run.cfg
    data.labeled.set_epoch(p.epoch)
    data.unlabeled.set_epoch(p.epoch)
    count = plan.steps_per_epoch * plan.batch
    order = epoch_order(perm_rng, len(data.labeled), count)
    order_u = epoch_order(perm_rng, len(data.unlabeled), count) if unlabeled else None
    end = p.batch_in_epoch + min(plan.steps_per_epoch - p.batch_in_epoch, plan.total_steps - p.step)
    return EpochBatches(data.labeled, data.unlabeled, order, order_u, plan.batch, plan.share, end,
                        view_augment, rays=cfg.mode == "gan" and cfg.model.gen_render,
                        plans=cfg.data.pipeline == "device")


def open_logs(run: Run, localizer_record: dict | None) -> None:
    """Rank 0: metrics.jsonl (with the localiser's record), TensorBoard, the mean-pose baseline
    and the sample crops."""
    run.metrics = JsonlWriter(run.run_dir / "metrics.jsonl")
    run.scalars = ScalarWriter(run.run_dir / "tb")
    if localizer_record is not None:
        run.metrics.write(localizer_record)
    data = run.data
    if data.test is not None:
        run.baseline = crops_mean_error_mm(data.mean_pose, data.test)
    if run.cfg.mode == "gan" and run.cfg.sample_every_epochs:
        # the fixed crops drawn beside Gen(their joints) every epoch (validation if held out)
        source = data.val if data.val is not None else data.labeled
        run.samples = LabeledCrops(data.train_cache, source.indices[:8])


def log_losses(run: Run, p: Progress, losses: dict[str, torch.Tensor], bar) -> None:
    """Every ``log_every`` steps: the step's losses (0-dim tensors, read here, so other steps
    never wait for the device) averaged over the processes, to metrics.jsonl, TensorBoard
    (rank 0) and the progress bar."""
    if p.step % run.cfg.log_every:
        return
    if run.threads is not None:  # say so when other jobs slow this run down
        bar.set_description("train (CPU shared with other jobs)"
                            if oversubscribed(run.threads) else "train")
    losses = mean_over_ranks({k: v.item() for k, v in losses.items()}, run.info, run.device)
    if run.info.is_main:
        run.metrics.write({"event": "train", "step": p.step, "epoch": p.epoch, **losses})
        run.scalars.add_scalars(losses, p.step, "train/")
    bar.set_postfix({k.removeprefix("loss_"): f"{v:.4f}" for k, v in losses.items()},
                    refresh=False)


def _train(cfg: TrainConfig, run_dir: Path, manager: CheckpointManager, resume: bool,
           progress: bool, device: torch.device, info: DistInfo) -> Path:
    run, p, perm_rng, localizer_record = _start(cfg, run_dir, manager, resume, progress, device,
                                                info)
    main, plan, gan, cuda = info.is_main, run.plan, cfg.mode == "gan", device.type == "cuda"
    gen_t, dis_t = wrap_networks(cfg, run.gen, run.dis, info, device)  # what the steps call
    # The real/fake head and the equivariance term are what unlabelled crops are for.
    unlabeled = (gan or cfg.loss.w_equivariance > 0) and len(run.data.unlabeled) > 0
    view_augment = equivariance_augment(cfg) if unlabeled and cfg.loss.w_equivariance > 0 else None
    autocast = ((lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cfg.amp and cuda
                else nullcontext)
    memory_format = torch.channels_last if cuda and cfg.channels_last else torch.preserve_format
    on_device = DeviceCrops(run.data, device) if cfg.data.pipeline == "device" else None
    first_step = p.step
    finished = p.step >= plan.total_steps or p.epoch >= cfg.optim.epochs
    if resume and finished and (run_dir / "summary.json").is_file():
        return run_dir  # a finished run: nothing to train, nothing to rewrite
    if resume and main:
        # Drop what was logged after the checkpoint (the resumed run logs those steps again);
        # a run with nothing left to train evaluates its checkpoint's step again too.
        keep_records(run_dir / "metrics.jsonl",
                     lambda r: r.get("step", 0) < p.step
                     or (r.get("step") == p.step and not (finished and r.get("event") == "eval")))
    run.gen.train()
    run.dis.train()
    if main:
        open_logs(run, localizer_record)
    bar = progress_bar(plan.total_steps, initial=p.step, enabled=progress and main)
    train_seconds, crops_seen = 0.0, 0
    run.started = time.perf_counter()
    try:
        while p.epoch < cfg.optim.epochs and p.step < plan.total_steps:
            # This epoch's batch order; its generator state is what a checkpoint saved mid-epoch
            # needs to redraw it.
            p.epoch_start = capture_rng_state({"perm": perm_rng})
            batches = epoch_batches(run, p, perm_rng, unlabeled, view_augment)
            workers = cfg.num_workers if len(batches) - p.batch_in_epoch > 1 else 0
            loader = iterate_batches(batches, p.batch_in_epoch, workers, pin=cuda)
            t0 = time.perf_counter()  # the loop's time counts its batches' making and its steps
            for batch in loader:  # with data.pipeline=device a BatchPlan, made on the device
                lr = learning_rate(cfg.optim, p.step, plan.planned_steps)
                for group in (*run.opt_g.param_groups, *run.opt_d.param_groups):
                    group["lr"] = lr
                batch = (on_device.batch(batch) if on_device else batch).to(device, memory_format)
                if gan:
                    losses = gan_step(gen_t, dis_t, run.opt_g, run.opt_d, batch, cfg,
                                      step_phase(cfg.loss, p.step, plan.steps_per_epoch),
                                      autocast)
                else:
                    losses = supervised_step(dis_t, run.opt_d, batch, cfg, autocast)
                crops_seen += plan.batch
                p.step, p.batch_in_epoch = p.step + 1, p.batch_in_epoch + 1
                log_losses(run, p, losses, bar)
                bar.update(1)
            if cuda:
                torch.cuda.synchronize(device)  # the steps still queued on the GPU
            train_seconds += time.perf_counter() - t0
            del loader  # stops its workers
            if p.batch_in_epoch < plan.steps_per_epoch:  # stopped mid-epoch by max_steps
                break
            p.epoch, p.batch_in_epoch = p.epoch + 1, 0
            end_of_epoch(run, p, capture_rng_state({"perm": perm_rng}), force_eval=False)

        # The end (all epochs, or max_steps): a final evaluation and a loadable checkpoint.
        if p.batch_in_epoch:  # mid-epoch: resume redraws this epoch's order and skips what is done
            end_of_epoch(run, p, p.epoch_start, force_eval=True)
        elif broadcast_object(not run.last_eval and (run.data.val is not None
                                                     or run.data.test is not None), info):
            # nothing evaluated this session (a resumed finished run, or the last epochs between
            # evaluations): rank 0 decides, and every process joins the save
            end_of_epoch(run, p, capture_rng_state({"perm": perm_rng}), force_eval=True)
    finally:
        bar.close()
        if main:
            run.metrics.close()
            run.scalars.close()
    if main:
        write_summary(run, p, first_step, train_seconds, crops_seen)
    barrier(info)
    return run_dir
