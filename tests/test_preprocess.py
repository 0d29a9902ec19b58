"""Hand localisation, cube crop <-> uncrop and augmentation: analytic boxes and depths, exact joint
round trips (with chained augmentations), and augmented images that agree with their joints."""
import numpy as np
import pytest

from handgan.augment import (
    AugmentConfig,
    augment_crop,
    augment_view,
    map_joints,
)
from handgan.camera import ICVL, NYU
from handgan.errors import HandganError
from handgan.preprocess import (
    CropTransform,
    crop_depth,
    localize_hand,
    rewarp_crop,
)

from helpers import pixel_rays, preprocess_frame

CAMERAS = [pytest.param(NYU, id="nyu-y-up"), pytest.param(ICVL, id="icvl-y-down")]
# Much stronger than the defaults, so that direction or scale mistakes cannot hide.
STRONG = AugmentConfig(combine=True, rotation_deg=180.0, scale_sigma=0.1,
                       translation_sigma_mm=20.0)


def crop_px(t: CropTransform, uvd) -> np.ndarray:
    """(..., 2+) full-frame u, v -> (..., 2) crop px through the transform's matrix ``M``."""
    uv = np.asarray(uvd, dtype=np.float64)[..., :2]
    return uv @ t.M[:2, :2].T + t.M[:2, 2]


# ---- synthetic frames -------------------------------------------------------------------------

def disc_frame(intr, discs):
    """Zero frame with flat discs: each (u, v, radius px, depth mm), later ones in front."""
    depth = np.zeros((intr.height, intr.width), np.float32)
    v, u = np.mgrid[:intr.height, :intr.width]
    for du, dv, r, d in discs:
        depth[(u - du) ** 2 + (v - dv) ** 2 <= r * r] = d
    return depth


def hand_frame(intr, palm_xyz, radius_mm=55.0, arm_width_mm=50.0, arm_deg=60.0, wall_mm=2500.0):
    """A fronto-parallel disc (the hand) and a forearm strip that starts at its lower edge and
    goes down and away from the camera at arm_deg, out of the frame, before a far wall. Exact ray
    cast."""
    v, u = np.mgrid[:intr.height, :intr.width]
    rays = pixel_rays(intr, u, v)  # (H, W, 3), z = 1
    c = np.asarray(palm_xyz, float)
    depth = np.full((intr.height, intr.width), wall_mm)
    on_plane = c[2] * rays
    depth[np.hypot(on_plane[..., 0] - c[0], on_plane[..., 1] - c[1]) <= radius_mm] = c[2]
    down = np.array([0.0, -1.0 if intr.y_up else 1.0, 0.0])  # image "down" in camera coordinates
    a = np.radians(arm_deg)
    start = c + radius_mm * down
    along = np.cos(a) * down + np.array([0.0, 0.0, np.sin(a)])
    side = np.array([1.0, 0.0, 0.0])
    normal = np.cross(side, along)
    t = (normal @ start) / (rays @ normal)  # depth of the strip's plane on each ray
    rel = t[..., None] * rays - start
    arm = (rel @ along >= 0) & (np.abs(rel @ side) <= arm_width_mm / 2) & (t > 0)
    return np.where(arm, np.minimum(depth, t), depth).astype(np.float32)


# ---- crop box and depth normalisation ----------------------------------------------------------

