"""Hand localisation and DeepPrior++ cube cropping: full depth frame <-> normalised crop.

:func:`localize_hand` finds the hand's centre of mass; :class:`CropTransform` holds, each in one
place, the matrix ``M`` (full-image px -> crop px), the depth and the joint normalisation of a
cube around a centre seen as an S x S crop; :func:`crop_depth` cuts that crop out of a frame and
:func:`rewarp_crop` re-expresses a cached crop for another transform (facts in
``shared/research/deep-prior-pp.md`` sections 2 and 3).

Conventions (the rest of handgan relies on them):

* ``uvd``: u = column, v = row in full-image px (integer = pixel centre), d in mm. ``xyz`` in mm
  in the dataset's camera frame (``Intrinsics.y_up``). Crop px: (x = column, y = row) of the crop.
* Normalised depth: d_norm = (d - centre_z) / (cube_z / 2); nearer than the cube's front face
  -> -1, missing (0 / NaN) or farther than the back face -> +1 (background).
* Normalised joints: (xyz' - centre_xyz) / (cube_z / 2) with **all three axes divided by cube_z/2**
  (DeepPrior++ section 3.5). xyz' is the joint after the in-plane rotation of the transform (u, v
  rotated about the centre's (u, v) by ``rotation_deg``, each joint's own depth kept, then
  back-projected); with rotation 0, xyz' = xyz.
* Rotation: positive ``rotation_deg`` turns the content by (x', y') = (x cos a - y sin a,
  x sin a + y cos a) in y-down pixel coordinates, i.e. clockwise on screen, as DeepPrior++ does for
  its labels. ``M`` includes it, so the image and the joints always move together.

Two deliberate differences from DeepPrior++ (section 8 of the notes lists its bugs; none is kept):

* Every crop pixel q shows the image pixel nearest to ``inv(M) @ q``, so ``M`` is exact for the
  pixels, not only for the labels (cv2.resize's nearest neighbour samples floor(q / scale), which
  is up to one source pixel off ``M``).
* A rotated crop is rotated about the centre's exact crop position ``M0 @ centre``, not about the
  canvas centre (S/2, S/2), which differs from it by the box rounding.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from handgan.camera import Intrinsics
from handgan.errors import HandganError

BACKGROUND = 1.0  # normalised depth of missing / far pixels (the cube's back face)
DEFAULT_CUBE_MM = 300.0  # DeepPrior++'s NYU cube: the crop cube wherever nothing else sets one
MIN_CROP_SIZE = 16


# ---- crop transform ------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class CropTransform:
    """Everything that maps between a full depth frame and its normalised S x S crop.

    Built from the centre, cube, size, camera and in-plane rotation; the other fields are derived
    (``dataclasses.replace`` recomputes them). All methods take arrays with any leading dims.

    Attributes:
        centre_uvd: (3,) crop centre, u, v px and d mm.
        cube_mm: (3,) cube side lengths x, y, z in mm (x, y set the pixel box, z the depth range
            and the normalisation of depth and joints).
        rotation_deg: in-plane rotation of the crop content about the centre (augmentation).
        box_px: (xstart, ystart, xend, yend) pixel box of the cube in the frame, ends exclusive,
            rounded as DeepPrior++'s ``comToBounds``.
        paste_px: (xoff, yoff, w, h) where the resized box sits in the crop.
        M: (3, 3) full-image (u, v, 1) -> crop px (x, y, 1): DeepPrior++'s T = Off . S . Tr,
            times the rotation about the centre.
    """

    centre_uvd: np.ndarray
    cube_mm: np.ndarray
    size: int
    intr: Intrinsics
    rotation_deg: float = 0.0
    centre_xyz: np.ndarray = field(init=False, repr=False)
    box_px: tuple[int, int, int, int] = field(init=False)
    paste_px: tuple[int, int, int, int] = field(init=False)
    M: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        centre = np.array(self.centre_uvd, dtype=np.float64).reshape(3)
        cube = np.empty(3)
        cube[:] = self.cube_mm  # a scalar side or (3,) sides
        if not (math.isfinite(centre.sum()) and centre[2] > 0):
            raise HandganError(f"crop centre must be finite with depth > 0 mm, got {centre}")
        if not (cube > 0).all():
            raise ValueError(f"cube_mm must be positive, got {cube}")
        if int(self.size) != self.size or self.size < MIN_CROP_SIZE:
            raise ValueError(f"crop size must be an integer >= {MIN_CROP_SIZE}, got {self.size}")
        box, paste, m0 = _box_and_matrix(centre, cube, int(self.size), self.intr)
        m = m0 if self.rotation_deg == 0 else m0 @ _rotation_about(centre[:2], self.rotation_deg)
        set_ = object.__setattr__  # frozen dataclass: every field is set once, here
        set_(self, "centre_uvd", _read_only(centre))
        set_(self, "cube_mm", _read_only(cube))
        set_(self, "size", int(self.size))
        set_(self, "rotation_deg", float(self.rotation_deg))
        set_(self, "centre_xyz", _read_only(self.intr.uvd_to_xyz(centre)))
        set_(self, "box_px", box)
        set_(self, "paste_px", paste)
        set_(self, "M", _read_only(m))

    @property
    def half_depth_mm(self) -> float:
        """cube_z / 2: the unit of every normalised coordinate, depth and joints alike."""
        return float(self.cube_mm[2]) / 2.0

    def depth_to_norm(self, d_mm: np.ndarray) -> np.ndarray:
        """Depth in mm -> normalised depth in [-1, 1] as the module doc says (DeepPrior++ section
        3.4). Float input keeps its dtype, integer input becomes float32."""
        d = np.asarray(d_mm)
        dtype = d.dtype.type if np.issubdtype(d.dtype, np.floating) else np.float32
        norm = d.astype(dtype)  # a copy, also for 0-d input
        norm -= dtype(self.centre_uvd[2])
        norm *= dtype(1.0 / self.half_depth_mm)
        np.clip(norm, -1.0, BACKGROUND, out=norm)  # front face -> -1, beyond the back -> +1
        norm[~(d > 0)] = BACKGROUND  # missing: 0, negative or NaN
        return norm

    def renormalise(self, crop: np.ndarray, src: CropTransform) -> np.ndarray:
        """Normalised depth of ``src`` -> normalised depth of this transform, as if cropped anew
        (``src``'s background kept as background): (S, S) -> (S, S) float32. One affine map for
        speed, rather than ``depth_to_norm`` of the depth in mm."""
        crop = np.asarray(crop, dtype=np.float32)
        scale = src.half_depth_mm / self.half_depth_mm
        shift = (src.centre_uvd[2] - self.centre_uvd[2]) / self.half_depth_mm
        out = crop * np.float32(scale)
        out += np.float32(shift)
        np.clip(out, -1.0, BACKGROUND, out=out)
        out[crop >= BACKGROUND] = BACKGROUND
        return out

    @property
    def ray(self) -> np.ndarray:
        """(3,) where the crop looks from (:func:`centre_rays`). A normalised point (X, Y, Z)
        lands in the crop plane at k (X - Z x/z, Y - Z y/z), k = f / (f + Z), f = z /
        half_depth_mm (the cube spanning [-1, 1]; y up)."""
        return centre_rays(self.centre_uvd, self.cube_mm[2], self.intr)

    def xyz_to_norm(self, xyz: np.ndarray) -> np.ndarray:
        """(..., 3) joints in mm -> (..., 3) normalised joints (about [-1, 1] inside the cube)."""
        if self.rotation_deg != 0.0:
            return self.uvd_to_norm(self.intr.xyz_to_uvd(xyz))
        return (np.asarray(xyz, dtype=np.float64) - self.centre_xyz) / self.half_depth_mm

    def norm_to_xyz(self, norm: np.ndarray) -> np.ndarray:
        """(..., 3) normalised joints -> (..., 3) mm; the inverse of :meth:`xyz_to_norm`."""
        if self.rotation_deg != 0.0:
            return self.intr.uvd_to_xyz(self.norm_to_uvd(norm))
        return np.asarray(norm, dtype=np.float64) * self.half_depth_mm + self.centre_xyz

    def uvd_to_norm(self, uvd: np.ndarray) -> np.ndarray:
        """(..., 3) joints u, v px, d mm -> (..., 3) normalised joints."""
        uvd = np.asarray(uvd, dtype=np.float64)
        if self.rotation_deg != 0.0:
            uvd = self._rotate_uv(uvd, +1.0)  # (u, v) about the centre, each joint's d kept
        return (self.intr.uvd_to_xyz(uvd) - self.centre_xyz) / self.half_depth_mm

    def norm_to_uvd(self, norm: np.ndarray) -> np.ndarray:
        """(..., 3) normalised joints -> (..., 3) u, v px, d mm in the full frame."""
        xyz = np.asarray(norm, dtype=np.float64) * self.half_depth_mm + self.centre_xyz
        uvd = self.intr.xyz_to_uvd(xyz)
        return uvd if self.rotation_deg == 0.0 else self._rotate_uv(uvd, -1.0)

    def norm_to_crop_px(self, norm: np.ndarray) -> np.ndarray:
        """(..., 3) normalised joints -> (..., 2) crop px, for drawing predictions. Computed in
        the crop's own (rotated) frame (the joint's rotated 3D point projected and mapped by the
        unrotated box matrix), so it checks that the joints and the pixels agree, not only that
        ``M`` is self-consistent."""
        xyz = np.asarray(norm, dtype=np.float64) * self.half_depth_mm + self.centre_xyz
        uv = self.intr.xyz_to_uvd(xyz)[..., :2]
        m0 = self.M @ _rotation_about(self.centre_uvd[:2], -self.rotation_deg)  # box matrix T
        return uv @ m0[:2, :2].T + m0[:2, 2]

    def _rotate_uv(self, uvd: np.ndarray, sign: float) -> np.ndarray:
        """Rotate (u, v) of (..., 3) uvd about the centre's (u, v) by sign * rotation_deg."""
        a = math.radians(sign * self.rotation_deg)
        c, s = math.cos(a), math.sin(a)
        du = uvd[..., 0] - self.centre_uvd[0]
        dv = uvd[..., 1] - self.centre_uvd[1]
        u = self.centre_uvd[0] + c * du - s * dv
        v = self.centre_uvd[1] + s * du + c * dv
        return np.stack([u, v, uvd[..., 2]], axis=-1)


