"""Full-frame scenes: the person behind the hand, a table with objects, and the room around them.

Given the posed hand (hand.py) in the camera frame, :func:`sample_surroundings` adds what a depth
camera in front of a person sees over the whole 640x480 frame:

* the arm: the hand's own forearm (hand.py) ends at the elbow; an upper arm joins it to the right
  shoulder, at the top corner of a torso that faces the camera (yaw within 25 deg) 200-500 mm
  behind the palm; neck, head, and legs standing on the floor or sitting (thighs forward);
* the other (left) arm: hanging down, raised farther than the hand, sometimes near the hand at a
  similar depth (a hard case), or out of view; the left hand is a mirrored hand.py hand;
* sometimes a table below the hand (the camera is above its top, so it never hides the hand) with
  a few spheres and upright or lying capsules on it;
* the room: floor, a back wall 1.5-4.5 m away (the sensor reads up to 4 m: beyond, pixels are 0),
  sometimes a side wall and a ceiling.

Everything is built from the renderer's primitives (round cones, spheres, planes) plus the table,
a rectangle of a plane that :func:`render_table` composites. The hand stays unoccluded: the
torso lies behind the hand's farthest point, and parts that could hide it in the image (checked
on the projected capsules) are resampled or left out. The hand-like parts (``fine``) are meant to
be rendered at full resolution, the big smooth rest (``coarse``) at half resolution (frame.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from handgan.camera import Intrinsics
from handgan.synth import hand as H
from handgan.synth.render import Scene

LABEL_BACKGROUND, LABEL_TABLE, LABEL_BODY = 2, 3, 4  # hand.py has 0 hand, 1 forearm
SCENES = ("full", "hand")
# Share of each pose of the other arm.
OTHER_ARM_P = {"down": 0.4, "raised": 0.3, "near": 0.15, "hidden": 0.15}
TABLE_P = 0.4

UPPER_ARM_MM = 290.0  # shoulder to elbow, adult mean, times the body scale
SHOULDER_HALF_MM = 170.0  # shoulder joint to the torso's mid-line
CHEST_HALF_DEPTH_MM = 105.0
TORSO_GAP_MM = (200.0, 500.0)  # palm centre to the torso's front, when the arm allows it
MIN_TORSO_GAP_MM = 120.0
HAND_CLEARANCE_MM = 40.0  # the torso's front lies at least this far behind the hand's back


@dataclass
class Table:
    """The top of a table: the part of the plane up·p = height inside a rectangle.

    The rectangle spans `near`..`far` along `forward` (towards the camera, from `origin`) and
    `centre` ± `half_width` along `lateral`.
    """

    up: np.ndarray
    height: float
    origin: np.ndarray
    forward: np.ndarray
    lateral: np.ndarray
    near: float
    far: float
    centre: float
    half_width: float


@dataclass
class Surroundings:
    fine: Scene      # hand-sized detail (the other hand and its forearm): full resolution
    coarse: Scene    # body, objects and room: half resolution
    table: Table | None
    tags: list[str] = field(default_factory=list)  # e.g. ["room", "table", "other_near"]
    shoulder: np.ndarray | None = None  # the hand's shoulder and elbow (for tests)
    elbow: np.ndarray | None = None
    torso_front_mm: float = 0.0  # depth of the torso's front at its centre


class _Parts:
    """Growing lists of primitives."""

    def __init__(self) -> None:
        self.sc, self.sr, self.sl = [], [], []
        self.a, self.b, self.ra, self.rb, self.cl = [], [], [], [], []
        self.planes, self.pl = [], []

    def cone(self, a, b, ra, rb, label=LABEL_BODY) -> None:
        self.a.append(a), self.b.append(b), self.ra.append(ra), self.rb.append(rb)
        self.cl.append(label)

    def sphere(self, c, r, label=LABEL_BODY) -> None:
        self.sc.append(c), self.sr.append(r), self.sl.append(label)

    def plane(self, n, offset, label=LABEL_BACKGROUND) -> None:
        self.planes.append([*n, offset]), self.pl.append(label)

    def capsules(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every solid as (a, b, r) with r the larger radius: spheres have a = b."""
        a = np.array(self.a + self.sc).reshape(-1, 3)
        b = np.array(self.b + self.sc).reshape(-1, 3)
        r = np.maximum(np.array(self.ra + self.sr), np.array(self.rb + self.sr))
        return a, b, r

    def scene(self) -> Scene:
        return Scene(self.sc, self.sr, self.sl, self.a, self.b, self.ra, self.rb, self.cl,
                     self.planes, self.pl)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def _cross(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """np.cross of two 3-vectors, the same arithmetic without np.cross's per-call overhead."""
    return np.array([a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2],
                     a[0] * b[1] - a[1] * b[0]])


