"""Kinematic right-hand model: skeleton, shape variation, joint limits, pose sampler, forward kinematics.

Hand frame (mm), origin at the wrist joint: +x radial (towards the thumb), +y distal (towards the
fingers), +z volar (out of the palm); x × y = z, which is the volar side for a right hand.

Bone lengths are adult means (Buryanov & Kotiuk 2010); limits follow the clinical ranges and the
tracker limits collected in ``shared/research/synthetic-hand.md`` §2. Angles are in degrees in
:class:`HandPose` and all limits; flexion is positive, hyperextension negative.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

FINGERS = ("index", "middle", "ring", "little")

# Bone lengths in mm: proximal, middle, distal phalanx (+ fingertip pulp), metacarpal.
PHALANX_MM = np.array([
    [39.78, 22.38, 15.82],  # index
    [44.63, 26.33, 17.40],  # middle
    [41.37, 25.65, 17.30],  # ring
    [32.74, 18.11, 15.96],  # little
])
PULP_MM = np.array([3.84, 3.95, 3.95, 3.73])
THUMB_MM = np.array([46.22, 31.57, 21.67])  # metacarpal, proximal, distal
THUMB_PULP_MM = 5.67

# MCP joint centres in the hand frame (mm): about 58 mm from index to little, arched towards the palm.
MCP_POS = np.array([[27.0, 88.0, 1.0], [7.0, 91.0, 0.0], [-13.0, 85.0, 2.0], [-31.0, 75.0, 4.0]])
THUMB_CMC_POS = np.array([19.0, 24.0, 9.0])
# Rest splay of each finger, radial positive (degrees): the fingers fan out from the palm.
FINGER_SPLAY_DEG = np.array([6.0, 0.0, -6.0, -14.0])

# Radii (mm) at MCP, PIP, DIP, tip for a middle-sized adult; scaled per finger.
FINGER_RADII_MM = np.array([9.2, 8.2, 7.2, 6.2])
FINGER_RADIUS_SCALE = np.array([0.97, 1.0, 0.93, 0.82])
THUMB_RADII_MM = np.array([15.0, 10.5, 9.2, 8.0])  # CMC (thenar), MCP, IP, tip

# Joint limits (degrees): (low, high).
FINGER_LIMITS = {
    "mcp_flex": (-30.0, 90.0),
    "pip_flex": (0.0, 110.0),
    "dip_flex": (0.0, 90.0),
}
# MCP abduction, radial positive, per finger (index, middle, ring, little).
MCP_ABD_LIMITS = np.array([[-15.0, 25.0], [-15.0, 15.0], [-20.0, 10.0], [-30.0, 10.0]])
THUMB_LIMITS = {
    "cmc_flex": (-15.0, 55.0),  # across the palm (opposition)
    "cmc_abd": (-15.0, 50.0),   # away from the index (radial/palmar abduction)
    "mcp_flex": (-10.0, 55.0),
    "ip_flex": (-15.0, 80.0),
}
WRIST_LIMITS = {"flex": (-70.0, 75.0), "dev": (-35.0, 20.0)}  # dev: radial positive
DIP_PIP_RATIO = (0.55, 0.8)  # DIP = ratio * PIP (Lin et al. 2000 use 2/3)

FOREARM_LENGTH_MM = 260.0
NUM_NYU_JOINTS = 36


@dataclass(frozen=True)
class HandShape:
    """One person's hand: overall scale and per-bone proportions, radii and palm width multipliers."""

    scale: float = 1.0
    phalanx_mult: np.ndarray = field(default_factory=lambda: np.ones((4, 3)))
    thumb_mult: np.ndarray = field(default_factory=lambda: np.ones(3))
    radius_mult: float = 1.0
    palm_width_mult: float = 1.0

    def to_vector(self) -> np.ndarray:
        return np.concatenate([[self.scale, self.radius_mult, self.palm_width_mult],
                               self.phalanx_mult.ravel(), self.thumb_mult])


@dataclass
class HandPose:
    """Joint angles (degrees) plus the global placement of the hand in the camera frame."""

    finger_mcp_flex: np.ndarray  # (4,)
    finger_mcp_abd: np.ndarray   # (4,) radial positive
    finger_pip_flex: np.ndarray  # (4,)
    finger_dip_flex: np.ndarray  # (4,)
    thumb: np.ndarray            # (4,) cmc_flex, cmc_abd, mcp_flex, ip_flex
    wrist: np.ndarray            # (2,) flex, dev
    rotation: np.ndarray = field(default_factory=lambda: np.eye(3))  # hand frame -> camera frame
    palm_centre_mm: np.ndarray = field(default_factory=lambda: np.array([0.0, 0.0, 800.0]))


