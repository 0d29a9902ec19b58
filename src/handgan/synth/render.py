"""Exact ray-cast depth of spheres, round cones and planes; a Kinect-style structured-light sensor.

Everything is in the camera frame in mm (NYU: x right, y up, z forward). The ray through pixel
(u, v) is (x, y, 1) = ((u - cx) / fx, ±(v - cy) / fy, 1) (minus when ``intr.y_up``), so a hit at
ray parameter t lies at depth z = t.

Rendering (:func:`render_depth`) is vectorised per primitive type: each primitive's exact screen
footprint is bounded by the convex hull of the bounding discs of its end spheres' silhouettes, cut
into per-row pixel spans, and the (primitive, pixel) pairs are intersected in large batches. Hits
are z-buffered with ``np.maximum.at`` on an int64 key that packs 1/depth (float32 bits, high word)
with the label (low word), so the nearest surface and its label come out of one scatter. Per-pair
arithmetic is float32 in primitive-local coordinates (see the kernels' comment).

The sensor model (:func:`apply_sensor`, :class:`SensorConfig`) turns a clean render into what a
PrimeSense/Kinect v1 camera records: lateral jitter, projector shadows, missing pixels on edges and
steep surfaces, axial noise (Nguyen et al. 2012), 1/8-px disparity quantisation and integer mm.
The facts behind the numbers are in ``shared/research/synthetic-hand.md`` sections 3.3 and 4.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from handgan.camera import Intrinsics

Roi = tuple[int, int, int, int]  # (u0, v0, u1, v1) half-open pixel box

# A pixel is a candidate for a primitive when its centre lies within this distance of the
# primitive's bounding region; the region is exact, so this only absorbs rounding.
_SPAN_MARGIN_PX = 0.05
# Cones whose lateral surface is thinner than this fraction of the axis (one sphere nearly holds
# the other) are rendered as their two spheres: the missing band is at most ~1e-6 of a radius.
_MIN_CONE_COS = 1e-6


@dataclass
class Scene:
    """Primitives in camera coordinates (mm, NYU frame). Each primitive carries an int label
    (e.g. 0 hand, 1 forearm, 2 background object) returned per pixel by :func:`render_depth`.

    Round cones are convex hulls of sphere (a, ra) and sphere (b, rb): a capsule when ra == rb.
    Planes are rows (nx, ny, nz, offset) meaning n·p = offset; n is normalised on construction.
    Fields left out are empty. Arrays are converted to float64 / int64 and checked.
    """

    sphere_centers: np.ndarray = ()  # (S, 3)
    sphere_radii: np.ndarray = ()    # (S,)
    sphere_labels: np.ndarray = ()   # (S,) int
    cone_a: np.ndarray = ()          # (C, 3)
    cone_b: np.ndarray = ()          # (C, 3)
    cone_ra: np.ndarray = ()         # (C,)
    cone_rb: np.ndarray = ()         # (C,)
    cone_labels: np.ndarray = ()     # (C,) int
    planes: np.ndarray = ()          # (P, 4)
    plane_labels: np.ndarray = ()    # (P,) int

    def __post_init__(self) -> None:
        S = _count(self.sphere_radii, "sphere_radii")
        C = _count(self.cone_ra, "cone_ra")
        P = len(np.atleast_2d(np.asarray(self.planes))) if np.size(self.planes) else 0
        self.sphere_centers = _floats(self.sphere_centers, (S, 3), "sphere_centers")
        self.sphere_radii = _radii(self.sphere_radii, S, "sphere_radii")
        self.sphere_labels = _labels(self.sphere_labels, S, "sphere_labels")
        self.cone_a = _floats(self.cone_a, (C, 3), "cone_a")
        self.cone_b = _floats(self.cone_b, (C, 3), "cone_b")
        self.cone_ra = _radii(self.cone_ra, C, "cone_ra")
        self.cone_rb = _radii(self.cone_rb, C, "cone_rb")
        self.cone_labels = _labels(self.cone_labels, C, "cone_labels")
        planes = _floats(self.planes, (P, 4), "planes")
        norm = np.linalg.norm(planes[:, :3], axis=1)
        if np.any(norm < 1e-12):
            raise ValueError(f"Scene.planes: normal {planes[np.argmin(norm), :3]} has zero length")
        self.planes = planes / norm[:, None]  # n·p = offset scales as a whole
        self.plane_labels = _labels(self.plane_labels, P, "plane_labels")

    @staticmethod
    def empty() -> Scene:
        return Scene()

    @staticmethod
    def concat(*scenes: Scene) -> Scene:
        """All primitives of the given scenes in one scene (in order)."""
        if not scenes:
            return Scene()
        cat = {name: np.concatenate([getattr(s, name) for s in scenes])
               for name in Scene.__dataclass_fields__}
        return Scene(**cat)

    def __add__(self, other: Scene) -> Scene:
        return Scene.concat(self, other)


def _count(radii, name: str) -> int:
    r = np.asarray(radii)
    if r.ndim != 1:
        raise ValueError(f"Scene.{name}: expected a 1-D array, got shape {r.shape}")
    return len(r)


def _floats(a, shape: tuple[int, int], name: str) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.size == 0 and shape[0] == 0:
        return a.reshape(shape)
    if a.shape != shape:
        raise ValueError(f"Scene.{name}: expected shape {shape}, got {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"Scene.{name}: contains NaN or infinite values")
    return a


def _radii(r, n: int, name: str) -> np.ndarray:
    r = np.asarray(r, dtype=np.float64).reshape(n)
    if not np.all(np.isfinite(r)):
        raise ValueError(f"Scene.{name}: contains NaN or infinite values")
    if np.any(r < 0):
        raise ValueError(f"Scene.{name}: radius must be >= 0, got {r[r < 0][0]} mm")
    return r


def _labels(lab, n: int, name: str) -> np.ndarray:
    lab = np.asarray(lab)
    if lab.shape != (n,):
        raise ValueError(f"Scene.{name}: expected shape ({n},), got {lab.shape}")
    if n and (not np.all(lab == np.round(lab)) or lab.min() < 0 or lab.max() > 32767):
        raise ValueError(f"Scene.{name}: labels must be integers in 0..32767")
    return lab.astype(np.int64)


# Pairs per batch in the ray-primitive kernels: the temporaries stay in cache, and small enough
# that malloc keeps reusing them instead of returning pages to the OS and faulting them back in.
_BATCH_PAIRS = 12288
# Beyond this size (mm) float32 in primitive-local coordinates would lose ~0.1 mm at silhouettes.
_F32_MAX_EXTENT_MM = 600.0


def render_depth(scene: Scene, intr: Intrinsics,
                 roi: Roi | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact nearest-surface depth (H, W) float32 mm, 0 where no surface or outside the roi, and
    the label of that surface (H, W) int16, -1 where none; (H, W) = (intr.height, intr.width).
    Only the roi's pixels are computed (clipped to the image; None: the whole image).

    Only hits in front of the camera (t > 0) count. Spheres and round cones are solved in float32
    in primitive-local coordinates (float64 when a primitive is larger than 600 mm or reaches
    z <= 0): errors are below 1e-3 mm except within a fraction of a pixel of a silhouette
    (< 0.1 mm there). What a primitive that contains the camera shows is unspecified.
    """
    H, W = intr.height, intr.width
    u0, v0, u1, v1 = _clip_roi(roi, intr)
    depth = np.zeros((H, W), np.float32)
    labels = np.full((H, W), -1, np.int16)
    if u1 <= u0 or v1 <= v0:
        return depth, labels
    xs = (np.arange(u0, u1) - intr.cx) / intr.fx  # ray x per ROI column
    ys = (np.arange(v0, v1) - intr.cy) / intr.fy  # ray y per ROI row
    if intr.y_up:
        ys = -ys
    # The ROI is z-buffered in inverse depth: 0 = nothing, larger = nearer.
    inv = np.zeros((v1 - v0, u1 - u0), np.float32)
    lab = np.full(inv.shape, -1, np.int16)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        _render_planes(scene, xs, ys, inv, lab)
        _render_solids(scene, intr, (u0, v0, u1, v1), xs, ys, inv, lab)
    np.divide(1.0, inv, out=inv, where=inv > 0)
    depth[v0:v1, u0:u1] = inv
    labels[v0:v1, u0:u1] = lab
    return depth, labels


