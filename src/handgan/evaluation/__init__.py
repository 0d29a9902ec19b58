"""Evaluation as the hand pose field computes it: 3D joint errors, success curves, the field's
prediction files, comparison tables and figures.

* ``metrics``: per-joint errors in mm, mean / per-joint error, success-rate curves and their AUC,
  and the dataset layouts (joint names, evaluation intrinsics).
* ``predfile``: strict reader and atomic writer of the ``u v d`` per-line prediction files.
* ``figures``: success-curve and per-joint bar-chart PNGs.
* ``compare``: score several prediction files against one ground truth (``handgan compare``).
"""
from __future__ import annotations

from handgan.evaluation.compare import (
    compare_methods,
    format_table,
    parse_method_specs,
    write_report,
)
from handgan.evaluation.metrics import (
    CURVE_KINDS,
    LAYOUTS,
    DatasetLayout,
    get_layout,
    joint_errors_uvd,
    joint_errors_xyz,
    mean_error_mm,
    per_joint_error_mm,
    success_auc,
    success_rates,
    thresholds_mm,
)
from handgan.evaluation.predfile import check_frame_count, read_predictions, write_predictions

__all__ = [
    "CURVE_KINDS", "LAYOUTS", "DatasetLayout", "check_frame_count", "compare_methods",
    "format_table", "get_layout", "joint_errors_uvd", "joint_errors_xyz", "mean_error_mm",
    "parse_method_specs", "per_joint_error_mm", "read_predictions", "success_auc",
    "success_rates", "thresholds_mm", "write_predictions", "write_report",
]
