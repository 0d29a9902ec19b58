"""The label-efficiency study: test error against the share of labelled training frames, for the
GAN and the supervised-only baseline (and any named variants), with identical budgets.

    handgan study labels --out runs/study --fractions 0.01,0.1,1 --modes gan,supervised --seeds 3

Every (fraction, mode, seed) run is an ordinary run folder under ``OUT/runs/``; a run that
finished is read back, a run that was interrupted is resumed, so rerunning the command after an
interruption continues the study. Seed ``s`` sets both the run's seed and which frames keep their
labels (``data.split_seed``), so the spread over seeds covers both. All runs take the same number
of steps (an epoch is one pass over every training frame, labelled or not) and are evaluated on
the same test split. The reported error is the test error of each run's ``best.pt``, the
checkpoint its validation hold-out chose.

Output: ``study.json`` (``{"rows": [...], "config": {...}}``, rewritten after every run),
``table.md`` (mean ± std over seeds) and ``label-study.png`` (error vs labelled fraction, log
axis, one line per mode).
"""
from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from handgan.atomic import atomic_write, atomic_write_text
from handgan.config import TrainConfig, apply_overrides, load_yaml, to_dict
from handgan.errors import HandganError
from handgan.runlock import FolderLock

BASE_MODES = ("gan", "supervised")


@dataclass(frozen=True)
class Variant:
    """A line of the study: a training mode plus config overrides (an ablation)."""

    name: str
    mode: str
    overrides: tuple[str, ...] = ()


@dataclass
class StudyPlan:
    base: TrainConfig
    fractions: list[float]
    variants: list[Variant]
    seeds: int = 1
    extra: dict = field(default_factory=dict)  # recorded in study.json["config"]


def parse_fractions(text: str) -> list[float]:
    """'0.01,0.1,1' -> [0.01, 0.1, 1.0]; each in (0, 1], no repeats."""
    try:
        values = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise HandganError(f"--fractions: expected numbers like 0.01,0.1,1, got {text!r}") from None
    if not values or any(not 0 < v <= 1 for v in values) or len(set(values)) != len(values):
        raise HandganError(f"--fractions: each fraction must be in (0, 1], once; got {text!r}")
    return sorted(values)


def parse_variants(modes: str, variants: list[str]) -> list[Variant]:
    """``--modes gan,supervised`` and ``--variant NAME=MODE:KEY=VALUE[,KEY=VALUE...]`` -> lines.

    A variant without ``MODE:`` trains in GAN mode, e.g. ``gan-wd=optim.weight_decay=1e-4``.
    """
    out = []
    for mode in (m.strip() for m in modes.split(",") if m.strip()):
        if mode not in BASE_MODES:
            raise HandganError(f"--modes: unknown mode {mode!r} (gan, supervised)")
        out.append(Variant(mode, mode))
    for spec in variants:
        name, sep, rest = spec.partition("=")
        if not sep or not name.strip() or not rest:
            raise HandganError(f"--variant: expected NAME=[MODE:]KEY=VALUE[,KEY=VALUE], got {spec!r}")
        mode, colon, settings = rest.partition(":")
        if not colon or "=" in mode:
            mode, settings = "gan", rest
        if mode not in BASE_MODES:
            raise HandganError(f"--variant {name}: unknown mode {mode!r} (gan, supervised)")
        out.append(Variant(name.strip(), mode, tuple(s for s in settings.split(",") if s)))
    names = [v.name for v in out]
    if not out or len(set(names)) != len(names):
        raise HandganError(f"study lines must be given once each, got {names}")
    return out


def _train_run(cfg: TrainConfig, run_dir: Path, progress: bool, threads: int | None) -> None:
    """Train (or resume) one run of the study; in a worker process with ``threads`` set."""
    from handgan.train import train

    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    resume = (run_dir / "checkpoints" / "last.pt").is_file()
    if not resume and run_dir.exists():
        shutil.rmtree(run_dir)  # killed before its first checkpoint: start it again
    train(cfg, run_dir, resume=resume, progress=progress)


def run_study(plan: StudyPlan, out: str | os.PathLike, progress: bool = True,
              jobs: int = 1) -> dict:
    """Train and evaluate every (fraction, line, seed); returns the study dict (also written).

    ``jobs`` > 1 trains that many runs at once in worker processes (one thread each; on a GPU
    they share it): for machines with many cores, or a GPU that one small run leaves idle.
    The rows and files are the same as with one job; only the runs' timings differ.
    """
    out = Path(out)
    with FolderLock(out, "study folder"):  # one study per folder: it restarts unfinished runs
        return _run_study(plan, out, progress, jobs)