def _clip_roi(roi: Roi | None, intr: Intrinsics) -> Roi:
    if roi is None:
        return 0, 0, intr.width, intr.height
    if len(roi) != 4:
        raise ValueError(f"roi must be (u0, v0, u1, v1), got {roi!r}")
    u0, v0, u1, v1 = (int(x) for x in roi)
    return max(u0, 0), max(v0, 0), min(u1, intr.width), min(v1, intr.height)


def _render_planes(scene: Scene, xs, ys, inv: np.ndarray, lab: np.ndarray) -> None:
    """Dense over the ROI: 1/depth = n·ray / offset, a column term plus a row term."""
    first = True
    for n, offset, label in zip(scene.planes[:, :3], scene.planes[:, 3], scene.plane_labels):
        if abs(offset) < 1e-9:  # through the camera: seen edge-on, covers nothing
            continue
        col = (xs * (n[0] / offset)).astype(np.float32)[None, :]
        row = ((ys * n[1] + n[2]) / offset).astype(np.float32)[:, None]
        if first:  # straight into the (empty) buffer; <= 0 means the plane is behind the camera
            np.add(col, row, out=inv)
            np.maximum(inv, 0.0, out=inv)
            np.copyto(lab, np.int16(label), where=inv > 0)
            first = False
        else:
            plane = col + row
            nearer = plane > inv
            np.copyto(inv, plane, where=nearer)
            np.copyto(lab, np.int16(label), where=nearer)


def _render_solids(scene: Scene, intr: Intrinsics, roi: Roi, xs, ys, inv, lab) -> None:
    """Spheres and round cones: candidate pixels, exact hits, one z-buffer, merge into inv/lab."""
    S, C = len(scene.sphere_radii), len(scene.cone_ra)
    if S + C == 0:
        return
    u0, v0, u1, v1 = roi
    # For culling, a sphere is a round cone whose two ends coincide; primitive id = row here.
    ca = np.concatenate([scene.sphere_centers, scene.cone_a])
    cb = np.concatenate([scene.sphere_centers, scene.cone_b])
    ra = np.concatenate([scene.sphere_radii, scene.cone_ra])
    rb = np.concatenate([scene.sphere_radii, scene.cone_rb])
    pa, rada, oka = _sphere_discs(ca, ra, intr)
    pb, radb, okb = _sphere_discs(cb, rb, intr)
    culled = np.maximum(ca[:, 2] + ra, cb[:, 2] + rb) <= 0.0  # wholly behind the camera
    in_front = np.minimum(ca[:, 2] - ra, cb[:, 2] - rb) > 0.0  # every hit has t > 0
    extent = np.linalg.norm(cb - ca, axis=1) + 2.0 * np.maximum(ra, rb)
    check_behind = bool(np.any(~in_front & ~culled))
    small = bool(np.all(extent[~culled] <= _F32_MAX_EXTENT_MM))
    dt = np.float32 if small and not check_behind else np.float64

    # The silhouette of a round cone is the convex hull of its end spheres' silhouettes.
    prim, v, first, count = _row_spans(pa, rada, pb, radb, ~(oka & okb), culled, roi)
    nonempty = count > 0
    prim, v, first, count = prim[nonempty], v[nonempty], first[nonempty], count[nonempty]
    if not len(count):
        return
    # The z-buffer spans the box of all candidate pixels only.
    bu0, bu1 = int(first.min()), int((first + count).max())
    bv0, bv1 = int(v.min()), int(v.max()) + 1
    bw = bu1 - bu0
    row_flat = (v - bv0) * bw + first - bu0  # box index of each row's first pixel
    row_col = first - u0  # ROI column of each row's first pixel
    row_label = np.concatenate([scene.sphere_labels, scene.cone_labels])[prim]
    y = ys[v - v0]
    n_sphere_rows = int(np.searchsorted(prim, S))  # rows come grouped by primitive, spheres first
    consts = [_sphere_rows(scene, prim[:n_sphere_rows], y[:n_sphere_rows]).astype(dt),
              _cone_rows(scene, prim[n_sphere_rows:] - S, y[n_sphere_rows:]).astype(dt)]
    xs_dt = xs.astype(dt)
    zkey = np.zeros((bv1 - bv0) * bw, np.int64)  # 0 = no hit
    for r0, r1 in _batches(count, n_sphere_rows):
        cnt = count[r0:r1]
        start = np.cumsum(cnt) - cnt
        k = np.arange(int(start[-1] + cnt[-1]))
        flat = k + np.repeat(row_flat[r0:r1] - start, cnt)
        x = xs_dt[k + np.repeat(row_col[r0:r1] - start, cnt)]  # ray x per (primitive, pixel)
        if r0 < n_sphere_rows:
            t = _sphere_depth(np.repeat(consts[0][:, r0:r1], cnt, axis=1), x)
        else:
            rows = slice(r0 - n_sphere_rows, r1 - n_sphere_rows)
            t = _cone_depth(np.repeat(consts[1][:, rows], cnt, axis=1), x, check_behind)
        np.maximum.at(zkey, flat, _keys(t, np.repeat(row_label[r0:r1], cnt)))

    # Merge the box into the ROI buffers: nearer (larger 1/depth) wins.
    zkey = zkey.reshape(bv1 - bv0, bw)
    box_lab = zkey.astype(np.int16)  # the low bits hold the label
    np.right_shift(zkey, 32, out=zkey)
    box_inv = zkey.astype(np.int32).view(np.float32)
    box = np.s_[bv0 - v0:bv1 - v0, bu0 - u0:bu1 - u0]
    nearer = box_inv > inv[box]
    np.copyto(inv[box], box_inv, where=nearer)
    np.copyto(lab[box], box_lab, where=nearer)


