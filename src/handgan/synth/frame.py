"""One synthetic depth frame: place a sampled hand in front of the NYU camera, add its
surroundings, render them, pass the frame through the sensor model, and label it in NYU's 36-joint
layout.

Two kinds of scene (``SynthConfig.scene``):

* ``full``: the whole 640x480 frame as a depth camera sees it (scene.py: the person's arm, torso,
  head and other arm, sometimes a table with objects, the room). The hand, its forearm and the
  other hand are rendered exactly at full resolution; the big smooth rest at half resolution
  (each ray cast fills 2x2 pixels), which is 4x cheaper and, after the sensor's jitter and edge
  dropouts, looks the same. The sensor model runs on the whole frame.
* ``hand``: the original frames: only a 350 mm cube around the hand is rendered, exactly, in
  front of an optional background (``SynthConfig.background``); the rest of the frame is 0.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from handgan.camera import NYU, Intrinsics
from handgan.synth import hand as H
from handgan.synth.render import Scene, SensorConfig, apply_sensor, render_depth
from handgan.synth.scene import (
    LABEL_BACKGROUND,
    LABEL_TABLE,
    SCENES,
    render_table,
    sample_surroundings,
)

BACKGROUNDS = ("none", "wall", "table", "clutter", "mixed")
# Share of each background when background == "mixed".
MIXED_BACKGROUND_P = {"none": 0.25, "wall": 0.3, "table": 0.2, "clutter": 0.25}


@dataclass
class SynthConfig:
    """How synthetic frames look. Saved in the dataset manifest (a manifest without `scene` was
    written before full scenes existed: its frames are "hand" frames)."""

    scene: str = "full"  # full: the whole frame (body, table, room) | hand: only around the hand
    depth_range_mm: tuple[float, float] = (500.0, 1200.0)  # palm-centre depth (NYU test: 650-1107)
    background: str = "mixed"  # scene "hand" only: none | wall | table | clutter | mixed
    # Only pixels within this half-size (mm) of the palm centre are rendered: it holds the whole
    # hand (< 150 mm from the palm centre) and any crop cube up to 350 mm.
    render_halfsize_mm: float = 175.0
    sensor: SensorConfig = field(default_factory=SensorConfig)
    train_subjects: int = 24  # distinct hand shapes in train; test uses other people, as NYU does
    test_subjects: int = 8

    def __post_init__(self):
        if self.scene not in SCENES:
            raise ValueError(f"scene must be one of {SCENES}, got {self.scene!r}")
        if self.background not in BACKGROUNDS:
            raise ValueError(f"background must be one of {BACKGROUNDS}, got {self.background!r}")
        lo, hi = self.depth_range_mm
        if not 100.0 <= lo <= hi:
            raise ValueError(f"depth_range_mm must satisfy 100 <= low <= high, got {self.depth_range_mm}")


@dataclass
class SynthFrame:
    depth_mm: np.ndarray        # (480, 640) uint16, 0 = no depth
    joints_xyz: np.ndarray      # (36, 3) mm, NYU camera frame (y up)
    joints_uvd: np.ndarray      # (36, 3) px, px, mm
    visible: np.ndarray         # (36,) bool: no surface in front of the joint's own body part
    joint_radii: np.ndarray     # (36,) mm: radius of the body part around each label point
    angles: np.ndarray          # (22,) degrees, hand.ANGLE_NAMES
    rotation: np.ndarray        # (3, 3) hand frame -> camera frame
    shape: np.ndarray           # (20,) HandShape.to_vector()
    background: str             # hand scenes: the background; full: "+"-joined scene.py tags


def subject_shapes(seed: int, split: str, count: int) -> list[H.HandShape]:
    """The people of a split: a fixed pool of hand shapes per (seed, split)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, _split_code(split), 2**31 - 1]))
    return [H.sample_shape(rng) for _ in range(count)]


def frame_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """Independent stream per frame, so any frame can be re-made alone (resume, workers)."""
    return np.random.default_rng(np.random.SeedSequence([seed, _split_code(split), index]))


def _split_code(split: str) -> int:
    return int.from_bytes(split.encode()[:8].ljust(8, b"\0"), "little") % (2**31)