def _run_study(plan: StudyPlan, out: Path, progress: bool, jobs: int) -> dict:
    todo = [(f, v, s, out / "runs" / f"{v.name}-f{f:g}-s{s}")
            for f in plan.fractions for v in plan.variants for s in range(plan.seeds)]
    pending = []
    for k, (fraction, variant, seed, run_dir) in enumerate(todo, 1):
        cfg = apply_overrides(plan.base, [
            f"mode={variant.mode}", f"seed={seed}", f"data.split_seed={seed}",
            f"data.labeled_fraction={fraction}", "data.labeled_count=none", *variant.overrides])
        if not _finished(run_dir, cfg):
            pending.append((k, run_dir, cfg))
    if jobs > 1 and len(pending) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        with ProcessPoolExecutor(min(jobs, len(pending)),
                                 mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(_train_run, cfg, run_dir, False, 1): run_dir
                       for _, run_dir, cfg in pending}
            for done, future in enumerate(as_completed(futures), 1):
                future.result()  # a failed run stops the study with its error
                if progress:
                    print(f"[{done}/{len(pending)}] {futures[future].name} done", flush=True)
    else:
        for k, run_dir, cfg in pending:
            if progress:
                print(f"[{k}/{len(todo)}] {run_dir.name}", flush=True)
            _train_run(cfg, run_dir, progress, None)
    rows = []
    for fraction, variant, seed, run_dir in todo:
        s = json.loads((run_dir / "summary.json").read_text())
        error = s.get("best_mean_error_mm") or s["final_mean_error_mm"]
        rows.append({"mode": variant.name, "base_mode": variant.mode,
                     "overrides": list(variant.overrides), "fraction": fraction, "seed": seed,
                     "mean_error_mm": error, "final_mean_error_mm": s["final_mean_error_mm"],
                     "mean_pose_baseline_mm": s["mean_pose_baseline_mm"],
                     "best_epoch": s.get("best_epoch"), "steps": s["steps"],
                     "wall_s": s["wall_seconds"], "run": str(run_dir)})
        study = {"rows": rows, "config": {**plan.extra, "fractions": plan.fractions,
                                          "modes": [v.name for v in plan.variants],
                                          "seeds": plan.seeds, "base": to_dict(plan.base)}}
        atomic_write_text(out / "study.json", json.dumps(study, indent=2) + "\n")
    atomic_write_text(out / "table.md", format_table(study))
    plot_study(study, out / "label-study.png")
    return study


def _finished(run_dir: Path, cfg: TrainConfig) -> bool:
    """A finished run of this config (a run left by an earlier study with other settings is an
    error, not something to mix in)."""
    if not (run_dir / "summary.json").is_file():
        return False
    saved = run_dir / "config.yaml"
    if saved.is_file() and load_yaml(saved) != cfg:
        raise HandganError(f"{run_dir}: holds a run with another config; use another "
                           "--out or delete it")
    return True


def summarise(study: dict) -> list[dict]:
    """One entry per (mode, fraction): mean and std over seeds, in study order."""
    groups: dict[tuple[str, float], list[float]] = {}
    for r in study["rows"]:
        groups.setdefault((r["mode"], r["fraction"]), []).append(r["mean_error_mm"])
    return [{"mode": m, "fraction": f, "n": len(v), "mean": float(np.mean(v)),
             "std": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0}
            for (m, f), v in groups.items()]


def format_table(study: dict) -> str:
    """Markdown: one row per labelled fraction, one column per mode (mean ± std over seeds)."""
    stats = summarise(study)
    modes = list(dict.fromkeys(s["mode"] for s in stats))
    fractions = sorted({s["fraction"] for s in stats})
    cell = {(s["mode"], s["fraction"]): s for s in stats}
    seeds = max(s["n"] for s in stats)
    spread = f"mean ± std over {seeds} seeds" if seeds > 1 else "one seed"
    lines = [f"Mean 3D joint error on the test split, mm ({spread}; best.pt chosen on the "
             "validation hold-out)", "",
             "| labelled | " + " | ".join(modes) + " |",
             "|---|" + "---|" * len(modes)]
    for f in fractions:
        vals = ["–" if (c := cell.get((m, f))) is None else
                f"{c['mean']:.2f}" + (f" ± {c['std']:.2f}" if c["n"] > 1 else "") for m in modes]
        lines.append(f"| {100 * f:g} % | " + " | ".join(vals) + " |")
    baseline = [r["mean_pose_baseline_mm"] for r in study["rows"] if r["fraction"] == 1.0]
    if baseline:
        lines += ["", f"Mean-pose baseline (all labels): {np.mean(baseline):.2f} mm."]
    return "\n".join(lines) + "\n"


def plot_study(study: dict, path: str | os.PathLike) -> Path:
    """Error vs labelled fraction (log x), one line per mode, ±1 std bars over seeds."""
    from matplotlib.figure import Figure

    stats = summarise(study)
    fig = Figure(figsize=(6.4, 4.4))
    ax = fig.subplots()
    for mode in dict.fromkeys(s["mode"] for s in stats):
        pts = sorted((s for s in stats if s["mode"] == mode), key=lambda s: s["fraction"])
        x = [100 * s["fraction"] for s in pts]
        ax.errorbar(x, [s["mean"] for s in pts], yerr=[s["std"] for s in pts], marker="o",
                    capsize=3, lw=2, label=mode)
    ax.set_xscale("log")
    ax.set_xlabel("labelled training frames (%)")
    ax.set_ylabel("mean 3D joint error (mm)")
    ax.grid(True, which="both", alpha=0.35)
    ax.legend()
    lo = min(s["mean"] - s["std"] for s in stats)
    ax.set_ylim(bottom=max(0.0, math.floor(lo * 0.9)))
    fig.tight_layout()
    path = Path(path)
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110), durable=False)
    return path
