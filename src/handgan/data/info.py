"""``handgan data info``: what a data source holds, and which of its frames are unusable."""
from __future__ import annotations

import numpy as np
from tqdm import tqdm

from handgan.data.sources import SourceSpec, open_split, split_names
from handgan.errors import HandganError
from handgan.joints import readable_names
from handgan.preprocess import localize_hand


def describe_source(spec: SourceSpec, check: int | None = 200, progress: bool = False) -> dict:
    """Frames per split, joints, intrinsics, depth range and bad frames of a source.

    Depth statistics and bad-frame checks read ``check`` evenly spaced frames per split (all
    frames when ``check`` is None): reading all 72k NYU frames takes minutes.
    """
    report = {"source": str(spec), "splits": {}}
    if not split_names(spec):
        raise HandganError(f"{spec}: no splits found (expected train/ and test/ folders of "
                           "frames)")
    for split in split_names(spec):
        reader = open_split(spec, split)
        n = len(reader)
        picked = (np.arange(n) if check is None or check >= n
                  else np.linspace(0, n - 1, check).astype(int))
        uvd = reader.joints_uvd()
        lo, hi, bad = np.inf, -np.inf, []
        for i in tqdm(picked, desc=f"checking {split}", unit="frame", disable=not progress):
            path = reader.frame_path(int(i))
            try:
                depth = reader.depth(int(i))
                valid = depth[depth > 0]
                if valid.size:
                    lo, hi = min(lo, float(valid.min())), max(hi, float(valid.max()))
                localize_hand(depth, reader.intrinsics)
                if uvd is not None and not np.all(np.isfinite(uvd[i])):
                    raise HandganError("labels contain NaN")
            except HandganError as e:
                bad.append({"frame": int(i), "file": str(path), "problem": str(e)})
        intr = reader.intrinsics
        report["splits"][split] = {
            "frames": n,
            "labeled": uvd is not None,
            "joints": len(reader.joint_names),
            "joint_names": list(readable_names(reader.joint_names)),
            "dataset_joint_names": list(reader.joint_names),  # as the dataset's files name them
            "intrinsics": {"fx": intr.fx, "fy": intr.fy, "cx": intr.cx, "cy": intr.cy,
                           "width": intr.width, "height": intr.height, "y_up": intr.y_up},
            "cube_mm": reader.default_cube_mm,
            "checked": int(len(picked)),
            "depth_range_mm": [lo, hi] if np.isfinite(lo) else None,
            "bad_frames": bad,
        }
    return report


def format_report(report: dict) -> str:
    lines = [f"source: {report['source']}"]
    for split, r in report["splits"].items():
        i = r["intrinsics"]
        depth = ("no valid depth in the checked frames" if r["depth_range_mm"] is None
                 else "{:.0f}-{:.0f} mm".format(*r["depth_range_mm"]))
        names = ", ".join(r["joint_names"][:4]) + (", ..." if r["joints"] > 4 else "")
        lines += [
            f"[{split}] {r['frames']} frames, " + (f"{r['joints']} joints ({names})" if r["labeled"]
                                                   else "unlabelled"),
            f"  intrinsics: fx {i['fx']:g}, fy {i['fy']:g}, cx {i['cx']:g}, cy {i['cy']:g}, "
            f"{i['width']}x{i['height']}, y {'up' if i['y_up'] else 'down'}; "
            f"cube {r['cube_mm']:g} mm",
            f"  depth range: {depth} (over {r['checked']} checked frames)",
            f"  bad frames: {len(r['bad_frames'])} of {r['checked']} checked",
        ]
        lines += [f"    {b['file']}: {b['problem']}" for b in r["bad_frames"][:10]]
        if len(r["bad_frames"]) > 10:
            lines.append(f"    ... and {len(r['bad_frames']) - 10} more")
    return "\n".join(lines)
