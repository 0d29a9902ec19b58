"""Batched crops in torch, on any device: the tensor twin of :mod:`handgan.augment` for a batch
of cached crops held as tensors wherever they are (issue 16: the crop cache in GPU memory,
batches gathered by index there), and of ``preprocess.cut_crop`` for whole frames.
:func:`draw_transforms` draws with the distributions of ``augment.draw_transform`` (not numpy's
random streams) from a ``torch.Generator``; :func:`rewarp_crops` and :func:`map_joints` are
``rewarp_crop`` and ``augment.map_joints`` for a batch; :func:`augment_batch` does all three with
the optional sensor noise. :class:`FrameBatch` holds frames for the localiser and the estimator,
copied to the device once and cut there by :func:`cut_crops`.

Transforms travel as (B, 8) rows in the cache's layout (``cachestore.TRANSFORM_COLUMNS``:
centre u, v px, d mm, cube x, y, z mm, size, rotation deg). ``CropTransform``'s preconditions
(centre depth > 0, cube > 0) are not checked here: checking would wait for the device.

Exactness. The geometry is float64 and repeats the CPU path's operations in the same order
(``_box_and_matrix``, ``_rotation_about``, ``_affine_inverse``, the camera's projection), and the
warp's per-pixel coordinates are float32 sums of float64 row and column terms as in
``_warp_nearest``, so the crops equal ``rewarp_crop``'s pixel for pixel. Only ``torch.cos``/
``torch.sin`` (libm on the CPU path) and numpy's 3x3 products (BLAS) can differ in the last
float64 bit, which changes a pixel only if it moves a float32 term across a rounding boundary:
tests/test_device_augment.py finds no pixel that differs. This holds in eager mode;
``torch.compile`` may fuse a multiply and an add into one rounding, and a rare pixel could differ.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from handgan.augment import MODES, AugmentConfig
from handgan.cachestore import transform_row
from handgan.camera import Intrinsics
from handgan.preprocess import BACKGROUND, CropTransform, cut_crop

PARAMS = 8  # columns of a transform row: u, v, d, cube x, y, z, size, rotation (TRANSFORM_COLUMNS)
_DEG_TO_RAD = math.pi / 180.0  # math.radians' own constant, so the angles round alike


# ---- camera and crop geometry (float64, the CPU path's operations in its order) ---------------

def _rotate_uv(uvd: torch.Tensor, params: torch.Tensor, sign: float) -> torch.Tensor:
    """``CropTransform._rotate_uv`` for a batch of (B, J, 3) uvd (rows without rotation kept)."""
    cu, cv, rot = params[:, 0, None], params[:, 1, None], params[:, 7, None]  # (B, 1) each
    a = (sign * rot) * _DEG_TO_RAD
    c, s = torch.cos(a), torch.sin(a)
    du, dv = uvd[..., 0] - cu, uvd[..., 1] - cv  # (B, J)
    u = cu + c * du - s * dv
    v = cv + s * du + c * dv
    rotated = torch.stack([u, v, uvd[..., 2]], dim=-1)
    return torch.where((rot != 0)[..., None], rotated, uvd)


def _boxes(p: torch.Tensor, intr: Intrinsics) -> tuple[torch.Tensor, ...]:
    """(B, 8) float64 rows -> ``_box_and_matrix``'s box (xstart, ystart, xend, yend), paste
    (xoff, yoff, w_rz, h_rz) and scale, each (B,) float64 (whole numbers but the scale)."""
    u, v, z, size = p[:, 0], p[:, 1], p[:, 2], p[:, 6]  # (B,) each
    half_w_px = p[:, 3] * intr.fx / (2.0 * z)
    half_h_px = p[:, 4] * intr.fy / (2.0 * z)
    xstart, xend = torch.floor(u - half_w_px + 0.5), torch.floor(u + half_w_px + 0.5)
    ystart, yend = torch.floor(v - half_h_px + 0.5), torch.floor(v + half_h_px + 0.5)
    wb, hb = (xend - xstart).clamp(min=1), (yend - ystart).clamp(min=1)  # whole numbers
    wide = wb > hb  # the longer side fills the crop, the other keeps the aspect ratio
    short = torch.div(torch.minimum(wb, hb) * size, torch.maximum(wb, hb),
                      rounding_mode="floor").clamp(min=1)  # exact: small whole numbers
    w_rz, h_rz = torch.where(wide, size, short), torch.where(wide, short, size)
    scale = size / torch.where(wide, wb, hb)
    xoff, yoff = torch.floor(size / 2 - w_rz / 2), torch.floor(size / 2 - h_rz / 2)
    return xstart, ystart, xend, yend, xoff, yoff, w_rz, h_rz, scale


def crop_matrices(params: torch.Tensor, intr: Intrinsics) -> torch.Tensor:
    """(B, 8) transform rows -> (B, 3, 3) float64 ``CropTransform.M`` (``_box_and_matrix``'s
    matrix times ``_rotation_about``'s)."""
    p = params.to(torch.float64)
    u, v, rot = p[:, 0], p[:, 1], p[:, 7]  # (B,) each
    xstart, ystart, _, _, xoff, yoff, _, _, scale = _boxes(p, intr)
    t0, t1 = xoff - scale * xstart, yoff - scale * ystart  # (B,) translation of M0

    a = rot * _DEG_TO_RAD
    c, s = torch.cos(a), torch.sin(a)
    r02 = u - c * u + s * v  # translation of the rotation about (u, v)
    r12 = v - s * u - c * v
    # M = M0 @ R with M0 = [[scale, 0, t0], [0, scale, t1], [0, 0, 1]]; unrotated rows keep M0
    m = _affine(scale * c, scale * -s, scale * r02 + t0, scale * s, scale * c, scale * r12 + t1)
    zero = torch.zeros_like(u)
    return torch.where((rot == 0)[:, None, None], _affine(scale, zero, t0, zero, scale, t1), m)


def _affine(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, d: torch.Tensor, e: torch.Tensor,
            f: torch.Tensor) -> torch.Tensor:
    """(B, 3, 3) affine matrices [[a, b, c], [d, e, f], [0, 0, 1]] from (B,) entries."""
    zero, one = torch.zeros_like(a), torch.ones_like(a)
    rows = ((a, b, c), (d, e, f), (zero, zero, one))
    return torch.stack([torch.stack(row, dim=-1) for row in rows], dim=1)


def _affine_inverse(m: torch.Tensor) -> torch.Tensor:
    """``preprocess._affine_inverse`` for (B, 3, 3) affine matrices (last row 0, 0, 1)."""
    a, b, c = m[:, 0].unbind(-1)
    d, e, f = m[:, 1].unbind(-1)
    det = a * e - b * d
    return _affine(e / det, -b / det, (b * f - c * e) / det, -d / det, a / det,
                   (c * d - a * f) / det)


def _compose_affine(m: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """(B, 3, 3) m @ n for affine matrices, each entry summed over k = 0, 1, 2 in order."""
    def row(i: int) -> tuple[torch.Tensor, ...]:
        return (m[:, i, 0] * n[:, 0, 0] + m[:, i, 1] * n[:, 1, 0],
                m[:, i, 0] * n[:, 0, 1] + m[:, i, 1] * n[:, 1, 1],
                m[:, i, 0] * n[:, 0, 2] + m[:, i, 1] * n[:, 1, 2] + m[:, i, 2])

    return _affine(*row(0), *row(1))


# ---- crops and joints --------------------------------------------------------------------------

def _check(crops: torch.Tensor | None, *params: torch.Tensor) -> None:
    """Shapes only: value checks would wait for the device."""
    b = params[0].shape[0]
    for p in params:
        if p.ndim != 2 or p.shape != (b, PARAMS):
            raise ValueError(f"transform rows must be (B, {PARAMS}), got {tuple(p.shape)}")
    if crops is not None and (crops.ndim != 4 or crops.shape[:2] != (b, 1)
                              or crops.shape[2] != crops.shape[3]):
        raise ValueError(f"crops must be ({b}, 1, S, S), got {tuple(crops.shape)}")


def renormalise(crops: torch.Tensor, src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """``CropTransform.renormalise`` for a batch of (B, 1, S, S) crops, float32; rows with the
    same centre depth and cube depth are returned unchanged, as ``rewarp_crop`` does."""
    src, dst = src.to(torch.float64), dst.to(torch.float64)
    half_src, half_dst = src[:, 5] / 2.0, dst[:, 5] / 2.0  # half_depth_mm
    scale = (half_src / half_dst).to(torch.float32)[:, None, None, None]
    shift = ((src[:, 2] - dst[:, 2]) / half_dst).to(torch.float32)[:, None, None, None]
    crops = crops.to(torch.float32)
    out = crops * scale  # rounded, then the shift added and rounded, as numpy (no fused
    out.add_(shift).clamp_(-1.0, BACKGROUND)  # multiply-add)
    out.masked_fill_(crops >= BACKGROUND, BACKGROUND)
    same_depth = (src[:, 2] == dst[:, 2]) & (src[:, 5] == dst[:, 5])
    return torch.where(same_depth[:, None, None, None], crops, out)


def _warp_nearest(images: torch.Tensor, dst_to_src: torch.Tensor, fill: float) -> torch.Tensor:
    """``preprocess._warp_nearest`` over the whole crop, batched: (B, S, S) -> (B, S, S)."""
    b, n = images.shape[0], images.shape[-1]
    padded = F.pad(images, (1, 1, 1, 1), value=fill)  # (B, S + 2, S + 2): a 1-px border of fill
    q = torch.arange(n, dtype=torch.float64, device=images.device)[None]  # (1, S) px
    a = dst_to_src[:, :2, :, None]  # (B, 2, 3, 1)
    # index into padded = floor(source coordinate + 0.5) + 1: float32 sums of float64 column and
    # row terms, clipped onto the border, so the int cast of these values >= 0 is a floor
    col = (a[:, :, 0] * q + 1.5).to(torch.float32)  # (B, 2, S): x and y terms of each column
    row = (a[:, :, 1] * q + a[:, :, 2]).to(torch.float32)  # (B, 2, S): those of each row
    src_xy = col[:, :, None, :] + row[:, :, :, None]  # (B, 2, S rows, S cols)
    index = torch.int32 if b * (n + 2) ** 2 < 2**31 else torch.int64  # int32: faster on CPUs
    ixy = src_xy.clamp_(0, n + 1).to(index)
    first = torch.arange(b, dtype=index, device=images.device)[:, None, None] * (n + 2) ** 2
    flat = torch.add(ixy[:, 0], ixy[:, 1], alpha=n + 2).add_(first)  # (B, S, S) into padded
    return padded.reshape(-1).index_select(0, flat.reshape(-1)).reshape(b, n, n)


def rewarp_crops(crops: torch.Tensor, src: torch.Tensor, dst: torch.Tensor,
                 intr: Intrinsics) -> torch.Tensor:
    """:func:`~handgan.preprocess.rewarp_crop` for a batch: (B, 1, S, S) crops (float16 or
    float32) made with the ``src`` rows -> (B, 1, S, S) float32 crops of the ``dst`` rows (size
    column = S), on the crops' device."""
    _check(crops, src, dst)
    renorm = renormalise(crops.to(torch.float32), src, dst)[:, 0]  # (B, S, S) float32
    dst_to_src = _compose_affine(crop_matrices(src, intr),
                                 _affine_inverse(crop_matrices(dst, intr)))  # new px -> old px
    return _warp_nearest(renorm, dst_to_src.to(renorm.device), BACKGROUND)[:, None]


# ---- crops cut from whole frames ----------------------------------------------------------------

def frame_stack(frames: Sequence[np.ndarray], device: str | torch.device) -> torch.Tensor:
    """(H, W) frames in mm (any numeric dtype) -> (N, H + 1, W + 1) float32 on ``device``,
    with a last row and column of 0 (no depth) for the crop pixels that read outside a frame."""
    shapes = {np.shape(f) for f in frames}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise ValueError(f"frames must be 2-D and of one size, got shapes {sorted(shapes)}")
    h, w = shapes.pop()
    stack = torch.zeros((len(frames), h + 1, w + 1), dtype=torch.float32, device=device)
    host = np.stack([np.asarray(f, dtype=np.float32) for f in frames])
    stack[:, :h, :w] = torch.from_numpy(host).to(device)
    return stack


def cut_crops(frames: torch.Tensor, rows: torch.Tensor, params: torch.Tensor, intr: Intrinsics,
              size: int) -> torch.Tensor:
    """``preprocess.cut_crop`` of unrotated transforms for a batch, on the frames' device: crop
    m cut from ``frames[rows[m]]`` (:func:`frame_stack`'s layout) with the transform row
    ``params[m]`` (its size column = ``size``) -> (M, 1, S, S) float32. The box, the paste offsets
    and the nearest source pixels are ``_box_and_matrix``'s and ``_resize_box_nearest``'s float64
    operations in their order, the normalisation ``depth_to_norm``'s float32 ones, so the crops
    equal the CPU path's pixel for pixel."""
    p = params.to(device=frames.device, dtype=torch.float64)
    xstart, ystart, xend, yend, xoff, yoff, w_rz, h_rz, scale = _boxes(p, intr)
    q = torch.arange(size, dtype=torch.float64, device=frames.device)[None]  # (1, S)
    inv_scale = (1.0 / scale)[:, None]

    def sources(start, end, off, length, limit):  # (M, S) frame px of each crop px, or limit
        local = q - off[:, None]  # crop px within the pasted box
        src = (start[:, None] + torch.floor(local * inv_scale + 0.5)).clamp(start[:, None],
                                                                           end[:, None] - 1)
        inside = (local >= 0) & (local < length[:, None]) & (src >= 0) & (src < limit)
        return torch.where(inside, src, limit).long()  # limit: the stack's row/column of 0

    n, h1, w1 = frames.shape
    ys = sources(ystart, yend, yoff, h_rz, h1 - 1)
    xs = sources(xstart, xend, xoff, w_rz, w1 - 1)
    flat = (rows.to(frames.device).long()[:, None, None] * h1 + ys[:, :, None]) * w1 + xs[:, None]
    depth = frames.reshape(-1)[flat]  # (M, S, S) mm
    norm = (depth - p[:, 2].to(torch.float32)[:, None, None]) \
        * (1.0 / (p[:, 5] / 2.0)).to(torch.float32)[:, None, None]
    norm = norm.clamp_(-1.0, BACKGROUND).masked_fill_(~(depth > 0), BACKGROUND)
    return norm[:, None]


class FrameBatch:
    """Frames of one camera that crops are cut from (the localiser's refinement steps, the
    estimator's crop): by ``preprocess.cut_crop`` on the host when ``device`` is the CPU, else
    copied to ``device`` once and cut there (:func:`cut_crops`), so that each step sends only
    its transform rows. ``on_device`` forces either way (tests: the device path on CPU tensors).
    """

    def __init__(self, frames: Sequence[np.ndarray], device: str | torch.device = "cpu",
                 on_device: bool | None = None) -> None:
        self.frames = list(frames)
        self.device = torch.device(device)
        self.on_device = self.device.type != "cpu" if on_device is None else on_device
        self._stack: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.frames)

    def crops(self, rows: Sequence[int], transforms: Sequence[CropTransform]) -> torch.Tensor:
        """(M, 1, S, S) float32 on the device: crop m of frame ``rows[m]`` with
        ``transforms[m]`` (one size and camera for all)."""
        if not transforms:
            raise ValueError("no crops asked for")
        if not self.on_device or any(t.rotation_deg for t in transforms):
            host = np.stack([cut_crop(self.frames[r], t) for r, t in zip(rows, transforms)])
            return torch.from_numpy(host[:, None]).to(self.device)
        if self._stack is None:
            self._stack = frame_stack(self.frames, self.device)
        params = torch.from_numpy(np.stack([transform_row(t) for t in transforms]))
        return cut_crops(self._stack, torch.as_tensor(np.asarray(rows, np.int64)), params,
                         transforms[0].intr, transforms[0].size)


def norm_to_uvd(joints_norm: torch.Tensor, params: torch.Tensor,
                intr: Intrinsics) -> torch.Tensor:
    """``CropTransform.norm_to_uvd`` for (B, J, 3) joints of the rows ``params``; float64."""
    p = params.to(torch.float64)
    half = (p[:, 5] / 2.0)[:, None, None]  # (B, 1, 1) half_depth_mm
    xyz = joints_norm.to(torch.float64) * half + intr.uvd_to_xyz(p[:, None, 0:3])
    return _rotate_uv(intr.xyz_to_uvd(xyz), p, -1.0)


def uvd_to_norm(joints_uvd: torch.Tensor, params: torch.Tensor,
                intr: Intrinsics) -> torch.Tensor:
    """``CropTransform.uvd_to_norm`` for (B, J, 3) joints and the rows ``params``; float64."""
    p = params.to(torch.float64)
    half = (p[:, 5] / 2.0)[:, None, None]
    uvd = _rotate_uv(joints_uvd.to(torch.float64), p, +1.0)
    return (intr.uvd_to_xyz(uvd) - intr.uvd_to_xyz(p[:, None, 0:3])) / half


def map_joints(joints_norm: torch.Tensor, src: torch.Tensor, dst: torch.Tensor,
               intr: Intrinsics) -> torch.Tensor:
    """:func:`handgan.augment.map_joints` for a batch: (B, J, 3) joints normalised by the ``src``
    rows -> (B, J, 3) float64, normalised by the ``dst`` rows."""
    _check(None, src, dst)
    return uvd_to_norm(norm_to_uvd(joints_norm, src, intr), dst, intr)


# ---- drawing and the whole augmentation --------------------------------------------------------

def draw_transforms(src: torch.Tensor, cfg: AugmentConfig, intr: Intrinsics,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, 8) rows -> (B, 8) float64 rows of the augmented crops, drawn with the distributions
    of ``augment.draw_transform`` ('none' keeps a row bit for bit) from ``generator`` (on
    ``src``'s device; None: torch's default one)."""
    _check(None, src)
    p = src.to(torch.float64)
    b, dev = p.shape[0], p.device

    def draw(fn, *shape):
        return fn(*shape, generator=generator, dtype=torch.float64, device=dev)

    do = {mode: torch.full((b,), cfg.combine, device=dev) for mode in MODES}
    if not cfg.combine:
        pick = torch.randint(len(cfg.modes), (b,), generator=generator, device=dev)
        for k, mode in enumerate(cfg.modes):  # a mode listed twice is drawn twice as often
            do[mode] |= pick == k
    offset_mm = draw(torch.randn, b, 3) * cfg.translation_sigma_mm
    moved = intr.xyz_to_uvd(intr.uvd_to_xyz(p[:, 0:3]) + offset_mm)
    centre = torch.where(do["com"][:, None], moved, p[:, 0:3])
    factor = (1.0 + draw(torch.randn, b) * cfg.scale_sigma).abs()
    cube = torch.where(do["sc"][:, None], p[:, 3:6] * factor[:, None], p[:, 3:6])
    angle = p[:, 7] + (draw(torch.rand, b) * 2.0 - 1.0) * cfg.rotation_deg
    angle = torch.remainder(angle + 180.0, 360.0) - 180.0  # keep it in [-180, 180)
    angle = torch.where(do["rot"], angle, p[:, 7])
    return torch.cat([centre, cube, p[:, 6:7], angle[:, None]], dim=1)


def augment_batch(crops: torch.Tensor, src: torch.Tensor, joints_norm: torch.Tensor | None,
                  intr: Intrinsics, cfg: AugmentConfig, generator: torch.Generator | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """:func:`~handgan.augment.augment_crop` for a batch, on the crops' device.

    (B, 1, S, S) cached crops (float16 or float32) made with the ``src`` rows and their (B, J, 3)
    normalised joints, or None (unlabelled crops: ``map_joints(pose, src, dst, intr)`` carries a
    pose into the augmented view) -> ((B, 1, S, S) float32 crops, (B, 8) float64 rows ``dst``,
    (B, J, 3) float64 joints or None). Rows that keep their transform ('none') keep their crop
    and joints exactly.
    """
    _check(crops, src)
    crops = crops.to(torch.float32)
    dst = draw_transforms(src, cfg, intr, generator)
    kept = (dst == src.to(torch.float64)).all(dim=1)  # the CPU path's `new_t is transform`
    out = torch.where(kept[:, None, None, None], crops, rewarp_crops(crops, src, dst, intr))
    out = _sensor_noise(out, dst, cfg, generator)
    if joints_norm is not None:
        joints = joints_norm.to(torch.float64)
        joints_norm = torch.where(kept[:, None, None], joints, map_joints(joints, src, dst, intr))
    return out, dst, joints_norm


def _sensor_noise(crops: torch.Tensor, params: torch.Tensor, cfg: AugmentConfig,
                  generator: torch.Generator | None) -> torch.Tensor:
    """``augment._sensor_noise`` for a batch."""
    if cfg.depth_noise_sigma_mm > 0:
        sigma = (cfg.depth_noise_sigma_mm / (params[:, 5] / 2.0)).to(torch.float32)  # normalised
        noise = torch.randn(crops.shape, generator=generator, device=crops.device)
        noisy = (crops + noise * sigma[:, None, None, None]).clamp(-1.0, 1.0)
        crops = torch.where(crops < BACKGROUND, noisy, crops)
    if cfg.pixel_dropout_p > 0:
        drop = torch.rand(crops.shape, generator=generator, device=crops.device)
        crops = torch.where(drop < cfg.pixel_dropout_p, BACKGROUND, crops)
    return crops