def _batches(count: np.ndarray, split: int) -> list[tuple[int, int]]:
    """Row ranges of about _BATCH_PAIRS pairs each that do not cross row `split`."""
    out = []
    for lo, hi in ((0, split), (split, len(count))):
        if hi <= lo:
            continue
        cum = np.cumsum(count[lo:hi])
        cuts = np.unique(np.searchsorted(cum, np.arange(_BATCH_PAIRS, cum[-1], _BATCH_PAIRS)) + 1)
        edges = [lo] + [lo + int(c) for c in cuts if c < hi - lo] + [hi]
        out += list(zip(edges[:-1], edges[1:]))
    return out


def _sphere_discs(c: np.ndarray, r: np.ndarray, intr: Intrinsics):
    """Pixel-space bounding discs of sphere silhouettes.

    The silhouette is the image of the cone of rays within asin(r/|c|) of c: an ellipse whose major
    axis is radial. In normalised image coordinates its centre is (cx, cy)·cz/(cz² - r²) and its
    semi-major axis r·sqrt(|c|² - r²)/(cz² - r²); scaling by max(fx, fy) makes the disc hold the
    ellipse in pixels too. Returns centres (N, 2) and radii (px), and ok = the sphere lies in front
    of the camera plane (cz > r); otherwise the silhouette is unbounded and callers use the whole
    ROI.
    """
    cz = c[:, 2]
    ok = cz > r * (1.0 + 1e-9) + 1e-6
    den = np.where(ok, cz * cz - r * r, 1.0)
    sign_v = -1.0 if intr.y_up else 1.0
    pu = intr.cx + intr.fx * c[:, 0] * cz / den
    pv = intr.cy + sign_v * intr.fy * c[:, 1] * cz / den
    rad = max(intr.fx, intr.fy) * r * np.sqrt(np.maximum((c * c).sum(1) - r * r, 0.0)) / den
    return np.stack([pu, pv], 1), rad, ok


def _row_spans(pa, ra, pb, rb, full, culled, roi: Roi):
    """Per-row pixel spans of the convex hull of two discs (centres pa, pb (N, 2) px; radii ra, rb).

    full: primitives that cover the whole ROI (unbounded silhouette); culled: primitives to skip.
    Returns (prim, v, u_first, count) per (primitive, row), grouped by primitive in order.
    """
    u0, v0, u1, v1 = roi
    m = _SPAN_MARGIN_PX
    n = len(ra)
    top = np.where(full, v0, np.ceil(np.minimum(pa[:, 1] - ra, pb[:, 1] - rb) - m))
    bot = np.where(full, v1 - 1, np.floor(np.maximum(pa[:, 1] + ra, pb[:, 1] + rb) + m))
    top = np.maximum(top, v0).astype(np.int64)
    bot = np.minimum(bot, v1 - 1).astype(np.int64)
    nrows = np.where(culled, 0, np.maximum(bot - top + 1, 0))
    prim = np.repeat(np.arange(n), nrows)
    start = np.cumsum(nrows) - nrows
    v = np.arange(len(prim)) + np.repeat(top - start, nrows)

    vf = v.astype(np.float64)
    pax, pay, pbx, pby = pa[prim, 0], pa[prim, 1], pb[prim, 0], pb[prim, 1]
    rar, rbr = ra[prim], rb[prim]
    lo = np.full(len(prim), np.inf)
    hi = np.full(len(prim), -np.inf)
    with np.errstate(invalid="ignore", divide="ignore"):
        for cx, cy, rr in ((pax, pay, rar), (pbx, pby, rbr)):  # the two discs
            half = np.sqrt(rr * rr - (vf - cy) ** 2)  # NaN where the row misses the disc
            np.fmin(lo, cx - half, out=lo)
            np.fmax(hi, cx + half, out=hi)
        # The two outer tangent segments between the discs (none when one disc holds the other).
        dx, dy = pbx - pax, pby - pay
        dist = np.hypot(dx, dy)
        safe = np.where(dist > 0, dist, 1.0)
        sin_a = (rar - rbr) / safe
        has_tangents = dist > np.abs(rar - rbr) + 1e-9
        cos_a = np.sqrt(np.maximum(1.0 - sin_a * sin_a, 0.0))
        ex, ey = dx / safe, dy / safe
        for side in (1.0, -1.0):
            nx = sin_a * ex - side * cos_a * ey  # unit normal of the tangent line
            ny = sin_a * ey + side * cos_a * ex
            ax, ay = pax + rar * nx, pay + rar * ny  # tangent points on disc a and disc b
            bx, by = pbx + rbr * nx, pby + rbr * ny
            s = (vf - ay) / (by - ay)
            cross = np.where(has_tangents & (s >= 0.0) & (s <= 1.0), ax + s * (bx - ax), np.nan)
            np.fmin(lo, cross, out=lo)
            np.fmax(hi, cross, out=hi)

    is_full = full[prim]
    first = np.where(is_full, u0, np.maximum(np.ceil(lo - m), u0))
    last = np.where(is_full, u1 - 1, np.minimum(np.floor(hi + m), u1 - 1))
    ok = np.isfinite(first) & np.isfinite(last)
    first = np.where(ok, first, 0).astype(np.int64)
    count = np.where(ok, np.maximum(last - first + 1, 0), 0).astype(np.int64)
    return prim, v, first, count


