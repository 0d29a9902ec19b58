"""Ray-cast depth of spheres, round cones and planes against independent solutions, and the
structured-light sensor model's noise, quantisation, dropouts, shadows and determinism."""
import numpy as np
import pytest

from handgan.camera import ICVL, NYU
from handgan.synth.render import Scene, SensorConfig, apply_sensor, render_depth

from helpers import pixel_rays

FB_MM_PX = NYU.fx * 75.0  # focal length x baseline


def _rays(intr, u, v):
    return pixel_rays(intr, np.asarray(u, float), np.asarray(v, float))


def _sphere_t(d, c, r):
    """Nearer hit of the ray t·d on a sphere (closed form), inf on a miss."""
    dd, dc = (d * d).sum(-1), d @ c
    disc = dc * dc - dd * (c @ c - r * r)
    t = (dc - np.sqrt(np.maximum(disc, 0.0))) / dd
    return np.where(disc >= 0, t, np.inf)


def _round_cone_sdf(p, a, b, ra, rb):
    """Exact signed distance to the convex hull of spheres (a, ra) and (b, rb) (Quilez)."""
    ba = b - a
    l2 = ba @ ba
    rr = ra - rb
    a2 = l2 - rr * rr
    pa = p - a
    y = pa @ ba
    z = y - l2
    xv = pa * l2 - y[:, None] * ba
    x2 = (xv * xv).sum(-1)
    y2, z2 = y * y * l2, z * z * l2
    k = np.sign(rr) * rr * rr * x2
    return np.where(np.sign(z) * a2 * z2 > k, np.sqrt(x2 + z2) / l2 - rb,
                    np.where(np.sign(y) * a2 * y2 < k, np.sqrt(x2 + y2) / l2 - ra,
                             (np.sqrt(x2 * a2 / l2) + y * rr) / l2 - ra))


def _march(d, sdf, t_start=1.0, iters=400):
    """Sphere tracing along t·d from t_start; the SDF is exact, so the first zero is the hit.

    Returns t (inf = miss) and a mask of rays that graze a surface (the distance stays under
    1 mm without reaching it), where tracing stalls and the answer is unknown.
    """
    t = np.full(len(d), t_start)
    norm = np.linalg.norm(d, axis=1)
    with np.errstate(all="ignore"):
        for _ in range(iters):
            t = t + sdf(t[:, None] * d) / norm
        dist = np.abs(sdf(t[:, None] * d))
    return np.where(dist < 1e-6, t, np.inf), (dist >= 1e-6) & (dist < 1.0)


def _check_traced(got, ref, grazing, on_surface):
    """Rendered depths vs traced ones; grazing rays (rare) only need to land on the surface."""
    assert grazing.mean() < 0.02
    ok = ~grazing
    hit = ok & np.isfinite(ref)
    np.testing.assert_allclose(got[hit], ref[hit], atol=0.5)
    assert np.all(got[ok & ~np.isfinite(ref)] == 0)
    g = grazing & (got > 0)
    assert np.all(np.abs(on_surface(got[g])) < 0.01)


def _cone(a, b, ra, rb, label=0) -> Scene:
    return Scene(cone_a=np.array([a], float), cone_b=np.array([b], float), cone_ra=[ra],
                 cone_rb=[rb], cone_labels=[label])


def _sphere(c, r, label=0) -> Scene:
    return Scene(sphere_centers=np.array([c], float), sphere_radii=[r], sphere_labels=[label])


def _wall(z_mm, label=2) -> Scene:
    return Scene(planes=[[0.0, 0.0, -1.0, -z_mm]], plane_labels=[label])


# ----------------------------------------------------------------------------------------------
# Geometry


