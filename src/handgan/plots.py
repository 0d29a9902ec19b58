"""Pictures people look at: depth frames with skeletons drawn on them."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a screen
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.collections import LineCollection

from handgan.atomic import atomic_write
from handgan.joints import JointLayout, layout_for

# One colour per digit (joints.DIGITS): little, ring, middle, index, thumb, palm.
_FINGER_COLOURS = ("#e41a1c", "#ff7f00", "#4daf4a", "#377eb8", "#984ea3", "#222222")


def draw_skeleton(ax, uv: np.ndarray, layout: JointLayout | None = None,
                  visible: np.ndarray | None = None, offset=(0.0, 0.0)) -> None:
    """Draw a skeleton (uv in image pixels) on an image axis, bones coloured by finger; hidden
    joints hollow. ``layout`` defaults to the one with as many joints as ``uv`` has; a joint set
    of no known dataset is drawn as joints alone."""
    pts = np.asarray(uv)[:, :2] - np.asarray(offset)
    layout = layout or layout_for(len(pts))
    digits = layout.digits if layout is not None else (0,) * len(pts)
    edges = layout.edges if layout is not None else ()
    draw_bones(ax, pts, edges, [_FINGER_COLOURS[digits[b]] for _, b in edges], 1.6)
    shown = np.ones(len(pts), bool) if visible is None else np.asarray(visible, bool)
    faces = [_FINGER_COLOURS[d] if v else "none" for d, v in zip(digits, shown)]
    ax.scatter(pts[:, 0], pts[:, 1], s=4.5 ** 2, c=faces, edgecolors="white", linewidths=0.8,
               zorder=2)


def draw_bones(ax, pts: np.ndarray, edges, colours, width: float) -> None:
    """The bones ``edges`` ((a, b) joint pairs) of (J, 2) points as one artist (a ``plot`` per
    bone and per joint took ~40 ms of each overlay), drawn where ``plot`` draws lines (zorder
    2)."""
    if len(edges):
        ax.add_collection(LineCollection([pts[[a, b]] for a, b in edges], colors=colours,
                                         linewidths=width, alpha=0.9, zorder=2))


def depth_to_rgb(depth_mm: np.ndarray, near_mm: float, far_mm: float,
                 rgba8: bool = False) -> np.ndarray:
    """Colour-map depth over [near, far]; pixels without depth (0) are black. (H, W, 3) float
    RGB, or with ``rgba8`` (H, W, 4) uint8 RGBA (what matplotlib draws fastest)."""
    t = np.clip((depth_mm - near_mm) / max(far_mm - near_mm, 1e-6), 0.0, 1.0)
    if rgba8:
        rgba = plt.get_cmap("viridis_r")(t, bytes=True)
        rgba[depth_mm <= 0, :3] = 0
        return rgba
    rgb = plt.get_cmap("viridis_r")(t)[..., :3]
    rgb[depth_mm <= 0] = 0.0
    return rgb


def sample_grid(frames: list[np.ndarray], joints_uvd: list[np.ndarray], out: str | Path,
                visible: list[np.ndarray] | None = None, titles: list[str] | None = None,
                cols: int = 4, zoom: bool = True, margin_px: int = 30) -> Path:
    """A grid of depth frames, each with its skeleton; zoomed on the hand by default."""
    n = len(frames)
    fig, axes = _grid(n, cols, (3.0, 3.0))
    for k, ax in enumerate(axes[:n]):
        depth, uvd = frames[k], np.asarray(joints_uvd[k])
        centre_d = float(np.median(uvd[:, 2]))
        rgb = depth_to_rgb(depth, centre_d - 150.0, centre_d + 200.0)
        offset = (0.0, 0.0)
        if zoom:
            # Square box around the joints, so small far-away hands are as readable as near ones.
            lo, hi = uvd[:, :2].min(0) - margin_px, uvd[:, :2].max(0) + margin_px
            half = 0.5 * max(hi - lo)
            c = 0.5 * (lo + hi)
            u0, v0 = int(np.floor(c[0] - half)), int(np.floor(c[1] - half))
            size = int(np.ceil(2 * half))
            canvas = np.zeros((size, size, 3))
            src = rgb[max(v0, 0):v0 + size, max(u0, 0):u0 + size]
            canvas[max(-v0, 0):max(-v0, 0) + src.shape[0], max(-u0, 0):max(-u0, 0) + src.shape[1]] = src
            rgb, offset = canvas, (u0, v0)
        ax.imshow(rgb, interpolation="nearest")
        draw_skeleton(ax, uvd, None, None if visible is None else visible[k], offset)
        ax.set(xlim=(-0.5, rgb.shape[1] - 0.5), ylim=(rgb.shape[0] - 0.5, -0.5))
        if titles:
            ax.set_title(titles[k], fontsize=8)
    return save_figure(fig, out)


def _grid(n: int, cols: int, cell_inches: tuple[float, float]) -> tuple[plt.Figure, np.ndarray]:
    """A figure of ``n`` panels, ``cols`` to a row (fewer for small n), axes off: (figure, the
    flat array of its axes, the first ``n`` to draw in)."""
    cols = max(1, min(cols, n))
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(cell_inches[0] * cols, cell_inches[1] * rows),
                             squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    return fig, axes.ravel()


def save_figure(fig: plt.Figure, out: str | Path) -> Path:
    """Lay out, write ``out`` as a 90-dpi PNG (atomically, creating its folder), close."""
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda f: fig.savefig(f, format="png", dpi=90), durable=False)
    plt.close(fig)
    return out


def tile(images: np.ndarray, cols: int, gap: int = 2) -> np.ndarray:
    """(N, H, W, ...) uint8 -> one (rows*H, cols*W, ...) image with ``gap`` px of white between."""
    n, h, w = images.shape[:3]
    cols = max(1, min(cols, n))
    rows = -(-n // cols)
    canvas = np.full((rows * h + (rows - 1) * gap, cols * w + (cols - 1) * gap, *images.shape[3:]),
                     255, np.uint8)
    for k, image in enumerate(images):
        r, c = divmod(k, cols)
        canvas[r * (h + gap):r * (h + gap) + h, c * (w + gap):c * (w + gap) + w] = image
    return canvas


def crop_pairs_image(real: np.ndarray, fake: np.ndarray, cols: int = 4, gap: int = 2) -> np.ndarray:
    """Real crops beside Gen(their joints): an (H, W) grey uint8 image of ``cols`` pairs per row
    (``gap`` white px between pairs, none within one), for a PNG or TensorBoard's ``add_image``.
    ``real``, ``fake``: (N, S, S) normalised crops in [-1, 1] (near = dark, background = white).
    """
    pairs = np.concatenate([np.asarray(real, np.float32), np.asarray(fake, np.float32)], axis=2)
    return tile(np.round((np.clip(pairs, -1, 1) + 1) * 127.5).astype(np.uint8), cols, gap)


def write_grey_png(path: str | Path, image: np.ndarray) -> Path:
    """Write an (H, W) uint8 image as a PNG, atomically."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: Image.fromarray(image, mode="L").save(f, format="PNG"),
                 durable=False)
    return path


