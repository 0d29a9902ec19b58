"""Score several methods' prediction files against one ground truth: ``handgan compare``.

The result is a plain dict (JSON-ready)::

    {"dataset": "nyu", "curve": "max-frame", "frames": 8252, "gt": "...",
     "joints": [J names],
     "methods": {NAME: {"file": "...", "mean_error_mm": float, "per_joint_mm": [J floats],
                        "success": {"thresholds": [T floats], "rates": [T floats]},
                        "auc": float}, ...}}

with ``methods`` ordered best (lowest mean error) first.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from handgan.atomic import atomic_write_text
from handgan.errors import HandganError
from handgan.evaluation.metrics import (
    CURVE_KINDS,
    DEFAULT_CURVE,
    DEFAULT_MAX_THRESHOLD_MM,
    DEFAULT_STEP_MM,
    get_layout,
    joint_errors_uvd,
    mean_error_mm,
    per_joint_error_mm,
    success_auc,
    success_rates,
    thresholds_mm,
)
from handgan.evaluation.predfile import check_frame_count, read_predictions
from handgan.outputs import check_outputs

SUCCESS_PNG = "success.png"
PER_JOINT_PNG = "per_joint.png"
COMPARE_JSON = "compare.json"


def parse_method_specs(specs: Sequence[str]) -> dict[str, Path]:
    """``NAME=PATH`` command-line items -> an ordered name -> path dict. The name ends at the
    first ``=`` (paths may contain ``=``); a missing ``=``, an empty name or path or a repeated
    name is a HandganError."""
    methods: dict[str, Path] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        name = name.strip()
        if not sep or not name or not path:
            raise HandganError(f"expected NAME=PRED.txt, got {spec!r}")
        if name in methods:
            raise HandganError(f"method name {name!r} given twice")
        methods[name] = Path(path)
    return methods


def compare_methods(dataset: str, gt_path: str | os.PathLike,
                    predictions: Mapping[str, str | os.PathLike], curve: str = DEFAULT_CURVE,
                    max_mm: float = DEFAULT_MAX_THRESHOLD_MM, step_mm: float = DEFAULT_STEP_MM
                    ) -> dict:
    """Score prediction files (method name -> file, the ground truth's frames in its order)
    against a ground-truth file, as the field does: the result dict described in the module
    docstring, methods best first.

    Raises:
        HandganError: unknown dataset or curve, no methods, or a missing/malformed/mismatched file.
    """
    layout = get_layout(dataset)
    if curve not in CURVE_KINDS:
        raise HandganError(f"unknown success curve {curve!r} (expected one of {list(CURVE_KINDS)})")
    if not predictions:
        raise HandganError("no prediction files to compare")
    thresholds = thresholds_mm(max_mm, step_mm)
    gt = read_predictions(gt_path)
    if gt.shape[1] != layout.n_joints:
        raise HandganError(f"{gt_path}: {gt.shape[1]} joints per frame, but {layout.name} has "
                           f"{layout.n_joints} (wrong dataset?)")
    methods = {}
    for name, path in predictions.items():
        pred = read_predictions(path, layout.n_joints)
        check_frame_count(path, pred, gt_path, gt)
        errors = joint_errors_uvd(pred, gt, layout.intrinsics)
        rates = success_rates(errors, thresholds, curve)
        methods[name] = {"file": str(path), "mean_error_mm": mean_error_mm(errors),
                         "per_joint_mm": per_joint_error_mm(errors).tolist(),
                         "success": {"thresholds": thresholds.tolist(), "rates": rates.tolist()},
                         "auc": success_auc(thresholds, rates)}
    ranked = sorted(methods, key=lambda n: methods[n]["mean_error_mm"])  # stable: ties keep order
    return {"dataset": layout.name, "curve": curve, "frames": int(gt.shape[0]),
            "gt": str(gt_path), "joints": list(layout.joint_names),
            "methods": {name: methods[name] for name in ranked}}


def format_table(result: Mapping) -> str:
    """A text table (no final newline) of a ``compare_methods`` result: rank, method, mean
    error, AUC."""
    methods = result["methods"]
    t = next(iter(methods.values()))["success"]["thresholds"]
    auc_head = f"AUC {t[0]:g}-{t[-1]:g} mm"
    width = max(len("method"), *(len(name) for name in methods))
    title = (f"{result['dataset']}: {result['frames']} frames x {len(result['joints'])} joints, "
             f"{result['curve']} success curve")
    lines = [title, f"{'#':>2}  {'method':<{width}}  {'mean error (mm)':>15}  {auc_head}"]
    for rank, (name, m) in enumerate(methods.items(), start=1):
        lines.append(f"{rank:>2}  {name:<{width}}  {m['mean_error_mm']:>15.3f}  "
                     f"{m['auc']:>{len(auc_head)}.3f}")
    return "\n".join(lines)


def write_report(result: Mapping, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write the success-curve PNG, the per-joint PNG and ``compare.json`` of a
    ``compare_methods`` result into a folder (made if missing; those files are replaced).

    Returns:
        ``{"success": path, "per_joint": path, "json": path}``.
    """
    from handgan.evaluation.figures import plot_per_joint_errors, plot_success_curves

    out = Path(out_dir)
    check_outputs([out / SUCCESS_PNG, out / PER_JOINT_PNG, out / COMPARE_JSON],
                  [result["gt"], *(m["file"] for m in result["methods"].values())])
    out.mkdir(parents=True, exist_ok=True)
    methods = result["methods"]
    means = {name: m["mean_error_mm"] for name, m in methods.items()}
    first = next(iter(methods.values()))
    title = f"{result['dataset'].upper()} test set, {result['frames']} frames"
    success = plot_success_curves(
        out / SUCCESS_PNG, first["success"]["thresholds"],
        {name: m["success"]["rates"] for name, m in methods.items()}, means,
        curve=result["curve"], title=title)
    per_joint = plot_per_joint_errors(
        out / PER_JOINT_PNG, result["joints"],
        {name: m["per_joint_mm"] for name, m in methods.items()}, means, title=title)
    json_path = out / COMPARE_JSON
    atomic_write_text(json_path, json.dumps(result, indent=2) + "\n")
    return {"success": success, "per_joint": per_joint, "json": json_path}
