"""The pose-conditioned DCGAN: a generator (joints -> depth crop) and a two-headed discriminator
(real/fake and 3D joint regression on a shared convolutional trunk).

Tensor conventions: crops (B, 1, S, S) in [-1, 1]; joints (B, J, 3) normalised to the crop cube.
The networks know nothing about devices, precision or distribution; training wraps them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from handgan.joints import NYU14_PALM
from handgan.joints import skeleton_edges as joints_layout_edges


@dataclass(frozen=True)
class ModelConfig:
    size: int = 128          # crop side S (a power of two, >= 32)
    num_joints: int = 14
    width: int = 32          # channels of the first conv; doubles per layer up to 8x
    shared_layers: int = 2   # conv layers shared by the real/fake and pose branches (0 .. depth)
    pose_hidden: int = 1024  # fully connected width of the pose head
    gen_render: bool = False    # Gen(J) is a depth render of the skeleton whose shape is learned
    gen_edge_dropout: float = 0.0   # Gen's sensor: P(a pixel on a depth edge loses its depth)
    gen_pixel_dropout: float = 0.0  # Gen's sensor: P(any other hand pixel loses its depth)

    def __post_init__(self):
        if self.size < 32 or self.size & (self.size - 1):
            raise ValueError(f"size must be a power of two >= 32, got {self.size}")
        for name in ("num_joints", "width", "pose_hidden"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("gen_edge_dropout", "gen_pixel_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if not 0 <= self.shared_layers <= self.depth:
            raise ValueError(f"shared_layers must be in 0..{self.depth}, got {self.shared_layers}")

    @property
    def depth(self) -> int:
        """Stride-2 layers between S x S and 4 x 4 (5 for S = 128, 4 for S = 64)."""
        return self.size.bit_length() - 3

    def channels(self, layer: int) -> int:
        """Channels after discriminator conv ``layer`` (0-based); the generator mirrors them."""
        return self.width * min(2 ** layer, 8)


def skeleton_edges(num_joints: int) -> tuple[tuple[int, int], ...]:
    """Bones of a dataset's joint layout (``joints.LAYOUTS``: NYU 14 or 36, ICVL 16, MSRA 21);
    a joint set of no known dataset gets a chain, each joint to the next (as many bones as a
    tree: the parameter shapes do not depend on which)."""
    return joints_layout_edges(num_joints) or tuple((k, k + 1) for k in range(num_joints - 1))


# The skeleton render (``gen_render``): spheres swept along each bone, seen by a camera looking at
# the crop's centre from RENDER_FOCUS cube half-sides away (850 mm for a 300 mm cube: the middle of
# the NYU test range, 650-1107 mm), or along the crop's own centre ray when it is given.
RENDER_FOCUS = 850.0 / 150.0
RENDER_SAMPLES = 6        # spheres per bone, ends included
RENDER_RADIUS = 0.06      # initial bone radius, cube half-sides (9 mm for a 300 mm cube)
FOREARM_RADIUS = 0.14     # 21 mm: the synthetic hand's mean forearm radius
FOREARM_LENGTH = 2.0      # a cube's side: the forearm leaves the crop
FOREARM_SAMPLES = 12      # per row; two rows side by side give the forearm an oval section
FOREARM_SPREAD = 0.073    # 11 mm: each row's offset across the wrist (the synthetic forearm's)
# (palm centre, the two wrist points) of the layouts whose forearm we can place.
FOREARM_JOINTS = {14: (13, 11, 12), 36: (32, 30, 31)}
# The palm as a plate: (palm centre, the four fingers' bases little..index, ulnar and radial wrist
# points). The 14-joint layout has no knuckles: a finger's base is taken halfway from the palm
# centre to its PIP joint (PALM_KNUCKLE); the 36-point layout has them.
PALM_JOINTS = {14: (13, (1, 3, 5, 7), 11, 12), 36: (32, (5, 11, 17, 23), 30, 31),
               19: (13, (14, 15, 16, 17), 11, 12)}  # 19: 14 joints + hand_bases
PALM_KNUCKLE = {14: 0.5, 36: 1.0, 19: 1.0}
PALM_RADIUS = 0.08        # half the palm's thickness, 12 mm
# The 14-joint layout's fingers and thumb start at the palm centre. Their real bases (the four
# knuckles, the thumb's carpometacarpal joint) sit at nearly fixed places in the palm's frame:
# origin the palm centre, axes across the wrist (ulnar -> radial), wrist -> palm centre, and
# their cross product, in units of the wrist-to-palm-centre distance. Initial places: the means
# over the synthetic default's 4,000 training hands (6-7 mm from the true knuckle on average,
# against 15-17 mm for the point halfway to the PIP joint). Gen learns them (``gen.bases``).
HAND_BASES_14 = ((-0.500, 0.353, 0.054), (-0.266, 0.507, 0.028), (-0.001, 0.610, 0.001),
                 (0.274, 0.592, 0.014), (0.233, -0.269, 0.120))  # little..index knuckle, thumb
BASE_OF_14 = {1: 14, 3: 15, 5: 16, 7: 17, 10: 18}  # the bone palm -> joint starts at this base
PALM_GRID = 3             # spheres per triangle side: 10 per triangle


def skeleton_depth(joints: torch.Tensor, size: int, edges, radii: torch.Tensor,
                   forearm_radius: torch.Tensor | None = None, ray: torch.Tensor | None = None,
                   palm_radius: torch.Tensor | None = None,
                   forearm_spread: torch.Tensor | None = None,
                   bases: torch.Tensor | None = None) -> torch.Tensor:
    """(B, J, 3) normalised joints -> (B, 1, S, S) normalised depth of the skeleton as round
    cones (``RENDER_SAMPLES`` spheres per bone, radii (E, 2) at the bone's ends, linear between),
    for NYU layouts a forearm from the wrist away from the palm (two rows ``forearm_spread``
    either side of the wrist's middle, for an oval section; one row without it), the palm as a
    plate (``palm_radius``, :func:`palm_plate`) and, for 14 joints, the fingers drawn from their
    bases ``bases`` (:func:`hand_bases`), not from the palm centre.

    ``ray`` (B, 3): each crop's centre ray (a_x, a_y, f) = (x/z, y/z, z / half cube)
    (:func:`handgan.preprocess.centre_rays`); default: on the optical axis at f =
    ``RENDER_FOCUS``. A sphere at (X, Y, Z) of radius r lands in the crop plane at
    k (X - a_x Z, Y - a_y Z), k = f / (f + Z), exactly where the crop shows that point; at
    crop-plane distance d its surface is at depth Z - sqrt(r^2 - (d / k)^2). Each pixel keeps the
    nearest surface (a z-buffer), +1 (background) where no sphere is; pixel (row, col) shows the
    point (col / (S/2) - 1, 1 - row / (S/2)), as ``CropTransform.M`` samples the frame.
    Differentiable in the joints and radii where a sphere is seen."""
    b = joints.shape[0]
    j = joints.float()
    layout = int(joints.shape[1])  # an int also while traced for export (a dict key)
    plate_layout = layout
    if bases is not None and layout == 14:
        j = torch.cat([j, hand_bases(j, bases)], dim=1)                         # (B, 19, 3)
        edges = [(BASE_OF_14.get(c, a) if a == NYU14_PALM else a, c) for a, c in edges]
        plate_layout = 19
    e = torch.as_tensor(edges, dtype=torch.int64, device=joints.device).view(-1, 2)
    t = torch.linspace(0.0, 1.0, RENDER_SAMPLES, device=joints.device)       # (K,)
    a, c = j[:, e[:, 0]], j[:, e[:, 1]]                                         # (B, E, 3)
    centres = a.unsqueeze(2) + t.view(1, 1, -1, 1) * (c - a).unsqueeze(2)       # (B, E, K, 3)
    r = radii[:, :1] + t.view(1, -1) * (radii[:, 1:] - radii[:, :1])            # (E, K)
    centres, r = centres.reshape(b, -1, 3), r.reshape(1, -1).expand(b, -1)
    if palm_radius is not None and plate_layout in PALM_JOINTS:
        plate = palm_plate(j, plate_layout)                                     # (B, P, 3)
        centres = torch.cat([centres, plate], dim=1)
        r = torch.cat([r, palm_radius.reshape(1, 1).expand(b, plate.shape[1])], dim=1)
    hand = centres.shape[1]  # bone and palm spheres first, then the forearm's (wider windows)
    if forearm_radius is not None and layout in FOREARM_JOINTS:
        palm, w1, w2 = FOREARM_JOINTS[layout]
        wrist = 0.5 * (j[:, w1] + j[:, w2])                                       # (B, 3)
        away = F.normalize(wrist - j[:, palm], dim=-1, eps=1e-6)
        s = torch.linspace(0.0, FOREARM_LENGTH, FOREARM_SAMPLES, device=joints.device)
        arm = wrist.unsqueeze(1) + s.view(1, -1, 1) * away.unsqueeze(1)          # (B, A, 3)
        if forearm_spread is not None:
            across = j[:, w2] - j[:, w1]  # ulnar -> radial, made square to the forearm's axis
            across = F.normalize(across - (across * away).sum(-1, keepdim=True) * away, dim=-1,
                                 eps=1e-6).unsqueeze(1) * forearm_spread
            arm = torch.cat([arm - across, arm + across], dim=1)                 # (B, 2A, 3)
        centres = torch.cat([centres, arm], dim=1)
        r = torch.cat([r, forearm_radius.reshape(1, 1).expand(b, arm.shape[1])], dim=1)
    if ray is None:
        ray = torch.tensor([0.0, 0.0, RENDER_FOCUS], device=joints.device).expand(b, 3)
    ray = ray.float()
    focus = ray[:, 2:3]                                                         # (B, 1)
    z = centres[..., 2]
    k = focus / (focus + z).clamp(min=0.25 * focus)                            # (B, N)
    # the crop-plane position, as if the sphere sat on the centre's ray
    centres = torch.stack([centres[..., 0] - ray[:, :1] * z, centres[..., 1] - ray[:, 1:2] * z,
                           z], dim=-1)
    depth = torch.ones(b, size * size, device=joints.device)
    if torch.onnx.is_in_onnx_export():  # ONNX has no scatter-min that matches: every pixel
        return _all_pixels(centres, r, k, size).clamp(-1.0, 1.0).view(b, 1, size, size)
    groups = [g for g in (slice(0, hand), slice(hand, None)) if centres[:, g].shape[1]]
    # each group's window fits its largest sphere (small windows for the fingers): one read of
    # the device for all groups
    widest = torch.stack([(r[:, g] * k[:, g]).detach().max() for g in groups]).tolist()
    for group, rk in zip(groups, widest):
        depth = _splat_spheres(depth, centres[:, group], r[:, group], k[:, group], size, rk)
    return depth.clamp(-1.0, 1.0).view(b, 1, size, size)


def hand_bases(joints: torch.Tensor, bases: torch.Tensor) -> torch.Tensor:
    """(B, 14, 3) joints, (5, 3) places in the palm's frame (``HAND_BASES_14``) -> (B, 5, 3)
    points: palm centre + L (a u + b v + c w), u across the wrist (ulnar -> radial, square to v),
    v from the wrist points' middle to the palm centre, w = u x v, L that distance."""
    palm, ulnar, radial = (joints[:, k] for k in FOREARM_JOINTS[14])
    v = palm - 0.5 * (ulnar + radial)
    length = v.norm(dim=-1, keepdim=True).clamp(min=1e-6)                      # (B, 1)
    v = v / length
    u = radial - ulnar
    u = F.normalize(u - (u * v).sum(-1, keepdim=True) * v, dim=-1, eps=1e-6)
    w = torch.cross(u, v, dim=-1)
    frame = torch.stack([u, v, w], dim=1)                                       # (B, 3, 3)
    return palm.unsqueeze(1) + length.unsqueeze(1) * (bases.float() @ frame)   # (B, 5, 3)


def palm_plate(joints: torch.Tensor, layout: int) -> torch.Tensor:
    """(B, J, 3) joints -> (B, 60, 3) sphere centres on six triangles spanning the palm: the palm
    centre with each pair of neighbouring finger bases, with each outer base and its wrist point
    and with the two wrist points (barycentric grid of ``PALM_GRID`` steps)."""
    palm_i, bases_i, ulnar_i, radial_i = PALM_JOINTS[layout]
    palm = joints[:, palm_i]
    bases = [palm + PALM_KNUCKLE[layout] * (joints[:, k] - palm) for k in bases_i]
    ulnar, radial = joints[:, ulnar_i], joints[:, radial_i]
    triangles = [(bases[i], bases[i + 1]) for i in range(3)]
    triangles += [(ulnar, bases[0]), (radial, bases[3]), (ulnar, radial)]
    n = PALM_GRID
    weights = [(i / n, k / n) for i in range(n + 1) for k in range(n + 1 - i)]  # 10 points
    points = [palm + u * (b - palm) + v * (c - palm) for b, c in triangles for u, v in weights]
    return torch.stack(points, dim=1)


SENSOR_BACKGROUND = 0.98  # where a generated crop has no depth: its background (tanh's range)
SENSOR_EDGE_JUMP = 20.0 / 150.0  # a depth edge: a 4-neighbour 20 mm (300 mm cube) further away
_HAND_BELOW = SENSOR_BACKGROUND - 0.01  # a pixel nearer than this shows the hand (or arm)


def sensor_dropout(crops: torch.Tensor, edge_p: float, pixel_p: float) -> torch.Tensor:
    """A depth camera's missing pixels on clean crops (B, 1, S, S), drawn from torch's RNG: a hand
    pixel on a depth edge (a 4-neighbour that is background or ``SENSOR_EDGE_JUMP`` away, as the
    synthetic sensor's ``edge_dropout``) shows the background with probability ``edge_p``, any
    other hand pixel with ``pixel_p``. The gradient flows through kept pixels."""
    if edge_p <= 0 and pixel_p <= 0:
        return crops
    x = crops.detach()
    hand = x < _HAND_BELOW
    padded = F.pad(x, (1, 1, 1, 1), mode="replicate")  # the crop's border is not an edge
    size = x.shape[-1]
    neighbours = [padded[..., 1 + dy:1 + dy + size, 1 + dx:1 + dx + size]
                  for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1))]
    near = torch.stack(neighbours)
    edge = (((near - x).abs() > SENSOR_EDGE_JUMP) | (near >= _HAND_BELOW)).any(0)
    p = torch.where(edge, torch.full_like(x, edge_p), torch.full_like(x, pixel_p))
    lost = hand & (torch.rand_like(x) < p)
    return torch.where(lost, torch.full_like(crops, SENSOR_BACKGROUND), crops)