def _keys(t: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """z-buffer keys: bits of 1/depth (float32) above the label; the largest key is nearest.

    NaN (miss) and t <= 0 (behind the camera) give 1/t <= 0 or NaN, clamped to 0 = no hit.
    """
    inv = (1.0 / t).astype(np.float32, copy=False)
    np.fmax(inv, 0.0, out=inv)
    np.minimum(inv, np.float32(3e38), out=inv)  # t -> 0+ (camera on a surface) must not be inf
    key = inv.view(np.int32).astype(np.int64)  # positive float32 bits order like the values
    key <<= 32
    key |= labels
    return key


# Ray-primitive kernels. Per (primitive, row) terms are formed in float64 by the *_rows functions
# and repeated over the row's pixels; per-pair arithmetic is in float32 (see _F32_MAX_EXTENT_MM).
# To avoid cancellation, depth is measured from a reference t0 near the primitive, t = t0 + tau,
# and e = t0·d - centre (a vector of primitive size) replaces the ~1 m centre. With d = (x, y, 1):
#   |tau·d + e|² = r²  <=>  dd·tau² + 2·de·tau + (ee - r²) = 0,  dd = |d|², de = d·e, ee = |e|²,
# and each of dd, de, ee is a per-pair term in x plus a per-row term.


def _sphere_rows(scene: Scene, prim, y) -> np.ndarray:
    c, r = scene.sphere_centers[prim], scene.sphere_radii[prim]
    t0 = c[:, 2]
    ey = t0 * y - c[:, 1]  # e = t0·d - c has ez = 0
    return np.stack([t0, c[:, 0], y * y + 1.0, y * ey, ey * ey - r * r])


def _sphere_depth(rows: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Nearer root; NaN = miss. With the camera inside a sphere it is behind: nothing shows."""
    t0, cx, dd_row, de_row, ee_row = rows
    ex = x * t0 - cx
    dd = x * x + dd_row
    de = x * ex + de_row
    ee = ex * ex + ee_row
    return t0 - (de + np.sqrt(de * de - dd * ee)) / dd


def _cone_rows(scene: Scene, prim, y) -> np.ndarray:
    """Per-row terms of round cones (see _cone_depth for the geometry)."""
    a, b = scene.cone_a[prim], scene.cone_b[prim]
    ra, rb = scene.cone_ra[prim], scene.cone_rb[prim]
    L = np.linalg.norm(b - a, axis=1)
    safe_L = np.where(L > 0, L, 1.0)
    sin = np.where(L > 0, (ra - rb) / safe_L, 0.0)
    cos = np.sqrt(np.maximum(1.0 - sin * sin, 0.0))
    # One sphere (nearly) inside the other: no lateral surface; a NaN range fails its test.
    lateral = (L > 0) & (cos > _MIN_CONE_COS)
    cos = np.where(lateral, cos, 1.0)
    w = (b - a) / safe_L[:, None]
    t0 = 0.5 * (a[:, 2] + b[:, 2])
    eya, eza = t0 * y - a[:, 1], t0 - a[:, 2]  # e = t0·d - a
    eyb, ezb = t0 * y - b[:, 1], t0 - b[:, 2]  # t0·d - b
    return np.stack([
        t0, a[:, 0], y * y + 1.0,
        y * eya + eza, eya * eya + eza * eza - ra * ra,  # sphere a: de, ee - ra²
        b[:, 0] - a[:, 0],
        y * eyb + ezb, eyb * eyb + ezb * ezb - rb * rb,  # sphere b
        w[:, 0] / cos, (y * w[:, 1] + w[:, 2]) / cos,  # lateral: d·w / cos
        (eya * w[:, 1] + eza * w[:, 2] - ra * sin) / cos,  # (e·w - ra·sin) / cos
        np.where(lateral, L * cos, np.nan),  # axial range of the lateral surface
    ])


def _cone_depth(rows: np.ndarray, x: np.ndarray, check_behind: bool) -> np.ndarray:
    """Round cone = sphere a ∪ sphere b ∪ the lateral surface of the tangent truncated cone.

    The nearest hit over the three pieces is the first hit on the convex hull (the flat ends of
    the truncated cone lie inside the spheres). Tangent cone: axis w = (b - a)/L, sin = (ra - rb)/L;
    with h = (p - a)·w and rho the distance from the axis, the lateral surface is
    h·sin + rho·cos = ra for h between the tangent circles, [ra·sin, L + rb·sin]. Squaring gives
    cos²·(|q|² - ra²) = (q·w - ra·sin)² with q = p - a = tau·d + e. Divided by cos², with
    dwc = d·w/cos and gc = (e·w - ra·sin)/cos:
        (dd - dwc²)·tau² + 2·(de - dwc·gc)·tau + (ee - ra² - gc²) = 0,
    and the axial range becomes 0 <= tau·dwc + gc <= L·cos. Both roots are tried: the entry
    point is the second root when the ray crosses the cone's other nappe first.
    """
    t0, ax, dd_row, dea_row, eea_row, bx_ax, deb_row, eeb_row, wx, dw_row, g_row, lc = rows
    ex = x * t0 - ax
    dd = x * x + dd_row
    dea = x * ex + dea_row
    eea = ex * ex + eea_row
    t = t0 - (dea + np.sqrt(dea * dea - dd * eea)) / dd  # sphere a
    exb = ex - bx_ax
    deb = x * exb + deb_row
    eeb = exb * exb + eeb_row
    tb = t0 - (deb + np.sqrt(deb * deb - dd * eeb)) / dd  # sphere b
    if check_behind:  # a hit behind the camera must not hide one in front
        t, tb = np.where(t > 0, t, np.nan), np.where(tb > 0, tb, np.nan)
    np.fmin(t, tb, out=t)

    dwc = x * wx + dw_row
    gc = ex * wx + g_row
    qa = dd - dwc * dwc
    hb = dea - dwc * gc
    qc = eea - gc * gc
    # Stable roots: with q = hb + sign(hb)·sqrt(disc), tau = -q/qa and -qc/q (qa -> 0 is harmless).
    q = hb + _copysign(np.sqrt(hb * hb - qa * qc), hb)
    for neg_tau in (q / qa, qc / q):
        h = gc - neg_tau * dwc
        tl = t0 - neg_tau
        ok = (h >= 0) & (h <= lc)
        if check_behind:
            ok &= tl > 0
        # |tl|/ok: tl where ok (valid hits are in front, tl > 0), +inf (or NaN) elsewhere
        np.fmin(t, np.abs(tl) / ok, out=t)
    return t


def _copysign(mag: np.ndarray, sign: np.ndarray) -> np.ndarray:
    """np.copysign for mag >= 0 (or NaN), with bit operations: several times faster."""
    it = np.int32 if mag.dtype == np.float32 else np.int64
    bits = mag.view(it) | (sign.view(it) & np.iinfo(it).min)
    return bits.view(mag.dtype)


@dataclass
class SensorConfig:
    """What a PrimeSense / Kinect v1 camera does to a clean depth render (see apply_sensor).

    Attributes:
        axial_noise: Gaussian depth noise, Nguyen et al. 2012: sigma_z = 1.2 + 1.9·(z_m - 0.4)² mm
            for incidence theta <= 60 deg, plus 0.1·theta²/(sqrt(z_m)·(pi/2 - theta)²) mm beyond
            (theta in rad, z_m in m).
        quantise: disparity f·b/z rounded to 1/subpixel_steps px (b = baseline_mm, f = fx), then
            integer mm as NYU stores (steps of about z²/(8·f·b): 2.3 mm at 0.9 m).
        lateral_jitter_px: pixels near depth discontinuities take the value at a N(0, sigma) px
            shift (nearest pixel: simkinect's resampling without inventing depths between
            surfaces), so silhouettes get ragged; elsewhere a pixel of shift changes depth by
            < 1 mm and is skipped. 0 disables.
        steep_dropout_deg: incidence angle where pixels start to go missing; the probability
            ramps linearly from 0 there to 1 at 10 deg more. >= 90 disables.
        edge_dropout: probability that a pixel on a depth discontinuity loses its depth; edge
            pixels are valid pixels with a 4-neighbour that is empty or more than edge_jump_mm
            away (both sides of a silhouette).
        shadow: pixels whose surface the projector cannot see (hidden behind a nearer surface on
            its side, +x) have no depth: a band of f·b·(1/z_near - 1/z_far) px left of objects.
    """

    enabled: bool = True  # False: the clean depth rounded to integer mm, nothing else
    axial_noise: bool = True
    quantise: bool = True
    baseline_mm: float = 75.0  # projector-camera baseline; the projector sits at +x
    subpixel_steps: int = 8  # disparity resolution: 1/8 px on PrimeSense
    lateral_jitter_px: float = 0.5
    steep_dropout_deg: float = 75.0
    edge_dropout: float = 0.5
    edge_jump_mm: float = 20.0  # the depth step between 4-neighbours that is a discontinuity
    shadow: bool = True
    holes_per_frame: float = 0.0  # mean number (Poisson) of random round holes 1-3 px in radius
    max_depth_mm: float = 4000.0  # beyond this range the sensor returns nothing

    def __post_init__(self) -> None:
        if not 0.0 <= self.edge_dropout <= 1.0:
            raise ValueError(f"SensorConfig.edge_dropout must be in [0, 1], got "
                             f"{self.edge_dropout}")
        for name in ("baseline_mm", "subpixel_steps", "edge_jump_mm", "max_depth_mm"):
            if not getattr(self, name) > 0:
                raise ValueError(f"SensorConfig.{name} must be > 0, got {getattr(self, name)}")
        for name in ("lateral_jitter_px", "holes_per_frame"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"SensorConfig.{name} must be >= 0, got {getattr(self, name)}")


_STEEP_RAMP_DEG = 10.0


def apply_sensor(depth_mm: np.ndarray, intr: Intrinsics, rng: np.random.Generator,
                 cfg: SensorConfig, roi: Roi | None = None) -> np.ndarray:
    """Clean rendered depth (H, W) mm, 0 = no surface -> what a structured-light camera records:
    (H, W) uint16 mm, 0 = missing; only the roi's pixels are processed, the rest is 0. rng is the
    only source of randomness: the same state gives the same output bytes.

    Steps, all inside the ROI: on the clean depth, find discontinuities, steep pixels (incidence
    angle from the depth map's normals) and projector shadows, and drop pixels accordingly; add
    axial noise; jitter laterally; quantise disparity; round to mm; cut at max range; punch holes.
    """
    depth = np.asarray(depth_mm)
    if depth.shape != (intr.height, intr.width):
        raise ValueError(f"apply_sensor: depth has shape {depth.shape}, the camera is "
                         f"({intr.height}, {intr.width})")
    u0, v0, u1, v1 = _clip_roi(roi, intr)
    out = np.zeros(depth.shape, np.uint16)
    if u1 <= u0 or v1 <= v0:
        return out
    out[v0:v1, u0:u1] = sense(depth[v0:v1, u0:u1], intr, (u0, v0), rng, cfg)
    return out


@np.errstate(invalid="ignore", divide="ignore", over="ignore")
def sense(depth_mm: np.ndarray, intr: Intrinsics, origin: tuple[int, int],
          rng: np.random.Generator, cfg: SensorConfig) -> np.ndarray:
    """apply_sensor on a box of the image only: depth_mm (h, w) holds the clean depth of the
    pixels from (u0, v0) = origin on (the camera's geometry needs to know where they are).
    Returns (h, w) uint16 mm; depth_mm is not modified.

    Whole-frame steps are in-place array arithmetic; masks are applied by multiplying with them
    (a masked write is several times slower), so a 640x480 frame takes a few ms.
    """
    z = np.asarray(depth_mm).astype(np.float32)  # a copy: the work buffer
    if not cfg.enabled:
        return _round_mm(z, 65535.0)
    h, w = z.shape
    # Only pixels steeper than the smaller of the two angles that matter need their angle.
    steepest = np.float32(0.999 * min(np.pi / 3, np.radians(min(cfg.steep_dropout_deg, 90.0))))
    valid, edge, change, near, steep, theta = _surface_flags(z, intr, origin, cfg.edge_jump_mm,
                                                             steepest)
    drop = ~valid
    if cfg.edge_dropout > 0:
        idx = np.flatnonzero(edge)
        drop.reshape(-1)[idx] = _bernoulli(rng, np.full(idx.size, cfg.edge_dropout))
    if cfg.steep_dropout_deg < 90.0:
        at_risk = theta > np.radians(cfg.steep_dropout_deg)
        p = (np.degrees(theta[at_risk]) - cfg.steep_dropout_deg) / _STEEP_RAMP_DEG
        drop.reshape(-1)[steep[at_risk]] |= _bernoulli(rng, np.minimum(p, 1.0))
    if cfg.shadow:
        _projector_shadow(z, near, change, intr, cfg.baseline_mm, drop)
    if cfg.axial_noise:
        # Nguyen et al. 2012: sigma_z = 1.2 + 1.9·(z_m - 0.4)² mm, plus a term beyond 60 deg.
        sigma = np.multiply(z, np.float32(1e-3), out=change)  # change is not needed any more
        sigma -= np.float32(0.4)
        sigma *= sigma
        sigma *= np.float32(1.9)
        sigma += np.float32(1.2)
        oblique = theta > np.float32(np.pi / 3)
        th = np.minimum(theta[oblique], np.float32(np.radians(89.0)))
        at = steep[oblique]
        sigma.reshape(-1)[at] += np.float32(0.1) * th * th / (
            np.sqrt(z.reshape(-1)[at] * np.float32(1e-3)) * (np.float32(np.pi / 2) - th) ** 2)
        sigma *= np.take(_normal_table(), _random_u16(rng, z.size)).reshape(h, w)
        z += sigma
    np.logical_not(drop, out=drop)
    z *= drop  # 0 at dropped and empty pixels
    if cfg.lateral_jitter_px > 0:
        _jitter(z, edge, cfg.lateral_jitter_px, rng)
    if cfg.quantise:
        # Disparity in 1/steps px: k = round(steps·f·b / z); z = 0 gives k = inf and back 0.
        fbs = np.float32(intr.fx * cfg.baseline_mm * cfg.subpixel_steps)
        np.divide(fbs, z, out=z)
        np.rint(z, out=z)
        np.divide(fbs, z, out=z)
    out = _round_mm(z, cfg.max_depth_mm)
    _punch_holes(out, cfg.holes_per_frame, rng)
    return out


def _round_mm(z: np.ndarray, max_mm: float) -> np.ndarray:
    """Integer mm as uint16 (z >= 0, modified); beyond max_mm (or negative) -> 0."""
    z *= (z <= min(max_mm, 65535.0)) & (z >= 0)  # (-0.0 where cut: it rounds to 0 all the same)
    z += np.float32(0.5)  # round half up, then truncate
    return z.astype(np.uint16)


def _surface_flags(z: np.ndarray, intr: Intrinsics, origin, jump_mm: float, min_theta):
    """Where the geometry matters to the sensor, from the clean depth z (h, w).

    Returns valid (z > 0); edge: valid pixels with a 4-neighbour that is empty or more than
    jump_mm away; change: the largest |depth change| to a 4-neighbour; near: the valid pixels
    whose change exceeds the slope screen (_slope_screen), the only ones whose incidence angle
    can reach 60 deg; steep, theta: flat indices of the near pixels whose incidence angle
    exceeds min_theta (rad, <= 60 deg) and those angles, in flat index order.

    Whole-frame steps work on the flat arrays (several times faster than on column slices).
    """
    h, w = z.shape
    valid = z > 0
    zf = z.reshape(-1)
    # diff_u[i] = z[i + 1] - z[i] along rows (0 from a row's last pixel to the next row's first:
    # no neighbour there), diff_v[i] = z[i + w] - z[i] along columns, on the flat arrays.
    diff_u = np.subtract(zf[1:], zf[:-1])
    diff_u[w - 1::w] = 0.0
    diff_v = np.subtract(zf[w:], zf[:-w])
    abs_u, abs_v = np.abs(diff_u), np.abs(diff_v)
    # |depth change| to each 4-neighbour, 0 beyond the ROI border; an empty neighbour differs
    # by the whole depth.
    change = np.zeros(z.size, np.float32)
    for d, step in ((abs_u, 1), (abs_v, w)):
        np.maximum(change[:d.size], d, out=change[:d.size])  # the next pixel
        np.maximum(change[step:], d, out=change[step:])  # the previous one
    change = change.reshape(h, w)
    edge = change > np.float32(jump_mm)
    edge &= valid
    near = change > z * np.float32(_slope_screen(intr, origin, (w, h)) / max(intr.fx, intr.fy))
    near &= valid
    if np.count_nonzero(near) > z.size // _DENSE_SHARE:  # walls and floor: one dense pass
        cos = _incidence_cos_dense(z, (diff_u, abs_u), (diff_v, abs_v), intr, origin, jump_mm)
        # cos(theta) computed the same way as _incidence's, so the angles are bit-identical
        candidates = cos < np.float32(np.cos(min_theta) + 1e-3)
        candidates &= near
        steep = np.flatnonzero(candidates)
        theta = np.arccos(cos.reshape(-1)[steep])
    else:
        steep = np.flatnonzero(near)
        theta = _incidence(z, steep, intr, origin, jump_mm)
    keep = theta > min_theta
    return valid, edge, change, near, steep[keep], theta[keep]


# Above 1/_DENSE_SHARE of the pixels in the slope screen, incidence angles are computed densely.
_DENSE_SHARE = 8


def _incidence_cos_dense(z: np.ndarray, along_u, along_v, intr: Intrinsics, origin,
                         jump: float) -> np.ndarray:
    """cos(incidence angle) (h, w) of every pixel, with exactly _incidence's float32 arithmetic
    (whole-array operations instead of gathers: several times faster when most pixels need it).
    along_u, along_v: _surface_flags' flat depth differences to the next pixel and their
    absolute values."""
    h, w = z.shape

    def slope(d, abs_d, step):
        """Depth derivative along the axis whose next pixel is `step` ahead in the flat array,
        from d[i] = z[i + step] - z[i] (0 where pixel i has no such neighbour)."""
        m = d.size
        ok = abs_d <= jump  # a usable side: no discontinuity
        if step == 1:
            ok[w - 1::w] = False  # a row's last pixel has no next one
        dk = np.multiply(d, ok)
        num = np.empty(z.size, np.float32)
        np.add(dk[:m - step], dk[step:], out=num[step:m])  # the previous side plus the next
        num[:step] = dk[:step]  # first row or pixel: the next side only
        num[m:] = dk[m - step:]  # last one: the previous side only
        # Central difference where both sides are usable, else the usable side, else 0:
        # x - x·0.5 is exactly x/2, the per-pixel path's division by its 2 sides.
        both = np.logical_and(ok[:m - step], ok[step:])
        half = np.multiply(num[step:m], np.float32(0.5))
        half *= both
        num[step:m] -= half
        return num.reshape(h, w)

    return _cos_incidence(z, slope(*along_u, 1), slope(*along_v, w),
                          *_ray_terms(intr, origin, (w, h)), intr)


def _cos_incidence(z, z_u, z_v, du, dv, ray2, intr: Intrinsics) -> np.ndarray:
    """cos(theta) = z / (|n|·|ray|) (see _incidence) from the depth derivatives z_u, z_v
    (modified), u - cx, v - cy and |ray|², in float32 and in place where it can."""
    n2 = np.multiply(z_u, np.float32(intr.fx))
    n2 *= n2
    t = np.multiply(z_v, np.float32(intr.fy))
    t *= t
    n2 += t
    z_u *= du
    z_v *= dv
    z_u += z_v
    z_u += z
    z_u *= z_u
    n2 += z_u
    n2 *= ray2
    np.sqrt(n2, out=n2)
    np.divide(z, n2, out=n2)
    return np.minimum(n2, np.float32(1.0), out=n2)


@lru_cache(maxsize=8)
def _ray_terms(intr: Intrinsics, origin, size) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """float32 u - cx (1, w) and v - cy (h, 1) of the ROI's pixels, and |ray|² (h, w) there
    (read-only: shared between frames)."""
    (w, h) = size
    du = (origin[0] - intr.cx + np.arange(w)).astype(np.float32)[None, :]
    dv = (origin[1] - intr.cy + np.arange(h)).astype(np.float32)[:, None]
    ray2 = (du / np.float32(intr.fx)) ** 2 + (dv / np.float32(intr.fy)) ** 2 + np.float32(1.0)
    for a in (du, dv, ray2):
        a.flags.writeable = False
    return du, dv, ray2


def _slope_screen(intr: Intrinsics, origin, size) -> float:
    """Largest s such that |z_u|, |z_v| <= s·z/f keeps the incidence below 60 deg in the ROI.

    With the normal n of _incidence, |n|² <= z²·(2s² + (1 + s·(a_u + a_v))²), where a_u, a_v are
    the ROI's largest |u - cx|/f and |v - cy|/f, and cos(theta) = z/(|n|·|ray|) >= 1/2 needs
    |ray|²·(2s² + (1 + s·c)²) <= 4, c = a_u + a_v. Solved for s, with 5 % to spare.
    """
    f = max(intr.fx, intr.fy)
    (u0, v0), (w, h) = origin, size
    du = max(abs(u0 - intr.cx), abs(u0 + w - 1 - intr.cx))
    dv = max(abs(v0 - intr.cy), abs(v0 + h - 1 - intr.cy))
    ray2 = 1.0 + (du / intr.fx) ** 2 + (dv / intr.fy) ** 2
    c = (du + dv) / f
    qa, qb, qc = 2.0 + c * c, 2.0 * c, 1.0 - 4.0 / ray2
    if qc >= 0:  # corners beyond 60 deg off-axis: every sloped pixel needs its angle
        return 0.0
    return 0.95 * (-qb + math.sqrt(qb * qb - 4.0 * qa * qc)) / (2.0 * qa)


def _incidence(z: np.ndarray, idx: np.ndarray, intr: Intrinsics, origin, jump: float) -> np.ndarray:
    """Angle (rad) between the surface normal and the viewing ray at flat ROI indices idx.

    Depth derivatives z_u, z_v (mm/px) are central differences, or one-sided where a neighbour
    is a discontinuity (so edges do not tilt the normal); 0 when both are.
    For P(u, v) = z·((u - cx)/fx, ±(v - cy)/fy, 1), the normal dP/du × dP/dv scaled by fx·fy/z
    is n = (fx·z_u, fy·z_v, (u - cx)·z_u + (v - cy)·z_v + z) up to signs, with |n·ray| = z, so
    cos(theta) = z / (|n|·|ray|).
    """
    h, w = z.shape
    r, c = np.divmod(idx, w)
    zf = z.reshape(-1)
    zc = zf[idx]

    def slope(prev, has_prev, nxt, has_next):
        d_prev, d_next = zc - zf[prev], zf[nxt] - zc
        # usable sides: a neighbour exists and is no discontinuity (an empty one differs by the
        # whole depth, more than the jump)
        ok_prev = has_prev & (np.abs(d_prev) <= jump)
        ok_next = has_next & (np.abs(d_next) <= jump)
        # central difference where both sides are usable, else the usable side, else 0
        sides = np.maximum(ok_prev.astype(np.float32) + ok_next, np.float32(1.0))
        return (d_prev * ok_prev + d_next * ok_next) / sides

    last = z.size - 1
    z_u = slope(np.maximum(idx - 1, 0), c > 0, np.minimum(idx + 1, last), c < w - 1)
    z_v = slope(np.maximum(idx - w, 0), r > 0, np.minimum(idx + w, last), r < h - 1)
    du = (origin[0] - intr.cx + c).astype(np.float32)
    dv = (origin[1] - intr.cy + r).astype(np.float32)
    ray2 = (du / np.float32(intr.fx)) ** 2 + (dv / np.float32(intr.fy)) ** 2 + np.float32(1.0)
    return np.arccos(_cos_incidence(zc, z_u, z_v, du, dv, ray2, intr))


def _projector_shadow(z: np.ndarray, near: np.ndarray, change: np.ndarray, intr: Intrinsics,
                      baseline_mm: float, out: np.ndarray) -> None:
    """Set out (h, w) where the projector (at +baseline along x) cannot see the pixel's surface.

    Rows are epipolar lines. The projector sees the point of pixel u at column
    up(u) = u - f·b/z; it is hidden when a point further right lands at or left of it:
    up(u) >= min over u' > u of up(u'). Between "descents" (up(j) < up(j - 1)) up increases, so
    the minima sit at the ends of runs of descents, and the hidden pixels are: every pixel just
    left of a descent, and the pixels left of each run whose up is >= the lowest run end to the
    right (within the ROI's disparity range f·b·(1/z_min - 1/z_max), beyond which nothing
    matters). A descent needs a depth change above z_min²/(f·b) to its left neighbour, so only
    `near` pixels (a mask) with such a `change` are descents. Whole-frame steps work on the
    flat arrays.
    """
    h, w = z.shape
    fb = np.float32(intr.fx * baseline_mm)
    z_min = _min_positive(z)
    if not math.isfinite(z_min):
        return
    z_max = float(z.max())
    reach = int(math.ceil(fb * (1.0 / z_min - 1.0 / z_max))) + 1

    # up of every pixel; empty pixels: z - tiny < 0 makes up huge (finite), so they hide nothing
    up = np.subtract(z, np.float32(1e-30))
    np.divide(fb, up, out=up)
    np.subtract(np.arange(w, dtype=np.float32), up, out=up)
    upf = up.reshape(-1)
    descent = change > np.float32(z_min * z_min / fb)
    descent &= near
    descent[:, 0] = False  # (so runs of descents never cross rows)
    df = descent.reshape(-1)
    np.logical_and(df[1:], upf[1:] < upf[:-1], out=df[1:])
    # Runs of descents: their first and last pixels.
    starts = np.flatnonzero(np.logical_and(df[1:], ~df[:-1])) + 1
    if not len(starts):
        return
    ends = np.flatnonzero(np.logical_and(df[:-1], ~df[1:]))
    if df[-1]:
        ends = np.append(ends, df.size - 1)
    flat_out = out.reshape(-1)
    flat_out[:-1] |= df[1:]  # every pixel just left of a descent
    up_end = upf[ends]
    # Lowest run end to the right of each run start, in the same row and within reach.
    limit = np.minimum(starts + reach, starts - starts % w + w)
    last = np.searchsorted(ends, limit)  # run ends [i, last[i]) are in range
    lowest = up_end.copy()
    i = np.arange(len(starts))
    for m in range(1, int((last - i).max())):
        more = i + m < last
        np.minimum(lowest, np.where(more, up_end[np.minimum(i + m, len(ends) - 1)], np.inf),
                   out=lowest)
    # Candidates left of each run start: up(u) <= u - f·b/z_max, so u >= lowest + f·b/z_max.
    col = starts % w
    width = int(np.clip((col - np.floor(lowest + fb / z_max)).max(), 0, reach))
    if width == 0:
        return
    left = col[:, None] - 1 - np.arange(width)
    cand = (starts - col)[:, None] + np.maximum(left, 0)
    hidden = (left >= 0) & (upf[cand] >= lowest[:, None])
    flat_out[cand[hidden]] = True  # (empty pixels too: harmless, they have no depth)


def _min_positive(z: np.ndarray) -> float:
    """The smallest positive finite value of float32 z, inf if none: positive float32 bit
    patterns order like their values, and minus 1 (mod 2**32) sends 0 to the top."""
    low = int(np.subtract(z.reshape(-1).view(np.uint32), np.uint32(1)).min())
    if low >= 0x7F7FFFFF:  # no positive finite value
        return math.inf
    return float(np.uint32(low + 1).view(np.float32))


def _jitter(z: np.ndarray, marked: np.ndarray, sigma_px: float, rng) -> None:
    """Each pixel within k px of a marked one takes the value at a rounded N(0, sigma) px shift.

    Only the neighbourhood of discontinuities (`marked`) is resampled: elsewhere a shift of a
    pixel changes the depth by the local slope, about z/f·tan(tilt) (< 1 mm on surfaces below
    45 deg at hand range), which the axial noise already covers.
    """
    h, w = z.shape
    cuts, k = _jitter_cuts(float(sigma_px))
    if k == 0:
        return
    # Dilate by k in u, then in v: the square of reachable shifts. Along u on the flat array,
    # which wraps from a row's end to the next row's start; the first and last k columns are
    # then redone per row.
    flat = marked.reshape(-1)
    grown = flat.copy()
    for s in range(1, k + 1):
        grown[s:] |= flat[:-s]
        grown[:-s] |= flat[s:]
    region = grown.reshape(h, w)
    for c in range(min(k, w)):
        for col, lo, hi in ((c, 0, c + k + 1), (w - 1 - c, w - 1 - c - k, w)):
            lo, hi = max(lo, 0), min(hi, w)
            region[:, col] = marked[:, lo]
            for j in range(lo + 1, hi):
                region[:, col] |= marked[:, j]
    grown = region.copy()
    for s in range(1, k + 1):
        grown[s:] |= region[:-s]
        grown[:-s] |= region[s:]
    idx = np.flatnonzero(grown)
    bits = _random_u16(rng, 2 * idx.size).reshape(2, -1)
    shift = np.full(bits.shape, -k, np.int32)  # (2, n): shifts in u and v
    for cut in cuts:  # the shift is the number of cut points at or below the draw, minus k
        shift += bits >= cut
    r, c = np.divmod(idx.astype(np.int32), np.int32(w))
    r += shift[1]
    c += shift[0]
    np.clip(r, 0, h - 1, out=r)
    np.clip(c, 0, w - 1, out=c)
    r *= np.int32(w)
    r += c
    z.reshape(-1)[idx] = z.reshape(-1)[r]


@lru_cache(maxsize=8)
def _jitter_cuts(sigma_px: float) -> tuple[np.ndarray, int]:
    """uint16 cut points of a rounded N(0, sigma): shift = #(cuts <= draw) - k."""
    def phi(x):
        return 0.5 * (1.0 + math.erf(x / (sigma_px * math.sqrt(2.0))))

    k = 0
    while 65536.0 * (1.0 - phi(k + 0.5)) >= 0.5:  # shifts rarer than 1/65536 cannot be drawn
        k += 1
    cuts = np.array([round(65536.0 * phi(j + 0.5)) for j in range(-k, k)], np.int32)
    return cuts, k


@lru_cache(maxsize=1)
def _normal_table() -> np.ndarray:
    """Standard normal quantiles at the centres of 65536 equal-probability bins."""
    from scipy.special import ndtri

    return ndtri((np.arange(65536) + 0.5) / 65536.0).astype(np.float32)


def _random_u16(rng: np.random.Generator, n: int) -> np.ndarray:
    """n uniform uint16 values, drawn as 64-bit integers (4 values per draw: several times
    faster than drawing small integers one at a time)."""
    words = rng.integers(0, np.iinfo(np.uint64).max, (n + 3) // 4, dtype=np.uint64, endpoint=True)
    return words.view(np.uint16)[:n]


def _bernoulli(rng, p: np.ndarray) -> np.ndarray:
    return _random_u16(rng, len(p)) < np.rint(np.asarray(p) * 65536.0)


def _punch_holes(z: np.ndarray, rate: float, rng) -> None:
    """Poisson(rate) round holes of radius U(1, 3) px at uniform positions, in place."""
    if rate <= 0:
        return
    h, w = z.shape
    for _ in range(rng.poisson(rate)):
        cu, cv, rad = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(1.0, 3.0)
        a, b = max(int(cv - rad), 0), min(int(cv + rad) + 2, h)
        c, d = max(int(cu - rad), 0), min(int(cu + rad) + 2, w)
        vv, uu = np.mgrid[a:b, c:d]
        z[a:b, c:d][(uu - cu) ** 2 + (vv - cv) ** 2 <= rad * rad] = 0