def centre_rays(centre_uvd: np.ndarray, cube_z_mm: np.ndarray | float, intr: Intrinsics
                ) -> np.ndarray:
    """(..., 3) crop centres (u, v px, d mm) and their cubes' depth sides -> (..., 3) float32
    rays (x/z, y/z, z / (cube_z / 2)): what a renderer needs besides the normalised joints to put
    them where a crop of that centre shows them (perspective: a crop off the optical axis sees a
    joint in front of its centre shifted by the centre's x/z times the joint's depth)."""
    xyz = intr.uvd_to_xyz(np.asarray(centre_uvd, dtype=np.float64))
    z = xyz[..., 2]
    return np.stack([xyz[..., 0] / z, xyz[..., 1] / z, z / (0.5 * np.asarray(cube_z_mm))],
                    axis=-1).astype(np.float32)


def _read_only(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


def _box_and_matrix(centre_uvd: np.ndarray, cube_mm: np.ndarray, size: int, intr: Intrinsics):
    """DeepPrior++ ``comToBounds`` + ``cropArea3D``: integer box, aspect-keeping resize and the
    unrotated matrix T = Off . S . Tr (section 3.1 and 3.3)."""
    u, v, z = centre_uvd
    half_w_px = cube_mm[0] * intr.fx / (2.0 * z)
    half_h_px = cube_mm[1] * intr.fy / (2.0 * z)
    xstart, xend = math.floor(u - half_w_px + 0.5), math.floor(u + half_w_px + 0.5)
    ystart, yend = math.floor(v - half_h_px + 0.5), math.floor(v + half_h_px + 0.5)
    wb, hb = max(xend - xstart, 1), max(yend - ystart, 1)
    if wb > hb:  # the longer side fills the crop, the other keeps the aspect ratio
        w_rz, h_rz, scale = size, max(hb * size // wb, 1), size / wb
    else:
        w_rz, h_rz, scale = max(wb * size // hb, 1), size, size / hb
    xoff, yoff = math.floor(size / 2 - w_rz / 2), math.floor(size / 2 - h_rz / 2)
    m0 = np.array([[scale, 0.0, xoff - scale * xstart],
                   [0.0, scale, yoff - scale * ystart],
                   [0.0, 0.0, 1.0]])
    return (xstart, ystart, xend, yend), (xoff, yoff, w_rz, h_rz), m0


def _rotation_about(centre_uv: np.ndarray, angle_deg: float) -> np.ndarray:
    """3x3 matrix rotating (u, v, 1) about centre_uv by angle_deg (y-down px, see module doc)."""
    if angle_deg == 0.0:
        return np.eye(3)
    a = math.radians(angle_deg)
    c, s = math.cos(a), math.sin(a)
    cu, cv = centre_uv
    return np.array([[c, -s, cu - c * cu + s * cv],
                     [s, c, cv - s * cu - c * cv],
                     [0.0, 0.0, 1.0]])


# ---- cropping and re-warping ---------------------------------------------------------------------

def crop_depth(depth_mm: np.ndarray, centre_uvd: np.ndarray, cube_mm: float | np.ndarray,
               size: int = 128, *, intr: Intrinsics,
               rotation_deg: float = 0.0) -> tuple[np.ndarray, CropTransform]:
    """Cut the cube (side ``cube_mm``, or (3,) sides) around ``centre_uvd`` out of an (H, W)
    frame in mm (any numeric dtype; 0 or NaN = missing): ((S, S) float32 crop in [-1, 1],
    background +1; its :class:`CropTransform`).

    DeepPrior++ sections 3.2 to 3.4: the crop is zero-padded outside the image (crop pixel
    ``paste_px[:2]`` is image pixel (xstart, ystart)), resized with nearest neighbour keeping the
    aspect ratio, pasted centred into an S x S canvas of background, and depth-normalised.
    """
    t = CropTransform(centre_uvd, cube_mm, size, intr, rotation_deg)
    return cut_crop(depth_mm, t), t


def cut_crop(depth_mm: np.ndarray, t: CropTransform) -> np.ndarray:
    """The (S, S) float32 crop of ``t`` cut out of an (H, W) frame in mm (:func:`crop_depth`
    given the transform; ``deviceaugment.cut_crops`` is its batched twin on the device)."""
    depth = np.asarray(depth_mm)
    if depth.ndim != 2:
        raise HandganError(f"expected a 2-D depth image, got shape {depth.shape}")
    xoff, yoff, w, h = t.paste_px
    crop = np.full((t.size, t.size), BACKGROUND, dtype=np.float32)
    if t.rotation_deg == 0.0:
        patch = _resize_box_nearest(depth, t)  # (h, w) mm, 0 outside the image
    else:
        patch = _warp_nearest(depth, _affine_inverse(t.M), (xoff, yoff, w, h), fill=0)
    crop[yoff:yoff + h, xoff:xoff + w] = t.depth_to_norm(patch.astype(np.float32, copy=False))
    return crop


def _resize_box_nearest(depth: np.ndarray, t: CropTransform) -> np.ndarray:
    """Separable fast path of the unrotated crop: crop pixel q -> image pixel round(inv(M) q),
    kept inside the box; pixels outside the image read 0 (the zero padding)."""
    xstart, ystart, xend, yend = t.box_px
    xoff, yoff, w, h = t.paste_px
    inv_scale = 1.0 / t.M[0, 0]
    src_x = xstart + np.floor(np.arange(w) * inv_scale + 0.5).astype(np.intp)  # (w,)
    src_y = ystart + np.floor(np.arange(h) * inv_scale + 0.5).astype(np.intp)  # (h,)
    np.clip(src_x, xstart, xend - 1, out=src_x)
    np.clip(src_y, ystart, yend - 1, out=src_y)
    height, width = depth.shape
    in_x = (src_x >= 0) & (src_x < width)
    in_y = (src_y >= 0) & (src_y < height)
    patch = depth.take(np.clip(src_y, 0, height - 1), axis=0)  # (h, W)
    patch = patch.take(np.clip(src_x, 0, width - 1), axis=1)  # (h, w)
    if not (in_x.all() and in_y.all()):
        patch = np.where(in_y[:, None] & in_x[None, :], patch, 0)
    return patch


def _affine_inverse(m: np.ndarray) -> np.ndarray:
    """Inverse of a 3x3 affine matrix (last row 0, 0, 1); faster than np.linalg.inv at this size."""
    (a, b, c), (d, e, f) = m[0].tolist(), m[1].tolist()
    det = a * e - b * d
    return np.array([[e / det, -b / det, (b * f - c * e) / det],
                     [-d / det, a / det, (c * d - a * f) / det],
                     [0.0, 0.0, 1.0]])


def _warp_nearest(src: np.ndarray, dst_to_src: np.ndarray, region: tuple[int, int, int, int],
                  fill: float) -> np.ndarray:
    """Nearest-neighbour affine warp: output pixel (x0 + i, y0 + j) of ``region`` = (x0, y0, w, h)
    reads src at round(dst_to_src @ (x, y, 1)) (half up); reads outside src give ``fill``."""
    x0, y0, w, h = region
    height, width = src.shape
    padded = np.full((height + 2, width + 2), fill, dtype=src.dtype)  # 1-px border of fill
    padded[1:-1, 1:-1] = src
    a = dst_to_src
    qx = np.arange(x0, x0 + w, dtype=np.float64)  # (w,) output columns
    qy = np.arange(y0, y0 + h, dtype=np.float64)  # (h,) output rows
    # index into padded = floor(source coordinate + 0.5) + 1, clipped onto the border. Values
    # are clipped to [0, n + 1] before the int cast, so its truncation is a floor.
    sx = (a[0, 0] * qx + 1.5).astype(np.float32)[None, :] + \
        (a[0, 1] * qy + a[0, 2]).astype(np.float32)[:, None]  # (h, w)
    sy = (a[1, 0] * qx + 1.5).astype(np.float32)[None, :] + \
        (a[1, 1] * qy + a[1, 2]).astype(np.float32)[:, None]  # (h, w)
    np.clip(sx, 0, width + 1, out=sx)
    np.clip(sy, 0, height + 1, out=sy)
    flat = sy.astype(np.int32)
    flat *= width + 2
    flat += sx.astype(np.int32)  # (h, w) flat index into padded
    return padded.reshape(-1).take(flat)


def rewarp_crop(crop: np.ndarray, src: CropTransform, dst: CropTransform) -> np.ndarray:
    """Re-express an (S_src, S_src) crop made with ``src`` as the (S_dst, S_dst) float32 crop
    of ``dst`` (same frame and camera) without the full frame (DeepPrior++ augmentation, section
    4): nearest-neighbour warp by ``src.M @ inv(dst.M)``, depth re-clamped and re-normalised for
    ``dst``'s centre depth and cube. Content outside the old crop is lost (background), as in
    DeepPrior++."""
    crop = np.asarray(crop, dtype=np.float32)
    if crop.shape != (src.size, src.size):
        raise ValueError(f"crop shape {crop.shape} does not match transform size {src.size}")
    same_depth = src.centre_uvd[2] == dst.centre_uvd[2] and src.cube_mm[2] == dst.cube_mm[2]
    renorm = crop if same_depth else dst.renormalise(crop, src)
    dst_to_src = src.M @ _affine_inverse(dst.M)  # new crop px -> old crop px
    return _warp_nearest(renorm, dst_to_src, (0, 0, dst.size, dst.size), fill=BACKGROUND)


# ---- hand localisation ---------------------------------------------------------------------------

_COARSE_STRIDE = 2        # the band search reads every 2nd row and column
_NOISE_FRACTION = 1 / 4000  # the nearest this share of solid coarse pixels may be noise
_SOLID_MM = 20.0          # neighbours of a solid (non-noise) pixel lie within this depth
_REFINE_SAMPLES = 96      # refinement reads about this many pixels per side of the cube's box
_CONVERGED_MM = 1.0


def localize_hand(depth_mm: np.ndarray, intr: Intrinsics, max_depth_mm: float = 1500.0,
                  band_mm: float = 150.0, cube_mm: float = DEFAULT_CUBE_MM, refine_iters: int = 10,
                  near_margin_mm: float | None = 30.0) -> np.ndarray:
    """Find the hand as the nearest object: DeepPrior++'s centre of mass, refined in a cube.

    1. near = a robust nearest depth. Only "solid" pixels count (valid, 0 < d <= max_depth_mm,
       on a 2-px grid, with their upper and left neighbours valid and within 20 mm), so isolated
       noise pixels are ignored; near is the depth that the nearest 1/4000 of them lie in front
       of, so a few small noise clusters are ignored too.
    2. Initial CoM of the valid pixels with depth from the nearest solid pixel's to near +
       band_mm that lie within one cube width (at depth ``near``) of the median position of the
       pixels up to ``near``, so other objects at that depth elsewhere in the frame pull less.
    3. Refinement: the CoM of the valid points inside the 3D cube of side ``cube_mm`` around the
       current estimate, and (``near_margin_mm`` not None; None = the whole cube, as DeepPrior++)
       no farther than the estimate's depth + near_margin_mm, so a forearm going away from the
       camera pulls less; repeated until the estimate moves < 1 mm, at most ``refine_iters``
       times. Each step reads about 96 x 96 pixels of the cube's box to stay fast.

    The CoM is the 3D mean of the points, returned as (3,) float64 uvd: u, v are the
    depth-weighted means of the pixel coordinates and d the mean depth. ``depth_mm``: (H, W) in
    mm, 0 or NaN = missing; ``max_depth_mm`` = 1500 and ``refine_iters`` = 0 (no refinement)
    are DeepPrior++'s. HandganError "no hand found: ..." says what is wrong with the frame.
    """
    depth = np.asarray(depth_mm)
    if depth.ndim != 2 or depth.size == 0:
        raise HandganError(f"no hand found: expected a non-empty 2-D depth image, got shape "
                           f"{depth.shape}")
    coarse = depth[::_COARSE_STRIDE, ::_COARSE_STRIDE].astype(np.float32)  # (H/2, W/2) mm
    valid = (coarse > 0) & (coarse <= max_depth_mm)  # NaN compares False
    # "solid" pixels: valid, with their upper and left coarse neighbours valid and within
    # _SOLID_MM in depth. Isolated noise pixels (and 1-px lines) are not an object's surface.
    solid = valid[1:, 1:] & valid[:-1, 1:] & valid[1:, :-1]  # (H/2 - 1, W/2 - 1)
    solid &= np.abs(coarse[1:, 1:] - coarse[:-1, 1:]) <= _SOLID_MM
    solid &= np.abs(coarse[1:, 1:] - coarse[1:, :-1]) <= _SOLID_MM
    values = coarse[1:, 1:][solid]
    if values.size == 0:
        raise HandganError(_no_hand_reason(depth, max_depth_mm))

    k = min(max(int(coarse.size * _NOISE_FRACTION), 4), values.size) - 1
    nearest = float(values.min())
    near = float(np.partition(values, k)[k])
    band = valid & (coarse >= nearest) & (coarse <= near + band_mm)  # noise in front left out
    rows, cols = np.nonzero(band)
    d_band = coarse[rows, cols].astype(np.float64)
    rows, cols = rows * _COARSE_STRIDE, cols * _COARSE_STRIDE
    front = d_band <= near  # the nearest pixels: where the object is
    anchor_u, anchor_v = np.median(cols[front]), np.median(rows[front])
    reach_px = cube_mm * max(intr.fx, intr.fy) / near
    close = (np.abs(cols - anchor_u) <= reach_px) & (np.abs(rows - anchor_v) <= reach_px)
    if not close.any():  # the nearest pixels form far-apart groups: take them all
        close = front
    est = _weighted_com(cols[close], rows[close], d_band[close])

    for _ in range(refine_iters):
        new = _refine_step(depth, intr, est, cube_mm, max_depth_mm, near_margin_mm)
        if new is None:
            break
        moved = np.linalg.norm(intr.uvd_to_xyz(new) - intr.uvd_to_xyz(est))
        est = new
        if moved < _CONVERGED_MM:
            break
    return est


def _weighted_com(u: np.ndarray, v: np.ndarray, d: np.ndarray) -> np.ndarray:
    """3D mean of the points (u, v, d) as uvd: the projection of the mean of d * ray(u, v) is
    (sum d u / sum d, sum d v / sum d), its depth is mean(d)."""
    total = d.sum()
    return np.array([(d * u).sum() / total, (d * v).sum() / total, total / d.size])


def _refine_step(depth: np.ndarray, intr: Intrinsics, est: np.ndarray, cube_mm: float,
                 max_depth_mm: float, near_margin_mm: float | None) -> np.ndarray | None:
    """CoM of the valid points inside the 3D cube around ``est`` (uvd), or None if empty."""
    u0, v0, z0 = est
    h = cube_mm / 2.0
    z_lo = max(z0 - h, 1.0)
    z_hi = min(z0 + h, max_depth_mm)
    if near_margin_mm is not None:
        z_hi = min(z_hi, z0 + near_margin_mm)
    # cube sides in "pinhole units" (px * mm): a point is inside iff |(u - cx) d - (u0 - cx) z0|
    # <= h fx (and the same for v), so no per-pixel division is needed.
    xu0, xv0 = (u0 - intr.cx) * z0, (v0 - intr.cy) * z0
    hu, hv = h * intr.fx, h * intr.fy
    # pixel box of the cube: widest at its front face
    u_lo = math.floor(intr.cx + (xu0 - hu) / (z_lo if xu0 - hu < 0 else z0 + h))
    u_hi = math.ceil(intr.cx + (xu0 + hu) / (z_lo if xu0 + hu > 0 else z0 + h)) + 1
    v_lo = math.floor(intr.cy + (xv0 - hv) / (z_lo if xv0 - hv < 0 else z0 + h))
    v_hi = math.ceil(intr.cy + (xv0 + hv) / (z_lo if xv0 + hv > 0 else z0 + h)) + 1
    height, width = depth.shape
    u_lo, u_hi = max(u_lo, 0), min(u_hi, width)
    v_lo, v_hi = max(v_lo, 0), min(v_hi, height)
    if u_lo >= u_hi or v_lo >= v_hi:
        return None
    step = max(1, math.ceil(max(u_hi - u_lo, v_hi - v_lo) / _REFINE_SAMPLES))
    win = depth[v_lo:v_hi:step, u_lo:u_hi:step].astype(np.float32)  # (h', w') mm
    us = np.arange(u_lo, u_hi, step, dtype=np.float32)  # (w',) px
    vs = np.arange(v_lo, v_hi, step, dtype=np.float32)  # (h',) px
    mask = (win >= z_lo) & (win <= z_hi)  # excludes 0 and NaN
    mask &= np.abs((us - np.float32(intr.cx))[None, :] * win - np.float32(xu0)) <= hu
    mask &= np.abs((vs - np.float32(intr.cy))[:, None] * win - np.float32(xv0)) <= hv
    n = int(np.count_nonzero(mask))
    if n == 0:
        return None
    w = np.where(mask, win, np.float32(0)).astype(np.float64)
    total = w.sum()
    return np.array([
        (w.sum(axis=0) @ us.astype(np.float64)) / total,
        (w.sum(axis=1) @ vs.astype(np.float64)) / total,
        total / n,
    ])


def _no_hand_reason(depth: np.ndarray, max_depth_mm: float) -> str:
    """Say in one line why a frame has no usable pixel (only called on failure)."""
    d = depth.astype(np.float64, copy=False)
    finite = np.isfinite(d)
    positive = finite & (d > 0)
    if not finite.any():
        why = "all pixels are NaN" if np.isnan(d).all() else "no finite depth value"
    elif not positive.any():
        why = "all pixels are 0" if (d[finite] == 0).all() else "no positive depth value"
    elif (nearest := float(d[positive].min())) > max_depth_mm:
        why = f"no valid depth within {max_depth_mm:g} mm (nearest is {nearest:g} mm)"
    else:
        why = (f"only isolated pixels with depth within {max_depth_mm:g} mm "
               f"({int((positive & (d <= max_depth_mm)).sum())} pixels)")
    return "no hand found: " + why