ANGLE_NAMES = tuple(
    [f"{f}_mcp_flex" for f in FINGERS] + [f"{f}_mcp_abd" for f in FINGERS]
    + [f"{f}_pip_flex" for f in FINGERS] + [f"{f}_dip_flex" for f in FINGERS]
    + ["thumb_cmc_flex", "thumb_cmc_abd", "thumb_mcp_flex", "thumb_ip_flex", "wrist_flex", "wrist_dev"]
)


def angle_limits() -> tuple[np.ndarray, np.ndarray]:
    """(low, high) arrays of the 22 articulation angles, in :data:`ANGLE_NAMES` order."""
    f = FINGER_LIMITS
    pairs = np.concatenate([[f["mcp_flex"]] * 4, MCP_ABD_LIMITS, [f["pip_flex"]] * 4,
                            [f["dip_flex"]] * 4, list(THUMB_LIMITS.values()),
                            list(WRIST_LIMITS.values())])
    return pairs[:, 0], pairs[:, 1]


def rot_x(deg: float) -> np.ndarray:
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def rot_y(deg: float) -> np.ndarray:
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def rot_z(deg: float) -> np.ndarray:
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def thumb_frame(cmc_flex: float, cmc_abd: float) -> np.ndarray:
    """Columns = thumb metacarpal frame in hand coordinates (x: flexion axis, y: along the bone).

    At rest the metacarpal points distally, 40° radially and 15° volarly. CMC flexion swings it
    across the palm (less radial), CMC abduction lifts it out of the palm plane (palmar abduction).
    The thumb is pronated relative to the fingers, so its MCP/IP flexion bends it towards the palm
    centre (ulnar and volar) rather than straight volar.
    """
    radial, palmar = np.radians(40.0 - cmc_flex), np.radians(15.0 + cmc_abd)
    y_t = np.array([np.sin(radial) * np.cos(palmar), np.cos(radial) * np.cos(palmar), np.sin(palmar)])
    towards = np.array([-0.7, 0.15, 0.7])  # ulnar + volar: where a flexing thumb goes
    z_t = towards - y_t * (towards @ y_t)
    z_t /= np.linalg.norm(z_t)
    x_t = np.cross(y_t, z_t)
    return np.stack([x_t, y_t, z_t], axis=1)


@dataclass
class Skeleton:
    """Joint positions of one posed hand, in the camera frame (mm, NYU: x right, y up, z forward)."""

    finger_chain: np.ndarray   # (4, 4, 3): index..little x MCP, PIP, DIP, TIP
    thumb_chain: np.ndarray    # (4, 3): CMC, MCP, IP, TIP
    wrist: np.ndarray          # (3,) wrist joint = hand-frame origin
    palm_centre: np.ndarray    # (3,)
    wrist_ulnar: np.ndarray    # (3,) points on the distal forearm, as NYU's PALM_1 / PALM_2
    wrist_radial: np.ndarray
    forearm_axis: np.ndarray   # (3,) unit, pointing proximally (towards the elbow)
    forearm_radial: np.ndarray  # (3,) unit, radial direction across the forearm
    hand_axes: np.ndarray      # (3, 3) columns: hand x (radial), y (distal), z (volar) in camera frame
    finger_radii: np.ndarray   # (4, 4) MCP, PIP, DIP, TIP radii (mm)
    thumb_radii: np.ndarray    # (4,)
    palm_half_thickness: float
    forearm_radius: float
    local_scale: np.ndarray    # (3,) hand-frame scale of the palm layout: width * s, s, s

    def to_camera(self, local_mm: np.ndarray) -> np.ndarray:
        """Hand-frame points (unscaled template mm) -> camera frame, with this hand's palm scale."""
        return (np.asarray(local_mm) * self.local_scale) @ self.hand_axes.T + self.wrist

    def nyu36(self) -> np.ndarray:
        """The 36 NYU label points (36, 3), mapped as documented in ``docs/synthetic.md``."""
        out = np.empty((NUM_NYU_JOINTS, 3))
        # NYU finger blocks run little (F1), ring, middle, index (F4); ours run index..little.
        for block, finger in enumerate((3, 2, 1, 0)):
            out[6 * block: 6 * block + 6] = _six_points(*self.finger_chain[finger])
        out[24:30] = _six_points(*self.thumb_chain)
        out[30] = self.wrist_ulnar
        out[31] = self.wrist_radial
        out[32] = self.palm_centre
        # PALM_4/5: hypothenar and thenar centres; PALM_6: the wrist joint (the model origin).
        out[33] = 0.5 * (self.finger_chain[3, 0] + self.wrist) + 0.15 * (self.palm_centre - self.wrist)
        out[34] = 0.5 * (self.thumb_chain[0] + self.thumb_chain[1])
        out[35] = self.wrist
        return out

    def nyu36_radii(self) -> np.ndarray:
        """Radius of the body part around each NYU label point (mm): how deep the point lies."""
        r = np.empty(NUM_NYU_JOINTS)
        for block, finger in enumerate((3, 2, 1, 0)):
            rm, rp, rd, rt = self.finger_radii[finger]
            r[6 * block: 6 * block + 6] = [rt, rd, 0.25 * rp + 0.75 * rd, rp, 0.25 * rm + 0.75 * rp, rm]
        rc, rm, ri, rt = self.thumb_radii
        r[24:30] = [rt, ri, 0.25 * rm + 0.75 * ri, rm, 0.25 * rc + 0.75 * rm, rc]
        r[30:32] = self.forearm_radius
        r[32:35] = self.palm_half_thickness
        r[35] = self.forearm_radius
        return r