def _turn(v: np.ndarray, axis: np.ndarray, deg: float) -> np.ndarray:
    """v rotated by deg about the unit axis (Rodrigues)."""
    t = np.radians(deg)
    return v * np.cos(t) + _cross(axis, v) * np.sin(t) + axis * (axis @ v) * (1 - np.cos(t))


def hides(points: np.ndarray, radii: np.ndarray, a: np.ndarray, b: np.ndarray, r: np.ndarray,
          intr: Intrinsics, margin_px: float = 4.0) -> np.ndarray:
    """(K,) bool: whether capsule k (ends a, b (K, 3), radius r) may cover any of the spheres
    (points (P, 3), radii (P,)) in the image while lying in front of it. Conservative: the
    capsule's projected axis within both radii (in px) of a point, and its nearest depth there
    in front of the sphere's farthest."""
    f = max(intr.fx, intr.fy)
    p, pa, pb = intr.xyz_to_uvd(points), intr.xyz_to_uvd(a), intr.xyz_to_uvd(b)
    d = pb[:, None, :2] - pa[:, None, :2]  # (K, 1, 2)
    w = p[None, :, :2] - pa[:, None, :2]  # (K, P, 2)
    len2 = np.maximum((d * d).sum(-1), 1e-9)
    t = np.clip((w * d).sum(-1) / len2, 0.0, 1.0)  # closest point on the projected axis
    dist = np.linalg.norm(w - t[..., None] * d, axis=-1)
    z = a[:, None, 2] + t * (b[:, None, 2] - a[:, None, 2])  # capsule axis depth there
    reach = r[:, None] * f / np.maximum(z - r[:, None], 50.0) + radii * f / p[:, 2] + margin_px
    return np.any((dist < reach) & (z - r[:, None] < p[None, :, 2] + radii), axis=1)