def test_box_of_the_deep_prior_example():
    t = CropTransform([320.0, 240.0, 600.0], 300.0, 128, NYU)
    assert t.box_px == (173, 93, 467, 387)  # x in [173, 467), y in [93, 387): 294 x 294 px
    assert t.paste_px == (0, 0, 128, 128)
    np.testing.assert_allclose(crop_px(t, [173.0, 93.0]), [0.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(crop_px(t, [320.0, 240.0, 600.0]), [64.0, 64.0], atol=1e-12)
    np.testing.assert_allclose(t.M[0, 0], 128 / 294)
    np.testing.assert_allclose(t.centre_xyz, [0.0, 0.0, 600.0])


def test_non_square_box_keeps_aspect_and_pastes_centred():
    t = CropTransform([320.0, 240.0, 600.0], [300.0, 200.0, 300.0], 64, NYU)
    xstart, ystart, xend, yend = t.box_px
    wb, hb = xend - xstart, yend - ystart
    assert wb > hb
    xoff, yoff, w, h = t.paste_px
    assert (xoff, w) == (0, 64) and h == hb * 64 // wb and yoff == (64 - h) // 2


def test_depth_normalisation_front_centre_back_and_missing():
    t = CropTransform([320.0, 240.0, 600.0], 300.0, 128, NYU)
    d = np.array([400.0, 450.0, 525.0, 600.0, 750.0, 751.0, 0.0, np.nan, -5.0], np.float32)
    expected = [-1.0, -1.0, -0.5, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    out = t.depth_to_norm(d)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, expected)


def test_crop_pixels_front_clamped_background_and_centre_depth():
    # NYU frame: a 600 mm patch at the centre, a 400 mm patch left (nearer than the front face at
    # 450 mm), an 800 mm patch right (behind the back face at 750 mm), holes (0) elsewhere.
    depth = np.zeros((480, 640), np.uint16)
    depth[200:280, 280:360] = 600
    depth[200:280, 190:250] = 400
    depth[200:280, 390:450] = 800
    crop, t = crop_depth(depth, [320.0, 240.0, 600.0], 300.0, 128, intr=NYU)
    assert crop.shape == (128, 128) and crop.dtype == np.float32

    def at(u, v):
        x, y = np.rint(crop_px(t, [u, v])).astype(int)
        return crop[y, x]

    assert at(320, 240) == 0.0  # the centre depth
    assert at(220, 240) == -1.0  # front-clamped
    assert at(420, 240) == 1.0  # beyond the back face: background
    assert at(320, 120) == 1.0  # missing depth: background
    assert crop.min() == -1.0 and crop.max() == 1.0


def test_crop_outside_the_image_is_zero_padded_background():
    depth = np.full((480, 640), 700, np.uint16)
    crop, t = crop_depth(depth, [5.0, 470.0, 700.0], 300.0, 64, intr=NYU)
    xstart, ystart, _, _ = t.box_px
    assert xstart < 0 and t.box_px[3] > 480
    x0, y0 = crop_px(t, [0.0, 479.0])  # the image corner inside the crop
    assert crop[int(np.ceil(y0)) + 1, int(np.floor(x0)) - 2] == 1.0  # left of the image: padding
    assert crop[int(np.floor(y0)) - 1, int(np.ceil(x0)) + 1] == 0.0  # inside: the 700 mm wall


def test_rotation_turns_content_clockwise_in_y_down_pixels():
    # A disc right of the centre appears below the centre after +90 degrees.
    depth = disc_frame(NYU, [(400, 240, 12, 620)])
    crop, t = crop_depth(depth, [320.0, 240.0, 600.0], 300.0, 128, intr=NYU, rotation_deg=90.0)
    cx, cy = crop_px(t, [320.0, 240.0])
    px, py = crop_px(t, [400.0, 240.0])
    assert abs(px - cx) < 1e-9 and py - cy == pytest.approx(80 * 128 / 294)
    assert crop[int(round(py)), int(round(px))] == pytest.approx((620 - 600) / 150)
    # the normalised joint turns the same way: straight below the centre, i.e. y < 0 (y up)
    norm = t.uvd_to_norm([400.0, 240.0, 600.0])
    assert abs(norm[0]) < 1e-9 and norm[1] == pytest.approx(-80 * 600 / 587.07 / 150)
    np.testing.assert_allclose(t.norm_to_crop_px(norm), [px, py], atol=1e-9)


# ---- joint round trips ------------------------------------------------------------------------

def _random_case(rng, intr):
    """A centre anywhere in the image (a third of them within 15 px of a border), a cube, S and
    joints anywhere in the cube."""
    if rng.random() < 1 / 3:
        u = rng.choice([rng.uniform(0, 15), rng.uniform(intr.width - 15, intr.width)])
        v = rng.uniform(0, intr.height)
    else:
        u, v = rng.uniform(0, intr.width), rng.uniform(0, intr.height)
    centre = np.array([u, v, rng.uniform(300.0, 1500.0)])
    cube = rng.uniform(150.0, 350.0) if rng.random() < 0.7 else rng.uniform(150.0, 350.0, 3)
    size = int(rng.choice([64, 128]))
    half = np.broadcast_to(cube, (3,)) / 2
    joints_xyz = intr.uvd_to_xyz(centre) + rng.uniform(-half, half, size=(14, 3))
    return centre, cube, size, joints_xyz


@pytest.mark.parametrize("intr", CAMERAS)
def test_joint_round_trip_crop_uncrop_with_and_without_augmentation(intr):
    rng = np.random.default_rng(7)
    frame = rng.uniform(300.0, 1600.0, (intr.height, intr.width)).astype(np.float32)
    for i in range(500):
        centre, cube, size, joints_xyz = _random_case(rng, intr)
        joints_uvd = intr.xyz_to_uvd(joints_xyz)
        crop, t, joints_norm = preprocess_frame(frame, intr, cube, size, centre_uvd=centre,
                                                joints_uvd=joints_uvd)
        assert crop.shape == (size, size) and crop.dtype == np.float32
        assert -1.0 <= crop.min() and crop.max() <= 1.0
        # the centre sits in the middle up to the box rounding (half an image px) and the paste
        assert np.all(np.abs(crop_px(t, centre) - size / 2) <= 0.5 * t.M[0, 0] + 1.0)
        np.testing.assert_allclose(t.norm_to_xyz(joints_norm), joints_xyz, rtol=0, atol=1e-3)
        np.testing.assert_allclose(t.norm_to_uvd(joints_norm), joints_uvd, rtol=0, atol=1e-6)
        # the same normalised joints from xyz directly
        np.testing.assert_allclose(t.xyz_to_norm(joints_xyz), joints_norm, rtol=0, atol=1e-9)

        cfg = STRONG if i % 2 else AugmentConfig()
        for _ in range(2):  # chained: each augmentation starts from the previous crop
            crop, t, joints_norm = augment_crop(crop, t, joints_norm, rng, cfg)
            assert crop.shape == (size, size) and crop.dtype == np.float32
            assert -1.0 <= crop.min() and crop.max() <= 1.0
            np.testing.assert_allclose(t.norm_to_xyz(joints_norm), joints_xyz, rtol=0, atol=1e-3)
            np.testing.assert_allclose(t.norm_to_uvd(joints_norm), joints_uvd, rtol=0, atol=1e-6)


def test_normalised_joints_are_divided_by_half_cube_z():
    t = CropTransform([320.0, 240.0, 600.0], [300.0, 300.0, 200.0], 128, NYU)
    norm = t.xyz_to_norm(t.centre_xyz + np.array([50.0, -20.0, 100.0]))
    np.testing.assert_allclose(norm, [0.5, -0.2, 1.0])


def test_joints_xyz_and_uvd_give_the_same_normalised_joints():
    joints_xyz = np.array([[10.0, 20.0, 700.0], [-30.0, 5.0, 650.0]])
    frame = np.full((480, 640), 700.0, np.float32)
    _, _, a = preprocess_frame(frame, NYU, 300.0, 128, centre_uvd=[330.0, 230.0, 690.0],
                               joints_xyz=joints_xyz)
    _, _, b = preprocess_frame(frame, NYU, 300.0, 128, centre_uvd=[330.0, 230.0, 690.0],
                               joints_uvd=NYU.xyz_to_uvd(joints_xyz))
    np.testing.assert_allclose(a, b, atol=1e-12)


# ---- augmentation agrees with the image ---------------------------------------------------------

def _disc_scene(intr, rng, centre_uvd):
    """Five asymmetric discs of distinct depths around the centre; the joints are their centres."""
    u0, v0, z0 = centre_uvd
    scale = intr.fx / z0  # px per mm at the centre depth
    offsets_mm = np.array([[0, 0], [60, 10], [-45, 35], [15, -70], [-30, -40]], float)
    depths = z0 + np.array([0.0, -60.0, 40.0, -25.0, 80.0])
    uv = np.array([u0, v0]) + offsets_mm * scale
    radius_px = 11 * scale
    discs = [(u, v, radius_px, d) for (u, v), d in zip(uv, depths)]
    joints_uvd = np.column_stack([uv, depths])
    return disc_frame(intr, discs), joints_uvd


@pytest.mark.parametrize("intr", CAMERAS)
@pytest.mark.parametrize("size", [64, 128])
def test_augmented_crop_shows_each_disc_under_its_projected_joint(intr, size):
    rng = np.random.default_rng(size)
    for _trial in range(12):
        centre = np.array([intr.cx + rng.uniform(-40, 40), intr.cy + rng.uniform(-30, 30),
                           rng.uniform(600.0, 900.0)])
        frame, joints_uvd = _disc_scene(intr, rng, centre)
        crop, t, joints_norm = preprocess_frame(frame, intr, 300.0, size, centre_uvd=centre,
                                                joints_uvd=joints_uvd)
        alive = np.ones(len(joints_uvd), bool)  # joints whose disc centre was never cut off
        for step in range(3):
            # the pixel under each joint shows its disc, at the joint's normalised depth
            # (the normalised joints, projected in the crop's rotated frame, land where the
            # image matrix puts the original joints)
            np.testing.assert_allclose(t.norm_to_crop_px(joints_norm), crop_px(t, joints_uvd),
                                       atol=1e-6)
            px = np.rint(t.norm_to_crop_px(joints_norm)).astype(int)  # (5, 2) x, y
            alive &= np.all((px >= 0) & (px < size), axis=1)
            assert alive.sum() >= 2
            seen = crop[px[alive, 1], px[alive, 0]]
            np.testing.assert_allclose(seen, joints_norm[alive, 2], atol=1e-5)
            # and the whole re-warped crop matches a fresh crop of the frame with the new
            # transform, except at disc edges (nearest neighbour twice vs once) and where
            # content came from outside an earlier crop
            fresh, _ = crop_depth(frame, t.centre_uvd, t.cube_mm, size, intr=intr,
                                  rotation_deg=t.rotation_deg)
            assert np.mean(np.abs(fresh - crop) < 1e-4) > 0.95
            if step < 2:
                crop, t, joints_norm = augment_crop(crop, t, joints_norm, rng, STRONG)


@pytest.mark.parametrize("mode", ["com", "rot", "sc"])
def test_each_single_mode_changes_only_its_parameter(mode):
    rng = np.random.default_rng(3)
    frame, joints_uvd = _disc_scene(NYU, rng, [320.0, 240.0, 700.0])
    crop, t, jn = preprocess_frame(frame, NYU, 300.0, 128, centre_uvd=[320.0, 240.0, 700.0],
                                   joints_uvd=joints_uvd)
    _, t2, jn2 = augment_crop(crop, t, jn, rng, AugmentConfig(modes=(mode,)))
    moved = not np.array_equal(t2.centre_uvd, t.centre_uvd)
    scaled = not np.array_equal(t2.cube_mm, t.cube_mm)
    rotated = t2.rotation_deg != t.rotation_deg
    assert (moved, rotated, scaled) == (mode == "com", mode == "rot", mode == "sc")
    np.testing.assert_allclose(t2.norm_to_uvd(jn2), joints_uvd, atol=1e-6)


def test_mode_none_returns_an_unchanged_copy():
    crop = np.linspace(-1, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    t = CropTransform([320.0, 240.0, 700.0], 300.0, 64, NYU)
    joints = np.zeros((3, 3))
    out, t2, j2 = augment_crop(crop, t, joints, np.random.default_rng(0),
                               AugmentConfig(modes=("none",)))
    assert t2 is t and np.array_equal(out, crop) and out is not crop and np.array_equal(j2, joints)


def test_unlabelled_crops_and_sensor_noise_options():
    rng = np.random.default_rng(1)
    frame, _ = _disc_scene(NYU, rng, [320.0, 240.0, 700.0])
    crop, t = crop_depth(frame, [320.0, 240.0, 700.0], 300.0, 128, intr=NYU)
    cfg = AugmentConfig(modes=("none",), pixel_dropout_p=0.2, depth_noise_sigma_mm=3.0)
    out, _, joints = augment_crop(crop, t, None, rng, cfg)
    assert joints is None
    fg = crop < 1.0
    dropped = fg & (out == 1.0)
    assert 0.1 < dropped.sum() / fg.sum() < 0.3
    kept = fg & ~dropped
    noise_mm = (out[kept] - crop[kept]) * t.half_depth_mm
    assert 2.5 < noise_mm.std() < 3.5
    assert np.all(out[~fg] == 1.0)  # background stays background


def test_rewarp_into_a_farther_cube_keeps_background_and_reclamps():
    t = CropTransform([320.0, 240.0, 600.0], 300.0, 64, NYU)
    crop = np.repeat(np.array([-1.0, 0.0, 0.5, 1.0], np.float32), 16)[None, :].repeat(64, 0)
    t2 = CropTransform([320.0, 240.0, 700.0], 300.0, 64, NYU)  # centre 100 mm farther
    out = rewarp_crop(crop, t, t2)
    # old front face 450 mm -> -1 (clamped); 600 mm -> -2/3; 675 mm -> -1/6; background stays +1
    np.testing.assert_allclose(np.unique(out), [-1.0, -2 / 3, -1 / 6, 1.0], atol=1e-6)
    x, y = np.rint(crop_px(t2, [320.0, 240.0])).astype(int)  # old crop px (32, 32)
    assert out[y, x] == pytest.approx(-1 / 6)


def test_augment_config_is_checked():
    with pytest.raises(ValueError, match="modes"):
        AugmentConfig(modes=("flip",))
    with pytest.raises(ValueError, match="pixel_dropout_p"):
        AugmentConfig(pixel_dropout_p=1.5)


def test_augment_view_is_augment_crop_without_joints():
    rng_crop = np.random.default_rng(3)
    frame, joints_uvd = _disc_scene(NYU, rng_crop, [320.0, 240.0, 700.0])
    crop, t, jn = preprocess_frame(frame, NYU, 300.0, 128, centre_uvd=[320.0, 240.0, 700.0],
                                   joints_uvd=joints_uvd)
    cfg = AugmentConfig(combine=True, rotation_deg=30.0)
    out, t2, j2 = augment_crop(crop, t, jn, np.random.default_rng(9), cfg)
    view, t3 = augment_view(crop, t, np.random.default_rng(9), cfg)
    assert np.array_equal(out, view) and np.array_equal(t2.M, t3.M)
    np.testing.assert_allclose(j2, map_joints(jn, t, t2), atol=1e-12)
    assert np.array_equal(view, rewarp_crop(crop, t, t2))


# ---- localisation -----------------------------------------------------------------------------

@pytest.mark.parametrize("intr", CAMERAS)
@pytest.mark.parametrize("palm_z", [500.0, 1200.0])
def test_com_lands_on_the_hand_not_the_forearm(intr, palm_z):
    palm = np.array([30.0, -20.0, palm_z])
    frame = hand_frame(intr, palm)
    found = intr.uvd_to_xyz(localize_hand(frame, intr))
    assert np.linalg.norm(found - palm) < 8.0
    # DeepPrior++'s plain cube CoM (no near margin) is pulled towards the forearm
    plain = intr.uvd_to_xyz(localize_hand(frame, intr, near_margin_mm=None))
    assert np.linalg.norm(plain - palm) > np.linalg.norm(found - palm)


@pytest.mark.parametrize("intr", CAMERAS)
def test_com_ignores_isolated_noise_pixels_in_front(intr):
    rng = np.random.default_rng(5)
    palm = np.array([-40.0, 10.0, 800.0])
    frame = hand_frame(intr, palm, arm_deg=80.0)
    clean = intr.uvd_to_xyz(localize_hand(frame, intr))
    n = intr.width * intr.height // 2000
    frame[rng.integers(0, intr.height, n), rng.integers(0, intr.width, n)] = \
        rng.uniform(300.0, 500.0, n)
    noisy = intr.uvd_to_xyz(localize_hand(frame, intr))
    assert np.linalg.norm(clean - palm) < 3.0
    assert np.linalg.norm(noisy - palm) < 5.0


def test_com_of_a_flat_disc_is_its_centre():
    frame = disc_frame(NYU, [(250.0, 300.0, 40.0, 700.0)])
    np.testing.assert_allclose(localize_hand(frame, NYU), [250.0, 300.0, 700.0], atol=0.05)


def test_preprocess_frame_localises_when_no_centre_is_given():
    palm = np.array([30.0, -20.0, 700.0])
    frame = hand_frame(NYU, palm)
    crop, t, joints = preprocess_frame(frame, NYU, 300.0, 128)
    assert joints is None and crop.shape == (128, 128)
    assert np.linalg.norm(t.centre_xyz - palm) < 8.0


@pytest.mark.parametrize("frame, message", [
    (np.zeros((480, 640), np.uint16), "all pixels are 0"),
    (np.full((480, 640), np.nan, np.float32), "all pixels are NaN"),
    (np.full((480, 640), 2500.0, np.float32), "no valid depth within 1500 mm"),
    (np.zeros((0, 0), np.float32), "2-D depth image"),
])
def test_frames_without_a_hand_raise_a_clear_error(frame, message):
    with pytest.raises(HandganError, match=f"no hand found: .*{message}"):
        localize_hand(frame, NYU)


def test_a_crop_centre_without_depth_is_refused():
    with pytest.raises(HandganError, match="depth > 0"):
        crop_depth(np.ones((480, 640)), [320.0, 240.0, 0.0], 300.0, intr=NYU)