def _six_points(base: np.ndarray, j1: np.ndarray, j2: np.ndarray, tip: np.ndarray) -> np.ndarray:
    """NYU's two spheres per bone: KNU3_A, KNU3_B, KNU2_A, KNU2_B, KNU1_A, KNU1_B (tip first)."""
    return np.stack([tip, j2, j1 + 0.75 * (j2 - j1), j1, base + 0.75 * (j1 - base), base])


def _chain(base, frame, lengths, flex1: float, flex2: float) -> tuple:
    """A digit's four joints: from base, three bones along each frame's y, the frame bent about
    its x by flex1, then flex2 (degrees) after the first and second bone."""
    j1 = base + frame @ np.array([0.0, lengths[0], 0.0])
    frame = frame @ rot_x(flex1)
    j2 = j1 + frame @ np.array([0.0, lengths[1], 0.0])
    frame = frame @ rot_x(flex2)
    return base, j1, j2, j2 + frame @ np.array([0.0, lengths[2], 0.0])


def forward_kinematics(pose: HandPose, shape: HandShape) -> Skeleton:
    """Pose + shape -> joint positions in the camera frame."""
    s = shape.scale
    width = np.array([shape.palm_width_mult, 1.0, 1.0])
    local_finger = np.empty((4, 4, 3))
    for i in range(4):
        lengths = PHALANX_MM[i] * shape.phalanx_mult[i] * s
        tip_len = lengths[2] + (PULP_MM[i] - FINGER_RADII_MM[3] * FINGER_RADIUS_SCALE[i]) * s
        frame = rot_z(-(FINGER_SPLAY_DEG[i] + pose.finger_mcp_abd[i])) @ rot_x(pose.finger_mcp_flex[i])
        local_finger[i] = _chain(MCP_POS[i] * width * s, frame, (lengths[0], lengths[1], tip_len),
                                 pose.finger_pip_flex[i], pose.finger_dip_flex[i])

    cmc_flex, cmc_abd, mcp_flex, ip_flex = pose.thumb
    t_len = THUMB_MM * shape.thumb_mult * s
    t_tip_len = t_len[2] + (THUMB_PULP_MM - THUMB_RADII_MM[3]) * s
    local_thumb = np.stack(_chain(THUMB_CMC_POS * width * s, thumb_frame(cmc_flex, cmc_abd),
                                  (t_len[0], t_len[1], t_tip_len), mcp_flex, ip_flex))

    wrist_flex, wrist_dev = pose.wrist
    # Flexing the wrist tilts the forearm dorsally relative to the hand, and vice versa.
    forearm_frame = rot_x(-wrist_flex) @ rot_z(wrist_dev)
    forearm_axis = forearm_frame @ np.array([0.0, -1.0, 0.0])
    forearm_radial = forearm_frame @ np.array([1.0, 0.0, 0.0])
    local_palm = 0.5 * local_finger[1, 0]
    local_ulnar = 30.0 * s * forearm_axis - 17.0 * s * forearm_radial
    local_radial = 30.0 * s * forearm_axis + 17.0 * s * forearm_radial

    R = pose.rotation
    # Place the hand so that its palm centre lands on pose.palm_centre_mm.
    origin = pose.palm_centre_mm - R @ local_palm

    def to_cam(p: np.ndarray) -> np.ndarray:
        return p @ R.T + origin

    r_scale = s * shape.radius_mult
    return Skeleton(
        finger_chain=to_cam(local_finger),
        thumb_chain=to_cam(local_thumb),
        wrist=origin.copy(),
        palm_centre=to_cam(local_palm),
        wrist_ulnar=to_cam(local_ulnar),
        wrist_radial=to_cam(local_radial),
        forearm_axis=R @ forearm_axis,
        forearm_radial=R @ forearm_radial,
        hand_axes=R.copy(),
        finger_radii=FINGER_RADII_MM[None, :] * FINGER_RADIUS_SCALE[:, None] * r_scale,
        thumb_radii=THUMB_RADII_MM * r_scale,
        palm_half_thickness=12.5 * r_scale,
        forearm_radius=21.0 * r_scale,
        local_scale=width * s,
    )