def test_sphere_depth_and_labels_match_the_closed_form_over_the_whole_image():
    c, r = np.array([40.0, -25.0, 800.0]), 60.0
    depth, labels = render_depth(_sphere(c, r, label=7), NYU)
    assert depth.dtype == np.float32 and labels.dtype == np.int16
    assert depth.shape == labels.shape == (480, 640)
    vv, uu = np.mgrid[0:480, 0:640]
    ref = _sphere_t(_rays(NYU, uu, vv), c, r)
    hit = np.isfinite(ref)
    assert 5500 < hit.sum() < 7000  # pi·(f·r/z)² ≈ 6100 px
    np.testing.assert_allclose(depth[hit], ref[hit], atol=0.5)
    assert np.abs(depth[hit] - ref[hit]).mean() < 0.01
    assert np.all(depth[~hit] == 0)
    assert np.all(labels[hit] == 7) and np.all(labels[~hit] == -1)
    # the pixel at the centre's projection sees the nearest point, |c| - r along that ray
    u, v, _ = NYU.xyz_to_uvd(c)
    d = _rays(NYU, round(u), round(v))
    assert depth[round(v), round(u)] == pytest.approx(_sphere_t(d, c, r), abs=1e-3)


def test_y_sign_follows_the_camera_convention():
    c = np.array([0.0, 60.0, 600.0])  # above the optical axis
    for intr, below in ((NYU, False), (ICVL, True)):
        depth, _ = render_depth(_sphere(c, 20.0), intr)
        v_centre = np.argwhere(depth > 0)[:, 0].mean()
        assert (v_centre > intr.cy) == below  # ICVL's y points down the image
        assert abs(v_centre - (intr.cy + (1 if below else -1) * intr.fy * 60.0 / 600.0)) < 1.0


def test_capsule_side_on_is_a_cylinder_in_the_middle_and_spheres_at_the_ends():
    a, b, r, zc = np.array([-60.0, 0.0, 700.0]), np.array([60.0, 0.0, 700.0]), 20.0, 700.0
    depth, labels = render_depth(_cone(a, b, r, r, label=1), NYU)
    # Middle: axis along x at (y, z) = (0, 700); the ray (x, y, 1)·t meets (t·y)² + (t - zc)² = r².
    us = np.array([300, 310, 320, 335, 350])
    vs = np.array([240, 231, 248, 236, 244])
    y = _rays(NYU, us, vs)[:, 1]
    t_cyl = (zc - np.sqrt(zc**2 - (y * y + 1) * (zc**2 - r * r))) / (y * y + 1)
    np.testing.assert_allclose(depth[vs, us], t_cyl, atol=0.5)
    assert np.all(labels[vs, us] == 1)
    # Beyond the ends of the axis only the end spheres are left.
    for end, u in ((b, 385), (a, 255)):
        for v in (240, 234, 245):
            t = _sphere_t(_rays(NYU, u, v), end, r)
            assert np.isfinite(t) and depth[v, u] == pytest.approx(t, abs=0.5)
    assert depth[240, 392] == 0 and depth[212, 320] == 0  # past the cap / above the cylinder


def test_tapered_round_cone_matches_sphere_tracing_its_distance_function():
    a, b = np.array([-50.0, 10.0, 650.0]), np.array([60.0, -20.0, 720.0])
    ra, rb = 25.0, 10.0
    depth, _ = render_depth(_cone(a, b, ra, rb), NYU)
    # pixels across the middle of the lateral surface and near both ends
    pts = np.array([a + s * (b - a) for s in np.linspace(-0.2, 1.15, 12)])
    uv = np.rint(NYU.xyz_to_uvd(pts)[:, :2]).astype(int)
    uv = np.concatenate([uv, uv + [0, 8], uv - [0, 8], uv + [0, 15]])
    d = _rays(NYU, uv[:, 0], uv[:, 1])
    ref, grazing = _march(d, lambda p: _round_cone_sdf(p, a, b, ra, rb))
    got = depth[uv[:, 1], uv[:, 0]]
    assert np.isfinite(ref).sum() > 30 and not grazing.any()
    np.testing.assert_allclose(got[np.isfinite(ref)], ref[np.isfinite(ref)], atol=0.5)
    assert np.all(got[~np.isfinite(ref)] == 0)