def crop_skeleton_grid(crops: np.ndarray, pred_px: np.ndarray, true_px: np.ndarray,
                       out: str | Path, titles: list[str] | None = None, cols: int = 4) -> Path:
    """(N, S, S) normalised crops with the true skeleton (white, thin) under the predicted one
    (colours), both (N, J, 2) in crop pixels (x = column, y = row). The bones of a known layout
    (``joints.LAYOUTS``) are drawn; of another joint set only the joints."""
    n = len(crops)
    fig, axes = _grid(n, cols, (2.6, 2.7))
    for k, ax in enumerate(axes[:n]):
        size = crops[k].shape[-1]
        ax.imshow(crops[k], cmap="gray", vmin=-1, vmax=1, interpolation="nearest")
        t, p = np.asarray(true_px[k]), np.asarray(pred_px[k])
        layout = layout_for(len(t))
        if layout is not None:
            for a, b in layout.edges:
                ax.plot(t[[a, b], 0], t[[a, b], 1], "-", lw=2.2, color="white", alpha=0.8)
        else:
            ax.plot(t[:, 0], t[:, 1], "o", ms=4, color="white", alpha=0.8)
        draw_skeleton(ax, p, layout)
        ax.set(xlim=(-0.5, size - 0.5), ylim=(size - 0.5, -0.5))
        if titles:
            ax.set_title(titles[k], fontsize=8)
    return save_figure(fig, out)
