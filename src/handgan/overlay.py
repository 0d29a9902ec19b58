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
    from handgan.plots import draw_skeleton

    layout = layout_of_names(joint_names)
    if colour is None:
        draw_skeleton(ax, uvd, layout)
        return
    uv = np.asarray(uvd)[:, :2]
    for a, b in layout.edges if layout is not None else ():
        ax.plot(uv[[a, b], 0], uv[[a, b], 1], "-", lw=2.4, color=colour, alpha=0.9)
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
    drawn under the prediction in white."""
    import matplotlib.patches as patches

    from handgan.plots import depth_to_rgb, plt

    t = pred.transform
    half = t.half_depth_mm
    rgb = depth_to_rgb(np.asarray(depth_mm, dtype=np.float32), t.centre_uvd[2] - half,
                       t.centre_uvd[2] + half)
    x0, y0, x1, y1 = t.box_px
    fig, (ax_full, ax_zoom) = plt.subplots(1, 2, figsize=OVERLAY_SIZE_IN, dpi=OVERLAY_DPI,
                                           gridspec_kw={"width_ratios": [4, 3]})
    try:
        for ax in (ax_full, ax_zoom):
            ax.imshow(rgb, interpolation="nearest")
            ax.axis("off")
        ax_full.add_patch(patches.Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0,
                                            fill=False, ec="white", lw=1.0))
        ax_full.plot(pred.uvd[:, 0], pred.uvd[:, 1], ".", ms=2, color="white")
        if truth_uvd is not None:
            draw_joints(ax_zoom, truth_uvd, pred.joint_names, TRUTH_COLOUR)
        draw_joints(ax_zoom, pred.uvd, pred.joint_names)
        ax_zoom.set(xlim=(x0 - 0.5, x1 - 0.5), ylim=(y1 - 0.5, y0 - 0.5))
        palm = t.centre_xyz
        label = f"crop centre ({palm[0]:.0f}, {palm[1]:.0f}, {palm[2]:.0f}) mm"
        if error_mm is not None:
            label += f"\nmean error {error_mm:.1f} mm (white: true)"
        ax_zoom.set_title(label, fontsize=8)
        if title:
            ax_full.set_title(title, fontsize=8)
        fig.tight_layout(rect=(0.0, 0.0, 1.0, 0.98))  # a two-line title stays inside
        fig.canvas.draw()
        return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()  # (H, W, 3) uint8
    finally:
        plt.close(fig)


def write_png(path: str | os.PathLike, rgb: np.ndarray) -> Path:
    """An (H, W, 3) uint8 picture as a PNG, written atomically."""
    from PIL import Image

    from handgan.atomic import atomic_write

    path = Path(path)
    atomic_write(path, lambda f: Image.fromarray(rgb, mode="RGB").save(f, format="PNG"),
                 durable=False)
    return path