@pytest.mark.parametrize("ra, rb, length", [
    (20.0, 20.0, 0.0),       # both spheres at one place
    (30.0, 10.0, 20.0),      # the small sphere inside the big one
    (30.0, 10.0, 20.0001),   # just past containment: a sliver of lateral surface
    (12.0, 12.5, 400.0),     # long, nearly cylindrical
])
def test_degenerate_round_cones_are_their_convex_hull(ra, rb, length):
    a = np.array([10.0, 5.0, 700.0])
    axis = np.array([0.6, 0.3, 0.742])
    b = a + length * axis / np.linalg.norm(axis)
    depth, _ = render_depth(_cone(a, b, ra, rb), NYU)
    vv, uu = np.mgrid[150:330:3, 250:520:3]
    d = _rays(NYU, uu.ravel(), vv.ravel())
    def sdf(p):
        if length == 0:
            return np.linalg.norm(p - a, axis=1) - ra
        return _round_cone_sdf(p, a, b, ra, rb)

    ref, grazing = _march(d, sdf)
    got = depth[vv.ravel(), uu.ravel()]
    assert np.isfinite(ref).sum() > 50
    _check_traced(got, ref, grazing, lambda t: sdf(t[:, None] * d[grazing & (got > 0)]))


def test_primitives_reaching_behind_the_camera_and_very_large_ones():
    # A rod from behind the camera to 1.2 m, off the optical axis, and a 1 m sphere far away:
    # these take the exact float64 path.
    a, b = np.array([-150.0, -60.0, -300.0]), np.array([40.0, 20.0, 1200.0])
    scene = _cone(a, b, 30.0, 30.0, label=1) + _sphere([0.0, 0.0, 3000.0], 1000.0, label=2)
    depth, labels = render_depth(scene, NYU)
    vv, uu = np.mgrid[0:480:7, 0:640:7]
    d = _rays(NYU, uu.ravel(), vv.ravel())
    def rod_sdf(p):
        return _round_cone_sdf(p, a, b, 30.0, 30.0)

    rod, grazing = _march(d, rod_sdf, t_start=1e-3, iters=600)
    ball = _sphere_t(d, np.array([0.0, 0.0, 3000.0]), 1000.0)
    ref = np.minimum(rod, ball)
    got = depth[vv.ravel(), uu.ravel()]
    assert np.isfinite(rod).sum() > 100 and np.isfinite(ball).sum() > 500
    def on_surface(t):
        p = t[:, None] * d[grazing & (got > 0)]
        ball_sdf = np.linalg.norm(p - [0, 0, 3000.0], axis=1) - 1000.0
        return np.minimum(np.abs(rod_sdf(p)), np.abs(ball_sdf))

    _check_traced(got, ref, grazing, on_surface)
    hit = np.isfinite(ref) & ~grazing
    assert np.all(labels[vv.ravel(), uu.ravel()][hit] == np.where(rod < ball, 1, 2)[hit])


def test_nearest_surface_wins_and_carries_its_label():
    small, big = np.array([0.0, 0.0, 600.0]), np.array([20.0, 0.0, 900.0])
    scene = _sphere(small, 30.0, label=1) + _sphere(big, 150.0, label=2)
    depth, labels = render_depth(scene, NYU)
    assert depth[240, 320] == pytest.approx(570.0, abs=1e-3)  # ray (0, 0, 1) meets |c| - r
    assert labels[240, 320] == 1
    u, v = 390, 250  # inside the big sphere's silhouette only
    assert depth[v, u] == pytest.approx(_sphere_t(_rays(NYU, u, v), big, 150.0), abs=0.5)
    assert labels[v, u] == 2
    # Order in the scene does not matter.
    depth2, labels2 = render_depth(_sphere(big, 150.0, 2) + _sphere(small, 30.0, 1), NYU)
    assert np.array_equal(depth, depth2) and np.array_equal(labels, labels2)


