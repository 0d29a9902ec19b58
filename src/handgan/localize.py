"""Hand localisation in a full depth frame: a learned detector, then learned centre refiners.

1. :class:`HandDetector`: a small fully convolutional network over the whole frame (every 4th
   pixel of a 640 x 480 frame) that scores 32 x 32 px cells for holding the palm centre and
   regresses its place inside the cell; the start depth is the near surface there. A full frame
   holds the body, the other arm, a table, the floor: the nearest object (DeepPrior++'s centre of
   mass, :func:`~handgan.preprocess.localize_hand`) is the hand in only about 80 % of our
   full-frame scenes (docs/results.md), and it cannot tell the labelled hand from the other one.
2. Two :class:`CentreRefiner` stages, each a small CNN regressing where the palm centre lies in
   the normalised frame of a crop centred on the current estimate (as DeepPrior++'s refinement
   network): ``iterations`` times on a coarse cube (``cube_mm``, room for the detection's errors
   of tens of mm), then ``fine_iterations`` times on a finer one (``fine_cube_mm``).
3. A verifier (the refiner's network with one output) scores each refined candidate's coarse
   crop: the detector's ``candidates`` highest peaks are all refined, and
   :func:`candidate_choice` keeps one. The detector's best peak lies on the forearm, the elbow or
   the other arm in about 5 % of our scenes.

All learn from labelled frames only (:func:`train_localizer`): the detector from the frames
themselves, scaled, turned and shifted (:func:`warp_frames`); each refiner from crops centred on
the labelled palm centre shifted by random 3D offsets, the target being the labelled palm centre
in each crop's normalised frame. :class:`Localizer` bundles the networks and their settings; its
state travels inside training checkpoints under ``"localizer"``.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from handgan.camera import Intrinsics
from handgan.checkpoint import load_checkpoint, save_checkpoint
from handgan.dataset import LocatedCentres
from handgan.deviceaugment import FrameBatch
from handgan.errors import HandganError
from handgan.preprocess import CropTransform, crop_depth, localize_hand

CHUNK = 64  # frames located together (one network batch per refinement iteration)


@dataclass(frozen=True)
class LocalizerConfig:
    """The learned centre refiner: its crops, network and training (``localizer.*`` keys)."""

    enabled: bool = True        # train the localiser before the pose network, store it in the run
    size: int = 64              # refiner crop side, px (both refiners)
    cube_mm: float = 400.0      # coarse refiner crop cube side, mm (larger than the pose cube: room
    #                             to see the hand when the detection is off by tens of mm)
    iterations: int = 1         # coarse refinement steps at inference (each re-crops there)
    fine_cube_mm: float = 200.0  # fine refiner crop cube, mm (0 = no fine stage)
    fine_iterations: int = 3    # fine refinement steps after the coarse ones
    width: int = 16             # refiners: channels of the first conv; doubles per layer
    detector_width: int = 12    # detector: channels of the first conv
    detector_epochs: int = 10
    detector_batch_size: int = 64
    detector_lr: float = 1e-2   # (1e-3 left it short of training: docs/results.md)
    epochs: int = 8             # epochs of each refiner and of the verifier
    batch_size: int = 32        # the refiners' and the verifier's (128: 1 mm worse: results.md)
    lr: float = 1e-3
    samples_per_frame: int = 4  # crops per labelled frame for each refiner (shifted true centres)
    offset_mm: float = 80.0     # scale of the coarse refiner's random 3D shifts (see _offsets)
    fine_offset_mm: float = 40.0  # the same for the fine refiner: the coarse stage's error scale
    max_frames: int = 4000      # labelled frames used at most (a random subset beyond)
    candidates: int = 3         # detector peaks each refined and scored by the verifier (1 = the
    #                             best peak only, no verifier)

    def __post_init__(self) -> None:
        if not (self.size >= 16 and self.size % 16 == 0):
            raise ValueError(f"size must be a multiple of 16, got {self.size}")
        checks = [("cube_mm", ">", 0), ("iterations", ">=", 0), ("fine_cube_mm", ">=", 0),
                  ("fine_iterations", ">=", 0)]
        checks += [(name, ">=", 1) for name in (
            "width", "detector_width", "detector_epochs", "detector_batch_size", "epochs",
            "batch_size", "samples_per_frame", "max_frames", "candidates")]
        checks += [(name, ">", 0) for name in ("lr", "detector_lr")]
        checks += [(name, ">=", 0) for name in ("offset_mm", "fine_offset_mm")]
        for name, op, low in checks:
            value = getattr(self, name)
            if not (value > low if op == ">" else value >= low):
                raise ValueError(f"{name} must be {op} {low}, got {value}")

    @property
    def has_fine(self) -> bool:
        return self.fine_cube_mm > 0 and self.fine_iterations > 0


# A saved config lists every key of its day. One that lists the keys every saved localiser
# section has had since the detector (b31ce05) but not the detector's own batch size and
# learning rate (added at 37107e0) trained the detector on half the refiners' batch at their
# learning rate: read it so, so that a resumed run keeps its localiser.
_KEYS_BEFORE_DETECTOR_LR = frozenset({
    "enabled", "size", "cube_mm", "iterations", "width", "detector_width", "detector_epochs",
    "epochs", "batch_size", "lr", "samples_per_frame", "offset_mm", "max_frames"})


def saved_config(d: Mapping[str, Any]) -> dict[str, Any]:
    """A ``localizer`` config section with what an older saved run meant by its missing keys."""
    d = dict(d)
    if _KEYS_BEFORE_DETECTOR_LR <= d.keys() and "detector_lr" not in d:
        d.setdefault("detector_batch_size", int(d["batch_size"]) // 2)
        d["detector_lr"] = d["lr"]
    return d


class CentreRefiner(nn.Module):
    """(B, 1, S, S) normalised crops -> (B, 3) palm centre in each crop's normalised frame (x, y,
    z in units of half the cube; 0 = the crop's centre). With ``outputs=1`` the same network is
    the verifier: (B, 1) logit that the crop is centred on the palm."""

    def __init__(self, size: int = 64, width: int = 16, outputs: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 1
        for k in range(4):  # S -> S/16
            out = width * 2 ** k
            layers += [nn.Conv2d(channels, out, 3, stride=2, padding=1, bias=False),
                       nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
            channels = out
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(channels * (size // 16) ** 2, 256),
                                  nn.ReLU(inplace=True), nn.Linear(256, outputs))

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(crops))


DETECT_WIDTH_PX = 160  # the detector sees frames subsampled to about this width
CELL = 8  # detector input px per output cell (three stride-2 convs): 32 px of a 640-px frame
MAX_DEPTH_MM = 4000.0  # the detector's depth scale: farther or missing = background


def detector_stride(intr: Intrinsics) -> int:
    """Full-frame px per detector input px (4 for 640-px frames, 2 for 320-px frames)."""
    return max(1, round(intr.width / DETECT_WIDTH_PX))


def detector_input(depth_mm: np.ndarray, stride: int) -> np.ndarray:
    """(H, W) mm -> (ceil(H/s), ceil(W/s)) float32: every s-th pixel (from s // 2), depth in
    [-1, 1] over 0..MAX_DEPTH_MM, missing or farther = 1."""
    sub = np.asarray(depth_mm)[stride // 2::stride, stride // 2::stride].astype(np.float32)
    valid = (sub > 0) & (sub <= MAX_DEPTH_MM)  # NaN compares False
    return np.where(valid, sub * (2.0 / MAX_DEPTH_MM) - 1.0, 1.0).astype(np.float32)


def detector_points(uv: np.ndarray, stride: int) -> np.ndarray:
    """(N, 2) full-frame u, v -> (N, 2) the same points in detector input px."""
    return (np.asarray(uv, np.float64) - stride // 2) / stride


def points_to_cells(points: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(N, 2) detector input px -> (N, 3) [flat cell index, offset x, offset y in [0, 1)]
    (cell c covers input px [8c - 0.5, 8c + 7.5); points outside go to the border cell)."""
    q = (points + 0.5) / CELL
    top = torch.tensor([grid[1] - 1, grid[0] - 1], dtype=q.dtype)
    cell = torch.minimum(torch.clamp(torch.floor(q), min=0), top)  # (x, y) cells
    offset = torch.clamp(q - cell, 0.0, 1.0 - 1e-6)
    return torch.column_stack([cell[:, 1] * grid[1] + cell[:, 0], offset])


class HandDetector(nn.Module):
    """(B, 1, h, w) :func:`detector_input` -> (B, 3, ceil(h/8), ceil(w/8)): per cell the palm
    centre's logit and its place inside the cell (x, y logits of a sigmoid). Dilated layers
    give each cell a view of ~250 input px (the whole frame): the hand, its arm, the body and
    what lies around them, which tell the labelled hand from the other one."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        c = width

        def conv(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation,
                              bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

        self.body = nn.Sequential(*conv(1, c, 2), *conv(c, 2 * c, 2), *conv(2 * c, 4 * c, 2),
                                  *conv(4 * c, 4 * c), *conv(4 * c, 4 * c, dilation=2),
                                  *conv(4 * c, 4 * c, dilation=4), *conv(4 * c, 4 * c, dilation=8))
        self.head = nn.Conv2d(4 * c, 3, 1)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(frames))


def detection_candidates(out: torch.Tensor, stride: int, count: int
                         ) -> tuple[np.ndarray, np.ndarray]:
    """(B, 3, gh, gw) detector output -> ((B, count, 2) full-frame u, v of the ``count`` highest
    peaks of the cell scores (cells no lower than their 8 neighbours: one candidate per blob),
    best first, (B, count) their cell logits); a frame with fewer peaks repeats its best."""
    b, _, gh, gw = out.shape
    scores = out[:, :1]
    peaks = scores >= F.max_pool2d(scores, 3, stride=1, padding=1)
    masked = torch.where(peaks, scores, torch.full_like(scores, -math.inf)).reshape(b, -1)
    top = masked.topk(min(count, gh * gw), dim=1)
    cells = torch.where(torch.isfinite(top.values), top.indices, top.indices[:, :1])  # (B, K)
    if cells.shape[1] < count:
        cells = torch.cat([cells, cells[:, :1].expand(b, count - cells.shape[1])], dim=1)
    logits = torch.gather(scores.reshape(b, -1), 1, cells)
    offsets = torch.sigmoid(torch.gather(out[:, 1:].reshape(b, 2, -1), 2,
                                         cells[:, None, :].expand(b, 2, count)))  # (B, 2, K)
    xy = torch.stack([cells % gw, cells // gw], dim=1).double()  # (B, 2, K)
    p = (xy + offsets.double()) * CELL - 0.5  # detector input px
    return ((p * stride + stride // 2).permute(0, 2, 1).cpu().numpy(),
            logits.double().cpu().numpy())


# How much the detector's peak logit counts beside the verifier's logit when choosing among the
# candidates (docs/results.md: chosen among 0.75-3 on 2,800 frames)
DETECTOR_WEIGHT = 2.0


def candidate_choice(verifier_logits: np.ndarray, peak_logits: np.ndarray) -> np.ndarray:
    """(N, K) verifier and detector logits of each frame's candidates -> (N,) the chosen one:
    the highest sum of the two networks' log-odds, the detector's weighted by DETECTOR_WEIGHT
    (either alone errs more: the verifier tells hands from arms but may reject a hand it sees
    badly, the detector knows which hand is the labelled one from the whole body)."""
    return np.argmax(verifier_logits + DETECTOR_WEIGHT * peak_logits, axis=1)


def surface_depth(depth_mm: np.ndarray, uv: np.ndarray, radius_px: int = 6) -> float | None:
    """The near surface around pixel uv: the 25th percentile of the valid depths within
    ``radius_px`` (None when there are none)."""
    h, w = depth_mm.shape
    u, v = int(round(uv[0])), int(round(uv[1]))
    win = depth_mm[max(v - radius_px, 0):min(v + radius_px + 1, h),
                   max(u - radius_px, 0):min(u + radius_px + 1, w)].astype(np.float64)
    values = win[(win > 0) & (win <= MAX_DEPTH_MM)]
    return float(np.percentile(values, 25)) if len(values) else None


PARTS = ("network", "detector", "fine", "verifier")  # a Localizer's networks, in its state


def _new_part(config: LocalizerConfig, part: str) -> nn.Module:
    """An untrained network for one of PARTS."""
    if part == "detector":
        return HandDetector(config.detector_width)
    return CentreRefiner(config.size, config.width, outputs=1 if part == "verifier" else 3)


class Localizer:
    """Detection + learned refinement: full frames -> hand centre uvd (the palm centre).

    ``network`` is the coarse :class:`CentreRefiner` (``cube_mm`` crops), ``fine`` the fine one
    (``fine_cube_mm`` crops) or None. Without a ``detector`` the start is
    :func:`~handgan.preprocess.localize_hand`'s centre of mass; without a ``verifier`` (a
    :class:`CentreRefiner` with one output, on ``cube_mm`` crops: the hand with its arm) only
    the detector's best peak is refined. All run on ``device``, in eval mode, without gradients.
    """

    def __init__(self, config: LocalizerConfig, network: nn.Module,
                 device: str | torch.device = "cpu", detector: nn.Module | None = None,
                 fine: nn.Module | None = None, verifier: nn.Module | None = None) -> None:
        self.config = config
        self.device = torch.device(device)

        def ready(module: nn.Module | None) -> nn.Module | None:
            return None if module is None else module.to(self.device).eval().requires_grad_(False)

        self.network, self.detector = ready(network), ready(detector)
        self.fine, self.verifier = ready(fine), ready(verifier)

    # ---- state --------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """Plain data for a checkpoint (``weights_only``-safe)."""
        state: dict[str, Any] = {"config": dataclasses.asdict(self.config)}
        for part in PARTS:
            module = getattr(self, part)
            state[part] = None if module is None else {
                k: v.detach().cpu() for k, v in module.state_dict().items()}
        return state

    @classmethod
    def from_state(cls, state: Mapping[str, Any], device: str | torch.device = "cpu",
                   where: str = "checkpoint") -> Localizer:
        """Rebuild from :meth:`state`; HandganError naming ``where`` if it does not fit."""
        try:
            config = LocalizerConfig(**saved_config(state["config"]))
            parts = {}
            for part in PARTS:
                weights = state[part] if part == "network" else state.get(part)
                if part == "network" or weights is not None:
                    parts[part] = _new_part(config, part)
                    parts[part].load_state_dict(weights)
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise HandganError(f"{where}: its hand localiser does not load "
                               f"({str(e).splitlines()[0]})") from None
        return cls(config, device=device, **parts)

    def fingerprint(self) -> str:
        """Identity of the weights and settings (crop caches centred by this localiser use it)."""
        h = hashlib.sha256(repr(sorted(dataclasses.asdict(self.config).items())).encode())
        for module in (self.network, self.detector, self.fine, self.verifier):
            if module is None:
                continue
            for name, value in module.state_dict().items():
                h.update(name.encode())
                h.update(value.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()[:24]

    # ---- inference ----------------------------------------------------------------------------

    def locate(self, depth_mm: np.ndarray, intr: Intrinsics) -> np.ndarray:
        """(H, W) frame in mm -> (3,) palm centre uvd. HandganError "no hand found: ..."."""
        return self.locate_batch([depth_mm], intr)[0]

    def frame_batch(self, frames: Sequence[np.ndarray] | FrameBatch) -> FrameBatch:
        """Frames as the refiners crop them: copied once to a GPU, cut there at every step."""
        return frames if isinstance(frames, FrameBatch) else FrameBatch(frames, self.device)

    def locate_batch(self, frames: Sequence[np.ndarray] | FrameBatch, intr: Intrinsics
                     ) -> np.ndarray:
        """Frames -> (N, 3) palm centres uvd: each candidate start refined, the
        :func:`candidate_choice` kept (the detector's best peak alone without a verifier).
        HandganError "no hand found: ..." when a frame has no usable depth."""
        frames = self.frame_batch(frames)
        found, peak_logits = self.candidates(frames, intr,
                                             self.config.candidates if self.verifier else 1)
        n, k = found.shape[:2]
        if k == 1:
            return found[:, 0]
        scores, _ = self._run(self.verifier, self.config.cube_mm, frames, np.repeat(range(n), k),
                              found.reshape(-1, 3), intr)
        return found[np.arange(n), candidate_choice(scores.reshape(n, k), peak_logits)]

    def candidates(self, frames: Sequence[np.ndarray] | FrameBatch, intr: Intrinsics,
                   count: int) -> tuple[np.ndarray, np.ndarray]:
        """((N, K, 3) the detector's ``count`` best peaks, each refined; (N, K) their peak
        logits) — what the verifier chooses among, and learns from."""
        frames = self.frame_batch(frames)
        starts, peak_logits = self.detect(frames.frames, intr, count)
        n, k = starts.shape[:2]
        found = self.refine(frames, starts.reshape(-1, 3), intr, rows=np.repeat(range(n), k))
        return found.reshape(n, k, 3), peak_logits

    def detect(self, frames: Sequence[np.ndarray], intr: Intrinsics, count: int = 1
               ) -> tuple[np.ndarray, np.ndarray]:
        """Start centres (N, K, 3) uvd, K = ``count``: the detector's peaks, best first, at the
        near surface there; without a detector (K = 1), or where no depth is near a peak, the
        centre of mass of the nearest object. Also (N, K) the detector's logits of the peaks (0
        without a detector). HandganError "no hand found: ..." for a frame with no usable depth.
        """
        if self.detector is None:
            starts = np.stack([localize_hand(d, intr, cube_mm=self.config.cube_mm)
                               for d in frames])[:, None]
            return starts, np.zeros(starts.shape[:2])
        stride = detector_stride(intr)
        x = torch.from_numpy(np.stack([detector_input(d, stride) for d in frames])[:, None])
        with torch.inference_mode():
            uv, logits = detection_candidates(self.detector(x.to(self.device)), stride, count)
        starts = np.empty(uv.shape[:2] + (3,))
        for i, (depth, peaks) in enumerate(zip(frames, uv)):
            fallback = None
            for j, p in enumerate(peaks):
                d = surface_depth(depth, p)
                if d is None and fallback is None:
                    fallback = localize_hand(depth, intr, cube_mm=self.config.cube_mm)
                starts[i, j] = [p[0], p[1], d] if d is not None else fallback
        return starts, logits

    def refine(self, frames: Sequence[np.ndarray] | FrameBatch, starts: np.ndarray,
               intr: Intrinsics, rows: Sequence[int] | None = None) -> np.ndarray:
        """(M, 3) start centres uvd in ``frames[rows]`` (None: one per frame) -> refined:
        ``iterations`` coarse steps, then ``fine_iterations`` fine ones where there is a fine
        refiner; batched over frames."""
        frames = self.frame_batch(frames)
        est = np.array(starts, dtype=np.float64).reshape(-1, 3)
        rows = np.arange(len(est)) if rows is None else rows
        stages = [(self.network, self.config.cube_mm, self.config.iterations)]
        if self.fine is not None:
            stages.append((self.fine, self.config.fine_cube_mm, self.config.fine_iterations))
        for network, cube, iterations in stages:
            for _ in range(iterations):
                norm, transforms = self._run(network, cube, frames, rows, est, intr)  # (M, 3)
                new = np.stack([t.norm_to_uvd(n) for t, n in zip(transforms, norm)])
                # a refiner output off the camera's front: keep the last estimate
                bad = ~(np.isfinite(new).all(axis=1) & (new[:, 2] > 0))
                new[bad] = est[bad]
                est = new
        return est

    def _run(self, network: nn.Module, cube: float, frames: FrameBatch, rows: Sequence[int],
             centres: np.ndarray, intr: Intrinsics) -> tuple[np.ndarray, list]:
        """One network on the crops (``cube`` mm, ``size`` px) of ``frames[rows]`` at
        ``centres`` (M, 3) uvd: (its (M, out) answers as float64, the crops' transforms)."""
        transforms = [CropTransform(c, cube, self.config.size, intr) for c in centres]
        with torch.inference_mode():
            return network(frames.crops(rows, transforms)).double().cpu().numpy(), transforms

    def locate_frames(self, depth_of: Callable[[int], np.ndarray], count: int,
                      intr: Intrinsics, progress: bool = False, desc: str = "localise"
                      ) -> tuple[np.ndarray, dict[int, str]]:
        """Frames 0..count-1 (``depth_of(i)``) -> ((count, 3) centres uvd, NaN where no hand was
        found; {frame: why} for those frames)."""
        centres = np.full((count, 3), np.nan)
        failures: dict[int, str] = {}
        bar = tqdm(total=count, desc=desc, unit="frame", disable=not progress,
                   dynamic_ncols=True)
        for start in range(0, count, CHUNK):
            frames, index = [], []
            for i in range(start, min(start + CHUNK, count)):
                try:
                    frames.append(depth_of(i))
                    index.append(i)
                except HandganError as e:
                    failures[i] = str(e)
            try:
                if frames:
                    centres[index] = self.locate_batch(frames, intr)
            except HandganError:  # a frame without a hand: find it, locate the others
                for k, i in enumerate(index):
                    try:
                        centres[i] = self.locate_batch([frames[k]], intr)[0]
                    except HandganError as e:
                        failures[i] = str(e)
            bar.update(min(start + CHUNK, count) - start)
        bar.close()
        return centres, failures


# ---- training ------------------------------------------------------------------------------------

def _offsets(rng: np.random.Generator, count: int, scale_mm: float) -> np.ndarray:
    """(count, 3) random 3D shifts: isotropic Gaussians whose sigma is drawn log-uniformly from
    scale/8 to scale, so the refiner sees both the detection's large errors and the small ones
    it must polish in its later iterations."""
    sigma = scale_mm * np.exp(rng.uniform(np.log(1 / 8), 0.0, size=(count, 1)))
    return rng.normal(size=(count, 3)) * sigma


@dataclass
class LocalizerSamples:
    """What the networks learn from (one pass over the labelled frames)."""

    frames: np.ndarray        # (N, 1, h, w) float16 detector inputs
    points: np.ndarray        # (N, 2) float32 true palm centre in detector input px
    crops: np.ndarray         # (M, 1, S, S) float16 coarse refiner crops
    targets: np.ndarray       # (M, 3) float32 true palm centre in each crop's normalised frame
    fine_crops: np.ndarray    # (K, 1, S, S) float16 fine refiner crops (K = 0: no fine stage)
    fine_targets: np.ndarray  # (K, 3) float32


def localizer_samples(depth_of: Callable[[int], np.ndarray], frames: Sequence[int],
                      centres_uvd: np.ndarray, intr: Intrinsics, config: LocalizerConfig,
                      seed: int = 0, progress: bool = False) -> LocalizerSamples:
    """Detector inputs and targets for every labelled frame, and ``samples_per_frame`` crops
    for each refiner around its true palm centre shifted by :func:`_offsets` (``offset_mm``
    for the coarse one, ``fine_offset_mm`` for the fine one)."""
    if not len(frames):
        raise HandganError("the hand localiser has no labelled frames to learn from")
    rng = np.random.default_rng((seed, 0x10C))
    stride = detector_stride(intr)
    truth_xyz = intr.uvd_to_xyz(np.asarray(centres_uvd, np.float64))
    stages = [(config.cube_mm, config.offset_mm, [], [])]
    if config.has_fine:
        stages.append((config.fine_cube_mm, config.fine_offset_mm, [], []))
    inputs = []
    for k, i in enumerate(tqdm(frames, desc="localiser data", unit="frame",
                               disable=not progress, dynamic_ncols=True)):
        depth = depth_of(int(i))
        inputs.append(detector_input(depth, stride).astype(np.float16))
        for cube, scale, crops, targets in stages:
            for offset in _offsets(rng, config.samples_per_frame, scale):
                c = intr.xyz_to_uvd(truth_xyz[k] + offset)
                if not c[2] > 0:
                    continue
                crop, t = crop_depth(depth, c, cube, config.size, intr=intr)
                crops.append(crop.astype(np.float16))
                targets.append(t.xyz_to_norm(truth_xyz[k]).astype(np.float32))

    def stacked(crops: list, targets: list) -> tuple[np.ndarray, np.ndarray]:
        return (np.asarray(crops, np.float16).reshape(-1, 1, config.size, config.size),
                np.asarray(targets, np.float32).reshape(-1, 3))

    points = detector_points(np.asarray(centres_uvd)[:, :2], stride).astype(np.float32)
    fine = stacked(*stages[1][2:]) if config.has_fine else stacked([], [])
    return LocalizerSamples(np.stack(inputs)[:, None], points, *stacked(*stages[0][2:]), *fine)


def warp_frames(x: torch.Tensor, points: torch.Tensor, grid: tuple[int, int],
                generator: torch.Generator, scale: tuple[float, float] = (0.8, 1.25),
                rotation_deg: float = 10.0, shift_px: float = 24.0
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Detector augmentation: each frame scaled about its centre by s (log-uniform in
    ``scale``, its depths divided by s: the same scene nearer or farther), turned in-plane by up
    to ``rotation_deg`` and shifted by up to ``shift_px`` input px (then held so that the palm
    stays 4 px inside the frame); uncovered pixels = background. With only a few thousand
    labelled frames the detector otherwise learns where hands tend to be and how large.

    (B, 1, h, w) detector inputs and (B, 2) their palm centres in input px -> (the warped frames,
    (B, 3) targets as :func:`points_to_cells` gives them for ``grid``, the output cells (rows,
    columns)).
    """
    b, _, h, w = x.shape
    s = torch.exp(torch.empty(b, dtype=torch.float64).uniform_(
        math.log(scale[0]), math.log(scale[1]), generator=generator))
    a = torch.deg2rad(torch.empty(b, dtype=torch.float64).uniform_(
        -rotation_deg, rotation_deg, generator=generator))
    shift = torch.empty(b, 2, dtype=torch.float64).uniform_(-shift_px, shift_px,
                                                            generator=generator)
    centre = torch.tensor([(w - 1) / 2, (h - 1) / 2], dtype=torch.float64)
    cos, sin = torch.cos(a), torch.sin(a)
    forward = torch.stack([torch.stack([cos, -sin], 1), torch.stack([sin, cos], 1)], 1)
    forward = forward * s[:, None, None]  # (B, 2, 2): input px -> output px about the centre
    moved = torch.einsum("bij,bj->bi", forward, points.double() - centre) + centre + shift
    held = torch.minimum(torch.maximum(moved, torch.tensor([4.0, 4.0], dtype=torch.float64)),
                         torch.tensor([w - 5.0, h - 5.0], dtype=torch.float64))
    shift, moved = shift + held - moved, held
    # affine_grid maps output to input in [-1, 1] coordinates (align_corners=True): px = n * half
    inverse = torch.linalg.inv(forward)
    half = centre  # (w - 1) / 2, (h - 1) / 2
    theta = torch.zeros(b, 2, 3, dtype=torch.float64)
    theta[:, :, :2] = inverse * half[None, None, :] / half[None, :, None]
    theta[:, :, 2] = torch.einsum("bij,bj->bi", inverse, -shift) / half
    sample = F.affine_grid(theta.to(x.dtype), [b, 1, h, w], align_corners=True)
    # zero padding of (x - 1) = background (1) outside the frame
    out = F.grid_sample(x - 1.0, sample, mode="nearest", padding_mode="zeros",
                        align_corners=True) + 1.0
    depth_mm = (out + 1.0) * (MAX_DEPTH_MM / 2) / s.to(x.dtype)[:, None, None, None]
    out = torch.where(out < 1.0, torch.clamp(depth_mm * (2.0 / MAX_DEPTH_MM) - 1.0, max=1.0), out)
    return out, points_to_cells(moved, grid).to(points.dtype)


def _fit(network: nn.Module, loss_of: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
         x_all: np.ndarray, y_all: np.ndarray, config: LocalizerConfig, device: torch.device,
         seed: int, desc: str, progress: bool, epochs: int | None = None,
         batch_size: int | None = None, lr: float | None = None,
         augment: Callable[[torch.Tensor, torch.Tensor, torch.Generator],
                           tuple[torch.Tensor, torch.Tensor]] | None = None) -> float:
    """Adam with a cosine decay over ``epochs`` passes (``config``'s by default, as the batch
    size and the learning rate); returns the last epoch's mean loss."""
    epochs = config.epochs if epochs is None else epochs
    batch_size = config.batch_size if batch_size is None else batch_size
    lr = config.lr if lr is None else lr
    x_all, y_all = torch.from_numpy(x_all), torch.from_numpy(y_all)
    generator = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(network.to(device).parameters(), lr=lr)
    steps_per_epoch = max(1, len(x_all) // batch_size)
    total = steps_per_epoch * epochs
    bar = tqdm(total=total, desc=desc, unit="step", disable=not progress, dynamic_ncols=True)
    network.train()
    step, running = 0, 0.0
    for _ in range(epochs):
        order = torch.randperm(len(x_all), generator=generator)
        running = 0.0
        for b in range(steps_per_epoch):
            idx = order[b * batch_size:(b + 1) * batch_size]
            for group in opt.param_groups:
                group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / total))
            x, y = x_all[idx].float(), y_all[idx]
            if augment is not None:
                x, y = augment(x, y, generator)
            loss = loss_of(network(x.to(device)), y.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            running += loss.item()
            step += 1
            bar.update(1)
    bar.close()
    network.eval()
    return running / steps_per_epoch


def detector_loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the cells for the palm centre's cell + L1 of its place in the cell."""
    b = len(out)
    cell = target[:, 0].long()
    logits = out[:, 0].reshape(b, -1)
    place = torch.sigmoid(out[:, 1:].reshape(b, 2, -1)[torch.arange(b), :, cell])
    return F.cross_entropy(logits, cell) + F.l1_loss(place, target[:, 1:])


def refiner_loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.smooth_l1_loss(out, target, beta=0.05)


def verifier_loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(out[:, 0], target)


def train_localizer(depth_of: Callable[[int], np.ndarray], frames: Sequence[int],
                    centres_uvd: np.ndarray, intr: Intrinsics, config: LocalizerConfig,
                    device: str | torch.device = "cpu", seed: int = 0, progress: bool = False
                    ) -> Localizer:
    """Train the detector, the refiners and the verifier on labelled frames (at most
    ``config.max_frames``: a random subset beyond) and return them as a :class:`Localizer` on
    the CPU.

    Args:
        depth_of: frame index -> (H, W) depth in mm (a reader's ``depth``).
        centres_uvd: (len(frames), 3) the frames' true palm centres uvd.
        seed: seeds the frame subset, the shifts, the initial weights and the batch order.
    """
    frames = np.asarray(frames, dtype=np.int64)
    centres_uvd = np.asarray(centres_uvd, dtype=np.float64)
    if len(frames) > config.max_frames:
        keep = np.sort(np.random.default_rng((seed, 0x5EB)).choice(len(frames), config.max_frames,
                                                                     replace=False))
        frames, centres_uvd = frames[keep], centres_uvd[keep]
    samples = localizer_samples(depth_of, frames, centres_uvd, intr, config, seed, progress)
    device = torch.device(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        detector, refiner = _new_part(config, "detector"), _new_part(config, "network")
        fine = _new_part(config, "fine") if config.has_fine else None
    grid = (-(-samples.frames.shape[2] // CELL), -(-samples.frames.shape[3] // CELL))
    fit = functools.partial(_fit, config=config, device=device, progress=progress)
    fit(detector, detector_loss, samples.frames, samples.points, seed=seed, desc="hand detector",
        epochs=config.detector_epochs, batch_size=config.detector_batch_size,
        lr=config.detector_lr,
        augment=lambda x, y, g: warp_frames(x, y, grid, g))
    fit(refiner, refiner_loss, samples.crops, samples.targets, seed=seed + 1, desc="coarse refiner")
    if fine is not None:
        fit(fine, refiner_loss, samples.fine_crops, samples.fine_targets, seed=seed + 2,
            desc="fine refiner")
    localizer = Localizer(config, refiner, "cpu", detector, fine)
    if config.candidates > 1:
        every = -(-len(frames) // VERIFIER_FRAMES)  # evenly spread, to bound the stage's time
        crops, labels = verifier_samples(localizer, depth_of, frames[::every],
                                         centres_uvd[::every], intr, seed, progress)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 3)
            verifier = _new_part(config, "verifier")
        fit(verifier, verifier_loss, crops, labels, seed=seed + 3, desc="verifier")
        localizer.verifier = verifier.cpu().requires_grad_(False)  # eval mode after _fit
    return localizer


# The verifier learns from at most this many of the labelled frames (each gives ~5 crops; the
# main job's localiser stage must leave time for the pose network on 2 cores)
VERIFIER_FRAMES = 2000
# A candidate's refined centre this close to the labelled palm centre is a hand (a positive for
# the verifier); one farther than VERIFY_FAR_MM is not; between, it is left out.
VERIFY_NEAR_MM = 20.0
VERIFY_FAR_MM = 50.0


def verifier_samples(localizer: Localizer, depth_of: Callable[[int], np.ndarray],
                     frames: Sequence[int], centres_uvd: np.ndarray, intr: Intrinsics,
                     seed: int = 0, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """What the verifier learns from, (crops (M, 1, S, S) float16, labels (M,) float32): crops
    (``cube_mm``) at each labelled frame's candidates as the trained detector and refiners find
    them (labelled 1 within VERIFY_NEAR_MM of the palm centre, 0 beyond VERIFY_FAR_MM), plus one
    crop at the palm centre shifted by :func:`_offsets` on a 10 mm scale (1) and one shifted by
    50-150 mm (0): the verifier must prefer the hand to the arm, the other hand or a table's
    corner, and a centred crop to one off the palm."""
    config = localizer.config
    rng = np.random.default_rng((seed, 0x7E5))
    truth_xyz = intr.uvd_to_xyz(np.asarray(centres_uvd, np.float64))
    crops, labels = [], []

    def add(depth: np.ndarray, centre_uvd: np.ndarray, label: float) -> None:
        crop, _ = crop_depth(depth, centre_uvd, config.cube_mm, config.size, intr=intr)
        crops.append(crop.astype(np.float16))
        labels.append(label)

    bar = tqdm(total=len(frames), desc="verifier data", unit="frame", disable=not progress,
               dynamic_ncols=True)
    for start in range(0, len(frames), CHUNK):
        rows = range(start, min(start + CHUNK, len(frames)))
        depths = [depth_of(int(frames[k])) for k in rows]
        found, _ = localizer.candidates(depths, intr, config.candidates)  # (n, K, 3)
        n, k = found.shape[:2]
        dist = np.linalg.norm(intr.uvd_to_xyz(found) - truth_xyz[start:start + n, None], axis=-1)
        for j, (depth, row) in enumerate(zip(depths, rows)):
            for c in range(k):
                if dist[j, c] <= VERIFY_NEAR_MM or dist[j, c] >= VERIFY_FAR_MM:
                    add(depth, found[j, c], float(dist[j, c] <= VERIFY_NEAR_MM))
            near = intr.xyz_to_uvd(truth_xyz[row] + _offsets(rng, 1, 10.0)[0])
            direction = rng.normal(size=3)
            far = intr.xyz_to_uvd(truth_xyz[row] + direction / np.linalg.norm(direction)
                                  * rng.uniform(VERIFY_FAR_MM, 150.0))
            for centre, label in ((near, 1.0), (far, 0.0)):
                if centre[2] > 0:
                    add(depth, centre, label)
        bar.update(n)
    bar.close()
    return np.stack(crops)[:, None], np.asarray(labels, np.float32)


def localisation_errors(centres_uvd: np.ndarray, truth_uvd: np.ndarray, intr: Intrinsics
                        ) -> np.ndarray:
    """(N,) 3D distances in mm between located and true centres (NaN rows stay NaN)."""
    return np.linalg.norm(intr.uvd_to_xyz(centres_uvd) - intr.uvd_to_xyz(truth_uvd), axis=-1)


def localisation_summary(errors_mm: Iterable[float]) -> dict[str, float | int | None]:
    """{median_mm, p90_mm, mean_mm, within_10mm, within_25mm, frames, not_found} of the 3D
    distances (NaN = no hand found; counted, left out of the statistics)."""
    e = np.asarray(list(errors_mm), dtype=np.float64)
    found = e[np.isfinite(e)]
    if not len(found):
        return {"frames": int(len(e)), "not_found": int(len(e)), "median_mm": None,
                "p90_mm": None, "mean_mm": None, "within_10mm": None, "within_25mm": None}
    return {"frames": int(len(e)), "not_found": int(len(e) - len(found)),
            "median_mm": round(float(np.median(found)), 3),
            "p90_mm": round(float(np.percentile(found, 90)), 3),
            "mean_mm": round(float(found.mean()), 3),
            "within_10mm": round(float((found <= 10).mean()), 4),
            "within_25mm": round(float((found <= 25).mean()), 4)}


# ---- a run's localiser: trained once per run folder, used to centre crops ------------------------

LOCALIZER_FILE = "localizer.pt"  # in the run folder; every checkpoint also carries it


def fit_run_localizer(run_dir: str | os.PathLike, config: LocalizerConfig, reader: Any,
                      labeled_frames: np.ndarray, val_frames: np.ndarray, seed: int = 0,
                      device: str | torch.device = "cpu", progress: bool = False
                      ) -> tuple[Localizer, dict | None]:
    """The run's localiser: ``RUN/localizer.pt`` when it was trained with ``config`` on these
    frames (a resumed run), else trained now on the labelled frames and saved (atomically).

    ``reader`` is the training split's (``depth``, ``joints_uvd``, ``centre_joint``,
    ``intrinsics``); ``labeled_frames`` are those whose labels the run may use, ``val_frames``
    held-out ones the localisation error is measured on (may be empty). Returns (localizer,
    record): record = {"event": "localizer", ...validation summary, seconds} when trained now,
    None when loaded.
    """
    path = Path(run_dir) / LOCALIZER_FILE
    identity = {"config": dataclasses.asdict(config), "seed": seed,
                "frames": hashlib.sha256(np.asarray(labeled_frames, np.int64).tobytes()
                                         ).hexdigest()}
    if path.is_file():
        saved = load_checkpoint(path)
        before = saved.get("identity")
        if isinstance(before, dict) and isinstance(before.get("config"), Mapping):
            before = {**before, "config": saved_config(before["config"])}
        if before == identity:
            return Localizer.from_state(saved["localizer"], where=str(path)), None
    if reader.centre_joint is None:
        raise HandganError(f"{reader.root}: no centre joint to train the hand localiser on; "
                           "set localizer.enabled=false")
    truth = reader.joints_uvd()[:, reader.centre_joint]
    started = time.perf_counter()
    localizer = train_localizer(reader.depth, labeled_frames, truth[labeled_frames],
                                reader.intrinsics, config, seed=seed, device=device,
                                progress=progress)
    record: dict[str, Any] = {"event": "localizer", "step": 0,
                              "train_frames": int(min(len(labeled_frames), config.max_frames))}
    if len(val_frames):
        val_frames = np.asarray(val_frames, np.int64)
        found, _ = localizer.locate_frames(lambda k: reader.depth(int(val_frames[k])),
                                           len(val_frames), reader.intrinsics)
        errors = localisation_errors(found, truth[val_frames], reader.intrinsics)
        record.update({f"val_{k}": v for k, v in localisation_summary(errors).items()})
    record["seconds"] = round(time.perf_counter() - started, 1)
    save_checkpoint(path, {"localizer": localizer.state(), "identity": identity,
                           "record": record})
    return localizer, record


def locate_reader(localizer: Localizer, reader: Any, progress: bool = False) -> LocatedCentres:
    """Every frame of a reader located by ``localizer``, as the crop cache takes them."""
    centres, not_found = localizer.locate_frames(reader.depth, len(reader), reader.intrinsics,
                                                 progress=progress)
    return LocatedCentres(centres, not_found, localizer.fingerprint())
