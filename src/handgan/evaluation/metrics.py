"""3D joint errors and success-rate curves, computed the way the hand pose field computes them.

Definitions (those of the field's public evaluation scripts, awesome-hand-pose-estimation
``evaluation/``):

* Both ground truth and prediction are back-projected from ``(u px, v px, d mm)`` to camera
  ``xyz`` mm with the dataset's pinhole intrinsics (``DatasetLayout.intrinsics``), and the error
  of joint j in frame i is the Euclidean distance ``e[i, j] = |xyz_gt - xyz_pred|`` in mm.
* Mean 3D error: the mean of all F x J errors (equal to the mean over joints of per-joint means,
  since every joint has F frames). Per-joint error: the mean over frames of each joint.
* Success rate at threshold t mm, inclusive (``<= t``, so an error of exactly t counts):
  ``"max-frame"`` (the field's default) is the fraction of frames whose worst joint is within t;
  ``"mean-frame"`` the fraction of frames whose mean joint error is within t; ``"joint"`` the
  fraction of all (frame, joint) errors within t. Thresholds run 0..80 mm in 1 mm steps.
* AUC: the area under a success curve divided by the threshold range,
  ``(1 / (t_max - t_min)) * integral of rate(t) dt`` by the trapezoidal rule over the sampled
  thresholds. It lies in [0, 1]; 1 means every frame is within t_min (0 mm).

Everything is vectorised numpy in float64; errors are (N, J) arrays in mm.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from handgan.camera import ICVL, MSRA, NYU, Intrinsics
from handgan.errors import HandganError
from handgan.joints import ICVL16, MSRA21, NYU14

CURVE_KINDS: tuple[str, ...] = ("max-frame", "mean-frame", "joint")
DEFAULT_CURVE = "max-frame"
DEFAULT_MAX_THRESHOLD_MM = 80.0  # the field plots 0..80 mm
DEFAULT_STEP_MM = 1.0


@dataclass(frozen=True)
class DatasetLayout:
    """What the evaluator needs to know about a dataset's prediction files: its key, the
    readable joint names in line order and the camera the field back-projects ``u v d`` with."""

    name: str
    joint_names: tuple[str, ...]
    intrinsics: Intrinsics

    @property
    def n_joints(self) -> int:
        return len(self.joint_names)


# NYU: the field uses fy = -587.07 (y up). camera.NYU stores fy = +587.07 with y_up=True, which
# computes y = (cy - v) d / 587.07 = (v - cy) d / -587.07: the same number, so it is reused as is.
# ICVL: the field's evaluator uses fx 240.99, fy 240.96 (y down), not camera.ICVL's 241.42 (the
# DeepPrior++ cropping camera); published ICVL errors are only reproduced with the former.
# MSRA: the field uses fx = fy = 241.42 with y down; camera.MSRA is y-up. Flipping y for both GT
# and prediction leaves every distance unchanged, and keeping camera.MSRA means xyz_to_uvd stays
# consistent with handgan's MSRA reader, so camera.MSRA is reused as is.
_ICVL_EVAL = dataclasses.replace(ICVL, fx=240.99, fy=240.96)

LAYOUTS: dict[str, DatasetLayout] = {
    "nyu": DatasetLayout("nyu", NYU14.names, NYU),
    "icvl": DatasetLayout("icvl", ICVL16.names, _ICVL_EVAL),
    "msra": DatasetLayout("msra", MSRA21.names, MSRA),
    # handgan's synthetic data is rendered with the NYU camera and labelled in NYU's 14 joints.
    "synthetic": DatasetLayout("synthetic", NYU14.names, NYU),
}


def get_layout(dataset: str) -> DatasetLayout:
    """A dataset's layout; HandganError for an unknown name."""
    try:
        return LAYOUTS[dataset]
    except KeyError:
        raise HandganError(f"unknown dataset {dataset!r} (expected one of {sorted(LAYOUTS)})") from None


def joint_errors_xyz(pred_xyz: np.ndarray, gt_xyz: np.ndarray) -> np.ndarray:
    """(N, J) float64 Euclidean errors between two (N, J, 3) arrays of camera xyz in mm."""
    pred = np.asarray(pred_xyz, dtype=np.float64)
    gt = np.asarray(gt_xyz, dtype=np.float64)
    if pred.shape != gt.shape or pred.ndim != 3 or pred.shape[-1] != 3:
        raise ValueError(f"expected two (N, J, 3) arrays of one shape, got {pred.shape} and {gt.shape}")
    return np.linalg.norm(pred - gt, axis=-1)