def sample_shape(rng: np.random.Generator) -> HandShape:
    """A random adult: overall scale spans the two NYU subjects (~17 % apart), bones vary ~5 %."""
    return HandShape(
        scale=float(rng.uniform(0.82, 1.12)),
        phalanx_mult=np.clip(rng.normal(1.0, 0.05, (4, 3)), 0.88, 1.12),
        thumb_mult=np.clip(rng.normal(1.0, 0.05, 3), 0.88, 1.12),
        radius_mult=float(np.clip(rng.normal(1.0, 0.06), 0.85, 1.15)),
        palm_width_mult=float(np.clip(rng.normal(1.0, 0.04), 0.9, 1.1)),
    )


# Prototype articulations: per finger (index, middle, ring, little) a curl state and a thumb state.
# Curl states: (mcp_flex, pip_flex); DIP follows PIP through the coupling.
_CURL = {"straight": (0.0, 0.0), "relaxed": (25.0, 30.0), "half": (50.0, 60.0),
         "hook": (10.0, 95.0), "bent": (80.0, 10.0), "closed": (85.0, 100.0)}
_THUMB = {  # cmc_flex, cmc_abd, mcp_flex, ip_flex; contact states solved once by optimisation
    "out": (-10.0, 10.0, 0.0, 0.0), "relaxed": (10.0, 15.0, 15.0, 15.0),
    "across": (19.0, 4.0, 55.0, 35.0), "wrap": (55.0, -5.0, 55.0, 38.0),
    "pinch": (11.5, 3.4, 40.0, 22.0), "up": (12.0, -10.0, 0.0, 0.0),
}
PROTOTYPES: dict[str, tuple[tuple[str, str, str, str], str, float]] = {
    # name: (finger curl states index..little, thumb state, spread in degrees)
    "open": (("straight",) * 4, "out", 1.0),
    "flat": (("straight",) * 4, "up", 0.0),
    "relaxed": (("relaxed",) * 4, "relaxed", 0.4),
    "fist": (("closed",) * 4, "across", 0.0),
    "point": (("straight", "closed", "closed", "closed"), "across", 0.0),
    "victory": (("straight", "straight", "closed", "closed"), "across", 1.0),
    "three": (("straight", "straight", "straight", "closed"), "wrap", 0.6),
    "four": (("straight",) * 4, "across", 0.6),
    "thumbs_up": (("closed",) * 4, "up", 0.0),
    "L": (("straight", "closed", "closed", "closed"), "out", 0.5),
    "call": (("closed", "closed", "closed", "straight"), "out", 1.0),
    "rock": (("straight", "closed", "closed", "straight"), "across", 1.0),
    "pinch": (("half", "relaxed", "relaxed", "relaxed"), "pinch", 0.2),
    "ok": (("half", "straight", "straight", "straight"), "pinch", 0.6),
    "grasp_cylinder": (("half",) * 4, "pinch", 0.1),
    "grasp_sphere": (("relaxed", "half", "half", "half"), "pinch", 0.8),
    "claw": (("hook",) * 4, "relaxed", 0.5),
    "bent_flat": (("bent",) * 4, "up", 0.0),
}
# Abduction per finger for a fully spread hand (index..little, radial positive).
_SPREAD_DEG = np.array([15.0, 3.0, -10.0, -22.0])


