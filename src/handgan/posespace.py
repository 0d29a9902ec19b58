"""New poses from known ones (skeleton-space augmentation): what Gen renders for the pose head.

Poses are (B, J, 3) in the crop's normalised frame (the cube's half side = 1, centred on the hand,
y up). A partner pose B is first turned and shifted (Kabsch, on the palm joints) so that its palm
lies on A's: a recombined pose keeps A's place and orientation in the crop. Sources, one drawn
per pose:

* ``mix``: a convex combination ``lam * A + (1 - lam) * B'`` (B' = B palm-aligned on A),
  ``lam ~ U(0, 1)``: articulations between two labelled hands.
* ``finger``: A with each finger (independently, probability 1/2) taken from B': finger
  combinations no labelled hand shows. Needs a layout with known fingers (NYU 14 or 36 points);
  on other layouts it falls back to ``mix``.
* ``rotate``: A turned about its palm centre by a random 3D rotation of at most ``max_turn_deg``:
  viewpoints beyond the labelled ones (in-plane rotation is already crop augmentation).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from handgan.device import to_device_async
from handgan.errors import HandganError

POSE_SOURCES = ("mix", "finger", "rotate")

# Joints that move with the palm (the Kabsch points) and each finger's joints, per layout.
_PALM = {14: (11, 12, 13), 36: (30, 31, 32, 33, 34, 35)}
_FINGERS = {
    14: ((0, 1), (2, 3), (4, 5), (6, 7), (8, 9, 10)),  # little, ring, middle, index, thumb
    36: tuple(tuple(range(6 * f, 6 * f + 6)) for f in range(5)),
}
_CENTRE = {14: 13, 36: 32}  # the palm centre: the crop's reference point


def palm_align(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """(B, J, 3) poses ``src`` turned and shifted so that their palm joints fit ``dst``'s best
    in the least-squares sense (Kabsch, proper rotations only); unknown layouts use every joint."""
    palm = _span(_PALM.get(src.shape[1]))
    p, q = src[:, palm].double(), dst[:, palm].double()
    pc, qc = p.mean(dim=1, keepdim=True), q.mean(dim=1, keepdim=True)
    h = (p - pc).transpose(1, 2) @ (q - qc)  # (B, 3, 3) cross-covariance
    u, _, vt = torch.linalg.svd(h)
    d = torch.sign(torch.linalg.det(vt.transpose(1, 2) @ u.transpose(1, 2)))
    fix = torch.diag_embed(torch.stack([torch.ones_like(d), torch.ones_like(d), d], dim=1))
    r = vt.transpose(1, 2) @ fix @ u.transpose(1, 2)  # maps src -> dst: x' = R x
    out = (src.double() - pc) @ r.transpose(1, 2) + qc
    return out.to(src.dtype)


def _span(joints: Sequence[int] | None) -> slice:
    """Consecutive joint indices as a slice (all joints for None): a slice indexes a GPU tensor
    without copying an index list to the device, which waits for the GPU's queue."""
    if joints is None:
        return slice(None)
    if list(joints) != list(range(joints[0], joints[-1] + 1)):
        raise ValueError(f"joints {joints} are not consecutive")
    return slice(joints[0], joints[-1] + 1)


def random_rotations(n: int, max_deg: float, generator: torch.Generator | None = None,
                     device: torch.device | str = "cpu") -> torch.Tensor:
    """(n, 3, 3) rotations about uniformly random axes by angles ~ U(-max_deg, max_deg)."""
    axis = torch.randn(n, 3, generator=generator, dtype=torch.float64)
    axis = axis / axis.norm(dim=1, keepdim=True).clamp(min=1e-12)
    angle = torch.rand(n, generator=generator, dtype=torch.float64) * 2 - 1
    angle = angle * math.radians(max_deg)
    k = torch.zeros(n, 3, 3, dtype=torch.float64)  # cross-product matrices of the axes
    k[:, 0, 1], k[:, 0, 2], k[:, 1, 2] = -axis[:, 2], axis[:, 1], -axis[:, 0]
    k = k - k.transpose(1, 2)
    s, c = angle.sin().view(-1, 1, 1), angle.cos().view(-1, 1, 1)
    rot = torch.eye(3, dtype=torch.float64) + s * k + (1 - c) * (k @ k)  # Rodrigues
    return to_device_async(rot, torch.device(device))


def new_poses(poses: torch.Tensor, sources: Sequence[str] = POSE_SOURCES,
              max_turn_deg: float = 30.0, generator: torch.Generator | None = None
              ) -> torch.Tensor:
    """One new pose per row of ``poses`` (B, J, 3), each from a source drawn uniformly from
    ``sources``; partners B are the same batch in a random order. Draws only from ``generator``
    (CPU), never from torch's global RNG."""
    unknown = [s for s in sources if s not in POSE_SOURCES]
    if unknown or not sources:
        raise HandganError(f"pose sources must be a non-empty subset of {POSE_SOURCES}, "
                           f"got {tuple(sources)}")
    n, joints = poses.shape[:2]
    device = poses.device
    a = poses.detach().double()
    partner = to_device_async(torch.randperm(n, generator=generator), device)
    b = palm_align(a[partner], a)
    # Which source each row takes is known on the CPU, where it is drawn: no GPU wait.
    kind_cpu = torch.randint(len(sources), (n,), generator=generator)
    kind = to_device_async(kind_cpu, device)
    out = a.clone()
    for k, source in enumerate(sources):
        if not (kind_cpu == k).any():
            continue
        rows = (kind == k).view(-1, 1, 1)
        if source == "finger" and joints in _FINGERS:
            take = to_device_async(torch.rand(n, len(_FINGERS[joints]), generator=generator),
                                   device) < 0.5
            mixed = a.clone()
            for f, idx in enumerate(_FINGERS[joints]):
                span = _span(idx)
                mixed[:, span] = torch.where(take[:, f].view(-1, 1, 1), b[:, span], a[:, span])
            out = torch.where(rows, mixed, out)
        elif source in ("mix", "finger"):
            lam = to_device_async(torch.rand(n, 1, 1, generator=generator, dtype=torch.float64),
                                  device)
            out = torch.where(rows, lam * a + (1 - lam) * b, out)
        else:  # rotate about the palm centre
            centre = a[:, _CENTRE.get(joints, 0)].unsqueeze(1) if joints in _CENTRE \
                else a.mean(dim=1, keepdim=True)
            rot = random_rotations(n, max_turn_deg, generator, device)
            out = torch.where(rows, (a - centre) @ rot.transpose(1, 2) + centre, out)
    return out.to(poses.dtype)
