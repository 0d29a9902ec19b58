"""Evaluate a trained pose estimator on a labelled split: ``handgan evaluate``.

    metrics = evaluate_checkpoint("runs/quick", out="runs/quick/eval-test")

The split is cropped exactly as the run's training crops were (same crop size, cube and centre
rule, through the same crop cache), the pose branch predicts normalised joints, and each row's
exact crop transform maps them back to full-frame ``u v d`` and to mm. The output folder holds::

    predictions.txt   the field's format: one frame per line, J x (u v d), full-image px and mm
    groundtruth.txt   the same frames' labels in that format (``handgan compare --gt`` reads it)
    metrics.json      mean_error_mm, per_joint_mm, success curves (3 kinds) with AUC,
                      mean_pose_baseline_mm (always predicting the mean training pose)
    success.png       success-rate curve, the run against the mean-pose baseline
    per_joint.png     per-joint mean errors, the run against the baseline
    predictions.png   test crops with true (white) and predicted (coloured) skeletons
    generated.png     GAN runs: 8 test crops | Gen(their true joints) | |difference| in mm
    report.md         all of the above, linked

GAN runs also get ``metrics["generator"]``: how faithful Gen(J) is to the test crops
(``fidelity.generator_fidelity``: depth errors in the hand region and over the whole crop, the
read-back error of the run's pose network and of an optional ``reference`` network).
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import torch

from handgan.atomic import atomic_write_text
from handgan.cachebuild import load_or_build_cache
from handgan.cachesource import CENTRES, CropParams
from handgan.cachestore import CropCache
from handgan.checkpoint import load_checkpoint, resolve_checkpoint
from handgan.config import DataConfig, TrainConfig
from handgan.data.sources import (
    missing_synthetic,
    open_split,
    parse_source,
    pick_test_split,
    split_names,
)
from handgan.dataset import all_labeled
from handgan.device import resolve_device
from handgan.errors import HandganError
from handgan.evaluation.figures import (
    plot_generated,
    plot_per_joint_errors,
    plot_success_curves,
)
from handgan.evaluation.metrics import (
    CURVE_KINDS,
    crop_errors_mm,
    mean_error_mm,
    per_joint_error_mm,
    success_auc,
    success_rates,
    thresholds_mm,
)
from handgan.evaluation.predfile import write_predictions
from handgan.fidelity import generator_fidelity, hand_region_mask, radius_px, skeleton_edges
from handgan.joints import readable_names
from handgan.localize import Localizer, localisation_errors, localisation_summary, locate_reader
from handgan.models import Discriminator, Generator
from handgan.networks import load_networks, predict, read_crop_spec
from handgan.outputs import check_output_folder
from handgan.plots import crop_skeleton_grid, sample_grid

GRID_FRAMES = 16
GENERATED_FRAMES = 8
FRAME_GRID = 8  # whole frames in frames.png


def default_out_dir(checkpoint: Path, split: str) -> Path:
    """RUN/eval-SPLIT for a checkpoint inside RUN/checkpoints/, else next to the file."""
    folder = checkpoint.parent
    run = folder.parent if folder.name == "checkpoints" else folder
    return run / f"eval-{split}"


def evaluate_checkpoint(checkpoint: str | os.PathLike, data: str | None = None,
                        split: str | None = None, out: str | os.PathLike | None = None,
                        centre: str | None = None, device: str = "auto",
                        progress: bool = True, cache_dir: str | os.PathLike | None = None,
                        reference: str | os.PathLike | None = None, full_frame: bool = True
                        ) -> dict:
    """Evaluate a run folder (its best.pt, else last.pt) or checkpoint on a labelled split,
    write the report folder and return the metrics dict of metrics.json.

    Args:
        data: data source spec; default the run's training source, if it is here (a
            checkpoint's paths are read, never written to: a synthetic set it names that is
            missing is not generated).
        split: default the source's test split (``sources.pick_test_split``).
        out: report folder; default RUN/eval-SPLIT. None-like "" writes nothing.
        centre: crop centre rule, "gt" or "com"; default the run's (``data.centre``).
        cache_dir: crop cache folder; default the local default (``.handgan-cache``), never
            the checkpoint's.
        reference: GAN runs: a run folder or checkpoint whose pose network also reads Gen(J)
            back (``metrics["generator"]["reference_readback_mean_error_mm"]``); it must
            predict the same joints from crops of the same size and cube.
        full_frame: with labelled-centre crops and a checkpoint that carries a hand localiser,
            also score the split with crops centred where the localiser finds the hand
            (``metrics["full_frame"]``: the figure a camera user gets).

    Raises:
        HandganError: bad checkpoint, data, split or centre; ``reference`` on a supervised run
            (its generator was never trained); a reference that does not fit the run.
    """
    path = resolve_checkpoint(checkpoint)
    if out != "" and (out is not None or split is not None):  # RUN/eval-SPLIT: once it is known
        check_output_folder(out if out is not None else default_out_dir(path, split))
    ckpt = load_checkpoint(path)
    dev = resolve_device(device)
    cfg, gen, dis = load_networks(path, device=dev, ckpt=ckpt)
    ref = _reference(path, cfg, reference, dev)
    centre = centre or cfg.data.centre
    spec, split = _pick_split(path, cfg, data, split, centre, out)
    cache_dir = DataConfig.cache_dir if cache_dir is None else cache_dir  # not the checkpoint's
    params = CropParams(size=cfg.model.size, cube_mm=cfg.data.cube_mm, centre=centre)
    reader = open_split(spec, split)
    localizer = (Localizer.from_state(ckpt["localizer"], dev, str(path))
                 if centre == "com" and ckpt.get("localizer") is not None else None)
    cache = _labelled_cache(spec, split, reader, cache_dir, params, cfg, localizer, progress)
    crops = all_labeled(cache)
    if ref is not None:
        _check_reference(ref, cache)
    pred_norm = predict(dis, crops, dev, progress=progress)
    errors = crop_errors_mm(pred_norm, crops)
    mean_pose = ckpt.get("mean_pose")  # the baseline: always the mean labelled training pose
    baseline_errors = crop_errors_mm(mean_pose.double().numpy(), crops) if mean_pose is not None \
        else None
    metrics = {"checkpoint": str(path), "step": ckpt.get("step"), "mode": cfg.mode,
               "data": str(spec), "split": split, "centre": centre, "frames": len(cache),
               "skipped_frames": len(cache.bad_frames),
               "joints": list(readable_names(cache.joint_names)),
               **_error_metrics(errors, baseline_errors)}
    if centre == "com":
        metrics["localisation"] = _localisation(reader, cache, localizer)
    elif ckpt.get("localizer") is not None and full_frame:
        metrics["full_frame"] = _full_frame(ckpt, path, reader, cache_dir, params, dis, dev,
                                            progress)
    if cfg.mode == "gan":
        metrics["generator"] = _fidelity(gen, dis, ref, crops, dev)
    out = default_out_dir(path, split) if out is None else out
    if out != "":
        _write_report(Path(out), metrics, cache, errors, baseline_errors, pred_norm, gen, dev,
                      reader)
    return metrics


def _reference(path: Path, cfg: TrainConfig, reference, device: torch.device):
    """(path, pose network, crop spec) of the reference checkpoint, checked (it needs the run's
    generator, and must predict the run's joints); or None."""
    if reference is None:
        return None
    if cfg.mode != "gan":
        raise HandganError(f"{path}: a reference (it reads back Gen(J)) needs a trained "
                           f"generator; this is a mode {cfg.mode!r} run, whose generator was "
                           "never trained")
    ref_path = resolve_checkpoint(reference)
    ckpt = load_checkpoint(ref_path)
    ref_cfg, net = load_networks(ref_path, ["estimator"], device, ckpt=ckpt)
    spec = read_crop_spec(ckpt, ref_cfg.model, ref_path)
    if ref_cfg.model.num_joints != cfg.model.num_joints:
        raise HandganError(f"{ref_path}: the reference predicts {ref_cfg.model.num_joints} "
                           f"joints, the run {cfg.model.num_joints}")
    return ref_path, net, spec


def _pick_split(path: Path, cfg: TrainConfig, data: str | None, split: str | None, centre: str,
                out):
    """(source spec, split name) to evaluate: the given ones, checked, or the run's source and
    its test split (then the default report folder is checked, now that its name is known)."""
    source = data or cfg.data.source
    if data is None and missing_synthetic(parse_source(source)):
        raise HandganError(f"{source}: the checkpoint's training data is not here (give --data; "
                           "--data synthetic makes the default set in data/synthetic)")
    if centre not in CENTRES:
        raise HandganError(f"centre must be one of {', '.join(CENTRES)}, got {centre!r}")
    spec = parse_source(source)
    names = split_names(spec)
    if split is None:
        split = pick_test_split(names)
        if split is None:
            raise HandganError(f"{spec}: no test split (has: {', '.join(names)}); name the "
                               "split to evaluate with --split")
        if out is None:
            check_output_folder(default_out_dir(path, split))
    if split not in names:
        raise HandganError(f"{spec}: no split {split!r} (has: {', '.join(names)})")
    return spec, split


def _labelled_cache(spec, split: str, reader, cache_dir, params: CropParams, cfg: TrainConfig,
                    localizer: Localizer | None, progress: bool) -> CropCache:
    """The split's crops, cropped as the run's were (centred by ``localizer`` when given);
    refused without labels or with another joint count than the model's."""
    located = locate_reader(localizer, reader, progress) if localizer is not None else None
    cache = load_or_build_cache(reader, cache_dir, params, progress=progress,
                                on_bad=cfg.data.on_bad, located=located)
    if not cache.labeled:
        raise HandganError(f"{spec} split {split!r} has no labels to evaluate against")
    if cache.joints_norm.shape[1] != cfg.model.num_joints:
        raise HandganError(f"{spec}: {cache.joints_norm.shape[1]} joints per frame, the model "
                           f"predicts {cfg.model.num_joints} (trained on another dataset?)")
    return cache


def _error_metrics(errors: np.ndarray, baseline_errors: np.ndarray | None) -> dict:
    """The metrics of (N, J) joint errors: mean, median, per joint, per-frame worst, the
    mean-pose baseline's mean and the three success curves with their AUC."""
    thresholds = thresholds_mm()
    success = {}
    for kind in CURVE_KINDS:
        rates = success_rates(errors, thresholds, kind)
        success[kind] = {"thresholds": thresholds.tolist(), "rates": rates.tolist(),
                         "auc": success_auc(thresholds, rates)}
    return {
        "mean_error_mm": mean_error_mm(errors),
        "median_error_mm": float(np.median(errors)),
        "per_joint_mm": per_joint_error_mm(errors).tolist(),
        "max_frame_error_mean_mm": float(errors.max(axis=1).mean()),
        "mean_pose_baseline_mm": (mean_error_mm(baseline_errors)
                                  if baseline_errors is not None else None),
        "success": success,
    }


def _full_frame(ckpt: dict, path: Path, reader, cache_dir, params: CropParams,
                dis: Discriminator, device: torch.device, progress: bool) -> dict:
    """The same split with crops centred where the checkpoint's localiser finds the hand in the
    full frame, as ``predict`` on a camera's frames does: its error and how far the centres
    lie from the labelled palm centre (frames where no hand is found are counted, left out)."""
    localizer = Localizer.from_state(ckpt["localizer"], device, str(path))  # on the GPU if any
    cache = load_or_build_cache(reader, cache_dir, dataclasses.replace(params, centre="com"),
                                progress=progress, on_bad="skip",
                                located=locate_reader(localizer, reader, progress))
    crops = all_labeled(cache)
    errors = crop_errors_mm(predict(dis, crops, device), crops)
    return {"mean_error_mm": mean_error_mm(errors), "median_error_mm": float(np.median(errors)),
            "frames": len(cache), "skipped_frames": len(cache.bad_frames),
            "localisation": _localisation(reader, cache, localizer)}


def _localisation(reader, cache: CropCache, localizer: Localizer | None) -> dict | None:
    """How far the crop centres (found by the checkpoint's localiser, else by ``localize_hand``)
    lie from the labelled centre joint, in mm; None without a centre joint."""
    joint = getattr(reader, "centre_joint", None)
    if joint is None:
        return None
    truth = reader.joints_uvd()[np.asarray(cache.frame_index), joint]
    errors = localisation_errors(cache.transforms[:, 0:3], truth, cache.intrinsics)
    not_found = len(cache.bad_frames)
    summary = localisation_summary(np.concatenate([errors, np.full(not_found, np.nan)]))
    return {"method": "learned refiner" if localizer is not None else "centre of mass",
            **summary}


def _to_uvd(cache: CropCache, norm: np.ndarray) -> np.ndarray:
    """Normalised joints (N, J, 3) -> full-frame u v d, with each row's crop transform."""
    return np.stack([cache.transform(i).norm_to_uvd(n) for i, n in enumerate(norm)])


def _check_reference(ref, cache: CropCache) -> None:
    """The reference reads the run's crops only if it was trained on crops of the same size and
    cube (its normalised joints are fractions of its own cube)."""
    path, _, spec = ref
    cube = tuple(float(c) for c in cache.transform(0).cube_mm) if len(cache) else spec.cube_mm
    if spec.size != cache.crops.shape[-1] or not np.allclose(spec.cube_mm, cube):
        raise HandganError(f"{path}: the reference was trained on {spec.size} px crops of a "
                           f"{list(spec.cube_mm)} mm cube, the run's are {cache.crops.shape[-1]} "
                           f"px of {list(cube)} mm")


def _fidelity(gen: Generator, dis: Discriminator, ref, crops, device: torch.device) -> dict:
    """``metrics["generator"]``: Gen(J) against the split's crops (fidelity.generator_fidelity,
    which seeds the sensor's missing pixels itself, so metrics.json is repeatable)."""
    estimators = {"run": dis} if ref is None else {"run": dis, "reference": ref[1]}
    f = generator_fidelity(gen, crops, estimators, device)
    block = {k: f[k] for k in ("hand_depth_error_mm", "full_depth_error_mm",
                               "blank_hand_depth_error_mm")}
    block["readback_mean_error_mm"] = f["readback_mean_error_mm"]["run"]
    block["real_mean_error_mm"] = f["real_mean_error_mm"]["run"]
    if ref is not None:
        block["reference_checkpoint"] = str(ref[0])
        block["reference_readback_mean_error_mm"] = f["readback_mean_error_mm"]["reference"]
        block["reference_real_mean_error_mm"] = f["real_mean_error_mm"]["reference"]
    block["hand_radius_mm"] = f["hand_radius_mm"]
    return block


def _write_report(out: Path, metrics: dict, cache: CropCache, errors: np.ndarray,
                  baseline_errors: np.ndarray | None, pred_norm: np.ndarray, gen: Generator,
                  device: torch.device, reader) -> None:
    out.mkdir(parents=True, exist_ok=True)
    true_norm = np.asarray(cache.joints_norm, np.float64)
    pred_uvd = _to_uvd(cache, pred_norm)
    write_predictions(out / "predictions.txt", pred_uvd)
    write_predictions(out / "groundtruth.txt", _to_uvd(cache, true_norm))

    named = {"handgan" if metrics["mode"] == "gan" else "supervised baseline": errors}
    if baseline_errors is not None:
        named["mean training pose"] = baseline_errors
    curve = metrics["success"]["max-frame"]
    t = np.asarray(curve["thresholds"])
    rates = {n: success_rates(e, t, "max-frame").tolist() for n, e in named.items()}
    means = {n: mean_error_mm(e) for n, e in named.items()}
    per_joint = {n: per_joint_error_mm(e).tolist() for n, e in named.items()}
    title = f"{metrics['data']} {metrics['split']}, {metrics['frames']} frames"
    plot_success_curves(out / "success.png", curve["thresholds"], rates, means, "max-frame", title)
    plot_per_joint_errors(out / "per_joint.png", metrics["joints"], per_joint, means, title)

    rows = _spread(len(cache), GRID_FRAMES)
    crops = np.asarray(cache.crops[rows], np.float32)
    pred_px = np.stack([cache.transform(i).norm_to_crop_px(pred_norm[i]) for i in rows])
    true_px = np.stack([cache.transform(i).norm_to_crop_px(true_norm[i]) for i in rows])
    titles = [f"frame {int(cache.frame_index[i])}: {errors[i].mean():.1f} mm" for i in rows]
    crop_skeleton_grid(crops, pred_px, true_px, out / "predictions.png", titles)
    picks = rows[_spread(len(rows), FRAME_GRID)]
    sample_grid([reader.depth(int(cache.frame_index[i])) for i in picks],
                [pred_uvd[i] for i in picks], out / "frames.png", cols=4, zoom=False,
                titles=[f"frame {int(cache.frame_index[i])}: {errors[i].mean():.1f} mm"
                        for i in picks])
    files = ["success.png", "per_joint.png", "predictions.png", "frames.png"]
    if metrics["mode"] == "gan":
        _plot_generated(out / "generated.png", cache, true_norm, gen, device)
        files.append("generated.png")

    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    atomic_write_text(out / "report.md", _report_markdown(metrics, files))


def _spread(n: int, count: int) -> np.ndarray:
    """At most ``count`` evenly spread indices of 0..n-1, so a grid is not just the first
    sequence's first second."""
    return np.unique(np.linspace(0, n - 1, min(count, n)).round().astype(int))


def _plot_generated(path: Path, cache: CropCache, true_norm: np.ndarray, gen: Generator,
                    device: torch.device) -> None:
    """8 evenly spread frames: real crop | Gen(true joints) | |difference| in mm, hand region
    outlined. Gen's sensor model draws its missing pixels from seed 0 (as ``fidelity`` does),
    so the figure is the same however the networks were built; the caller's RNG is untouched."""
    rows = _spread(len(cache), GENERATED_FRAMES)
    real = np.asarray(cache.crops[rows], np.float32)  # (N, S, S)
    transforms = [cache.transform(int(i)) for i in rows]
    half = np.array([t.half_depth_mm for t in transforms]).reshape(-1, 1, 1)
    cuda = torch.device(device).type == "cuda"
    with torch.no_grad(), torch.random.fork_rng(devices=None if cuda else []):
        torch.manual_seed(0)
        joints = torch.as_tensor(true_norm[rows], dtype=torch.float32, device=device)
        rays = torch.as_tensor(np.stack([t.ray for t in transforms]), device=device)
        fake = gen(joints, rays).float().cpu().numpy()[:, 0]
    diff_mm = np.abs(real - fake) * half
    size = real.shape[-1]
    px = np.stack([t.norm_to_crop_px(true_norm[i]) for t, i in zip(transforms, rows)])
    region = hand_region_mask(torch.as_tensor(px), size, skeleton_edges(true_norm.shape[1]),
                              radius_px(size, float(transforms[0].cube_mm[0])))[:, 0].numpy()
    hand = (diff_mm * region).sum((1, 2)) / np.maximum(region.sum((1, 2)), 1.0)
    labels = [f"frame {int(cache.frame_index[i])}\nhand {e:.0f} mm" for i, e in zip(rows, hand)]
    plot_generated(path, real, fake, diff_mm, region, labels, vmax_mm=float(half.max()))


def _report_markdown(m: dict, files: list[str]) -> str:
    base = m["mean_pose_baseline_mm"]
    success = m["success"]

    def rate(kind: str, mm: int) -> str:
        return f"{100 * success[kind]['rates'][mm]:.1f} %"  # thresholds are 0, 1, ..., 80 mm

    lines = [
        f"# Evaluation: {m['data']} `{m['split']}`",
        "",
        f"Checkpoint `{m['checkpoint']}` (step {m['step']}, mode {m['mode']}); {m['frames']} "
        f"frames cropped around the {'ground-truth palm' if m['centre'] == 'gt' else 'localised hand'}"
        + (f", {m['skipped_frames']} skipped" if m["skipped_frames"] else "") + ".",
        "",
        "| metric | value |",
        "|---|---|",
        f"| mean 3D joint error | **{m['mean_error_mm']:.2f} mm** |",
        f"| median joint error | {m['median_error_mm']:.2f} mm |",
        f"| mean of per-frame worst joint | {m['max_frame_error_mean_mm']:.2f} mm |",
    ]
    if base is not None:
        lines.append(f"| mean-pose baseline (always the mean training pose) | {base:.2f} mm |")
    full = m.get("full_frame")
    if full:
        loc = full["localisation"]
        lines.append(f"| the same frames, crops centred where the run's localiser finds the hand "
                     f"in the full frame | **{full['mean_error_mm']:.2f} mm** (hand centre "
                     f"{loc['median_mm']:.1f} mm from the true palm centre, median; p90 "
                     f"{loc['p90_mm']:.1f} mm; {full['skipped_frames']} frames without a "
                     "hand found) |")
    loc = m.get("localisation")
    if loc and loc["median_mm"] is not None:
        lines.append(f"| hand centre found ({loc['method']}) to the true palm centre: median / "
                     f"p90 | {loc['median_mm']:.1f} / {loc['p90_mm']:.1f} mm |")
    lines += [
        f"| frames with all joints within 20 / 40 mm | {rate('max-frame', 20)} / "
        f"{rate('max-frame', 40)} |",
        f"| joints within 20 / 40 mm | {rate('joint', 20)} / {rate('joint', 40)} |",
        f"| AUC 0-80 mm (max-frame / mean-frame / joint) | "
        f"{success['max-frame']['auc']:.3f} / {success['mean-frame']['auc']:.3f} / "
        f"{success['joint']['auc']:.3f} |",
        "",
        "## Per joint (mm)",
        "",
        "| joint | error |",
        "|---|---|",
        *[f"| {n} | {e:.2f} |" for n, e in zip(m["joints"], m["per_joint_mm"])],
        "",
        *_generator_markdown(m.get("generator")),
        "## Figures",
        "",
    ]
    captions = {"success.png": "Success rate: frames whose worst joint is within D mm",
                "per_joint.png": "Mean error per joint",
                "predictions.png": "Test crops: true skeleton (white) and prediction (colours)",
                "frames.png": "Whole frames with the predicted skeleton",
                "generated.png": "Real test crops, Gen(their true joints) and their absolute "
                                 "difference in mm (cyan outline: the hand region)"}
    for f in files:
        lines += [f"![{captions[f]}]({f})", "", f"*{captions[f]}.*", ""]
    lines += ["Files: `predictions.txt` and `groundtruth.txt` (the field's format; compare with "
              "`handgan compare --gt groundtruth.txt NAME=predictions.txt ...`), `metrics.json`.",
              ""]
    return "\n".join(lines)


def _generator_markdown(g: dict | None) -> list[str]:
    if g is None:
        return []
    lines = [
        "## Generator fidelity",
        "",
        f"Gen(J) drawn for every frame's true joints J, against the real crop. The hand region "
        f"is every pixel within {g['hand_radius_mm']:.0f} mm of a bone of the projected skeleton.",
        "",
        "| metric | value |",
        "|---|---|",
        f"| depth error in the hand region | **{g['hand_depth_error_mm']:.2f} mm** (a blank crop: "
        f"{g['blank_hand_depth_error_mm']:.2f} mm) |",
        f"| depth error over the whole crop | {g['full_depth_error_mm']:.2f} mm |",
        f"| read-back error: the run's pose network on Gen(J), against J | "
        f"{g['readback_mean_error_mm']:.2f} mm (on the real crops: "
        f"{g['real_mean_error_mm']:.2f} mm) |",
    ]
    if "reference_readback_mean_error_mm" in g:
        lines.append(f"| read-back error of the reference `{g['reference_checkpoint']}` | "
                     f"{g['reference_readback_mean_error_mm']:.2f} mm (on the real crops: "
                     f"{g['reference_real_mean_error_mm']:.2f} mm) |")
    return [*lines, ""]