def test_wall_plane_depth_in_the_roi_and_nothing_outside():
    n = np.array([0.2, -0.1, -1.0])
    n /= np.linalg.norm(n)
    offset = n @ np.array([0.0, 0.0, 1000.0])  # passes through (0, 0, 1 m)
    roi = (100, 50, 300, 200)
    # given unnormalised: the constructor normalises (n, offset) together
    scene = Scene(planes=[[*(3 * n), 3 * offset]], plane_labels=[4])
    depth, labels = render_depth(scene, NYU, roi)
    vv, uu = np.mgrid[50:200, 100:300]
    ref = offset / (_rays(NYU, uu, vv) @ n)
    np.testing.assert_allclose(depth[50:200, 100:300], ref, rtol=1e-6)
    assert np.all(labels[50:200, 100:300] == 4)
    outside = np.ones((480, 640), bool)
    outside[50:200, 100:300] = False
    assert np.all(depth[outside] == 0) and np.all(labels[outside] == -1)


def test_roi_renders_only_its_pixels_and_matches_the_full_render():
    scene = (_sphere([0.0, 0.0, 700.0], 80.0, 0) + _cone([-90, 40, 650], [80, -30, 690], 20, 12, 1)
             + _wall(1100.0))
    full_d, full_l = render_depth(scene, NYU)
    roi = (250, 170, 400, 330)
    d, lab = render_depth(scene, NYU, roi)
    box = np.s_[170:330, 250:400]
    assert np.array_equal(d[box], full_d[box]) and np.array_equal(lab[box], full_l[box])
    d[box], lab[box] = 0, -1
    assert not d.any() and np.all(lab == -1)
    # out-of-image parts of an ROI are clipped; an empty ROI gives an empty frame
    assert np.array_equal(render_depth(scene, NYU, (-50, -50, 700, 600))[0], full_d)
    assert not render_depth(scene, NYU, (300, 300, 300, 400))[0].any()


def test_empty_scene_and_concatenation():
    assert not render_depth(Scene.empty(), NYU)[0].any()
    s = Scene.concat(_sphere([0, 0, 500], 10, 0), Scene.empty(), _wall(900.0), _cone([0, 0, 600],
                     [10, 0, 600], 5, 5, 1))
    assert (len(s.sphere_radii), len(s.cone_ra), len(s.planes)) == (1, 1, 1)
    assert np.array_equal(render_depth(s, NYU)[0],
                          render_depth(_sphere([0, 0, 500], 10, 0) + _wall(900.0)
                                       + _cone([0, 0, 600], [10, 0, 600], 5, 5, 1), NYU)[0])


