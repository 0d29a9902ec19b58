"""Write a synthetic dataset in the NYU hand dataset's on-disk format, in parallel and resumably.

Layout written (the real NYU layout, view 1 only)::

    OUT/train/depth_1_0000001.png ...  joint_data.mat  handgan_extra.npz
    OUT/test/...
    OUT/handgan_synth.json             # written last: its presence means "complete"

Work is split into chunks of frames. Each chunk's PNGs and labels are written atomically into the
split folders and ``OUT/.partial/``; an interrupted run leaves no ``joint_data.mat`` and no manifest
(so it never looks complete) and the same command resumes it, redoing only unfinished chunks.
Every frame has its own random stream (seed, split, index), so the bytes do not depend on the
number of workers or on where a run was interrupted.
"""
from __future__ import annotations

import json
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np
from tqdm import tqdm

from handgan import __version__
from handgan.atomic import atomic_write, atomic_write_text
from handgan.data.nyu import depth_png_name, write_depth_png, write_joint_data
from handgan.errors import HandganError
from handgan.synth import hand as H
from handgan.synth.frame import SynthConfig, frame_rng, subject_shapes, synthesize_frame

MANIFEST = "handgan_synth.json"
EXTRA = "handgan_extra.npz"
PARTIAL = ".partial"
CHUNK = 32
MAX_FRAMES = 9_999_999  # per split: NYU's depth_1_NNNNNNN.png names
# A lower bound of the bytes a frame takes (PNG + labels; measured: about 58 kB a hand-only frame
# and 96 kB a full-scene frame): a dataset that cannot fit even so is refused up front.
MIN_FRAME_BYTES = 20_000
# PNG deflate per scene: full frames use ISA-L (3-4x faster than zlib, ~10 % smaller files on
# them); hand frames keep zlib, so they stay byte for byte those of datasets made before.
PNG_DEFLATE = {"full": "isal", "hand": "zlib"}


def _check_free_space(out: Path, frames: int) -> None:
    folder = next((p for p in (out, *out.parents) if p.is_dir()), Path("."))
    free = shutil.disk_usage(folder).free
    if frames * MIN_FRAME_BYTES > free:
        raise HandganError(f"{out}: {frames:,} frames need at least "
                           f"{frames * MIN_FRAME_BYTES / 1e9:,.1f} GB, {folder} has "
                           f"{free / 1e9:,.1f} GB free")


def synthesize_dataset(out: str | Path, n_train: int, n_test: int, seed: int = 0, workers: int = 1,
                       config: SynthConfig | None = None, overwrite: bool = False,
                       progress: bool = True) -> Path:
    """Generate ``n_train`` + ``n_test`` frames into ``out``; returns the dataset folder."""
    out = Path(out)
    cfg = config or SynthConfig()
    if n_train < 0 or n_test < 0:
        raise HandganError(f"frame counts must be >= 0, got train={n_train} test={n_test}")
    if n_train + n_test == 0:
        raise HandganError("nothing to generate: --train and --test are both 0")
    if workers < 1:
        raise HandganError(f"--workers must be >= 1, got {workers}")
    if seed < 0:
        raise HandganError(f"--seed must be >= 0, got {seed}")
    if max(n_train, n_test) > MAX_FRAMES:
        raise HandganError(f"at most {MAX_FRAMES:,} frames per split (NYU's file names have 7 "
                           f"digits), got train={n_train} test={n_test}")
    params = {"version": __version__, "seed": seed, "train": n_train, "test": n_test,
              "config": _config_dict(cfg)}
    manifest = read_manifest(out) if out.is_dir() else None
    if manifest is not None and not overwrite and all(manifest.get(k) == v
                                                      for k, v in params.items()):
        return out  # the same command ran to the end before: the dataset is complete
    _check_free_space(out, n_train + n_test)
    _prepare_output(out, params, overwrite)

    splits = [("train", n_train), ("test", n_test)]
    jobs = [(str(out), split, start, min(start + CHUNK, n), seed, cfg)
            for split, n in splits for start in range(0, n, CHUNK)
            if not (out / PARTIAL / _chunk_name(split, start)).exists()]
    done_frames = n_train + n_test - sum(stop - start for _, _, start, stop, _, _ in jobs)
    started = time.perf_counter()
    bar = tqdm(total=n_train + n_test, initial=done_frames, unit="frame", desc="synth",
               disable=not progress, dynamic_ncols=True)
    if workers == 1:
        for job in jobs:
            bar.update(_render_chunk(*job))
    else:
        with ProcessPoolExecutor(max_workers=workers, initializer=_worker_init) as pool:
            for count in pool.map(_render_chunk, *zip(*jobs), chunksize=1):
                bar.update(count)
    bar.close()

    for split, n in splits:
        if n:
            _finish_split(out, split, n)
    manifest = dict(params, complete=True, seconds=round(time.perf_counter() - started, 2),
                    splits={split: n for split, n in splits if n}, intrinsics="nyu",
                    note="NYU on-disk format, view 1 only (joint arrays have views = 1)")
    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=2))
    shutil.rmtree(out / PARTIAL, ignore_errors=True)
    return out