def _all_pixels(centres: torch.Tensor, r: torch.Tensor, k: torch.Tensor, size: int
                ) -> torch.Tensor:
    """The same z-buffer as :func:`_splat_spheres`, every sphere against every pixel: (B, S*S).
    For export only (40x the work)."""
    grid = torch.arange(size, dtype=torch.float32, device=centres.device) * (2.0 / size)
    xs, ys = (grid - 1.0).view(1, 1, 1, -1), (1.0 - grid).view(1, 1, -1, 1)
    surface = _sphere_surface(xs, ys, centres, r, k)                            # (B, N, S, S)
    return surface.amin(dim=1).clamp(max=1.0).flatten(1)


def _sphere_surface(xs: torch.Tensor, ys: torch.Tensor, centres: torch.Tensor, r: torch.Tensor,
                    k: torch.Tensor, seen: torch.Tensor | None = None) -> torch.Tensor:
    """Depth of each sphere's front surface at crop-plane points (xs, ys) (broadcast against
    (B, N, ...)): Z - sqrt(r^2 - (d / k)^2) where the point lies inside its outline (and
    ``seen``), background (+1) elsewhere."""
    d2 = ((xs - (centres[..., 0] * k)[..., None, None]).pow(2)
          + (ys - (centres[..., 1] * k)[..., None, None]).pow(2)) / k[..., None, None].pow(2)
    h2 = r.pow(2)[..., None, None] - d2
    inside = h2 > 0 if seen is None else (h2 > 0) & seen
    return torch.where(inside, centres[..., 2, None, None] - h2.clamp(min=1e-6).sqrt(),
                       torch.ones_like(h2))