def _pose_from_prototype(name: str) -> np.ndarray:
    """The 22-angle vector of a prototype (wrist neutral)."""
    curls, thumb, spread = PROTOTYPES[name]
    mcp = np.array([_CURL[c][0] for c in curls])
    pip = np.array([_CURL[c][1] for c in curls])
    return np.concatenate([mcp, spread * _SPREAD_DEG, pip, (2.0 / 3.0) * pip, _THUMB[thumb], [0.0, 0.0]])


def _free_angles(rng: np.random.Generator) -> np.ndarray:
    """Articulation drawn within limits with neighbour-correlated curl (little-ring co-flex most)."""
    shared = rng.uniform(0.0, 1.0)
    # Correlation falls from little-ring to index (measured on NYU: r = 0.80 ... 0.19).
    own_weight = np.array([0.75, 0.5, 0.35, 0.3])
    curl = np.clip((1 - own_weight) * shared + own_weight * rng.uniform(0.0, 1.0, 4), 0.0, 1.0)
    mcp = curl * 90.0 + rng.normal(0.0, 12.0, 4)
    pip = curl * 105.0 + rng.normal(0.0, 12.0, 4)
    spread = rng.uniform(-0.2, 1.1)
    abd = spread * _SPREAD_DEG + rng.normal(0.0, 4.0, 4)
    thumb = [rng.uniform(*THUMB_LIMITS[k]) for k in ("cmc_flex", "cmc_abd", "mcp_flex", "ip_flex")]
    return np.concatenate([mcp, abd, pip, (2.0 / 3.0) * pip, thumb, [0.0, 0.0]])


def sample_articulation(rng: np.random.Generator) -> np.ndarray:
    """22 angles: a noisy prototype (55 %), a blend of two prototypes (25 %) or free (20 %)."""
    names = list(PROTOTYPES)
    mode = rng.uniform()
    if mode < 0.55:
        angles = _pose_from_prototype(names[rng.integers(len(names))])
        angles[:20] += rng.normal(0.0, 9.0, 20)
    elif mode < 0.8:
        a, b = rng.choice(len(names), size=2, replace=False)
        w = rng.uniform()
        angles = (1 - w) * _pose_from_prototype(names[a]) + w * _pose_from_prototype(names[b])
        angles[:20] += rng.normal(0.0, 6.0, 20)
    else:
        angles = _free_angles(rng)
    # Wrist: mostly near neutral, sometimes strongly flexed or deviated.
    angles[20] = rng.normal(0.0, 25.0)
    angles[21] = rng.normal(-5.0, 12.0)
    lo, hi = angle_limits()
    angles = np.clip(angles, lo, hi)
    # DIP coupled to PIP with a per-pose ratio, then clipped to its own limit.
    ratio = rng.uniform(*DIP_PIP_RATIO)
    angles[12:16] = np.clip(ratio * angles[8:12], *FINGER_LIMITS["dip_flex"])
    return angles


def sample_rotation(rng: np.random.Generator) -> np.ndarray:
    """Global hand orientation (hand frame -> camera frame), at least as wide as NYU's.

    Base: fingers up, palm towards the camera. Then turn the palm away from the camera (long tail
    to back-of-hand views), pitch the fingers mostly towards the camera, and roll in the image
    plane (mostly fingers up, sometimes anything).
    """
    # Hand x (radial) -> camera -x, hand y (distal) -> camera +y (up), hand z (volar) -> camera -z.
    base = np.array([[-1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, -1.0]])
    mode = rng.uniform()
    if mode < 0.45:
        yaw = rng.normal(0.0, 15.0)
    elif mode < 0.9:
        yaw = rng.uniform(-180.0, 180.0)
    else:  # back of the hand towards the camera
        yaw = rng.normal(180.0, 20.0)
    # Positive pitch tips the fingers towards the camera, so the forearm mostly lies behind the
    # hand, as in NYU (wrist->palm elevation median -20 deg, i.e. towards the camera).
    pitch = float(np.clip(rng.normal(20.0, 30.0), -40.0, 88.0))
    roll = rng.normal(8.0, 25.0) if rng.uniform() < 0.7 else rng.uniform(-180.0, 180.0)
    # Roll is about the camera's optical axis; pitch and yaw are about the hand's own axes.
    return rot_z(-roll) @ base @ rot_x(pitch) @ rot_y(yaw)


