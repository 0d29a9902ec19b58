"""One synthetic depth frame: place a sampled hand in front of the NYU camera, add its
surroundings, render them, pass the frame through the sensor model, and label it in NYU's 36-joint
layout.

Two kinds of scene (``SynthConfig.scene``):

* ``full``: the whole 640x480 frame as a depth camera sees it (scene.py: the person's arm, torso,
  head and other arm, sometimes a table with objects, the room). The hand, its forearm and the
  other hand are rendered exactly at full resolution; the big smooth rest at half resolution
  (each ray cast fills 2x2 pixels), which is 4x cheaper and, after the sensor's jitter and edge
  dropouts, looks the same. The sensor model runs at half resolution too, except in a box
  around the hand, where it runs at full resolution (_full_sensor).
* ``hand``: the original frames: only a 350 mm cube around the hand is rendered, exactly, in
  front of an optional background (``SynthConfig.background``); the rest of the frame is 0.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from handgan.camera import NYU, Intrinsics
from handgan.synth import hand as H
from handgan.synth import render as R
from handgan.synth import scene as S
from handgan.synth.render import Scene, SensorConfig

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
        if self.scene not in S.SCENES:
            raise ValueError(f"scene must be one of {S.SCENES}, got {self.scene!r}")
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
    angles, rotation, skeleton, geometry = _place_in_view(rng, shape, cfg, intr)
    centre = skeleton.palm_centre
    roi = _roi(centre, cfg.render_halfsize_mm, intr)
    background = cfg.background
    if background == "mixed":
        names = list(MIXED_BACKGROUND_P)
        background = names[rng.choice(len(names), p=list(MIXED_BACKGROUND_P.values()))]
    around = _background_scene(background, skeleton, geometry, rng)
    clean, labels = R.render_depth(Scene.concat(_hand_scene(geometry), around), intr, roi)
    if background == "table":
        # The table ends in front of the hand: no table surface nearer than the palm + 60 mm.
        front = (labels == S.LABEL_TABLE) & (clean < centre[2] + 60.0)
        clean[front], labels[front] = 0.0, -1
    depth = R.apply_sensor(clean, intr, rng, cfg.sensor, roi)
    return _labelled(depth, lambda v, u: (clean[v, u], labels[v, u]), skeleton, intr, angles,
                     rotation, shape, background)


# A hand whose forearm points at the camera leaves no room for a torso behind it: such draws
# (about 1 in 5) are redrawn, as a person cannot hold a hand that way.
_FULL_TRIES = 12


def _full_frame(rng: np.random.Generator, shape: H.HandShape, cfg: SynthConfig,
                intr: Intrinsics) -> SynthFrame:
    for attempt in range(_FULL_TRIES):
        angles, rotation, skeleton, geometry = _place_in_view(rng, shape, cfg, intr)
        around = S.sample_surroundings(rng, skeleton, geometry, intr,
                                       force=attempt == _FULL_TRIES - 1)
        if around is not None:
            break

    half = _half_resolution(intr)
    coarse, coarse_labels = R.render_depth(around.coarse, half)
    if around.table is not None:
        S.render_table(around.table, half, coarse, coarse_labels)
    fine = Scene.concat(_hand_scene(geometry), around.fine)
    roi = _solids_box(fine, intr)
    layers = _Layers(coarse, coarse_labels, *R.render_depth(fine, intr, roi), roi)
    if cfg.sensor.enabled:
        depth = _full_sensor(layers, intr, rng, cfg.sensor, _hand_box(geometry, skeleton, intr))
    else:
        clean = layers.full((0, 0, intr.width, intr.height))[0]
        depth = R.apply_sensor(clean, intr, rng, cfg.sensor)
    return _labelled(depth, layers.at, skeleton, intr, angles, rotation, shape,
                     "+".join(around.tags))


@dataclass
class _Layers:
    """A full frame's clean render in two layers: the coarse one (half resolution: each pixel
    stands for a 2x2 block) and the fine one (full resolution, inside `roi` only); a fine pixel
    shows where it has a surface nearer than the coarse one's. Full-resolution images are only
    assembled where needed."""

    coarse: np.ndarray          # (H/2, W/2) float32 mm, 0 = no surface
    coarse_labels: np.ndarray   # (H/2, W/2) int16
    fine: np.ndarray            # (H, W) float32 mm, 0 outside roi
    fine_labels: np.ndarray     # (H, W) int16
    roi: tuple[int, int, int, int]

    def at(self, v: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Clean depth and label at full-resolution pixels (v, u)."""
        c, f = self.coarse[v // 2, u // 2], self.fine[v, u]
        nearer = (f > 0) & ((c == 0) | (f < c))
        return (np.where(nearer, f, c),
                np.where(nearer, self.fine_labels[v, u], self.coarse_labels[v // 2, u // 2]))

    def full(self, box: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Clean depth and labels at full resolution inside box (u0, v0, u1, v1)."""
        u0, v0, u1, v1 = box
        blocks = np.s_[v0 // 2:(v1 + 1) // 2, u0 // 2:(u1 + 1) // 2]
        crop = np.s_[v0 % 2:v0 % 2 + v1 - v0, u0 % 2:u0 % 2 + u1 - u0]
        d, lab = _upsample2(self.coarse[blocks])[crop], _upsample2(self.coarse_labels[blocks])[crop]
        self._merge(d, lab, self.fine, self.fine_labels, box, 1)
        return d, lab

    def half(self) -> np.ndarray:
        """Clean depth at half resolution: each 2x2 block's top-left full-resolution pixel."""
        d = self.coarse.copy()
        self._merge(d, None, self.fine[::2, ::2], None, (0, 0, d.shape[1], d.shape[0]), 2)
        return d

    def _merge(self, d, lab, fine, fine_labels, box, step: int) -> None:
        """Composite the fine layer (sampled every `step` pixels; box in its pixels, d's origin)
        into d (and lab) where it is nearer, within roi."""
        u0, v0, u1, v1 = box
        r = self.roi
        a0, b0 = max(u0, -(-r[0] // step)), max(v0, -(-r[1] // step))
        a1, b1 = min(u1, -(-r[2] // step)), min(v1, -(-r[3] // step))
        if a1 <= a0 or b1 <= b0:
            return
        f = fine[b0:b1, a0:a1]
        t = d[b0 - v0:b1 - v0, a0 - u0:a1 - u0]
        nearer = (f > 0) & ((t == 0) | (f < t))
        np.copyto(t, f, where=nearer)
        if lab is not None:
            np.copyto(lab[b0 - v0:b1 - v0, a0 - u0:a1 - u0], fine_labels[b0:b1, a0:a1],
                      where=nearer)


# The full-resolution sensor's box: the hand's own solids plus this margin (mm at the palm's
# depth) on every side ...
HAND_BOX_MARGIN_MM = 30.0
# ... and the full-resolution pass reads this many more pixels around the box (right: projector
# shadows cast into the box from beyond it; elsewhere the lateral jitter's reach).
_SENSOR_PAD_PX = (4, 4, 32, 4)  # left, top, right, bottom


def _hand_box(g: H.HandGeometry, sk: H.Skeleton, intr: Intrinsics) -> tuple[int, int, int, int]:
    """The hand's own solids (not its forearm) plus HAND_BOX_MARGIN_MM, in pixels."""
    m = int(np.ceil(HAND_BOX_MARGIN_MM * max(intr.fx, intr.fy) / max(sk.palm_centre[2], 50.0)))
    return _box_of(*g.hand_spheres(), intr, m)


def _full_sensor(layers: _Layers, intr: Intrinsics, rng: np.random.Generator,
                 cfg: SensorConfig, box: tuple[int, int, int, int]) -> np.ndarray:
    """The sensor model on a full frame: at half resolution (on each 2x2 block's top-left clean
    pixel, the result filling the block) everywhere, then at full resolution in `box` around the
    hand, which replaces the half-resolution result there.

    The half-resolution pass sees the camera with 2x2 pixels merged, so effects set in pixels
    keep their size in full pixels: its disparity steps are 1/(2·steps) of its pixels (the same
    1/steps full px) and its lateral jitter sigma is halved; noise, dropouts and shadows fall on
    whole 2x2 blocks. Random holes are punched once, into the final frame.
    """
    fine_cfg = replace(cfg, holes_per_frame=0.0)
    coarse_cfg = replace(fine_cfg, subpixel_steps=2 * cfg.subpixel_steps,
                         lateral_jitter_px=cfg.lateral_jitter_px / 2)
    out = _upsample2(R.sense(layers.half(), _half_resolution(intr), (0, 0), rng, coarse_cfg))
    u0, v0, u1, v1 = box
    if u1 > u0 and v1 > v0:
        pl, pt, pr, pb = _SENSOR_PAD_PX
        padded = (max(u0 - pl, 0), max(v0 - pt, 0), min(u1 + pr, intr.width),
                  min(v1 + pb, intr.height))
        z = layers.full(padded)[0]
        fine = R.sense(z, intr, padded[:2], rng, fine_cfg)
        out[v0:v1, u0:u1] = fine[v0 - padded[1]:v1 - padded[1], u0 - padded[0]:u1 - padded[0]]
    R._punch_holes(out, cfg.holes_per_frame, rng)
    return out


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
    return _box_of(np.concatenate([scene.sphere_centers, scene.cone_a, scene.cone_b]),
                   np.concatenate([scene.sphere_radii, scene.cone_ra, scene.cone_rb]), intr)


def _box_of(pts: np.ndarray, r: np.ndarray, intr: Intrinsics,
            margin_px: int = 0) -> tuple[int, int, int, int]:
    """A pixel box holding the spheres (pts (N, 3), r (N,)), all in front of the camera, plus
    margin_px on every side."""
    uvd = intr.xyz_to_uvd(pts)
    r_px = r * max(intr.fx, intr.fy) / np.maximum(pts[:, 2] - r, 1.0) + 2.0
    u0, v0 = np.floor((uvd[:, :2] - r_px[:, None]).min(0)).astype(int)
    u1, v1 = np.ceil((uvd[:, :2] + r_px[:, None]).max(0)).astype(int) + 1
    m = margin_px
    return max(u0 - m, 0), max(v0 - m, 0), min(u1 + m, intr.width), min(v1 + m, intr.height)


def _place_in_view(rng, shape: H.HandShape, cfg: SynthConfig, intr: Intrinsics, tries: int = 40):
    """A sampled pose (angles, rotation) and its skeleton and geometry at a depth drawn from
    cfg.depth_range_mm, the palm centre's pixel uniform among places where the whole hand stays
    in view."""
    angles = H.sample_articulation(rng)
    rotation = H.sample_rotation(rng)
    z = rng.uniform(*cfg.depth_range_mm)
    pose = H.pose_from_angles(angles, rotation, np.array([0.0, 0.0, z]))
    for attempt in range(tries + 1):
        if attempt < tries:
            u, v = rng.uniform(0, intr.width), rng.uniform(0, intr.height)
        else:  # fall back to the image centre, where every hand of our sizes fits
            u, v = intr.cx, intr.cy
        pose.palm_centre_mm = intr.uvd_to_xyz(np.array([u, v, z]))
        skeleton = H.forward_kinematics(pose, shape)
        geometry = H.hand_geometry(skeleton)
        # Every label point too (the wrist points lie on the forearm).
        if _hand_in_view(geometry, intr) and _in_view(intr.xyz_to_uvd(skeleton.nyu36()), 0.0, intr):
            break
    return angles, rotation, skeleton, geometry


def _hand_in_view(g: H.HandGeometry, intr: Intrinsics) -> bool:
    pts, r = g.hand_spheres()
    if np.any(pts[:, 2] - r < 50.0):
        return False
    return _in_view(intr.xyz_to_uvd(pts), r * max(intr.fx, intr.fy) / (pts[:, 2] - r), intr)


def _in_view(uvd: np.ndarray, r_px, intr: Intrinsics, margin_px: float = 2.0) -> bool:
    """Whether the points uvd (N, 3) lie in front of the camera and discs of radius r_px around
    them inside the image, margin_px from its border pixels' centres."""
    u, v = uvd[:, 0], uvd[:, 1]
    return bool(np.all(uvd[:, 2] > 0) and np.all(u - r_px >= margin_px)
                and np.all(u + r_px <= intr.width - 1 - margin_px) and np.all(v - r_px >= margin_px)
                and np.all(v + r_px <= intr.height - 1 - margin_px))


def _roi(centre: np.ndarray, half_mm: float, intr: Intrinsics) -> tuple[int, int, int, int]:
    """Pixel box of a cube of half-size half_mm around centre (its nearest face sets the size)."""
    u, v, z = intr.xyz_to_uvd(centre)
    near = max(z - half_mm, 50.0)
    half_u, half_v = half_mm * intr.fx / near, half_mm * intr.fy / near
    u0, u1 = int(np.floor(u - half_u)), int(np.ceil(u + half_u)) + 1
    v0, v1 = int(np.floor(v - half_v)), int(np.ceil(v + half_v)) + 1
    return max(u0, 0), max(v0, 0), min(u1, intr.width), min(v1, intr.height)


def _hand_scene(g: H.HandGeometry) -> Scene:
    return Scene(cone_a=g.a, cone_b=g.b, cone_ra=g.ra, cone_rb=g.rb, cone_labels=g.labels)


def _tilt(normal: np.ndarray, max_deg: float, rng: np.random.Generator) -> np.ndarray:
    tilt = np.tan(np.radians(max_deg)) * rng.uniform(-1, 1, 3) * (1 - np.abs(normal))
    return S._unit(normal + tilt)


def _background_scene(kind: str, sk: H.Skeleton, g: H.HandGeometry, rng: np.random.Generator) -> Scene:
    """Surfaces behind/below the hand, never in front of it, so the hand stays the nearest object."""
    if kind == "none":
        return Scene.empty()
    centre = sk.palm_centre
    parts = S._Parts()
    # A wall (or the room behind) facing the camera, up to 25 degrees off.
    # Its normal points at the camera, so "behind every hand point" means a smaller n·p.
    n = _tilt(np.array([0.0, 0.0, -1.0]), 25.0, rng)
    farthest = min(float((g.a @ n - g.ra).min()), float((g.b @ n - g.rb).min()))
    parts.plane(n, farthest - rng.uniform(30.0, 700.0))
    back_mm = max(float((g.a[:, 2] + g.ra).max()), float((g.b[:, 2] + g.rb).max()))
    if kind == "table":
        # A horizontal-ish table below every hand point, and below the camera, so it never
        # occludes the hand (a segment from the camera to a point above the plane stays above it).
        n = _tilt(np.array([0.0, 1.0, 0.0]), 10.0, rng)
        # Offset the plane below every hand surface point and the camera (the origin) along n.
        lowest = min(float((g.a @ n - g.ra).min()), float((g.b @ n - g.rb).min()), 0.0)
        parts.plane(n, lowest - rng.uniform(20.0, 150.0), S.LABEL_TABLE)
    elif kind == "clutter":
        for _ in range(rng.integers(1, 5)):
            r = rng.uniform(20.0, 80.0)
            p = centre + np.array([rng.uniform(-250, 250), rng.uniform(-250, 250), 0.0])
            p[2] = back_mm + rng.uniform(20.0, 400.0) + r  # wholly behind the hand's farthest point
            if rng.uniform() < 0.5:
                parts.sphere(p, r, S.LABEL_BACKGROUND)
            else:
                d = S._unit(rng.normal(size=3)) * rng.uniform(60.0, 250.0)
                d[2] = abs(d[2])  # lean away from the camera so it stays behind the hand
                parts.cone(p, p + d, r * 0.6, r * 0.6, S.LABEL_BACKGROUND)
    return parts.scene()


def _labelled(depth, clean_at, sk: H.Skeleton, intr: Intrinsics, angles, rotation,
              shape: H.HandShape, background: str, tol_mm: float = 3.0) -> SynthFrame:
    """The frame with its labels. A joint is visible when nothing lies in front of its own body
    part along its pixel's ray; clean_at(v, u): the clean depth and render label at those pixels."""
    xyz = sk.nyu36()
    uvd = intr.xyz_to_uvd(xyz)
    radii = sk.nyu36_radii()
    u = np.clip(np.rint(uvd[:, 0]).astype(int), 0, intr.width - 1)
    v = np.clip(np.rint(uvd[:, 1]).astype(int), 0, intr.height - 1)
    clean, labels = clean_at(v, u)
    on_body = (labels == H.LABEL_HAND) | (labels == H.LABEL_FOREARM)
    visible = on_body & (clean >= uvd[:, 2] - radii - tol_mm)
    return SynthFrame(depth, xyz, uvd, visible, radii, angles, rotation, shape.to_vector(),
                      background)