@pytest.mark.parametrize("kwargs, match", [
    (dict(sphere_centers=[[0, 0, 500]], sphere_radii=[-1.0], sphere_labels=[0]), "radius"),
    (dict(sphere_centers=[0, 0, 500], sphere_radii=[1.0], sphere_labels=[0]), "sphere_centers"),
    (dict(sphere_centers=[[0, 0]], sphere_radii=[1.0], sphere_labels=[0]), "sphere_centers"),
    (dict(sphere_centers=[[0, 0, 500]], sphere_radii=[1.0], sphere_labels=[0, 1]), "sphere_labels"),
    (dict(cone_a=[[0, 0, 1]], cone_b=[[0, 0, 2]], cone_ra=[1.0], cone_rb=[-2.0], cone_labels=[0]),
     "radius"),
    (dict(cone_a=[[0, 0, 1]], cone_b=[[0, 0, 2], [0, 0, 3]], cone_ra=[1.0], cone_rb=[2.0],
          cone_labels=[0]), "cone_b"),
    (dict(planes=[[0, 0, 0, 5]], plane_labels=[0]), "zero length"),
    (dict(planes=[[0, 0, 1]], plane_labels=[0]), "planes"),
    (dict(sphere_centers=[[0, 0, np.nan]], sphere_radii=[1.0], sphere_labels=[0]), "NaN"),
    (dict(sphere_centers=[[0, 0, 5]], sphere_radii=[1.0], sphere_labels=[0.5]), "integers"),
])
def test_bad_scenes_are_refused_with_a_clear_message(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Scene(**kwargs)


# ----------------------------------------------------------------------------------------------
# Sensor model

CLEAN = dict(axial_noise=False, quantise=False, lateral_jitter_px=0.0, steep_dropout_deg=90.0,
             edge_dropout=0.0, shadow=False)


def _only(**effects) -> SensorConfig:
    """A sensor with every effect off except the given ones."""
    return SensorConfig(**{**CLEAN, **effects})


def _sphere_on_wall(roi=None):
    scene = _sphere([0.0, 0.0, 700.0], 60.0, label=0) + _wall(1200.0)
    return render_depth(scene, NYU, roi)


def test_disabled_sensor_only_rounds_to_integer_mm():
    depth, _ = _sphere_on_wall()
    out = apply_sensor(depth, NYU, np.random.default_rng(0), SensorConfig(enabled=False))
    assert out.dtype == np.uint16
    assert np.array_equal(out, np.rint(depth).astype(np.uint16))
    # also with every effect off but the sensor enabled
    out2 = apply_sensor(depth, NYU, np.random.default_rng(0), _only())
    assert np.array_equal(out2, out)


def test_quantised_depths_lie_on_the_eighth_pixel_disparity_grid():
    # a wall tilted so that it spans ~850-950 mm across the ROI
    n = np.array([0.35, 0.0, -1.0])
    n /= np.linalg.norm(n)
    scene = Scene(planes=[[*n, n @ [0.0, 0.0, 900.0]]], plane_labels=[0])
    roi = (160, 200, 480, 280)
    depth, _ = render_depth(scene, NYU, roi)
    out = apply_sensor(depth, NYU, np.random.default_rng(0), _only(quantise=True), roi)
    values = np.unique(out[out > 0]).astype(float)
    assert values.min() < 880 and values.max() > 920
    # every value is the whole-mm rounding of f·b / (k/8) for an integer k
    k = np.rint(8 * FB_MM_PX / values)
    assert np.all(np.rint(8 * FB_MM_PX / k) == values)
    # steps near 900 mm: z²/(8·f·b) = 2.30 mm, seen as 2 or 3 mm after rounding
    steps = np.diff(values[(values > 880) & (values < 920)])
    assert set(steps) <= {2.0, 3.0}
    assert steps.mean() == pytest.approx(900.0**2 / (8 * FB_MM_PX), abs=0.15)


def test_axial_noise_on_a_flat_wall_at_900mm_has_the_modelled_spread():
    # Nguyen: sigma = 1.2 + 1.9·(0.9 - 0.4)² = 1.675 mm; the 1/8 px disparity step there is
    # 900²/(8·f·b) = 2.296 mm (uniform error, variance step²/12) and whole-mm rounding adds 1/12:
    # expected std sqrt(1.675² + 2.296²/12 + 1/12) = 1.82 mm.
    roi = (120, 90, 520, 390)
    depth, _ = render_depth(_wall(900.0), NYU, roi)
    cfg = _only(axial_noise=True, quantise=True)
    out = apply_sensor(depth, NYU, np.random.default_rng(3), cfg, roi)
    err = out[90:390, 120:520].astype(float) - 900.0
    expected = np.sqrt(1.675**2 + (900.0**2 / (8 * FB_MM_PX)) ** 2 / 12 + 1 / 12)
    assert expected == pytest.approx(1.82, abs=0.01)
    assert err.std() == pytest.approx(expected, rel=0.2)
    assert abs(err.mean()) < 0.5
    # without quantisation it is the bare model sigma (plus whole-mm rounding)
    out = apply_sensor(depth, NYU, np.random.default_rng(3), _only(axial_noise=True), roi)
    err = out[90:390, 120:520].astype(float) - 900.0
    assert err.std() == pytest.approx(np.sqrt(1.675**2 + 1 / 12), rel=0.05)


def test_axial_noise_grows_on_oblique_surfaces_as_modelled():
    # A wall turned 70 deg about the y axis through (0, 0, 900): Nguyen's extra term
    # 0.1·theta²/(sqrt(z_m)·(pi/2 - theta)²) mm applies (+1.3 mm at 70 deg, 0.9 m).
    a = np.radians(70.0)
    n = np.array([np.sin(a), 0.0, -np.cos(a)])
    scene = Scene(planes=[[*n, n @ [0.0, 0.0, 900.0]]], plane_labels=[0])
    roi = (300, 220, 341, 261)
    depth, _ = render_depth(scene, NYU, roi)
    cfg = _only(axial_noise=True)
    errs = []
    for seed in range(4):
        out = apply_sensor(depth, NYU, np.random.default_rng(seed), cfg, roi)
        errs.append(out[225:256, 305:336].astype(float) - depth[225:256, 305:336])
    vv, uu = np.mgrid[225:256, 305:336]
    d = _rays(NYU, uu, vv)
    theta = np.arccos(np.abs(d @ n) / np.linalg.norm(d, axis=-1))
    z_m = depth[225:256, 305:336] / 1000.0
    extra = 0.1 * theta**2 / (np.sqrt(z_m) * (np.pi / 2 - theta) ** 2)
    sigma = 1.2 + 1.9 * (z_m - 0.4) ** 2 + extra
    expected = np.sqrt((sigma**2).mean() + 1 / 12)  # about 3.0 mm here, against 1.7 mm face-on
    assert expected == pytest.approx(3.0, abs=0.2)
    assert np.std(errs) == pytest.approx(expected, rel=0.15)


def test_same_seed_same_bytes_and_another_seed_differs():
    roi = (200, 120, 440, 360)
    depth, _ = _sphere_on_wall(roi)
    cfg = SensorConfig(holes_per_frame=3.0)
    a = apply_sensor(depth, NYU, np.random.default_rng(11), cfg, roi)
    b = apply_sensor(depth, NYU, np.random.default_rng(11), cfg, roi)
    c = apply_sensor(depth, NYU, np.random.default_rng(12), cfg, roi)
    assert a.tobytes() == b.tobytes()
    assert a.tobytes() != c.tobytes()
    assert not a[:120].any() and not a[:, :200].any()  # nothing outside the ROI
    # the input is not modified
    assert np.array_equal(depth, _sphere_on_wall(roi)[0])


def _edge_pixels(depth, jump=20.0):
    """Non-empty pixels with a 4-neighbour that is empty or more than `jump` mm away."""
    d = depth.astype(float)
    edge = np.zeros(d.shape, bool)
    dh = np.abs(np.diff(d, axis=1)) > jump
    dv = np.abs(np.diff(d, axis=0)) > jump
    edge[:, 1:] |= dh
    edge[:, :-1] |= dh
    edge[1:] |= dv
    edge[:-1] |= dv
    return edge & (d > 0)


def test_edge_dropout_removes_discontinuity_pixels_only():
    depth, _ = _sphere_on_wall()
    edge = _edge_pixels(depth)
    assert 400 < edge.sum() < 1000  # both sides of the sphere's silhouette
    rng = np.random.default_rng(0)
    out = apply_sensor(depth, NYU, rng, _only(edge_dropout=1.0))
    assert np.all(out[edge] == 0)
    assert np.array_equal(out[~edge], np.rint(depth[~edge]))
    out = apply_sensor(depth, NYU, rng, _only(edge_dropout=0.0))
    assert np.array_equal(out, np.rint(depth).astype(np.uint16))
    out = apply_sensor(depth, NYU, rng, _only(edge_dropout=0.5))
    assert 0.4 < (out[edge] == 0).mean() < 0.6


def test_steep_surfaces_lose_pixels_at_the_silhouette_of_a_sphere():
    depth, labels = _sphere_on_wall()
    out = apply_sensor(depth, NYU, np.random.default_rng(0), _only(steep_dropout_deg=75.0))
    lost = (out == 0) & (depth > 0)
    assert lost.any() and np.all(labels[lost] == 0)  # only on the sphere, never the wall
    # a sphere is seen at > 85 deg within r·(1 - sin 85°) of its rim: those pixels all go
    vv, uu = np.mgrid[0:480, 0:640]
    c = np.array([0.0, 0.0, 700.0])
    d = _rays(NYU, uu, vv)
    t = _sphere_t(d, c, 60.0)
    p = np.where(np.isfinite(t), t, 0.0)[..., None] * d
    normal = (p - c) / 60.0
    cos_inc = np.abs((normal * d).sum(-1)) / np.linalg.norm(d, axis=-1)
    inc = np.degrees(np.arccos(np.clip(cos_inc, 0, 1)))
    assert np.all(lost[np.isfinite(t) & (inc < 70)] == False)  # noqa: E712
    inner_ring = np.isfinite(t) & (inc > 86) & ~_edge_pixels(depth)
    if inner_ring.any():
        assert lost[inner_ring].mean() > 0.9


def test_projector_shadow_is_a_band_left_of_a_sphere_of_the_predicted_width():
    depth, labels = _sphere_on_wall()
    out = apply_sensor(depth, NYU, np.random.default_rng(0), _only(shadow=True))
    lost = (out == 0) & (depth > 0)
    assert np.all(labels[lost] == 2)  # only the wall, never the sphere
    sphere_cols = np.flatnonzero(labels[240] == 0)
    row_lost = np.flatnonzero(lost[240])
    assert row_lost.max() < sphere_cols.min()  # left of the sphere, nothing on its right
    assert np.array_equal(row_lost, np.arange(row_lost.min(), sphere_cols.min()))  # one band
    width = FB_MM_PX * (1 / 700.0 - 1 / 1200.0)  # 26.3 px
    assert abs(len(row_lost) - width) <= 3
    # rows above and below the sphere keep all of the wall
    assert not lost[:150].any() and not lost[330:].any()


def test_lateral_jitter_moves_silhouettes_by_about_a_pixel():
    depth, _ = _sphere_on_wall()
    out = apply_sensor(depth, NYU, np.random.default_rng(5), _only(lateral_jitter_px=0.5))
    near_sphere = np.rint(depth) < 1000
    changed = (out != np.rint(depth)) & (depth > 0)
    assert changed.any()
    # only pixels within 2 px of the sphere's silhouette change
    grown = near_sphere.copy()
    for s in (1, 2):
        grown[:, s:] |= near_sphere[:, :-s]
        grown[:, :-s] |= near_sphere[:, s:]
    grown2 = grown.copy()
    for s in (1, 2):
        grown2[s:] |= grown[:-s]
        grown2[:-s] |= grown[s:]
    assert not (changed & ~grown2).any()
    assert abs(int((out < 1000).sum()) - int(near_sphere.sum())) < 0.05 * near_sphere.sum()


def test_max_range_and_holes():
    depth, _ = render_depth(_wall(4500.0), NYU, (200, 150, 300, 250))
    roi = (200, 150, 300, 250)
    assert not apply_sensor(depth, NYU, np.random.default_rng(0), SensorConfig(), roi).any()
    depth, _ = render_depth(_wall(800.0), NYU, roi)
    out = apply_sensor(depth, NYU, np.random.default_rng(1), _only(holes_per_frame=20.0), roi)
    missing = (out[150:250, 200:300] == 0).sum()
    assert 20 < missing < 20 * 60  # ~20 holes of 1-3 px radius


def test_sensor_rejects_a_depth_map_of_the_wrong_size():
    with pytest.raises(ValueError, match="shape"):
        apply_sensor(np.zeros((240, 320)), NYU, np.random.default_rng(0), SensorConfig())


@pytest.mark.parametrize("kwargs", [dict(edge_dropout=1.5), dict(baseline_mm=0.0),
                                    dict(lateral_jitter_px=-1.0), dict(subpixel_steps=0)])
def test_bad_sensor_settings_are_refused(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        SensorConfig(**kwargs)
