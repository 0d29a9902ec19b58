"""Metrics as the field computes them: inclusive success curves, AUC, uvd -> xyz, layouts."""
import numpy as np
import pytest

from handgan.data.icvl import ICVL_JOINT_NAMES
from handgan.data.msra import MSRA_JOINT_NAMES
from handgan.errors import HandganError
from handgan.evaluation.metrics import (
    LAYOUTS,
    get_layout,
    joint_errors_uvd,
    joint_errors_xyz,
    mean_error_mm,
    per_joint_error_mm,
    success_auc,
    success_rates,
    thresholds_mm,
)
from handgan.joints import NYU14_NAMES

# 3 frames x 2 joints. Per-frame max: 3, 2, 5; per-frame mean: 2, 2, 2.5; joints sorted:
# 0, 1, 2, 2, 3, 5.
ERRORS = np.array([[1.0, 3.0], [2.0, 2.0], [5.0, 0.0]])
T = np.arange(6.0)  # 0..5 mm


def test_max_frame_curve_counts_an_error_equal_to_the_threshold():
    rates = success_rates(ERRORS, T, "max-frame")
    # At t = 2 the frame whose worst joint is exactly 2 counts; at t = 5 the one at exactly 5.
    np.testing.assert_allclose(rates, [0, 0, 1 / 3, 2 / 3, 2 / 3, 1])


def test_max_frame_is_the_default_curve():
    np.testing.assert_array_equal(success_rates(ERRORS, T), success_rates(ERRORS, T, "max-frame"))


def test_mean_frame_curve():
    np.testing.assert_allclose(success_rates(ERRORS, T, "mean-frame"), [0, 0, 2 / 3, 1, 1, 1])


def test_joint_curve():
    np.testing.assert_allclose(success_rates(ERRORS, T, "joint"), [1 / 6, 2 / 6, 4 / 6, 5 / 6, 5 / 6, 1])


def test_unknown_curve_is_a_user_error():
    with pytest.raises(HandganError, match="max-frame"):
        success_rates(ERRORS, T, "worst")


def test_threshold_equality_survives_the_3d_distance():
    # (3, 4, 0) mm off: the distance is exactly 5, and the 5 mm threshold must count it.
    gt = np.zeros((1, 1, 3))
    pred = np.array([[[3.0, 4.0, 0.0]]])
    errors = joint_errors_xyz(pred, gt)
    assert errors[0, 0] == 5.0
    assert success_rates(errors, np.array([4.0, 5.0]))[1] == 1.0


def test_default_thresholds_are_0_to_80_mm_in_1_mm_steps():
    t = thresholds_mm()
    assert t.shape == (81,) and t[0] == 0.0 and t[-1] == 80.0
    np.testing.assert_array_equal(np.diff(t), 1.0)


def test_thresholds_with_a_fine_step_hit_the_decimal_values():
    t = thresholds_mm(max_mm=1.0, step_mm=0.1)
    assert t.shape == (11,) and t[3] == 0.3 and t[-1] == 1.0  # not 0.30000000000000004
    assert thresholds_mm(max_mm=80, step_mm=0.5).shape == (161,)
    with pytest.raises(HandganError, match="does not divide"):
        thresholds_mm(max_mm=80, step_mm=0.7)


def test_auc_of_hand_made_curves():
    # Trapezoids over [0, 2]: (0 + 0.5)/2 + (0.5 + 1)/2 = 1.0 of a possible 2.0.
    assert success_auc([0.0, 1.0, 2.0], [0.0, 0.5, 1.0]) == pytest.approx(0.5)
    assert success_auc([0.0, 1.0, 2.0], [0.0, 1.0, 1.0]) == pytest.approx(0.75)
    assert success_auc([0.0, 40.0, 80.0], [1.0, 1.0, 1.0]) == pytest.approx(1.0)
    # The hand-made max-frame curve above: (0 + 1/6 + 1/2 + 2/3 + 5/6) / 5.
    assert success_auc(T, success_rates(ERRORS, T)) == pytest.approx((1 / 6 + 1 / 2 + 2 / 3 + 5 / 6) / 5)