def _frame_axes(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """World up (camera looking level to 20 deg down, rolled a little) and the person's forward
    (towards the camera, yaw within 25 deg) and lateral (their right shoulder to their left)."""
    tilt, roll = np.radians(rng.uniform(-5.0, 20.0)), np.radians(rng.normal(0.0, 3.0))
    up = _unit(np.array([np.sin(roll), np.cos(tilt), -np.sin(tilt)]))
    level = _unit(np.array([0.0, 0.0, -1.0]) + up[2] * up)  # towards the camera, horizontal
    forward = _turn(level, up, rng.uniform(-25.0, 25.0))
    lateral = _cross(forward, up)
    return up, forward, lateral


def sample_surroundings(rng: np.random.Generator, sk: H.Skeleton, g: H.HandGeometry,
                        intr: Intrinsics, force: bool = False) -> Surroundings | None:
    """Body, other arm, table and room around a posed hand; None when no torso can stand
    between 120 mm and the reach of the arm behind the hand (its forearm points at the camera).
    force: never None; the upper arm then stretches to the torso."""
    up, forward, lateral = _frame_axes(rng)
    s = sk.local_scale[1]  # the person's hand scale
    bs = s * rng.uniform(0.95, 1.05)  # and body scale
    upper_arm = UPPER_ARM_MM * bs
    elbow = sk.wrist + H.FOREARM_LENGTH_MM * s * sk.forearm_axis
    hand_pts, hand_r = g.hand_spheres()
    palm_z = sk.palm_centre[2]

    # The torso's front at depth `front`; the right shoulder joint at front + c in depth.
    c = CHEST_HALF_DEPTH_MM * bs * -forward[2] - SHOULDER_HALF_MM * bs * lateral[2]
    lowest = max(palm_z + MIN_TORSO_GAP_MM, float((hand_pts[:, 2] + hand_r).max()) + HAND_CLEARANCE_MM)
    front = max(palm_z + rng.uniform(*TORSO_GAP_MM), lowest)
    reach = 0.95 * upper_arm
    front = float(np.clip(front, elbow[2] - reach - c, elbow[2] + reach - c))
    if front < lowest - 1e-6:
        if not force:
            return None
        front = lowest
    dz = front + c - elbow[2]
    rho = np.sqrt(max(upper_arm * upper_arm - dz * dz, 0.0))

    body = _Parts()
    for _ in range(8):  # the upper arm must not pass in front of the hand
        phi = np.radians(rng.uniform(-20.0, 160.0))  # elbow -> shoulder in the image plane
        shoulder = elbow + np.array([rho * np.cos(phi), rho * np.sin(phi), dz])
        if not hides(hand_pts, hand_r, elbow[None], shoulder[None], np.array([45.0 * bs]), intr)[0]:
            break
    origin = shoulder + SHOULDER_HALF_MM * bs * lateral  # mid-point between the shoulder joints
    body.cone(elbow, shoulder, 30.0 * bs, 44.0 * bs)
    tags = ["room"]
    _torso(body, origin, up, forward, lateral, bs)
    hips = origin - 500.0 * bs * up
    hands = _Parts()
    tags.append(_other_arm(rng, body, hands, origin + SHOULDER_HALF_MM * bs * lateral, sk, g,
                           up, forward, lateral, bs, intr))

    table = None
    if rng.uniform() < TABLE_P:
        table = _table(rng, body, g, elbow, origin, up, forward, lateral, intr)
    if table is not None:
        tags.append("table")
    sitting = table is not None or rng.uniform() < 0.4
    floor = float(hips @ up) - (450.0 if sitting else 900.0) * bs
    if table is not None:
        floor = min(floor, table.height - rng.uniform(680.0, 760.0))
    floor = min(floor, -400.0, float((hand_pts @ up).min()) - 200.0)
    _legs(body, hips, up, forward, lateral, floor, sitting, bs, hand_pts, hand_r, intr)
    _room(rng, body, hands, up, floor)
    return Surroundings(hands.scene(), body.scene(), table, tags, shoulder, elbow, front)


def _torso(p: _Parts, o, up, fwd, lat, bs) -> None:
    p.cone(o - 150.0 * bs * lat, o + 150.0 * bs * lat, 60.0 * bs, 60.0 * bs)  # shoulders
    for side in (-1.0, 1.0):  # chest and belly: two halves, an oval section 370 x 210 mm
        p.cone(o + side * 80.0 * bs * lat - 60.0 * bs * up,
               o + side * 70.0 * bs * lat - 470.0 * bs * up, 105.0 * bs, 100.0 * bs)
    p.cone(o, o + 120.0 * bs * up, 55.0 * bs, 48.0 * bs)  # neck
    p.sphere(o + 215.0 * bs * up + 15.0 * bs * fwd, 95.0 * bs)  # head


def _legs(p, hips, up, fwd, lat, floor, sitting, bs, hand_pts, hand_r, intr) -> None:
    for side in (-1.0, 1.0):
        hip = hips + side * 90.0 * bs * lat
        foot = hip + (floor - hip @ up + 40.0 * bs) * up
        if sitting:
            knee = hip + 430.0 * bs * fwd
            shin = (knee, knee + (foot - hip) + 60.0 * bs * fwd)
            if not hides(hand_pts, hand_r, np.array([hip, shin[0]]), np.array([shin[0], shin[1]]),
                         np.array([75.0, 55.0]) * bs, intr).any():
                p.cone(hip, knee, 75.0 * bs, 55.0 * bs)
                p.cone(*shin, 55.0 * bs, 40.0 * bs)
                continue
        p.cone(hip, hip + 0.5 * (foot - hip), 75.0 * bs, 55.0 * bs)
        p.cone(hip + 0.5 * (foot - hip), foot, 55.0 * bs, 40.0 * bs)


def _other_arm(rng, body: _Parts, hands: _Parts, shoulder, sk: H.Skeleton, g: H.HandGeometry,
               up, fwd, lat, bs, intr) -> str:
    """The left arm: upper arm (body), then a mirrored hand.py hand with its forearm (hands)."""
    names = list(OTHER_ARM_P)
    wanted = names[rng.choice(len(names), p=list(OTHER_ARM_P.values()))]
    s = sk.local_scale[1]
    l1, l2 = UPPER_ARM_MM * bs, H.FOREARM_LENGTH_MM * s
    hand_pts, hand_r = g.hand_spheres()
    # The mirrored hand needs its own draws whatever happens, so the stream stays in step.
    angles, roll = H.sample_articulation(rng), rng.uniform(-180.0, 180.0)
    swivel = rng.normal(0.0, 20.0)
    targets = {
        "down": shoulder - rng.uniform(380.0, 560.0) * bs * up + rng.uniform(0.0, 300.0) * bs * fwd
        + rng.uniform(0.0, 80.0) * bs * lat,
        "raised": shoulder + rng.uniform(-150.0, 250.0) * bs * up + rng.uniform(150.0, 400.0) * bs * fwd
        - rng.uniform(-50.0, 200.0) * bs * lat,
        "near": sk.palm_centre + rng.uniform(170.0, 320.0) * bs * lat
        + rng.uniform(-150.0, 100.0) * bs * up + np.array([0.0, 0.0, rng.normal(0.0, 40.0)]),
    }
    if wanted == "hidden":
        return "other_hidden"
    for mode in dict.fromkeys([wanted, "raised", "down"]):  # fall back when the wanted one hides
        wrist = targets[mode]
        if mode == "raised":  # raised, but farther than the hand
            wrist[2] = max(wrist[2], sk.palm_centre[2] + 120.0)
        arm = wrist - shoulder
        dist = float(np.linalg.norm(arm))
        d = float(np.clip(dist, abs(l1 - l2) + 20.0, 0.97 * (l1 + l2)))
        axis = arm / dist
        wrist = shoulder + d * axis
        cos_a = (l1 * l1 + d * d - l2 * l2) / (2.0 * l1 * d)
        bend = _turn(-up + 0.5 * lat, axis, swivel)  # the elbow points down and out
        bend = _unit(bend - (bend @ axis) * axis)
        elbow = shoulder + l1 * (cos_a * axis + np.sqrt(max(1.0 - cos_a * cos_a, 0.0)) * bend)
        geo = _mirrored_hand(angles, roll, wrist, elbow, s)
        pts = np.concatenate([geo.a, geo.b, [elbow, shoulder]])
        rad = np.concatenate([geo.ra, geo.rb, [33.0 * bs, 44.0 * bs]])
        # Neither hides the other hand: the target must stay unoccluded, and this hand, when
        # near, must not be covered by the target either (it is a whole hand, as a detector sees).
        if hides(hand_pts, hand_r, np.concatenate([geo.a, [elbow]]),
                 np.concatenate([geo.b, [shoulder]]), np.concatenate(
                     [np.maximum(geo.ra, geo.rb), [44.0 * bs]]), intr).any():
            continue
        if mode == "near" and hides(pts, rad, g.a, g.b, np.maximum(g.ra, g.rb), intr, 0.0).any():
            continue
        body.cone(elbow, shoulder, 30.0 * bs, 44.0 * bs)
        for k in range(len(geo.a)):
            hands.cone(geo.a[k], geo.b[k], geo.ra[k], geo.rb[k])
        return "other_" + mode
    return "other_hidden"


def _mirrored_hand(angles, roll, wrist, elbow, s: float) -> H.HandGeometry:
    """A left hand: hand.py's right hand posed along elbow -> wrist, mirrored across its own
    palm's mid-plane (radial axis flipped); its forearm runs back to the elbow."""
    distal = _unit(wrist - elbow)
    volar = _unit(_cross(distal, np.array([0.0, 0.0, 1.0])) + 1e-6)
    volar = _turn(volar, distal, roll)
    rot = np.stack([_cross(distal, volar), distal, volar], axis=1)  # columns x, y, z
    a = np.array(angles, dtype=np.float64)
    a[20:22] = 0.0  # the wrist is straight: the forearm continues the hand's axis
    shape = H.HandShape(scale=s)
    skel = H.forward_kinematics(H.pose_from_angles(a, rot, np.zeros(3)), shape)
    geo = H.hand_geometry(skel)
    shift = wrist - skel.wrist
    n = rot[:, 0]

    def mirror(p):
        p = p + shift
        return p - 2.0 * ((p - wrist) @ n)[:, None] * n

    return H.HandGeometry(mirror(geo.a), mirror(geo.b), geo.ra, geo.rb, geo.labels)


def _table(rng, body: _Parts, g, elbow, origin, up, fwd, lat, intr) -> Table | None:
    """A table top below the hand, the elbow and the camera, from the person's belly towards
    the camera, with up to three objects on it away from the hand."""
    hand_pts, hand_r = g.hand_spheres()
    top = min(float((hand_pts @ up - hand_r).min()), float(elbow @ up) - 45.0, -60.0)
    height = top - rng.uniform(30.0, 250.0)
    if float(origin @ up) - height > 800.0:  # a table under the chest, not under the shoulders
        return None
    # Along `forward` from the torso's mid-line: from the belly towards the camera.
    near = CHEST_HALF_DEPTH_MM + rng.uniform(-20.0, 100.0)
    table = Table(up=up, height=height, origin=origin, forward=fwd, lateral=lat, near=near,
                  far=near + rng.uniform(450.0, 900.0), centre=rng.uniform(-200.0, 200.0),
                  half_width=rng.uniform(350.0, 800.0))
    for _ in range(rng.integers(0, 4)):
        a_f = rng.uniform(table.near + 60.0, table.far - 60.0)
        a_l = table.centre + rng.uniform(-1.0, 1.0) * (table.half_width - 60.0)
        base = origin + a_f * fwd + a_l * lat
        base = base + (height - base @ up) * up  # on the top
        kind, r = rng.uniform(), rng.uniform(25.0, 70.0)
        if kind < 0.4:  # a ball
            a = b = base + r * up
        elif kind < 0.75:  # a bottle or mug
            a = base + r * up
            b = a + rng.uniform(40.0, 200.0) * up
        else:  # a rolling pin, a can on its side
            a = base + r * up
            b = a + rng.uniform(80.0, 250.0) * _turn(lat, up, rng.uniform(0.0, 180.0))
        if hides(hand_pts, hand_r, a[None], b[None], np.array([r]), intr)[0]:
            continue
        if kind < 0.4:
            body.sphere(a, r, LABEL_BACKGROUND)
        else:
            body.cone(a, b, r, r, LABEL_BACKGROUND)
    return table


def _room(rng, body: _Parts, hands: _Parts, up, floor: float) -> None:
    """Floor, back wall, sometimes a side wall and a ceiling, all behind/around the person."""
    body.plane(up, floor)
    facing = _turn(_unit(np.array([0.0, 0.0, -1.0]) + up[2] * up), up, rng.uniform(-20.0, 20.0))
    (a, b, r), (ha, hb, hr) = body.capsules(), hands.capsules()
    pts = np.concatenate([a, ha, b, hb])
    rr = np.concatenate([r, hr, r, hr])
    back = float((-(pts @ facing) + rr).max())  # the person's farthest point from the camera
    body.plane(facing, -max(rng.uniform(1500.0, 4500.0), back + rng.uniform(100.0, 400.0)))
    side = _cross(facing, up)
    if rng.uniform() < 0.6:
        sign = 1.0 if rng.uniform() < 0.5 else -1.0
        extent = float((sign * (pts @ side) + rr).max())
        body.plane(-sign * side, -max(rng.uniform(800.0, 2500.0), extent + 150.0))
    if rng.uniform() < 0.3:
        body.plane(-up, -rng.uniform(1000.0, 1700.0))


def render_table(table: Table, intr: Intrinsics, depth: np.ndarray, labels: np.ndarray) -> None:
    """Composite the table top into depth/labels (in place; intr's image size): nearer wins."""
    xs = ((np.arange(intr.width) - intr.cx) / intr.fx).astype(np.float32)
    ys = ((np.arange(intr.height) - intr.cy) / intr.fy).astype(np.float32)
    if intr.y_up:
        ys = -ys

    def ray_dot(v):  # v·ray per pixel (h, w), float32
        row = ys * np.float32(v[1]) + np.float32(v[2])
        return (xs * np.float32(v[0]))[None, :] + row[:, None]

    # depth t on the plane up·(t·ray) = height: 1/t = up·ray / height (height < 0: below camera)
    inv = ray_dot(table.up / table.height)
    t = np.float32(1.0) / inv
    # Coordinates of the hit along forward and lateral, relative to the table's origin.
    along, across = t * ray_dot(table.forward), t * ray_dot(table.lateral)
    o_f, o_l = float(table.origin @ table.forward), float(table.origin @ table.lateral)
    inside = (inv > 0) & (along >= o_f + table.near) & (along <= o_f + table.far)
    inside &= np.abs(across - np.float32(o_l + table.centre)) <= np.float32(table.half_width)
    inside &= (depth == 0) | (t < depth)
    depth[inside] = t[inside]
    labels[inside] = LABEL_TABLE
