"""The field's two comparison figures (success-rate curves, per-joint mean errors) and the
generator's real | Gen(J) | difference grid, as PNGs.

Figures are built with ``matplotlib.figure.Figure`` directly, not pyplot: no global figure
registry and no backend to select, so nothing leaks between calls and no screen is ever needed.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from handgan.atomic import atomic_write

# What the y axis of each curve kind counts (the field's wording).
_CURVE_LABELS = {
    "max-frame": "frames with all joints within D (%)",
    "mean-frame": "frames with mean joint error within D (%)",
    "joint": "joints within D (%)",
}
_DPI = 110


def plot_success_curves(out: str | os.PathLike, thresholds_mm: Sequence[float],
                        rates: Mapping[str, Sequence[float]],
                        mean_errors_mm: Mapping[str, float], curve: str = "max-frame",
                        title: str | None = None) -> Path:
    """Success-rate curves over the (T,) thresholds D in mm, one line per method (name ->
    (T,) fractions in [0, 1], in legend order, its mean error in the legend); ``curve`` names
    the kind of curve (the y label). Returns the PNG path."""
    t = np.asarray(thresholds_mm, dtype=np.float64)
    fig = Figure(figsize=(6.4, 4.8))
    ax = fig.subplots()
    for name, r in rates.items():
        ax.plot(t, 100.0 * np.asarray(r, dtype=np.float64), lw=2.0,
                label=f"{name} ({mean_errors_mm[name]:.2f} mm)")
    ax.set(xlim=(t[0], t[-1]), ylim=(0, 100), xlabel="error threshold D (mm)",
           ylabel=_CURVE_LABELS.get(curve, "success rate (%)"))
    ax.grid(True, alpha=0.4)
    # Curves climb from the lower left to the upper right, so the lower right stays empty.
    ax.legend(loc="lower right", title="method (mean error)", fontsize=9, title_fontsize=9)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return _save(fig, out)


def plot_per_joint_errors(out: str | os.PathLike, joint_names: Sequence[str],
                          per_joint_mm: Mapping[str, Sequence[float]],
                          mean_errors_mm: Mapping[str, float], title: str | None = None) -> Path:
    """Grouped bar chart of per-joint mean errors (method name -> (J,) mm, in legend order),
    plus a last "mean" group of the mean errors, one colour per method. Returns the PNG path."""
    labels = [*joint_names, "mean"]
    methods = list(per_joint_mm)
    x = np.arange(len(labels))
    width = 0.8 / max(len(methods), 1)
    fig = Figure(figsize=(max(6.4, 0.55 * len(labels) + 2.0), 4.8))
    ax = fig.subplots()
    for k, name in enumerate(methods):
        heights = [*np.asarray(per_joint_mm[name], dtype=np.float64), mean_errors_mm[name]]
        ax.bar(x + (k - (len(methods) - 1) / 2) * width, heights, width, label=name)
    ax.axvline(len(joint_names) - 0.5, color="0.5", lw=0.8, ls="--")  # joints | overall mean
    ax.set_xticks(x)
    ax.set_xticklabels(labels, rotation=45, ha="right", rotation_mode="anchor")
    ax.set_xlim(-0.6, len(labels) - 0.4)
    ax.set_ylabel("mean error (mm)")
    ax.grid(True, axis="y", alpha=0.4)
    ax.set_axisbelow(True)
    # Headroom above the tallest bar so the legend sits over empty space, not over bars.
    ax.set_ylim(0, ax.get_ylim()[1] * 1.25)
    ax.legend(loc="upper left", ncols=max(1, min(len(methods), 4)), fontsize=9)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return _save(fig, out)


def plot_generated(out: str | os.PathLike, real: np.ndarray, fake: np.ndarray,
                   diff_mm: np.ndarray, regions: np.ndarray | None, row_labels: Sequence[str],
                   vmax_mm: float) -> Path:
    """One row per frame: real crop | Gen(J) | |real - Gen(J)| as a heat map in mm.

    Args:
        real, fake: (N, S, S) normalised crops in [-1, 1] (near = dark, background = white).
        diff_mm: (N, S, S) absolute depth differences in mm.
        regions: (N, S, S) hand-region masks, outlined on the difference, or None.
        vmax_mm: top of the difference colour scale (larger differences saturate).
    """
    n = len(real)
    fig = Figure(figsize=(6.4, 0.4 + 2.0 * n), layout="constrained")  # >= 700 px wide
    axes = fig.subplots(n, 3, squeeze=False)
    heat = None
    for i in range(n):
        for ax, crop in zip(axes[i, :2], (real[i], fake[i])):
            ax.imshow(crop, cmap="gray", vmin=-1.0, vmax=1.0, interpolation="nearest")
        heat = axes[i, 2].imshow(diff_mm[i], cmap="inferno", vmin=0.0, vmax=vmax_mm,
                                 interpolation="nearest")
        if regions is not None and regions[i].any() and not regions[i].all():
            axes[i, 2].contour(regions[i], levels=[0.5], colors="cyan", linewidths=0.8)
        axes[i, 0].set_ylabel(row_labels[i], fontsize=8)
        for ax in axes[i]:
            ax.set(xticks=[], yticks=[])
    for ax, title in zip(axes[0], ("real crop", "Gen(J)", "|real - Gen(J)|")):
        ax.set_title(title, fontsize=10)
    if heat is not None:
        fig.colorbar(heat, ax=list(axes[:, 2]), label="depth difference (mm)", extend="max",
                     shrink=0.5, aspect=30)
    return _save(fig, out)


def _save(fig: Figure, out: str | os.PathLike) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda f: fig.savefig(f, format="png", dpi=_DPI), durable=False)
    return out