def _splat_spheres(depth: torch.Tensor, centres: torch.Tensor, r: torch.Tensor, k: torch.Tensor,
                   size: int, widest: float) -> torch.Tensor:
    """Z-buffer spheres (B, N, 3) of radii r (B, N) and perspective factors k (B, N) into
    ``depth`` (B, S*S): each sphere only visits the pixels of a square window around its
    projection wide enough for the largest sphere (``widest`` = max r * k; 40x fewer pixels than
    the whole crop)."""
    half = size / 2.0
    reach = int(math.ceil(widest * half)) + 1  # window half-side, px
    offsets = torch.arange(-reach, reach + 1, device=centres.device)
    cx, cy = centres[..., 0] * k, centres[..., 1] * k                           # crop plane
    col0 = torch.round((cx.detach() + 1.0) * half).long()                       # (B, N)
    row0 = torch.round((1.0 - cy.detach()) * half).long()
    cols = (col0[..., None, None] + offsets.view(1, 1, 1, -1))                  # (B, N, 1, W)
    rows = (row0[..., None, None] + offsets.view(1, 1, -1, 1))                  # (B, N, W, 1)
    xs = cols.float() / half - 1.0                    # where pixel (row, col) samples the frame
    ys = 1.0 - rows.float() / half
    in_crop = (cols >= 0) & (cols < size) & (rows >= 0) & (rows < size)
    surface = _sphere_surface(xs, ys, centres, r, k, in_crop)                   # (B, N, W, W)
    index = (rows.clamp(0, size - 1) * size + cols.clamp(0, size - 1)).expand_as(surface)
    return depth.scatter_reduce(1, index.reshape(depth.shape[0], -1),
                                surface.reshape(depth.shape[0], -1), "amin")