def pose_from_angles(angles: np.ndarray, rotation: np.ndarray, palm_centre_mm: np.ndarray) -> HandPose:
    a = np.asarray(angles, dtype=np.float64)
    return HandPose(
        finger_mcp_flex=a[0:4], finger_mcp_abd=a[4:8], finger_pip_flex=a[8:12],
        finger_dip_flex=a[12:16], thumb=a[16:20], wrist=a[20:22],
        rotation=np.asarray(rotation, dtype=np.float64), palm_centre_mm=np.asarray(palm_centre_mm, dtype=np.float64),
    )


LABEL_HAND, LABEL_FOREARM = 0, 1


@dataclass
class HandGeometry:
    """Round cones (convex hulls of two spheres) in camera coordinates, with part labels."""

    a: np.ndarray       # (C, 3)
    b: np.ndarray       # (C, 3)
    ra: np.ndarray      # (C,)
    rb: np.ndarray      # (C,)
    labels: np.ndarray  # (C,) LABEL_HAND or LABEL_FOREARM

    def hand_spheres(self) -> tuple[np.ndarray, np.ndarray]:
        """The end spheres of the hand's own cones (not the forearm): centres and radii."""
        hand = self.labels == LABEL_HAND
        centres = np.concatenate([self.a[hand], self.b[hand]])
        return centres, np.concatenate([self.ra[hand], self.rb[hand]])


def hand_geometry(sk: Skeleton) -> HandGeometry:
    """Fingers, thumb, a palm of realistic width/thickness, wrist and a forearm leaving the hand."""
    a, b, ra, rb, lab = [], [], [], [], []

    def cone(p, q, rp, rq, label=LABEL_HAND):
        a.append(p), b.append(q), ra.append(rp), rb.append(rq), lab.append(label)

    r_mult = sk.palm_half_thickness / 12.5  # the hand's radius scale
    for i in range(4):
        chain, radii = sk.finger_chain[i], sk.finger_radii[i]
        for k in range(3):
            cone(chain[k], chain[k + 1], radii[k], radii[k + 1])
    t, tr = sk.thumb_chain, sk.thumb_radii
    for k in range(3):  # the first cone (CMC -> MCP) is the thenar eminence
        cone(t[k], t[k + 1], tr[k], tr[k + 1])

    # Palm: one cone along each metacarpal plus fillers between neighbours, so the palm surface is
    # smooth (grooves < 1.5 mm) and about 25 mm thick, 80 mm wide at the knuckles.
    carpal = [sk.to_camera(np.array([MCP_POS[i, 0] * 0.55, 20.0, 2.0])) for i in range(4)]
    mcps = sk.finger_chain[:, 0]
    knuckle_r = sk.finger_radii[:, 0] + 3.5 * r_mult
    for i in range(4):
        cone(carpal[i], mcps[i], 12.5 * r_mult, knuckle_r[i])
    for i in range(3):
        cone(0.5 * (carpal[i] + carpal[i + 1]), 0.5 * (mcps[i] + mcps[i + 1]),
             12.5 * r_mult, 0.5 * (knuckle_r[i] + knuckle_r[i + 1]))
    # Hypothenar (ulnar edge) and the wrist block joining the palm to the forearm.
    cone(sk.to_camera(np.array([-24.0, 22.0, 4.0])), sk.to_camera(np.array([-30.0, 66.0, 4.0])),
         12.0 * r_mult, 10.5 * r_mult)
    for x in (-13.0, 13.0):
        cone(sk.to_camera(np.array([x, 2.0, 0.0])), sk.to_camera(np.array([x, 24.0, 1.0])),
             17.0 * r_mult, 14.0 * r_mult)

    # Forearm: two parallel cones give an oval section (~60 x 42 mm at the wrist), 26 cm long.
    s = sk.local_scale[1]
    for side in (-1.0, 1.0):
        offset = side * 11.0 * s * sk.forearm_radial
        cone(sk.wrist + 5.0 * s * sk.forearm_axis + offset,
             sk.wrist + FOREARM_LENGTH_MM * s * sk.forearm_axis + offset,
             sk.forearm_radius, sk.forearm_radius * 1.15, LABEL_FOREARM)
    return HandGeometry(np.array(a), np.array(b), np.array(ra), np.array(rb), np.array(lab))
