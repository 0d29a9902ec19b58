"""The kinematic hand model: limits, determinism, rigid bones, NYU label layout, pose coverage."""
import numpy as np
import pytest

from handgan.synth import hand as H


def _random_pose(rng):
    return H.pose_from_angles(H.sample_articulation(rng), H.sample_rotation(rng), np.array([0.0, 0.0, 800.0]))


def test_joint_angles_stay_within_limits_for_10000_samples():
    rng = np.random.default_rng(123)
    angles = np.stack([H.sample_articulation(rng) for _ in range(10_000)])
    lo, hi = H.angle_limits()
    assert angles.shape == (10_000, len(H.ANGLE_NAMES))
    assert np.all(angles >= lo - 1e-9) and np.all(angles <= hi + 1e-9)
    # DIP is coupled to PIP: DIP / PIP within the coupling range wherever PIP is bent.
    pip, dip = angles[:, 8:12], angles[:, 12:16]
    bent = pip > 5.0
    ratio = dip[bent] / pip[bent]
    assert ratio.min() >= H.DIP_PIP_RATIO[0] - 1e-9 and ratio.max() <= H.DIP_PIP_RATIO[1] + 1e-9
    # The sampler covers the range, not one pose: open and closed fingers both occur often.
    assert (pip < 15).mean() > 0.2 and (pip > 80).mean() > 0.2


def test_sampler_is_deterministic_for_a_seed():
    a = [H.sample_articulation(np.random.default_rng(7)) for _ in range(2)]
    b = H.sample_articulation(np.random.default_rng(8))
    np.testing.assert_array_equal(a[0], a[1])
    assert not np.allclose(a[0], b)


def test_bones_are_rigid_and_scaled_by_the_shape():
    rng = np.random.default_rng(0)
    for _ in range(50):
        shape = H.sample_shape(rng)
        sk = H.forward_kinematics(_random_pose(rng), shape)
        for i in range(4):
            mcp, pip, dip, _ = sk.finger_chain[i]
            np.testing.assert_allclose(np.linalg.norm(pip - mcp),
                                       H.PHALANX_MM[i, 0] * shape.phalanx_mult[i, 0] * shape.scale, rtol=1e-9)
            np.testing.assert_allclose(np.linalg.norm(dip - pip),
                                       H.PHALANX_MM[i, 1] * shape.phalanx_mult[i, 1] * shape.scale, rtol=1e-9)
        cmc, t_mcp, t_ip, _ = sk.thumb_chain
        np.testing.assert_allclose(np.linalg.norm(t_mcp - cmc), H.THUMB_MM[0] * shape.thumb_mult[0] * shape.scale)
        np.testing.assert_allclose(np.linalg.norm(t_ip - t_mcp), H.THUMB_MM[1] * shape.thumb_mult[1] * shape.scale)


def test_rotation_is_a_proper_rotation_and_palm_centre_is_placed_exactly():
    rng = np.random.default_rng(1)
    for _ in range(100):
        R = H.sample_rotation(rng)
        np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
        assert np.linalg.det(R) == pytest.approx(1.0)
    pose = _random_pose(rng)
    pose.palm_centre_mm = np.array([12.0, -30.0, 901.0])
    sk = H.forward_kinematics(pose, H.HandShape())
    np.testing.assert_allclose(sk.nyu36()[32], [12.0, -30.0, 901.0], atol=1e-9)


def test_open_hand_matches_nyu_subject_proportions():
    """NYU test subject 1 (measured from the real labels): max joint distance from the palm centre
    134 mm, wrist points 35.3 mm apart and 81.3 mm from the palm centre."""
    pose = H.pose_from_angles(H._pose_from_prototype("flat"), np.eye(3), np.zeros(3))
    j = H.forward_kinematics(pose, H.HandShape()).nyu36()
    reach = np.linalg.norm(j - j[32], axis=1)
    assert reach.max() == pytest.approx(134.0, abs=8.0)
    assert np.linalg.norm(j[30] - j[31]) == pytest.approx(35.3, abs=3.0)
    assert reach[30] == pytest.approx(81.3, abs=6.0) and reach[31] == pytest.approx(81.3, abs=6.0)
    # Finger identity: index base (NYU id 21) nearest the thumb base (27), little (3) farthest.
    d = {k: np.linalg.norm(j[k] - j[27]) for k in (3, 9, 15, 21)}
    assert min(d, key=d.get) == 21 and max(d, key=d.get) == 3


def test_pinch_prototype_brings_thumb_and_index_tips_together():
    pose = H.pose_from_angles(H._pose_from_prototype("pinch"), np.eye(3), np.zeros(3))
    j = H.forward_kinematics(pose, H.HandShape()).nyu36()
    assert np.linalg.norm(j[24] - j[18]) < 15.0  # thumb tip (24) to index tip (18)
    fist = H.forward_kinematics(H.pose_from_angles(H._pose_from_prototype("fist"), np.eye(3), np.zeros(3)),
                                H.HandShape()).nyu36()
    assert np.linalg.norm(fist[12] - fist[32]) < 70.0  # a fist keeps the middle tip near the palm


def test_global_rotations_cover_nyu_views():
    """Palm normal vs view direction (NYU: 5th-95th percentile 14-148 deg, max 174) and in-plane
    finger direction (NYU: all of -180..180) must be covered at least as widely."""
    rng = np.random.default_rng(5)
    facing, in_plane = [], []
    for _ in range(4000):
        R = H.sample_rotation(rng)
        volar, distal = R[:, 2], R[:, 1]
        facing.append(np.degrees(np.arccos(np.clip(volar @ np.array([0.0, 0.0, -1.0]), -1, 1))))
        in_plane.append(np.degrees(np.arctan2(distal[0], distal[1])))
    facing, in_plane = np.array(facing), np.array(in_plane)
    assert np.percentile(facing, 5) < 14 and np.percentile(facing, 95) > 148 and facing.max() > 170
    assert in_plane.min() < -170 and in_plane.max() > 170
    assert 10 < np.median(facing) < 60  # mostly palm towards the camera, as in NYU (median 43)


def test_fingers_mostly_point_towards_the_camera_as_in_nyu():
    """Elevation of wrist -> palm centre out of the image plane (negative = towards the camera):
    NYU test percentiles 5/50/95 % = -68/-20/+6 deg, i.e. the forearm usually lies behind the hand."""
    rng = np.random.default_rng(6)
    elevation = []
    for _ in range(4000):
        R = H.sample_rotation(rng)
        elevation.append(np.degrees(np.arcsin(R[2, 1])))  # camera z of the distal axis
    p5, p50, p95 = np.percentile(elevation, [5, 50, 95])
    assert p5 < -60 and -30 < p50 < -10 and p95 > 6