def _down(c_in: int, c_out: int, batch_norm: bool) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1, bias=not batch_norm)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(c_out))
    layers.append(nn.LeakyReLU(0.2, inplace=True))
    return nn.Sequential(*layers)


class Generator(nn.Module):
    """Gen(J), the seed's: joints (B, J, 3) -> FC -> (C, 4, 4) -> stride-2 transposed convs
    (batch norm, ReLU), each doubling the resolution -> (B, 1, S, S) in [-1, 1] (tanh).

    ``gen_render`` (the presets): Gen(J) is :func:`skeleton_depth`, the skeleton rendered as each
    crop sees it (``ray``), and only its shape learns (bone radii, forearm, palm, finger bases):
    the best line of docs/results.md round 5; no convolutions. ``gen_edge_dropout`` /
    ``gen_pixel_dropout``: Gen ends with a depth camera's missing pixels
    (:func:`sensor_dropout`), left out with ``clean=True``."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        if cfg.gen_render:
            self.edges = skeleton_edges(cfg.num_joints)
            self.radii = nn.Parameter(torch.full((len(self.edges), 2), RENDER_RADIUS))
            self.forearm_radius = nn.Parameter(torch.tensor(FOREARM_RADIUS))
            self.palm_radius = nn.Parameter(torch.tensor(PALM_RADIUS))
            self.forearm_spread = nn.Parameter(torch.tensor(FOREARM_SPREAD))
            self.bases = (nn.Parameter(torch.tensor(HAND_BASES_14)) if cfg.num_joints == 14
                          else None)
            return
        top = cfg.channels(cfg.depth - 1)
        self.fc = nn.Sequential(nn.Linear(cfg.num_joints * 3, top * 16, bias=False),
                                nn.BatchNorm1d(top * 16), nn.ReLU(inplace=True))
        ups: list[nn.Module] = []
        for layer in range(cfg.depth - 1, 0, -1):  # (top, 4, 4) -> ... -> (width, S/2, S/2)
            c_in, c_out = cfg.channels(layer), cfg.channels(layer - 1)
            ups += [nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1, bias=False),
                    nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
        ups += [nn.ConvTranspose2d(cfg.width, 1, 4, stride=2, padding=1), nn.Tanh()]
        self.up = nn.Sequential(*ups)  # one flat Sequential: the seed layout's parameter names

    def forward(self, joints: torch.Tensor, ray: torch.Tensor | None = None,
                clean: bool = False) -> torch.Tensor:
        """(B, J, 3) joints -> (B, 1, S, S); ``ray`` (B, 3): the crops' centre rays (for
        ``gen_render``); ``clean``: without the sensor's missing pixels."""
        crops = self._clean(joints, ray)
        return crops if clean else self.sensor(crops)

    def sensor(self, crops: torch.Tensor) -> torch.Tensor:
        """Gen's clean crops as its depth camera records them (:func:`sensor_dropout`)."""
        return sensor_dropout(crops, self.cfg.gen_edge_dropout, self.cfg.gen_pixel_dropout)

    def render(self, joints: torch.Tensor, ray: torch.Tensor | None) -> torch.Tensor:
        """The skeleton render (``gen_render``) of (B, J, 3) joints: (B, 1, S, S)."""
        return skeleton_depth(joints, self.cfg.size, self.edges, self.radii, self.forearm_radius,
                              ray, self.palm_radius, self.forearm_spread, self.bases)

    def _clean(self, joints: torch.Tensor, ray: torch.Tensor | None) -> torch.Tensor:
        if self.cfg.gen_render:
            return self.render(joints, ray).clamp(-0.98, 0.98)  # as the seed's tanh's range
        top = self.cfg.channels(self.cfg.depth - 1)
        return self.up(self.fc(joints.flatten(1)).view(-1, top, 4, 4))  # (B, 1, S, S)