def synthesize_frame(rng: np.random.Generator, shape: H.HandShape, cfg: SynthConfig,
                     intr: Intrinsics = NYU) -> SynthFrame:
    if cfg.scene == "full":
        return _full_frame(rng, shape, cfg, intr)
    angles = H.sample_articulation(rng)
    rotation = H.sample_rotation(rng)
    z = rng.uniform(*cfg.depth_range_mm)
    skeleton, geometry = _place_in_view(angles, rotation, shape, z, rng, intr)

    centre = skeleton.palm_centre
    roi = _roi(centre, cfg.render_halfsize_mm, intr)
    background = cfg.background
    if background == "mixed":
        names = list(MIXED_BACKGROUND_P)
        background = names[rng.choice(len(names), p=list(MIXED_BACKGROUND_P.values()))]
    scene = Scene.empty()
    scene = Scene.concat(scene, _hand_scene(geometry))
    scene = Scene.concat(scene, _background_scene(background, skeleton, geometry, rng))
    clean, labels = render_depth(scene, intr, roi)
    if background == "table":
        # The table ends in front of the hand: no table surface nearer than the palm + 60 mm.
        front = (labels == LABEL_TABLE) & (clean < centre[2] + 60.0)
        clean[front], labels[front] = 0.0, -1

    joints_xyz = skeleton.nyu36()
    joints_uvd = intr.xyz_to_uvd(joints_xyz)
    radii = skeleton.nyu36_radii()
    visible = _visibility(joints_uvd, radii, clean, labels, intr)
    depth = apply_sensor(clean, intr, rng, cfg.sensor, roi)
    return SynthFrame(depth, joints_xyz, joints_uvd, visible, radii, angles, rotation,
                      shape.to_vector(), background)


# A hand whose forearm points at the camera leaves no room for a torso behind it: such draws
# (about 1 in 5) are redrawn, as a person cannot hold a hand that way.
_FULL_TRIES = 12


def _full_frame(rng: np.random.Generator, shape: H.HandShape, cfg: SynthConfig,
                intr: Intrinsics) -> SynthFrame:
    for attempt in range(_FULL_TRIES):
        angles = H.sample_articulation(rng)
        rotation = H.sample_rotation(rng)
        z = rng.uniform(*cfg.depth_range_mm)
        skeleton, geometry = _place_in_view(angles, rotation, shape, z, rng, intr)
        around = sample_surroundings(rng, skeleton, geometry, intr,
                                     force=attempt == _FULL_TRIES - 1)
        if around is not None:
            break

    half = _half_resolution(intr)
    coarse, coarse_labels = render_depth(around.coarse, half)
    if around.table is not None:
        render_table(around.table, half, coarse, coarse_labels)
    clean, labels = _upsample2(coarse), _upsample2(coarse_labels)
    fine = Scene.concat(_hand_scene(geometry), around.fine)
    roi = _solids_box(fine, intr)
    fine_depth, fine_labels = render_depth(fine, intr, roi)
    box = np.s_[roi[1]:roi[3], roi[0]:roi[2]]
    f_d, d = fine_depth[box], clean[box]
    nearer = (f_d > 0) & ((d == 0) | (f_d < d))
    np.copyto(d, f_d, where=nearer)
    np.copyto(labels[box], fine_labels[box], where=nearer)

    joints_xyz = skeleton.nyu36()
    joints_uvd = intr.xyz_to_uvd(joints_xyz)
    radii = skeleton.nyu36_radii()
    visible = _visibility(joints_uvd, radii, clean, labels, intr)
    depth = apply_sensor(clean, intr, rng, cfg.sensor)
    return SynthFrame(depth, joints_xyz, joints_uvd, visible, radii, angles, rotation,
                      shape.to_vector(), "+".join(around.tags))


def _upsample2(image: np.ndarray) -> np.ndarray:
    """Each pixel as a 2x2 block (np.repeat along both axes, in fewer passes)."""
    h, w = image.shape
    out = np.empty((h, 2, 2 * w), image.dtype)
    out[...] = np.repeat(image, 2, axis=1)[:, None, :]
    return out.reshape(2 * h, 2 * w)