def _config_dict(cfg: SynthConfig) -> dict:
    d = asdict(cfg)
    d["depth_range_mm"] = list(cfg.depth_range_mm)
    return d


def _prepare_output(out: Path, params: dict, overwrite: bool) -> None:
    """Create ``out``; resume an interrupted run with the same parameters; refuse anything else."""
    state = out / PARTIAL / "params.json"
    if out.exists() and not out.is_dir():
        raise HandganError(f"{out}: exists and is not a directory")
    if out.exists() and any(out.iterdir()):
        resumable = state.exists() and json.loads(state.read_text()) == params
        if overwrite:
            for child in out.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
        elif read_manifest(out) is not None:
            raise HandganError(f"{out}: holds a complete dataset made with other settings (use "
                               "--overwrite to replace it, or choose another --out)")
        elif not resumable:
            raise HandganError(f"{out}: directory is not empty (use --overwrite to replace it, "
                               "or rerun the same command to resume an interrupted run)")
    try:
        (out / PARTIAL).mkdir(parents=True, exist_ok=True)
        probe = out / PARTIAL / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise HandganError(f"{out}: cannot write there ({e.strerror or e})") from None
    if not state.exists():
        atomic_write_text(state, json.dumps(params))


def _chunk_name(split: str, start: int) -> str:
    return f"{split}_{start:08d}.npz"


def _worker_init() -> None:
    """Keep freed frame buffers in the worker's heap: on Linux, glibc otherwise returns them to the
    OS after each frame and the next frame pays ~450 page faults (~10 % of the frame time)."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-1, 512 << 20)  # M_TRIM_THRESHOLD
        libc.mallopt(-3, 32 << 20)   # M_MMAP_THRESHOLD
    except (OSError, AttributeError):  # not glibc: nothing to tune
        pass


def _render_chunk(out: str, split: str, start: int, stop: int, seed: int, cfg: SynthConfig) -> int:
    """Render frames [start, stop) of a split, write their PNGs, then their labels (atomically)."""
    split_dir = Path(out) / split
    split_dir.mkdir(parents=True, exist_ok=True)
    people = subject_shapes(seed, split, cfg.train_subjects if split == "train" else cfg.test_subjects)
    records = []
    for index in range(start, stop):
        rng = frame_rng(seed, split, index)
        subject = int(rng.integers(len(people)))
        frame = synthesize_frame(rng, people[subject], cfg)
        write_depth_png(split_dir / depth_png_name(index), frame.depth_mm,
                        deflate=PNG_DEFLATE[cfg.scene])
        records.append((frame, subject))
    arrays = {key: np.stack([getattr(f, name) for f, _ in records]) for key, name in (
        ("joint_xyz", "joints_xyz"), ("joint_uvd", "joints_uvd"), ("visible", "visible"),
        ("joint_radii", "joint_radii"), ("angles", "angles"), ("rotation", "rotation"),
        ("shape", "shape"))}
    arrays["subject"] = np.array([s for _, s in records])
    arrays["background"] = np.array([f.background for f, _ in records])
    atomic_write(Path(out) / PARTIAL / _chunk_name(split, start), lambda f: np.savez(f, **arrays))
    return stop - start


def _finish_split(out: Path, split: str, n: int) -> None:
    """Gather the chunks of a split into NYU's joint_data.mat and our extra ground truth."""
    parts = []
    for start in range(0, n, CHUNK):
        with np.load(out / PARTIAL / _chunk_name(split, start)) as z:
            parts.append({k: z[k] for k in z.files})
    merged = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    extra = {k: v for k, v in merged.items() if k not in ("joint_xyz", "joint_uvd")}
    extra["angle_names"] = np.array(H.ANGLE_NAMES)
    atomic_write(out / split / EXTRA, lambda f: np.savez(f, **extra))
    write_joint_data(out / split / "joint_data.mat", merged["joint_uvd"], merged["joint_xyz"])


def read_manifest(root: str | Path) -> dict | None:
    """The manifest of a complete synthetic dataset, or None if ``root`` is not one."""
    path = Path(root) / MANIFEST
    return json.loads(path.read_text()) if path.exists() else None