class Discriminator(nn.Module):
    """Dis(X): a shared trunk of ``shared_layers`` stride-2 convs, then two branches down to 4 x 4:
    a real/fake logit, and the pose estimator (convs + FC -> J x 3). LeakyReLU everywhere; batch
    norm after every conv except the first, as in DCGAN."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg

        def convs(first: int, last: int) -> nn.Sequential:
            return nn.Sequential(*[
                _down(1 if k == 0 else cfg.channels(k - 1), cfg.channels(k), batch_norm=k > 0)
                for k in range(first, last)])

        self.trunk = convs(0, cfg.shared_layers)
        self.real_fake = nn.Sequential(convs(cfg.shared_layers, cfg.depth), nn.Flatten(),
                                       nn.Linear(cfg.channels(cfg.depth - 1) * 16, 1))
        self.pose = nn.Sequential(convs(cfg.shared_layers, cfg.depth), nn.Flatten(),
                                  nn.Linear(cfg.channels(cfg.depth - 1) * 16, cfg.pose_hidden),
                                  nn.LeakyReLU(0.2, inplace=True),
                                  nn.Linear(cfg.pose_hidden, cfg.num_joints * 3))

    def forward(self, x: torch.Tensor, heads: str = "both"
                ) -> tuple[torch.Tensor, torch.Tensor] | torch.Tensor:
        """(B, 1, S, S) -> real/fake logits (B,) and joints (B, J, 3) (``heads="both"``), or the
        logits alone (``"real_fake"``) or the joints alone (``"pose"``). Choosing the head here
        lets a DistributedDataParallel wrapper see every use and synchronise its gradients."""
        h = self.trunk(x)
        if heads == "real_fake":
            return self.real_fake(h).squeeze(1)
        if heads == "pose":
            return self.pose(h).view(-1, self.cfg.num_joints, 3)
        if heads != "both":
            raise ValueError(f"heads must be 'both', 'real_fake' or 'pose', got {heads!r}")
        return self.real_fake(h).squeeze(1), self.pose(h).view(-1, self.cfg.num_joints, 3)

    def estimate(self, x: torch.Tensor) -> torch.Tensor:
        """The pose branch alone: (B, 1, S, S) -> (B, J, 3). Never touches the real/fake head."""
        return self.pose(self.trunk(x)).view(-1, self.cfg.num_joints, 3)


class PoseEstimator(nn.Module):
    """The inference network: the discriminator's trunk and pose branch, without the generator or
    the real/fake head (shares their parameters when built from a Discriminator)."""

    def __init__(self, dis: Discriminator):
        super().__init__()
        self.trunk, self.pose, self.num_joints = dis.trunk, dis.pose, dis.cfg.num_joints

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        return self.pose(self.trunk(crops)).view(-1, self.num_joints, 3)


def init_weights(module: nn.Module) -> None:
    """DCGAN initialisation: conv weights N(0, 0.02), batch-norm scales N(1, 0.02)."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)