def test_mean_and_per_joint_errors():
    assert mean_error_mm(ERRORS) == pytest.approx(13.0 / 6.0)
    np.testing.assert_allclose(per_joint_error_mm(ERRORS), [8.0 / 3.0, 5.0 / 3.0])


def test_nyu_back_projection_uses_a_negative_fy():
    nyu = get_layout("nyu").intrinsics
    # 58.803 px right of cx and 58.707 px below cy at 1000 mm: x = 58.803 * 1000 / 588.03 = 100,
    # y = 58.707 * 1000 / -587.07 = -100 (the field's fy is negative: y points up).
    np.testing.assert_allclose(nyu.uvd_to_xyz(np.array([378.803, 298.707, 1000.0])),
                               [100.0, -100.0, 1000.0], atol=1e-9)
    gt = np.array([[[378.803, 298.707, 1000.0]]])
    pred = np.array([[[320.0, 240.0, 1010.0]]])  # the principal point: (0, 0, 1010)
    # sqrt(100^2 + 100^2 + 10^2) = sqrt(20100)
    assert joint_errors_uvd(pred, gt, nyu)[0, 0] == pytest.approx(141.774468787578, abs=1e-9)


def test_icvl_uses_the_field_evaluator_intrinsics():
    icvl = get_layout("icvl").intrinsics
    assert (icvl.fx, icvl.fy, icvl.cx, icvl.cy) == (240.99, 240.96, 160.0, 120.0)
    # 24.099 px right, 24.096 px below at 1000 mm: (100, 100) with ICVL's y down.
    np.testing.assert_allclose(icvl.uvd_to_xyz(np.array([184.099, 144.096, 1000.0])),
                               [100.0, 100.0, 1000.0], atol=1e-9)


def test_layouts():
    assert {k: v.n_joints for k, v in LAYOUTS.items()} == {"nyu": 14, "icvl": 16, "msra": 21,
                                                           "synthetic": 14}
    assert LAYOUTS["nyu"].joint_names == NYU14_NAMES == LAYOUTS["synthetic"].joint_names
    # readable names, in the files' order (ICVL's own: C, T1 ... P3)
    assert LAYOUTS["icvl"].joint_names[:4] == ("palm_centre", "thumb_root", "thumb_mid",
                                               "thumb_tip")
    assert LAYOUTS["icvl"].joint_names[-1] == "little_tip" and len(ICVL_JOINT_NAMES) == 16
    assert LAYOUTS["msra"].joint_names == MSRA_JOINT_NAMES
    msra = LAYOUTS["msra"].intrinsics
    assert (msra.fx, msra.fy, msra.cx, msra.cy) == (241.42, 241.42, 160.0, 120.0)
    with pytest.raises(HandganError, match="unknown dataset 'hands'"):
        get_layout("hands")


def test_shape_mismatch_is_a_programming_error():
    with pytest.raises(ValueError, match="one shape"):
        joint_errors_xyz(np.zeros((2, 14, 3)), np.zeros((3, 14, 3)))


def test_full_test_set_size_is_vectorised():
    rng = np.random.default_rng(0)
    errors = rng.gamma(4.0, 4.0, size=(8252, 14))
    for kind in ("max-frame", "mean-frame", "joint"):
        rates = success_rates(errors, kind=kind)
        assert rates.shape == (81,) and np.all(np.diff(rates) >= 0) and 0 <= rates[0] <= rates[-1] <= 1
    # Cross-check the sorted/searchsorted path against the plain definition.
    t = thresholds_mm()
    brute = (errors.max(axis=1)[:, None] <= t[None, :]).mean(axis=0)
    np.testing.assert_array_equal(success_rates(errors, t), brute)