def joint_errors_uvd(pred_uvd: np.ndarray, gt_uvd: np.ndarray, intrinsics: Intrinsics) -> np.ndarray:
    """(N, J) errors in mm of (N, J, 3) ``u v d`` predictions, back-projected as the field does
    with the dataset's evaluation camera (``get_layout(name).intrinsics``)."""
    return joint_errors_xyz(intrinsics.uvd_to_xyz(pred_uvd), intrinsics.uvd_to_xyz(gt_uvd))


def mean_error_mm(errors: np.ndarray) -> float:
    """Mean 3D error: the mean of all (frame, joint) errors."""
    return float(np.mean(_check_errors(errors)))


def crop_errors_mm(pred_norm: np.ndarray, crops) -> np.ndarray:
    """(N, J) 3D joint errors in mm of normalised predictions (N, J, 3), or of one pose (J, 3)
    for every row, against the labels of ``crops`` (a LabeledCrops): both mapped to camera xyz
    with each row's exact crop transform (``norm_to_xyz``). Training's evaluations and
    ``handgan evaluate`` both score with it."""
    target = np.asarray(crops.joints_norm[crops.indices], np.float64)
    errors = []
    for k in range(len(crops)):
        t = crops.transform(k)
        p = pred_norm if pred_norm.ndim == 2 else pred_norm[k]
        errors.append(np.linalg.norm(t.norm_to_xyz(p) - t.norm_to_xyz(target[k]), axis=-1))
    return np.stack(errors) if errors else np.zeros((0, target.shape[1]))


def crops_mean_error_mm(pred_norm: np.ndarray, crops) -> float:
    """Mean 3D joint error (mm) over frames and joints: the mean of :func:`crop_errors_mm`."""
    return float(np.mean(crop_errors_mm(pred_norm, crops)))


def per_joint_error_mm(errors: np.ndarray) -> np.ndarray:
    """(J,) mean error of each joint over frames, in line order."""
    return np.mean(_check_errors(errors), axis=0)


def thresholds_mm(max_mm: float = DEFAULT_MAX_THRESHOLD_MM, step_mm: float = DEFAULT_STEP_MM
                  ) -> np.ndarray:
    """(T,) success-curve thresholds 0, step, 2 step, ..., max (inclusive) in mm; ``max_mm``
    must be a whole number of steps."""
    if not (step_mm > 0 and max_mm > 0):
        raise HandganError(f"thresholds need max > 0 and step > 0 mm, got max {max_mm}, step {step_mm}")
    n = round(max_mm / step_mm)
    if not np.isclose(n * step_mm, max_mm, rtol=0, atol=1e-9 * max(1.0, max_mm)):
        raise HandganError(f"threshold step {step_mm} mm does not divide the range 0..{max_mm} mm")
    # k * step rather than a running sum, rounded to 1e-9 mm, so 0.1 mm steps give 0.3 and not
    # 0.30000000000000004: an error of exactly a threshold must compare <= as written.
    return np.round(step_mm * np.arange(n + 1), 9)


def success_rates(errors: np.ndarray, thresholds: np.ndarray | None = None,
                  kind: str = DEFAULT_CURVE) -> np.ndarray:
    """(T,) success-rate curve: the fraction of frames (or joints) within each threshold,
    inclusive; ``kind`` is one of ``CURVE_KINDS`` (see the module docstring), ``thresholds``
    default ``thresholds_mm()``."""
    errors = _check_errors(errors)
    t = thresholds_mm() if thresholds is None else np.asarray(thresholds, dtype=np.float64)
    if kind == "max-frame":
        values = errors.max(axis=1)
    elif kind == "mean-frame":
        values = errors.mean(axis=1)
    elif kind == "joint":
        values = errors.ravel()
    else:
        raise HandganError(f"unknown success curve {kind!r} (expected one of {list(CURVE_KINDS)})")
    # side="right" counts the values <= t: the field's inclusive comparison.
    return np.searchsorted(np.sort(values), t, side="right") / values.size


def success_auc(thresholds: np.ndarray, rates: np.ndarray) -> float:
    """Area under a success curve (trapezoidal rule over the sampled thresholds), divided by the
    threshold range to lie in [0, 1]; needs at least 2 increasing thresholds."""
    t = np.asarray(thresholds, dtype=np.float64)
    r = np.asarray(rates, dtype=np.float64)
    if t.ndim != 1 or t.shape != r.shape or t.size < 2 or not np.all(np.diff(t) > 0):
        raise ValueError("AUC needs matching 1-D thresholds (at least 2, increasing) and rates")
    area = np.sum(np.diff(t) * (r[1:] + r[:-1]) / 2.0)
    return float(area / (t[-1] - t[0]))


def _check_errors(errors: np.ndarray) -> np.ndarray:
    errors = np.asarray(errors, dtype=np.float64)
    if errors.ndim != 2 or errors.size == 0:
        raise ValueError(f"expected a non-empty (N, J) error array, got shape {errors.shape}")
    return errors
