"""``handgan show-samples``: a picture of some frames of an NYU-format dataset with their labels."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from handgan.data.nyu import NYUSplit
from handgan.errors import HandganError
from handgan.joints import NYU_EVAL_IDS
from handgan.outputs import check_outputs
from handgan.plots import sample_grid


def show_samples(root: str | Path, out: str | Path, count: int = 16, split: str = "train",
                 seed: int = 0, cols: int = 4, zoom: bool = True) -> Path:
    """Draw ``count`` frames (picked with ``seed``) of ``root/split`` with their 14-joint
    skeletons."""
    if count < 1:
        raise HandganError(f"--count must be >= 1, got {count}")
    check_outputs([out])
    data = NYUSplit(Path(root), split, joints="all36")
    n = len(data)
    pick = np.sort(np.random.default_rng(seed).choice(n, size=min(count, n), replace=False))
    uvd = data.joints_uvd()[:, list(NYU_EVAL_IDS)]
    visible = _synthetic_visibility(Path(root) / split, data)
    frames = [data.depth(int(i)) for i in pick]
    titles = [data.frame_path(int(i)).name for i in pick]
    vis = None if visible is None else [visible[i][list(NYU_EVAL_IDS)] for i in pick]
    return sample_grid(frames, [uvd[i] for i in pick], out, visible=vis, titles=titles,
                       cols=cols, zoom=zoom)


def _synthetic_visibility(split_dir: Path, data: NYUSplit) -> np.ndarray | None:
    """Per-joint visibility of our synthetic datasets (None for real NYU, which has none)."""
    extra = split_dir / "handgan_extra.npz"
    if not extra.exists():
        return None
    with np.load(extra) as z:
        visible = z["visible"]
    return visible[np.asarray(data.frame_ids)]