def _half_resolution(intr: Intrinsics) -> Intrinsics:
    """The camera with 2x2 pixels merged: its pixel (U, V) is centred on full pixel
    (2U + 0.5, 2V + 0.5)."""
    return Intrinsics(fx=intr.fx / 2, fy=intr.fy / 2, cx=(intr.cx - 0.5) / 2,
                      cy=(intr.cy - 0.5) / 2, width=intr.width // 2, height=intr.height // 2,
                      y_up=intr.y_up)


def _solids_box(scene: Scene, intr: Intrinsics) -> tuple[int, int, int, int]:
    """A pixel box holding every sphere and round cone of the scene (all in front of the camera)."""
    pts = np.concatenate([scene.sphere_centers, scene.cone_a, scene.cone_b])
    r = np.concatenate([scene.sphere_radii, scene.cone_ra, scene.cone_rb])
    uvd = intr.xyz_to_uvd(pts)
    r_px = r * max(intr.fx, intr.fy) / np.maximum(pts[:, 2] - r, 1.0) + 2.0
    u0, v0 = np.floor((uvd[:, :2] - r_px[:, None]).min(0)).astype(int)
    u1, v1 = np.ceil((uvd[:, :2] + r_px[:, None]).max(0)).astype(int) + 1
    return max(u0, 0), max(v0, 0), min(u1, intr.width), min(v1, intr.height)


def _place_in_view(angles, rotation, shape, z, rng, intr, tries: int = 40):
    """Pick the palm centre's pixel uniformly among places where the whole hand stays in view."""
    pose = H.pose_from_angles(angles, rotation, np.array([0.0, 0.0, z]))
    for attempt in range(tries + 1):
        if attempt < tries:
            u, v = rng.uniform(0, intr.width), rng.uniform(0, intr.height)
        else:  # fall back to the image centre, where every hand of our sizes fits
            u, v = intr.cx, intr.cy
        pose.palm_centre_mm = intr.uvd_to_xyz(np.array([u, v, z]))
        skeleton = H.forward_kinematics(pose, shape)
        geometry = H.hand_geometry(skeleton)
        if _hand_in_view(geometry, intr) and _points_in_view(skeleton.nyu36(), intr):
            return skeleton, geometry
    return skeleton, geometry


def _hand_in_view(g: H.HandGeometry, intr: Intrinsics, margin_px: float = 2.0) -> bool:
    hand = g.labels == H.LABEL_HAND
    pts = np.concatenate([g.a[hand], g.b[hand]])
    r = np.concatenate([g.ra[hand], g.rb[hand]])
    if np.any(pts[:, 2] - r < 50.0):
        return False
    uvd = intr.xyz_to_uvd(pts)
    r_px = r * max(intr.fx, intr.fy) / (pts[:, 2] - r)
    return bool(np.all(uvd[:, 0] - r_px >= margin_px) and np.all(uvd[:, 0] + r_px <= intr.width - 1 - margin_px)
                and np.all(uvd[:, 1] - r_px >= margin_px) and np.all(uvd[:, 1] + r_px <= intr.height - 1 - margin_px))


def _points_in_view(xyz: np.ndarray, intr: Intrinsics, margin_px: float = 2.0) -> bool:
    """Every label point (the wrist points lie on the forearm) projects inside the image."""
    uvd = intr.xyz_to_uvd(xyz)
    return bool(np.all(uvd[:, 2] > 0) and np.all(uvd[:, 0] >= margin_px)
                and np.all(uvd[:, 0] <= intr.width - 1 - margin_px)
                and np.all(uvd[:, 1] >= margin_px) and np.all(uvd[:, 1] <= intr.height - 1 - margin_px))


def _roi(centre: np.ndarray, half_mm: float, intr: Intrinsics) -> tuple[int, int, int, int]:
    """Pixel box of a cube of half-size half_mm around centre (its nearest face sets the size)."""
    u, v, z = intr.xyz_to_uvd(centre)
    near = max(z - half_mm, 50.0)
    half_u, half_v = half_mm * intr.fx / near, half_mm * intr.fy / near
    u0, u1 = int(np.floor(u - half_u)), int(np.ceil(u + half_u)) + 1
    v0, v1 = int(np.floor(v - half_v)), int(np.ceil(v + half_v)) + 1
    return max(u0, 0), max(v0, 0), min(u1, intr.width), min(v1, intr.height)


