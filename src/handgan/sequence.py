"""``handgan predict`` over frame sources: per-frame JSON and overlays, the field's prediction
file, a video of the sequence, an optional smoothed hand centre, and per-frame errors where the
frames have labels.

    sources = open_sources(["seq/", "rec.db3"], intrinsics=None)
    report = predict_frames(est, sources, out="pred/", video="pred/sequence.mp4", smooth=0.5)

Frames go through ``Estimator.locate_batch`` (hand centres) and ``Estimator.estimate_batch``
(crops, network, mapping back), BATCH_FRAMES at a time from files and recordings (one network
call for the batch; on a GPU every crop is cut there), one at a time from a live camera. A frame
that fails (unreadable, no hand) is reported and skipped; the others go on.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from handgan.camera import Intrinsics
from handgan.errors import HandganError
from handgan.frames import (
    LIVE_PREFIX,
    RECORDING_SUFFIXES,
    DatasetFrames,
    FileFrames,
    Frame,
    FrameSource,
    is_nyu_split,
    list_depth_files,
    unique_name,
)

DEFAULT_FPS = 15.0
BATCH_FRAMES = 32  # frames of files and recordings estimated together (a live camera: one)


@dataclass
class PredictReport:
    """What :func:`predict_frames` did.

    Attributes:
        frames: (origin, prediction) for every frame that worked, in input order; origin is the
            frame's file, or ``REC.db3#N`` / ``realsense#N`` for frame N of a stream.
        failures: one line per frame that failed ("<origin>: <problem>").
        written: files written into the output folder (and the video).
        errors_mm: per frame of ``frames``: its mean 3D joint error against the labels, or None.
    """

    frames: list[tuple[Path, object]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    written: list[Path] = field(default_factory=list)
    errors_mm: list[float | None] = field(default_factory=list)
    video: Path | None = None

    @property
    def mean_error_mm(self) -> float | None:
        """Mean of the per-frame errors over the labelled frames; None without labels."""
        errors = [e for e in self.errors_mm if e is not None]
        return float(np.mean(errors)) if errors else None


class CentreSmoother:
    """Exponential smoothing of the hand centre across frames, in camera mm, with a jump guard.

    ``c_t = alpha * detected_t + (1 - alpha) * c_{t-1}``: alpha = 1 is no smoothing; lower
    values steady a centre that jitters from frame to frame (the crop then jitters less, and
    so do the joints), at the price of lagging a fast hand. A detection more than ``jump_mm``
    from the smoothed centre (the hand moved fast, or a new hand) restarts the filter there
    instead of dragging the crop across the frame; so does a frame where no hand was found.
    """

    def __init__(self, alpha: float, jump_mm: float) -> None:
        if not 0 < alpha <= 1:
            raise HandganError(f"smoothing alpha must be > 0 and <= 1, got {alpha}")
        if not jump_mm > 0:
            raise HandganError(f"smoothing jump guard must be > 0 mm, got {jump_mm}")
        self.alpha, self.jump_mm = float(alpha), float(jump_mm)
        self._xyz: np.ndarray | None = None

    def reset(self) -> None:
        self._xyz = None

    def __call__(self, centre_uvd: np.ndarray, intr: Intrinsics) -> np.ndarray:
        """Detected centre (3,) uvd -> smoothed centre (3,) uvd, in the same camera."""
        xyz = intr.uvd_to_xyz(np.asarray(centre_uvd, dtype=np.float64))
        if self._xyz is None or np.linalg.norm(xyz - self._xyz) > self.jump_mm:
            self._xyz = xyz
        else:
            self._xyz = self.alpha * xyz + (1.0 - self.alpha) * self._xyz
        return intr.xyz_to_uvd(self._xyz)


def open_sources(inputs: Sequence[str | os.PathLike], intrinsics: Intrinsics | None = None,
                 max_frames: int | None = None) -> list[FrameSource]:
    """Command-line inputs -> frame sources, in order: ``realsense[:SERIAL]`` a live RealSense
    camera; a ``.bag`` / ``.db3`` file a RealSense recording (its own camera and depth unit); a
    folder holding ``joint_data.mat`` an NYU-format labelled split (its camera, NYU); runs of
    other folders and files one source of depth frame files with ``intrinsics``.
    ``max_frames`` caps recordings and the live camera."""
    sources: list[FrameSource] = []
    plain: list[str | os.PathLike] = []

    def flush() -> None:
        if plain:
            sources.append(FileFrames(list_depth_files(plain), intrinsics))
            plain.clear()

    for item in inputs:
        text = os.fspath(item)
        path = Path(text)
        if text == LIVE_PREFIX or (text.startswith(LIVE_PREFIX + ":") and not path.exists()):
            from handgan.realsense import RealSenseFrames

            flush()
            serial = text.partition(":")[2] or None
            sources.append(RealSenseFrames(None, serial=serial, max_frames=max_frames))
        elif path.suffix.lower() in RECORDING_SUFFIXES:
            from handgan.realsense import RealSenseFrames

            flush()
            if not path.is_file():
                raise HandganError(f"{path}: no such recording")
            sources.append(RealSenseFrames(path, max_frames=max_frames))
        elif path.is_dir() and is_nyu_split(path):
            from handgan.data.nyu import NYUSplit

            flush()
            sources.append(DatasetFrames(NYUSplit(path.parent, path.name)))
        else:
            plain.append(item)
    flush()
    return sources


def predict_frames(estimator, sources: Sequence[FrameSource],
                   out: str | os.PathLike | None = None, overlay: bool = True,
                   video: str | os.PathLike | None = None, fps: float = DEFAULT_FPS,
                   smooth: float | None = None, jump_mm: float | None = None,
                   progress: bool = False, on_failure: Callable[[str], None] | None = None,
                   inputs: Sequence[str | os.PathLike] = ()) -> PredictReport:
    """Estimate every frame of ``sources`` in order with an ``inference.Estimator``; a bad
    frame does not stop the rest.

    With ``out``: per frame ``OUT/<name>.json`` (uvd and xyz per joint; for labelled frames
    also the true joints and ``error_mm``) and, if ``overlay``, ``OUT/<name>.overlay.png``;
    for more than one frame ``OUT/predictions.txt`` (the field's format, one line per frame
    that worked) and ``OUT/predictions_frames.txt`` (the origin of each line). Every file is
    written atomically.

    ``video``: a .gif or .mp4 of the overlays of the frames that worked. ``smooth``: alpha of
    :class:`CentreSmoother` (None = each frame localised on its own), with the jump guard
    ``jump_mm`` (None = half the checkpoint's cube side). ``on_failure`` is called with each
    failure line as it happens. ``inputs``: the command-line inputs, so that ``out`` is never
    one of their folders.
    """
    from tqdm import tqdm

    from handgan.overlay import OverlayRenderer
    from handgan.video import open_video

    out_dir = Path(out) if out is not None else None
    _check_outputs(sources, out_dir, video, inputs)
    smoother = (CentreSmoother(smooth, jump_mm or estimator.spec.cube_mm[0] / 2.0)
                if smooth is not None else None)
    writer = open_video(video, fps) if video is not None else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)

    report = PredictReport()
    lengths = [s.length for s in sources]
    total = None if None in lengths else sum(lengths)
    live = total is None  # a camera: Ctrl-C ends the sequence, and the outputs are still written
    frames = _frames(sources)
    # disable=None: tqdm shows the bar only on a terminal, so logs and pipes stay clean.
    bar = tqdm(total=total, desc="predict", unit="frame", dynamic_ncols=True,
               disable=None if progress and (total is None or total > 1) else True)
    used: dict[str, int] = {}
    source = None
    renderer = OverlayRenderer()  # one figure for all frames' overlays
    try:
        for k, chunk in _chunks(frames, 1 if live else BATCH_FRAMES):
            if smoother is not None and k != source:
                smoother.reset()  # another camera or recording: the last centre means nothing
            source = k
            for frame, result in zip(chunk, _predict_chunk(estimator, chunk, smoother)):
                bar.update(1)
                if isinstance(result, str):
                    report.failures.append(result)
                    if on_failure is not None:
                        with tqdm.external_write_mode():  # the message does not garble the bar
                            on_failure(result)
                    continue
                _record_frame(report, frame, result, unique_name(frame.name, used), out_dir,
                              overlay, writer, renderer)
    except KeyboardInterrupt:
        if not live:
            if writer is not None:
                writer.close(commit=False)
            raise
    finally:
        bar.close()
        renderer.close()
        frames.close()  # a camera's pipeline stops here, also after Ctrl-C
    if writer is not None:
        report.video = writer.close()
        if report.video is not None:
            report.written.append(report.video)
    if out_dir is not None and len(report.frames) + len(report.failures) > 1 and report.frames:
        _write_prediction_file(report, out_dir)
    return report


def _write_prediction_file(report: PredictReport, out_dir: Path) -> None:
    """``predictions.txt`` (the field's format, the frames that worked, in order) and
    ``predictions_frames.txt`` (the origin of each line)."""
    from handgan.atomic import atomic_write_text
    from handgan.evaluation.predfile import write_predictions

    listing = out_dir / "predictions_frames.txt"
    atomic_write_text(listing, "".join(f"{f}\n" for f, _ in report.frames))
    uvd = np.stack([p.uvd for _, p in report.frames])  # (N, J, 3)
    report.written += [write_predictions(out_dir / "predictions.txt", uvd), listing]


def _check_outputs(sources: Sequence[FrameSource], out_dir: Path | None,
                   video: str | os.PathLike | None, inputs: Sequence[str | os.PathLike]) -> None:
    """Refuse, before any work, an output folder that is an input folder and outputs that would
    replace an input frame."""
    from handgan.outputs import check_outputs
    from handgan.video import check_video_path

    files = [f for s in sources for f in s.files]
    if out_dir is not None:
        if any(Path(i).is_dir() and Path(i).resolve() == out_dir.resolve() for i in inputs):
            raise HandganError(f"{out_dir}: --out must not be an input folder (its overlay PNGs "
                               "would be read as frames next time)")
        named = [n for s in sources for n in getattr(s, "names", ())]
        check_outputs([out_dir / f"{n}{ext}" for n in named for ext in (".json", ".overlay.png")]
                      + [out_dir / "predictions.txt", out_dir / "predictions_frames.txt"], files)
    if video is not None:
        check_outputs([check_video_path(video)], files)


def _record_frame(report: PredictReport, frame, result: tuple, name: str, out_dir: Path | None,
                  overlay: bool, writer, renderer) -> None:
    """One estimated frame into the report, its files and the video (``renderer``: an
    ``overlay.OverlayRenderer``)."""
    from handgan.atomic import atomic_write_text
    from handgan.overlay import write_png

    depth, pred, error = result
    report.frames.append((Path(frame.origin), pred))
    report.errors_mm.append(error)
    picture = None
    if writer is not None or (out_dir is not None and overlay):
        picture = renderer(depth, pred, Path(frame.origin).name,
                           frame.truth_uvd if error is not None else None, error)
    if writer is not None:
        writer.add(picture)
    if out_dir is None:
        return
    record = {"file": frame.origin, **pred.to_dict()}
    if error is not None:
        truth_xyz = pred.transform.intr.uvd_to_xyz(frame.truth_uvd)  # the frame's camera
        record["truth"] = {n: {"uvd": _rounded(u), "xyz": _rounded(x)}
                           for n, u, x in zip(pred.joint_names, frame.truth_uvd, truth_xyz)}
        record["error_mm"] = round(error, 4)
    atomic_write_text(out_dir / f"{name}.json", format_records(record))
    report.written.append(out_dir / f"{name}.json")
    if overlay:
        report.written.append(write_png(out_dir / f"{name}.overlay.png", picture))


def _frames(sources: Sequence[FrameSource]):
    """(source index, frame) of all sources in order."""
    for k, source in enumerate(sources):
        for frame in source:
            yield k, frame


def _chunks(frames, size: int):
    """(source index, [up to ``size`` consecutive frames of that source]) from :func:`_frames`."""
    chunk, source = [], None
    for k, frame in frames:
        if chunk and (k != source or len(chunk) == size):
            yield source, chunk
            chunk = []
        chunk.append(frame)
        source = k
    if chunk:
        yield source, chunk


def _predict_chunk(estimator, chunk: Sequence[Frame], smoother: CentreSmoother | None) -> list:
    """:func:`_predict_one` of each frame, with one batched localisation and one network call
    for the chunk; a chunk with a failing frame (or frames of several cameras) goes frame by
    frame, so each failure is named and the smoother sees what single frames give it."""
    if len(chunk) > 1:
        try:
            depths = [frame.depth() for frame in chunk]
            cameras = {frame.intrinsics or estimator.intrinsics for frame in chunk}
            if len(cameras) == 1:
                intr = cameras.pop()
                centres = estimator.locate_batch(depths, intr)  # may fail: the smoother untouched
                if smoother is not None:
                    centres = [smoother(c, intr) for c in centres]
                preds = estimator.estimate_batch(depths, intr, list(centres))
                return [_with_error(d, p, f, intr) for d, p, f in zip(depths, preds, chunk)]
        except HandganError:
            pass
    return [_predict_one(estimator, frame, smoother) for frame in chunk]


def _with_error(depth: np.ndarray, pred, frame: Frame, intr: Intrinsics) -> tuple:
    """(depth, prediction, its mean 3D error if the frame has labels of the predicted joints,
    else None)."""
    from handgan.overlay import mean_error_mm, same_joints

    if frame.truth_uvd is None or not same_joints(frame.joint_names, pred.joint_names):
        return depth, pred, None
    return depth, pred, mean_error_mm(pred, frame.truth_uvd, intr)


def _predict_one(estimator, frame: Frame, smoother: CentreSmoother | None):
    """:func:`_with_error` of one frame, or its failure line."""
    try:
        depth = frame.depth()
        try:
            intr = frame.intrinsics or estimator.intrinsics
            if smoother is None:
                pred = estimator.estimate(depth, intr)
            else:
                centre = smoother(estimator.locate(depth, intr), intr)
                pred = estimator.estimate(depth, intr, centre_uvd=centre)
        except HandganError as e:
            raise HandganError(f"{frame.origin}: {e}") from None
    except HandganError as e:
        if smoother is not None:
            smoother.reset()
        message = str(e)
        return message if message.startswith(frame.origin) else f"{frame.origin}: {message}"
    return _with_error(depth, pred, frame, intr)


def _rounded(values: np.ndarray) -> list[float]:
    return [round(float(v), 4) for v in values]  # 1e-4 px / mm: far below any model's error


def format_records(records: dict[str, Any] | Sequence[dict[str, Any]]) -> str:
    """Prediction records (``{"file": ..., **Prediction.to_dict()}``) as JSON text with one joint
    per line: a single record as an object, several as a list."""
    def one(record: dict[str, Any], indent: str) -> str:
        items = []
        for key, value in record.items():
            if key in ("joints", "truth"):
                joints = ",\n".join(f"{indent}    {json.dumps(name)}: {json.dumps(j)}"
                                     for name, j in value.items())
                items.append(f"{indent}  {json.dumps(key)}: {{\n{joints}\n{indent}  }}")
            else:
                items.append(f"{indent}  {json.dumps(key)}: {json.dumps(value)}")
        return f"{indent}{{\n" + ",\n".join(items) + f"\n{indent}}}"

    if isinstance(records, dict):
        return one(records, "") + "\n"
    return "[\n" + ",\n".join(one(r, "  ") for r in records) + "\n]\n"
