"""Overlays of predictions on depth frames: the PNGs and the video frames of ``handgan predict``.

One picture per frame: left, the whole frame with the crop box and the joints; right, the crop
box enlarged with the predicted skeleton, and, for a labelled frame, the true skeleton under it
in white with the frame's mean 3D error in the title. The picture is rendered once to an RGB
array (:func:`render_overlay`), which both the PNG and the sequence video use.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from handgan.joints import layout_of_names

if TYPE_CHECKING:
    from handgan.inference import Prediction

OVERLAY_SIZE_IN = (8.0, 3.8)  # figure inches; at OVERLAY_DPI a 720 x 342 px picture
OVERLAY_DPI = 90
TRUTH_COLOUR = "white"


def draw_joints(ax, uvd: np.ndarray, joint_names: Sequence[str], colour: str | None = None
                ) -> None:
    """The skeleton of ``uvd`` (J, 2+) in image pixels with the bones of its layout in
    ``joints.py`` (joints only for an unknown joint set): finger by finger in colour
    (``colour`` None, ``plots.draw_skeleton``) or all in one colour (the true skeleton)."""
    from handgan.plots import draw_bones, draw_skeleton

    layout = layout_of_names(joint_names)
    if colour is None:
        draw_skeleton(ax, uvd, layout)
        return
    uv = np.asarray(uvd)[:, :2]
    edges = layout.edges if layout is not None else ()
    draw_bones(ax, uv, edges, [colour] * len(edges), 2.4)
    ax.plot(uv[:, 0], uv[:, 1], "o", ms=3.0, mec="black", mew=0.6, color=colour)


def same_joints(a: Sequence[str], b: Sequence[str]) -> bool:
    """Two joint-name lists for the same joints (one layout, readable or dataset names)."""
    return tuple(a) == tuple(b) or (layout_of_names(a) is not None
                                    and layout_of_names(a) is layout_of_names(b))


def mean_error_mm(pred: Prediction, truth_uvd: np.ndarray, intrinsics) -> float:
    """Mean 3D distance (mm) between predicted and true joints, both in the frame's camera."""
    truth_xyz = intrinsics.uvd_to_xyz(np.asarray(truth_uvd, dtype=np.float64))
    return float(np.linalg.norm(pred.xyz - truth_xyz, axis=-1).mean())


def render_overlay(depth_mm: np.ndarray, pred: Prediction, title: str = "",
                   truth_uvd: np.ndarray | None = None, error_mm: float | None = None
                   ) -> np.ndarray:
    """The overlay picture as an (H, W, 3) uint8 RGB array (720 x 342 px): depth colour-mapped
    over the crop cube's depth range (no depth: black), ``truth_uvd`` (the prediction's joints)
    drawn under the prediction in white. For many frames, :class:`OverlayRenderer`."""
    renderer = OverlayRenderer()
    try:
        return renderer(depth_mm, pred, title, truth_uvd, error_mm)
    finally:
        renderer.close()


class OverlayRenderer:
    """:func:`render_overlay` for a sequence: one figure kept for all frames (each frame
    replaces the pictures, the box, the skeletons and the titles), laid out once. A new figure
    per frame spent most of its ~120 ms on the figure and its layout."""

    def __init__(self) -> None:
        self._fig = None
        self._shape: tuple[int, ...] | None = None
        self._skeletons: list = []

    def _build(self, shape: tuple[int, ...]) -> None:
        import matplotlib.patches as patches

        from handgan.plots import plt

        self.close()
        self._fig, (self._full, self._zoom) = plt.subplots(
            1, 2, figsize=OVERLAY_SIZE_IN, dpi=OVERLAY_DPI, gridspec_kw={"width_ratios": [4, 3]})
        blank = np.zeros(shape, np.uint8)
        self._images = [ax.imshow(blank, interpolation="nearest")
                        for ax in (self._full, self._zoom)]
        for ax in (self._full, self._zoom):
            ax.axis("off")
        self._box = self._full.add_patch(patches.Rectangle((0, 0), 1, 1, fill=False, ec="white",
                                                           lw=1.0))
        self._points, = self._full.plot([], [], ".", ms=2, color="white")
        self._full.set(xlim=(-0.5, shape[1] - 0.5), ylim=(shape[0] - 0.5, -0.5))
        self._titles = (self._full.set_title(" ", fontsize=8),
                        self._zoom.set_title(" \n ", fontsize=8))
        self._fig.tight_layout(rect=(0.0, 0.0, 1.0, 0.98))  # room for a two-line title
        self._shape = shape

    def __call__(self, depth_mm: np.ndarray, pred: Prediction, title: str = "",
                 truth_uvd: np.ndarray | None = None, error_mm: float | None = None
                 ) -> np.ndarray:
        from handgan.plots import depth_to_rgb

        t = pred.transform
        half = t.half_depth_mm
        rgb = depth_to_rgb(np.asarray(depth_mm, dtype=np.float32), t.centre_uvd[2] - half,
                           t.centre_uvd[2] + half, rgba8=True)
        if rgb.shape != self._shape:  # the first frame, or another camera
            self._build(rgb.shape)
        for image in self._images:
            image.set_data(rgb)
        x0, y0, x1, y1 = t.box_px
        self._box.set_bounds(x0 - 0.5, y0 - 0.5, x1 - x0, y1 - y0)
        self._points.set_data(pred.uvd[:, 0], pred.uvd[:, 1])
        for artist in self._skeletons:
            artist.remove()
        before = set(self._zoom.get_children())
        if truth_uvd is not None:
            draw_joints(self._zoom, truth_uvd, pred.joint_names, TRUTH_COLOUR)
        draw_joints(self._zoom, pred.uvd, pred.joint_names)
        self._skeletons = [a for a in self._zoom.get_children() if a not in before]
        self._zoom.set(xlim=(x0 - 0.5, x1 - 0.5), ylim=(y1 - 0.5, y0 - 0.5))
        palm = t.centre_xyz
        label = f"crop centre ({palm[0]:.0f}, {palm[1]:.0f}, {palm[2]:.0f}) mm"
        if error_mm is not None:
            label += f"\nmean error {error_mm:.1f} mm (white: true)"
        self._titles[1].set_text(label)
        self._titles[0].set_text(title)
        self._fig.canvas.draw()
        return np.asarray(self._fig.canvas.buffer_rgba())[..., :3].copy()  # (H, W, 3) uint8

    def close(self) -> None:
        if self._fig is not None:
            from handgan.plots import plt

            plt.close(self._fig)
            self._fig, self._shape, self._skeletons = None, None, []


def write_png(path: str | os.PathLike, rgb: np.ndarray) -> Path:
    """An (H, W, 3) uint8 picture as a PNG, written atomically."""
    from PIL import Image

    from handgan.atomic import atomic_write

    path = Path(path)
    atomic_write(path, lambda f: Image.fromarray(rgb, mode="RGB").save(f, format="PNG"),
                 durable=False)
    return path
