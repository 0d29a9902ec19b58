"""The ``handgan`` command: argument parsing over the Python API, nothing else.

Every user mistake (a ``HandganError`` or a bad argument) ends as one line on stderr and exit 2.
"""
from __future__ import annotations

import argparse
import errno
import json
import math
import os
import shlex
import sys
from pathlib import Path

from handgan import __version__
from handgan.errors import HandganError

# What the user's machine or paths cause, not handgan: one line, exit 2, like a HandganError.
_USER_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR,
                errno.EISDIR, errno.EEXIST, errno.ENOENT, errno.ENAMETOOLONG, errno.EFBIG}


class _Parser(argparse.ArgumentParser):
    """argparse that reports bad arguments on one line (and still exits 2)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _positive(text: str) -> int:
    if (value := _count(text)) == 0:
        raise argparse.ArgumentTypeError("must be >= 1, got 0")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _add_synth(sub) -> None:
    p = sub.add_parser(
        "synth", help="generate the synthetic depth-hand dataset (NYU format)",
        description="Render synthetic depth hands with the NYU camera and write them in the NYU "
                    "dataset's on-disk format (OUT/train, OUT/test: depth_1_XXXXXXX.png + "
                    "joint_data.mat). Interrupted runs resume when the same command is rerun.")
    p.add_argument("--out", required=True, help="output dataset folder")
    p.add_argument("--train", type=_count, default=2000, help="training frames (default 2000)")
    p.add_argument("--test", type=_count, default=500, help="test frames (default 500)")
    p.add_argument("--seed", type=_count, default=0, help="random seed: same seed, same bytes (default 0)")
    p.add_argument("--workers", type=_positive, default=os.cpu_count() or 1,
                   help="worker processes (default: all cores)")
    p.add_argument("--scene", choices=("full", "hand"), default="full",
                   help="full: the whole frame (person, table, room; default) | hand: only a "
                        "350 mm cube around the hand, as before")
    p.add_argument("--background", choices=("none", "wall", "table", "clutter", "mixed"),
                   default="mixed", help="--scene hand: what lies behind the hand (default mixed)")
    p.add_argument("--no-noise", action="store_true",
                   help="turn the sensor model off (clean renders, integer mm)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=_run_synth)


def _run_synth(args) -> int:
    from handgan.synth.frame import SynthConfig
    from handgan.synth.generate import read_manifest, synthesize_dataset
    from handgan.synth.render import SensorConfig

    cfg = SynthConfig(scene=args.scene, background=args.background,
                      sensor=SensorConfig(enabled=not args.no_noise))
    complete = read_manifest(args.out) is not None and not args.overwrite
    out = synthesize_dataset(args.out, args.train, args.test, seed=args.seed, workers=args.workers,
                             config=cfg, overwrite=args.overwrite, progress=not args.quiet)
    if complete:  # synthesize_dataset refuses a complete dataset made with other settings
        print(f"{out}: the dataset is complete ({args.train} train + {args.test} test frames); "
              "nothing to do")
    else:
        print(f"wrote {args.train} train + {args.test} test frames to {out}")
    return 0


def _add_show_samples(sub) -> None:
    p = sub.add_parser(
        "show-samples", help="draw depth frames of an NYU-format dataset with their skeletons",
        description="Write a PNG grid of depth frames (zoomed on the hand) with the 14 evaluation "
                    "joints drawn on them. Works on real NYU and on handgan synth output; hollow "
                    "joints are hidden (synthetic data only).")
    p.add_argument("root", help="dataset folder holding train/ and test/")
    p.add_argument("--out", required=True, help="output PNG file")
    p.add_argument("--split", default="train", help="split folder (default train)")
    p.add_argument("--count", type=_positive, default=16, help="frames to draw (default 16)")
    p.add_argument("--cols", type=_positive, default=4, help="grid columns (default 4)")
    p.add_argument("--seed", type=_count, default=0, help="which frames are picked (default 0)")
    p.add_argument("--full", action="store_true", help="draw whole 640x480 frames, not zoomed crops")
    p.set_defaults(run=_run_show_samples)


def _run_show_samples(args) -> int:
    from handgan.data.preview import show_samples

    out = show_samples(args.root, args.out, count=args.count, split=args.split, seed=args.seed,
                       cols=args.cols, zoom=not args.full)
    print(f"wrote {out}")
    return 0


def _add_data(sub) -> None:
    p = sub.add_parser("data", help="inspect data sources",
                       description="Inspect a data source (synthetic[:DIR], nyu:DIR, icvl:DIR, "
                                   "msra:DIR[:FOLD], folder:DIR[:CAMERA]).")
    data_sub = p.add_subparsers(dest="data_command", metavar="ACTION", parser_class=_Parser,
                                required=True)
    info = data_sub.add_parser(
        "info", help="frames per split, joints, intrinsics, depth range, bad frames",
        description="Print what a data source holds: frames per split, joints, intrinsics, depth "
                    "range and bad frames (unreadable, empty, NaN, or no hand within 1.5 m).")
    info.add_argument("--data", required=True,
                      help="synthetic[:DIR] | nyu:DIR | icvl:DIR | msra:DIR[:FOLD] | folder:DIR[:CAMERA]")
    group = info.add_mutually_exclusive_group()
    group.add_argument("--check", type=_positive, default=200,
                       help="frames per split to read for depth range and bad frames (default 200)")
    group.add_argument("--check-all", action="store_true", help="read every frame (slow on big sets)")
    info.add_argument("--json", action="store_true", help="print the report as JSON")
    info.set_defaults(run=_run_data_info)


def _run_data_info(args) -> int:
    from handgan.data.info import describe_source, format_report
    from handgan.data.sources import ensure_synthetic, parse_source

    spec = parse_source(args.data)
    ensure_synthetic(spec, workers=os.cpu_count() or 1, progress=not args.json)
    report = describe_source(spec, check=None if args.check_all else args.check,
                             progress=not args.json and sys.stderr.isatty())
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def _add_train(sub) -> None:
    p = sub.add_parser(
        "train", help="train the pose-conditioned GAN (or the supervised baseline)",
        description="Train on a data source and write a run folder (config.yaml, metrics.jsonl, "
                    "checkpoints/last.pt and best.pt, summary.json). The config is a preset, "
                    "optionally a YAML file over it, then the flags below, then --set overrides.")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--preset", default="quick", help="quick (64x64, ~11 min on 2 CPU cores) or "
                   "seed (128x128, the seed's 50 epochs); both train the rendered generator "
                   "(docs/training.md); the seed document's GAN: --config "
                   "configs/seed-literal.yaml; default quick")
    p.add_argument("--config", help="YAML config (full, or partial over 'preset: NAME')")
    p.add_argument("--data", help="synthetic[:DIR] | nyu:DIR[:SPLIT] | icvl:DIR | msra:DIR[:FOLD]")
    p.add_argument("--unlabeled", help="extra unlabelled frames, e.g. folder:DIR[:CAMERA]")
    p.add_argument("--labeled-fraction", type=float, help="share of training frames keeping labels")
    p.add_argument("--mode", choices=("gan", "supervised"), help="default gan")
    p.add_argument("--max-steps", type=_positive, help="stop after N steps (smoke runs)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set optim.lr=3e-4 (repeatable)")
    p.add_argument("--resume", action="store_true",
                   help="continue OUT from checkpoints/last.pt with its saved config.yaml")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=_run_train)


def _config(args, flags: dict, saved: Path | None = None, first: tuple[str, ...] = ()):
    """``saved`` (a run's config.yaml), else --config, else --preset; then ``first``, the flags
    that are set (``{"optim.max_steps": args.max_steps, ...}``) and the --set overrides."""
    from handgan.config import apply_overrides, load_yaml, preset

    path = saved or args.config
    cfg = load_yaml(path) if path else preset(args.preset)
    sets = [f"{k}={v}" for k, v in flags.items() if v is not None]
    return apply_overrides(cfg, [*first, *sets, *args.overrides])


def _run_train(args) -> int:
    from handgan.train import train

    out = Path(args.out)  # a fresh run: train() refuses a folder that holds an earlier run
    cfg = _config(args, {"data.source": args.data, "data.unlabeled": args.unlabeled,
                         "data.labeled_fraction": args.labeled_fraction, "mode": args.mode,
                         "optim.max_steps": args.max_steps},
                  saved=out / "config.yaml" if args.resume else None)
    run = train(cfg, out, resume=args.resume, progress=not args.quiet)
    if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 reports
        return 0
    summary = json.loads((run / "summary.json").read_text())
    print(f"{run}: {_final_error(summary)}")
    print(f"{run}: {_steps_and_time(summary)}")
    return 0


def _final_error(summary: dict) -> str:
    """The run's test figures (last epoch and best.pt), or its validation figure where the
    source has no test split. Crops are centred as the run trained (data.centre)."""
    if summary.get("final_mean_error_mm") is not None:
        text = (f"mean 3D joint error on the test split {summary['final_mean_error_mm']:.2f} mm "
                f"at the last epoch (last.pt)")
        best, epoch = summary.get("best_mean_error_mm"), summary.get("best_epoch")
        if best is not None and summary.get("selection_split") == "val":
            text += f", {best:.2f} mm with best.pt (epoch {epoch}, chosen on validation)"
        return text + f"; mean-pose baseline {summary['mean_pose_baseline_mm']:.2f} mm"
    if summary.get("final_val_mean_error_mm") is not None:
        return (f"mean 3D joint error {summary['final_val_mean_error_mm']:.2f} mm on the "
                "validation hold-out (the source has no test split)")
    return "no labelled split to evaluate on (no test split, no validation hold-out)"


def _steps_and_time(summary: dict) -> str:
    """Steps and wall time of the whole run; a resumed run also says what this command did."""
    text = f"{summary['steps']} steps, {summary.get('wall_seconds_total', 0):.0f} s in all"
    this = summary.get("steps_this_session")
    if this is not None and this != summary["steps"]:
        text += f" ({this} steps in {summary['wall_seconds']:.0f} s by this command)"
    return text


def _add_evaluate(sub) -> None:
    p = sub.add_parser(
        "evaluate", help="evaluate a trained run on a labelled split (metrics, plots, report)",
        description="Run the pose estimator of RUN (its checkpoints/best.pt, else last.pt) or of "
                    "a checkpoint file over a labelled split, cropped as in training, and write "
                    "predictions.txt + groundtruth.txt (the field's format), metrics.json (mean "
                    "3D error, per joint, success curves, mean-pose baseline), plots and "
                    "report.md into --out. GAN runs also get the generator's fidelity (depth "
                    "error of Gen(J) in the hand region, read-back error) and generated.png.")
    p.add_argument("checkpoint", metavar="RUN|CHECKPOINT", help="run folder or checkpoint file")
    p.add_argument("--data", help="data source (default: the run's training source, if it is "
                   "here; a missing synthetic set is not generated)")
    p.add_argument("--cache-dir", help="crop cache folder (default .handgan-cache in the working "
                   "folder, never the checkpoint's)")
    p.add_argument("--split", help="split to evaluate (default: the source's test split, "
                   "ICVL's one test sequence when only one is there)")
    p.add_argument("--out", help="report folder (default RUN/eval-SPLIT)")
    p.add_argument("--centre", choices=("gt", "com"),
                   help="crop centre: ground-truth palm or localised hand (default: as trained)")
    p.add_argument("--reference", metavar="CKPT_OR_RUN",
                   help="GAN runs: also read Gen(J) back with this checkpoint's pose network "
                        "(same joints, crop size and cube)")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, ...")
    p.add_argument("--json", action="store_true", help="print metrics.json to stdout")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(run=_run_evaluate)


def _run_evaluate(args) -> int:
    from handgan.checkpoint import resolve_checkpoint
    from handgan.evaluation.evaluate import default_out_dir, evaluate_checkpoint

    if args.data is not None:  # the explicit step: a synthetic --data not there yet is made
        _generate_synthetic_for(args, progress=not (args.quiet or args.json))
    m = evaluate_checkpoint(args.checkpoint, data=args.data, split=args.split, out=args.out,
                            centre=args.centre, device=args.device,
                            progress=not (args.quiet or args.json), cache_dir=args.cache_dir,
                            reference=args.reference)
    if args.json:
        print(json.dumps(m, indent=2))
        return 0
    out = args.out or default_out_dir(resolve_checkpoint(args.checkpoint), m["split"])
    base = m["mean_pose_baseline_mm"]
    where = ("crops centred on the labelled palm" if m["centre"] == "gt"
             else "crops centred where the hand was localised in the full frame")
    print(f"{m['data']} {m['split']}: mean 3D joint error {m['mean_error_mm']:.2f} mm over "
          f"{m['frames']} frames, {where}, {Path(m['checkpoint']).name}"
          + (f" (mean-pose baseline {base:.2f} mm)" if base else ""))
    full = m.get("full_frame")
    if full:
        loc = full["localisation"]
        print(f"full frames: mean 3D joint error {full['mean_error_mm']:.2f} mm with crops "
              f"centred where the run's localiser finds the hand (hand centre "
              f"{loc['median_mm']:.1f} mm from the true palm centre, median; p90 "
              f"{loc['p90_mm']:.1f} mm)")
    loc = m.get("localisation")
    if loc and loc.get("median_mm") is not None:
        print(f"localisation ({loc['method']}): hand centre {loc['median_mm']:.1f} mm from the "
              f"true palm centre (median), p90 {loc['p90_mm']:.1f} mm")
    g = m.get("generator")
    if g:
        print(f"generator: hand-region depth error {g['hand_depth_error_mm']:.2f} mm (blank "
              f"crop {g['blank_hand_depth_error_mm']:.2f} mm), read-back error "
              f"{g['readback_mean_error_mm']:.2f} mm")
    print(f"report: {Path(out) / 'report.md'}")
    return 0


def _generate_synthetic_for(args, progress: bool) -> None:
    """``evaluate --data synthetic[:DIR]`` that is not there yet: generate it with the run's seed,
    as its training would have (after the checks evaluate makes first: checkpoint, --out)."""
    from handgan.checkpoint import load_checkpoint, resolve_checkpoint
    from handgan.config import from_dict
    from handgan.data.sources import ensure_synthetic, missing_synthetic, parse_source
    from handgan.outputs import check_output_folder

    spec = parse_source(args.data)
    if not missing_synthetic(spec):
        return
    path = resolve_checkpoint(args.checkpoint)
    if args.out is not None:
        check_output_folder(args.out)
    config = load_checkpoint(path).get("config")
    if not isinstance(config, dict):
        raise HandganError(f"{path}: not a training checkpoint (no 'config' dict)")
    ensure_synthetic(spec, seed=from_dict(config).seed, progress=progress)


def _add_study(sub) -> None:
    p = sub.add_parser("study", help="experiments over many training runs",
                       description="Experiments that train and evaluate many runs.")
    study_sub = p.add_subparsers(dest="study_command", metavar="STUDY", parser_class=_Parser,
                                 required=True)
    s = study_sub.add_parser(
        "labels", help="test error vs labelled fraction, GAN vs supervised baseline",
        description="Train every (fraction, mode, seed) with the same budget, evaluate each on "
                    "the same test split (the test error of the best.pt chosen on validation), "
                    "and write OUT/study.json, OUT/table.md (mean +- std over seeds) and "
                    "OUT/label-study.png. Rerun the same command to continue an interrupted "
                    "study: finished runs are read back, an interrupted one is resumed.")
    s.add_argument("--out", required=True, help="study folder (runs go to OUT/runs/)")
    s.add_argument("--data", help="data source (default: the preset's, synthetic)")
    s.add_argument("--fractions", default="0.01,0.05,0.1,0.25,1.0",
                   help="labelled fractions, comma-separated (default 0.01,0.05,0.1,0.25,1.0)")
    s.add_argument("--modes", default="gan,supervised", help="default gan,supervised")
    s.add_argument("--variant", action="append", default=[], metavar="NAME=[MODE:]KEY=VAL,...",
                   help="an extra line with config overrides (an ablation), e.g. "
                        "gan-wd=optim.weight_decay=1e-4 (repeatable)")
    s.add_argument("--seeds", type=_positive, default=3, help="seeds per point (default 3)")
    s.add_argument("--preset", default="quick", help="quick or seed (default quick)")
    s.add_argument("--config", help="YAML config instead of the preset")
    s.add_argument("--epochs", type=_positive, help="epochs per run (default: the preset's)")
    s.add_argument("--max-steps", type=_positive, help="steps per run (smoke studies)")
    s.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key for every run (repeatable)")
    s.add_argument("--jobs", type=_positive, default=1,
                   help="runs trained at once, one thread each (default 1; e.g. the core count, "
                        "or several runs sharing one GPU)")
    s.add_argument("--quiet", action="store_true", help="no progress bars")
    s.set_defaults(run=_run_study_labels)


def _run_study_labels(args) -> int:
    from handgan.study import StudyPlan, format_table, parse_fractions, parse_variants, run_study

    # The study scores crops centred on the labelled palm: no run needs a hand localiser
    # (--set localizer.enabled=true trains one anyway).
    base = _config(args, {"data.source": args.data, "optim.epochs": args.epochs,
                          "optim.max_steps": args.max_steps}, first=("localizer.enabled=false",))
    plan = StudyPlan(base, parse_fractions(args.fractions),
                     parse_variants(args.modes, args.variant), args.seeds,
                     extra={"command": "handgan " + shlex.join(args.argv)})
    study = run_study(plan, args.out, progress=not args.quiet, jobs=args.jobs)
    print(format_table(study), end="")
    print(f"wrote {args.out}/study.json, table.md, label-study.png")
    return 0


def _add_compare(sub) -> None:
    p = sub.add_parser(
        "compare", help="score prediction files against ground truth, as the field does",
        description="Score methods' prediction files (one frame per line, J x 'u v d') against a "
                    "ground-truth file in the same format: mean 3D error, per-joint error, success "
                    "curve over 0-80 mm (inclusive) and its AUC. Methods are listed best first.")
    p.add_argument("--dataset", required=True, choices=("nyu", "icvl", "msra", "synthetic"),
                   help="joint count, names and camera intrinsics of the files")
    p.add_argument("--gt", required=True, help="ground-truth file")
    p.add_argument("methods", nargs="+", metavar="NAME=PRED.txt", help="a method and its predictions")
    p.add_argument("--curve", choices=("max-frame", "mean-frame", "joint"), default="max-frame",
                   help="success curve: frames whose worst joint (default) or mean joint is "
                        "within D, or single joints")
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    p.add_argument("--out", help="also write success.png, per_joint.png and compare.json here")
    p.set_defaults(run=_run_compare)


def _run_compare(args) -> int:
    from handgan.evaluation import compare

    methods = compare.parse_method_specs(args.methods)
    result = compare.compare_methods(args.dataset, args.gt, methods, curve=args.curve)
    print(json.dumps(result, indent=2) if args.json else compare.format_table(result))
    if args.out:
        for path in compare.write_report(result, args.out).values():
            print(f"wrote {path}", file=sys.stderr if args.json else sys.stdout)
    return 0


def _add_predict(sub) -> None:
    p = sub.add_parser(
        "predict", help="3D joints from depth frames with a trained checkpoint",
        description="Localise the hand in each depth frame, crop it as in training and predict its "
                    "3D joints. Inputs: NYU-encoded PNGs (8-bit RGB), 16-bit depth PNGs, MSRA "
                    ".bin, .npy arrays of mm, or folders of them (sorted by name); an NYU-format "
                    "folder with joint_data.mat (labelled: the true skeleton and the error are "
                    "shown too); RealSense recordings (.bag, .db3) and 'realsense[:SERIAL]' for a "
                    "live camera (pip install 'handgan[realsense]'). With --out: FRAME.json (uvd "
                    "and xyz per joint) and FRAME.overlay.png per frame, and for several frames "
                    "predictions.txt (the field's format, input order). --video writes the "
                    "overlays as a GIF or mp4. A bad frame does not stop the others; each failure "
                    "is one line on stderr and the exit code is 2.")
    p.add_argument("checkpoint", metavar="RUN|CHECKPOINT",
                   help="run folder (its checkpoints/best.pt, else last.pt) or checkpoint file")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="depth frame files or folders, .bag/.db3 recordings, realsense[:SERIAL]")
    p.add_argument("--intrinsics", help="camera of the frame files: nyu | icvl | msra | "
                   "fx,fy,cx,cy[,width,height] (default: the checkpoint's training camera; "
                   "recordings and labelled folders bring their own)")
    p.add_argument("--out", help="output folder for JSON, overlays and predictions.txt")
    p.add_argument("--no-overlay", action="store_true", help="skip the overlay PNGs (faster)")
    p.add_argument("--video", metavar="FILE.gif|FILE.mp4",
                   help="a video of the overlays, frame by frame (mp4 needs handgan[video])")
    p.add_argument("--fps", type=_positive_float, default=15.0,
                   help="frame rate of --video (default 15)")
    p.add_argument("--smooth", type=_positive_float, metavar="ALPHA",
                   help="smooth the hand centre across frames: centre = ALPHA * detected + "
                        "(1 - ALPHA) * previous, 0 < ALPHA <= 1; a jump of more than half the "
                        "cube restarts it (default: off)")
    p.add_argument("--max-frames", type=_positive, metavar="N",
                   help="at most N frames of each recording or camera (default: all; a live "
                        "camera runs until Ctrl-C)")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, ...")
    p.add_argument("--backend", choices=("torch", "onnxruntime"), default="torch",
                   help="run the network with torch (default) or onnxruntime (CPU, needs "
                        "handgan[export])")
    p.add_argument("--threads", type=_positive,
                   help="CPU threads for the network (default: the library's, all cores)")
    p.add_argument("--json", action="store_true", help="print the predictions as JSON on stdout")
    p.add_argument("--quiet", action="store_true", help="no progress bar, no summary")
    p.set_defaults(run=_run_predict)


def _run_predict(args) -> int:
    from handgan.checkpoint import resolve_checkpoint
    from handgan.data.folder import parse_intrinsics
    from handgan.inference import Estimator, predict_files
    from handgan.sequence import format_records

    intr = parse_intrinsics(args.intrinsics) if args.intrinsics else None
    est = Estimator.from_checkpoint(resolve_checkpoint(args.checkpoint), device=args.device,
                                    threads=args.threads, backend=args.backend)
    report = predict_files(est, args.inputs, out=args.out, intrinsics=intr,
                           overlay=not args.no_overlay, progress=not (args.quiet or args.json),
                           on_failure=lambda line: print(f"handgan predict: error: {line}",
                                                         file=sys.stderr),
                           video=args.video, fps=args.fps, smooth=args.smooth,
                           max_frames=args.max_frames)
    if args.json:  # always a list, one record per frame that worked, in input order
        print(format_records([{"file": str(f), **p.to_dict()} for f, p in report.frames]),
              end="")
    elif not args.quiet:
        for (f, p), error in zip(report.frames, report.errors_mm):
            x, y, z = p.transform.centre_xyz
            print(f"{f}: {len(p.uvd)} joints, hand at ({x:.0f}, {y:.0f}, {z:.0f}) mm"
                  + (f", mean error {error:.1f} mm" if error is not None else ""))
        if report.mean_error_mm is not None:
            labelled = sum(e is not None for e in report.errors_mm)
            print(f"mean 3D joint error {report.mean_error_mm:.2f} mm over {labelled} "
                  "labelled frames")
        if args.out:
            print(f"wrote {len(report.written)} files to {args.out}")
        elif report.video:
            print(f"wrote {report.video}")
    return 2 if report.failures else 0


def _add_generate(sub) -> None:
    p = sub.add_parser(
        "generate", help="depth crops from chosen poses with the trained generator",
        description="Run the generator of a checkpoint on poses. --poses FILE: the field's text "
                    "format (one frame per line, J x 'u v d') or JSON (a list of J x 3 frames, "
                    "or predict --json output) -> OUT/generated.png + generated.npy. "
                    "--interpolate A B: two poses (files with one frame, or FILE:LINE) -> "
                    "OUT/interpolation.png (a strip), interpolation.gif and interpolation.npy.")
    p.add_argument("checkpoint", help="checkpoint file (e.g. RUN/checkpoints/best.pt)")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--poses", metavar="FILE", help="pose file (at most 1000 poses)")
    group.add_argument("--interpolate", nargs=2, metavar=("A", "B"), help="interpolate A -> B")
    p.add_argument("--steps", type=_positive, default=8,
                   help="interpolation steps, A and B included (default 8, at most 1000)")
    p.add_argument("--seed", type=int, default=0,
                   help="seeds the generator's missing sensor pixels: the same poses and seed "
                        "give the same crops (default 0)")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(run=_run_generate)


def _run_generate(args) -> int:
    from handgan.generation import generate_from_files

    for path in generate_from_files(args.checkpoint, args.out, poses=args.poses,
                                    interpolate=args.interpolate, steps=args.steps,
                                    seed=args.seed):
        print(f"wrote {path}")
    return 0


def _add_export(sub) -> None:
    p = sub.add_parser(
        "export", help="export the pose estimator (or generator) to ONNX",
        description="Write an ONNX graph with a dynamic batch axis (estimator: crops (B, 1, S, "
                    "S) -> joints (B, J, 3), both normalised), check it with onnx.checker, run "
                    "it with onnxruntime on a random batch and print the max abs difference to "
                    "PyTorch. Needs: pip install 'handgan[export]'.")
    p.add_argument("checkpoint", help="checkpoint file (e.g. RUN/checkpoints/best.pt)")
    p.add_argument("--onnx", required=True, metavar="FILE", help="output .onnx file")
    p.add_argument("--what", choices=("estimator", "generator"), default="estimator",
                   help="which network (default estimator)")
    p.add_argument("--opset", type=_positive, default=17, help="ONNX opset (default 17)")
    p.set_defaults(run=_run_export)


def _run_export(args) -> int:
    from handgan.export import export_onnx

    r = export_onnx(args.checkpoint, args.onnx, what=args.what, opset=args.opset)
    diff = f"{r.max_abs_diff:.3g} (normalised)"
    if r.max_abs_diff_mm is not None:
        diff += f", {r.max_abs_diff_mm:.3g} mm"
    print(f"wrote {r.path} ({r.what}, opset {r.opset}, dynamic batch); max abs difference "
          f"onnxruntime vs PyTorch on a random batch of {r.batch}: {diff}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="handgan", description="Semi-supervised 3D hand pose estimation from "
                     "single depth images with a pose-conditioned DCGAN.")
    parser.add_argument("--version", action="version", version=f"handgan {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser,
                                required=True)
    for add in (_add_synth, _add_show_samples, _add_data, _add_train, _add_evaluate, _add_study,
                _add_compare, _add_predict, _add_generate, _add_export):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # recorded by experiments
    try:
        return args.run(args)
    except HandganError as e:
        message = str(e)
    except OSError as e:  # read-only folder, disk full, a file where a folder should be...
        if e.errno not in _USER_ERRNOS:
            raise
        message = (f"{e.filename}: " if e.filename else "") + str(e.strerror or e)
    except KeyboardInterrupt:
        print(f"handgan {args.command}: interrupted", file=sys.stderr)
        return 130
    print(f"handgan {args.command}: error: {message}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