def _hand_scene(g: H.HandGeometry) -> Scene:
    return Scene(
        sphere_centers=np.zeros((0, 3)), sphere_radii=np.zeros(0), sphere_labels=np.zeros(0, int),
        cone_a=g.a, cone_b=g.b, cone_ra=g.ra, cone_rb=g.rb, cone_labels=g.labels,
        planes=np.zeros((0, 4)), plane_labels=np.zeros(0, int),
    )


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def _tilt(normal: np.ndarray, max_deg: float, rng: np.random.Generator) -> np.ndarray:
    return _unit(normal + np.tan(np.radians(max_deg)) * rng.uniform(-1, 1, 3) * (1 - np.abs(normal)))


def _background_scene(kind: str, sk: H.Skeleton, g: H.HandGeometry, rng: np.random.Generator) -> Scene:
    """Surfaces behind/below the hand, never in front of it, so the hand stays the nearest object."""
    if kind == "none":
        return Scene.empty()
    centre = sk.palm_centre
    planes, plane_labels = [], []
    spheres, sphere_r = [], []
    cone_a, cone_b, cone_r = [], [], []
    # A wall (or the room behind) facing the camera, up to 25 degrees off.
    # Its normal points at the camera, so "behind every hand point" means a smaller n·p.
    n = _tilt(np.array([0.0, 0.0, -1.0]), 25.0, rng)
    farthest = min(float((g.a @ n - g.ra).min()), float((g.b @ n - g.rb).min()))
    planes.append([*n, farthest - rng.uniform(30.0, 700.0)]), plane_labels.append(LABEL_BACKGROUND)
    back_mm = max(float((g.a[:, 2] + g.ra).max()), float((g.b[:, 2] + g.rb).max()))
    if kind == "table":
        # A horizontal-ish table below every hand point, and below the camera, so it never
        # occludes the hand (a segment from the camera to a point above the plane stays above it).
        n = _tilt(np.array([0.0, 1.0, 0.0]), 10.0, rng)
        # Offset the plane below every hand surface point and the camera (the origin) along n.
        lowest = min(float((g.a @ n - g.ra).min()), float((g.b @ n - g.rb).min()), 0.0)
        planes.append([*n, lowest - rng.uniform(20.0, 150.0)]), plane_labels.append(LABEL_TABLE)
    elif kind == "clutter":
        for _ in range(rng.integers(1, 5)):
            r = rng.uniform(20.0, 80.0)
            p = centre + np.array([rng.uniform(-250, 250), rng.uniform(-250, 250), 0.0])
            p[2] = back_mm + rng.uniform(20.0, 400.0) + r  # wholly behind the hand's farthest point
            if rng.uniform() < 0.5:
                spheres.append(p), sphere_r.append(r)
            else:
                d = _unit(rng.normal(size=3)) * rng.uniform(60.0, 250.0)
                d[2] = abs(d[2])  # lean away from the camera so it stays behind the hand
                cone_a.append(p), cone_b.append(p + d), cone_r.append(r * 0.6)
    return Scene(
        sphere_centers=np.array(spheres).reshape(-1, 3), sphere_radii=np.array(sphere_r),
        sphere_labels=np.full(len(spheres), LABEL_BACKGROUND),
        cone_a=np.array(cone_a).reshape(-1, 3), cone_b=np.array(cone_b).reshape(-1, 3),
        cone_ra=np.array(cone_r), cone_rb=np.array(cone_r), cone_labels=np.full(len(cone_a), LABEL_BACKGROUND),
        planes=np.array(planes).reshape(-1, 4), plane_labels=np.array(plane_labels),
    )


def _visibility(uvd, radii, clean, labels, intr, tol_mm: float = 3.0) -> np.ndarray:
    """A joint is visible when nothing lies in front of its own body part along its pixel's ray."""
    u = np.clip(np.rint(uvd[:, 0]).astype(int), 0, intr.width - 1)
    v = np.clip(np.rint(uvd[:, 1]).astype(int), 0, intr.height - 1)
    depth = clean[v, u]
    on_body = (labels[v, u] == H.LABEL_HAND) | (labels[v, u] == H.LABEL_FOREARM)
    return on_body & (depth >= uvd[:, 2] - radii - tol_mm)
