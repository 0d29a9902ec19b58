"""Hand localisation in a full depth frame: a learned detector, then a learned centre refiner.

1. :class:`HandDetector`: a small fully convolutional network over the whole frame (every 4th
   pixel of a 640 x 480 frame) that scores 32 x 32 px cells for holding the palm centre and
   regresses its place inside the cell. A full frame holds the person's body, the other arm, a
   table, the floor: the nearest object (DeepPrior++'s centre of mass,
   :func:`~handgan.preprocess.localize_hand`) is the hand in only about 80 % of our full-frame
   scenes (docs/results.md), and it cannot tell the labelled hand from the other one.
   The start depth is the near surface around the detected pixel.
2. :class:`CentreRefiner`: a small CNN that looks at a coarse crop around the current estimate
   (a cube of ``cube_mm``, ``size`` px) and regresses where the palm centre lies in that crop's
   normalised frame. Applied ``iterations`` times, each crop centred on the last estimate, as
   DeepPrior++'s refinement network is.

Both learn from labelled frames only (:func:`train_localizer`): the detector from the frames
themselves, the refiner from crops centred on the labelled palm centre shifted by random 3D
offsets, the target being the labelled palm centre in each crop's normalised frame
(``CropTransform.xyz_to_norm``). :class:`Localizer` bundles both networks and their settings;
its state travels inside training checkpoints under ``"localizer"``.
"""
from __future__ import annotations

import dataclasses
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
from handgan.errors import HandganError
from handgan.preprocess import crop_depth, localize_hand

CHUNK = 64  # frames located together (one network batch per refinement iteration)


@dataclass(frozen=True)
class LocalizerConfig:
    """The learned centre refiner: its crops, network and training (``localizer.*`` keys)."""

    enabled: bool = True        # train the refiner before the pose network, store it in the run
    size: int = 64              # refiner crop side, px
    cube_mm: float = 400.0      # refiner crop cube side, mm (larger than the pose cube: room to
    #                             see the hand when the estimate is off by tens of mm)
    iterations: int = 3         # refinement steps at inference (each re-crops at the estimate)
    width: int = 16             # refiner: channels of the first conv; doubles per layer
    detector_width: int = 16    # detector: channels of the first conv
    detector_epochs: int = 20
    epochs: int = 15            # refiner epochs
    batch_size: int = 128
    lr: float = 1e-3
    samples_per_frame: int = 4  # refiner crops per labelled frame (shifted true centres)
    offset_mm: float = 80.0     # scale of the random 3D shifts of the true centre (see _offsets)
    max_frames: int = 2000      # labelled frames used at most (a random subset beyond)

    def __post_init__(self) -> None:
        def check(ok: bool, message: str) -> None:
            if not ok:
                raise ValueError(message)

        check(self.size >= 16 and self.size % 16 == 0, f"size must be a multiple of 16, got "
              f"{self.size}")
        check(self.cube_mm > 0, f"cube_mm must be > 0, got {self.cube_mm}")
        check(self.iterations >= 0, f"iterations must be >= 0, got {self.iterations}")
        for name in ("width", "detector_width", "detector_epochs", "epochs", "batch_size",
                     "samples_per_frame", "max_frames"):
            check(getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")
        check(self.lr > 0, f"lr must be > 0, got {self.lr}")
        check(self.offset_mm >= 0, f"offset_mm must be >= 0, got {self.offset_mm}")


class CentreRefiner(nn.Module):
    """(B, 1, S, S) normalised coarse crops -> (B, 3) palm centre in each crop's normalised
    frame (x, y, z in units of half the cube; 0 = the crop's centre)."""

    def __init__(self, size: int = 64, width: int = 16) -> None:
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
                                  nn.ReLU(inplace=True), nn.Linear(256, 3))

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


def detector_target(uv: np.ndarray, stride: int, grid: tuple[int, int]) -> np.ndarray:
    """(N, 2) full-frame u, v -> (N, 3) [flat cell index, offset x, offset y in [0, 1)]."""
    p = (np.asarray(uv, np.float64) - stride // 2) / stride  # detector input px
    q = (p + 0.5) / CELL  # cells: cell c covers input px [8c - 0.5, 8c + 7.5)
    cell = np.clip(np.floor(q), 0, np.array(grid[::-1]) - 1)  # (x, y) cells
    offset = np.clip(q - cell, 0.0, 1.0 - 1e-6)
    return np.column_stack([cell[:, 1] * grid[1] + cell[:, 0], offset])


class HandDetector(nn.Module):
    """(B, 1, h, w) :func:`detector_input` -> (B, 3, ceil(h/8), ceil(w/8)): per cell the palm
    centre's logit and its place inside the cell (x, y logits of a sigmoid). Dilated layers
    give each cell a view of ~110 input px (~440 px of a 640-px frame): the hand, its arm and
    what lies around them."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        c = width

        def conv(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation,
                              bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

        self.body = nn.Sequential(*conv(1, c, 2), *conv(c, 2 * c, 2), *conv(2 * c, 4 * c, 2),
                                  *conv(4 * c, 4 * c, dilation=2), *conv(4 * c, 4 * c, dilation=4))
        self.head = nn.Conv2d(4 * c, 3, 1)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(frames))


def decode_detections(out: torch.Tensor, stride: int) -> np.ndarray:
    """(B, 3, gh, gw) detector output -> (B, 2) full-frame u, v of the best cell's point."""
    b, _, gh, gw = out.shape
    best = out[:, 0].reshape(b, -1).argmax(dim=1)  # (B,)
    offsets = torch.sigmoid(out[:, 1:].reshape(b, 2, -1)[torch.arange(b), :, best])  # (B, 2)
    cells = torch.stack([best % gw, best // gw], dim=1).double()
    p = (cells + offsets.double()) * CELL - 0.5  # detector input px
    return (p * stride + stride // 2).cpu().numpy()


def surface_depth(depth_mm: np.ndarray, uv: np.ndarray, radius_px: int = 6) -> float | None:
    """The near surface around pixel uv: the 25th percentile of the valid depths within
    ``radius_px`` (None when there are none)."""
    h, w = depth_mm.shape
    u, v = int(round(uv[0])), int(round(uv[1]))
    win = depth_mm[max(v - radius_px, 0):min(v + radius_px + 1, h),
                   max(u - radius_px, 0):min(u + radius_px + 1, w)].astype(np.float64)
    values = win[(win > 0) & (win <= MAX_DEPTH_MM)]
    return float(np.percentile(values, 25)) if len(values) else None


class Localizer:
    """Detection + learned refinement: full frames -> hand centre uvd (the palm centre).

    Attributes:
        config: the settings (refiner crop size, cube, iterations).
        detector: the :class:`HandDetector`, or None (then the start is
            :func:`~handgan.preprocess.localize_hand`'s centre of mass), eval mode.
        network: the :class:`CentreRefiner`, eval mode, no gradients.
        device: where the networks run.
    """

    def __init__(self, config: LocalizerConfig, network: nn.Module,
                 device: str | torch.device = "cpu", detector: nn.Module | None = None) -> None:
        self.config = config
        self.device = torch.device(device)
        self.network = network.to(self.device).eval().requires_grad_(False)
        self.detector = (detector.to(self.device).eval().requires_grad_(False)
                         if detector is not None else None)

    # ---- state --------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """Plain data for a checkpoint (``weights_only``-safe)."""
        def plain(module: nn.Module) -> dict:
            return {k: v.detach().cpu() for k, v in module.state_dict().items()}

        return {"config": dataclasses.asdict(self.config), "network": plain(self.network),
                "detector": plain(self.detector) if self.detector is not None else None}

    @classmethod
    def from_state(cls, state: Mapping[str, Any], device: str | torch.device = "cpu",
                   where: str = "checkpoint") -> Localizer:
        """Rebuild from :meth:`state`; HandganError naming ``where`` if it does not fit."""
        try:
            config = LocalizerConfig(**state["config"])
            network = CentreRefiner(config.size, config.width)
            network.load_state_dict(state["network"])
            detector = None
            if state.get("detector") is not None:
                detector = HandDetector(config.detector_width)
                detector.load_state_dict(state["detector"])
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise HandganError(f"{where}: its hand localiser does not load "
                               f"({str(e).splitlines()[0]})") from None
        return cls(config, network, device, detector)

    def fingerprint(self) -> str:
        """Identity of the weights and settings (crop caches centred by this localiser use it)."""
        h = hashlib.sha256(repr(sorted(dataclasses.asdict(self.config).items())).encode())
        modules = [self.network] + ([self.detector] if self.detector is not None else [])
        for module in modules:
            for name, value in module.state_dict().items():
                h.update(name.encode())
                h.update(value.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()[:24]

    # ---- inference ----------------------------------------------------------------------------

    def locate(self, depth_mm: np.ndarray, intr: Intrinsics) -> np.ndarray:
        """(H, W) frame in mm -> (3,) palm centre uvd. HandganError "no hand found: ..."."""
        return self.refine([depth_mm], self.detect([depth_mm], intr), intr)[0]

    def detect(self, frames: Sequence[np.ndarray], intr: Intrinsics) -> np.ndarray:
        """Start centres (N, 3) uvd: the detector's pixel at the near surface there; the centre
        of mass of the nearest object without a detector, or where no depth is near the pixel.

        Raises:
            HandganError: "no hand found: ..." for a frame with no usable depth.
        """
        if self.detector is None:
            return np.stack([localize_hand(d, intr, cube_mm=self.config.cube_mm)
                             for d in frames])
        stride = detector_stride(intr)
        x = torch.from_numpy(np.stack([detector_input(d, stride) for d in frames])[:, None])
        with torch.inference_mode():
            uv = decode_detections(self.detector(x.to(self.device)), stride)
        starts = []
        for depth, p in zip(frames, uv):
            d = surface_depth(depth, p)
            starts.append([p[0], p[1], d] if d is not None else
                          localize_hand(depth, intr, cube_mm=self.config.cube_mm))
        return np.array(starts, dtype=np.float64)

    def refine(self, frames: Sequence[np.ndarray], starts: np.ndarray, intr: Intrinsics
               ) -> np.ndarray:
        """``iterations`` refinement steps from (N, 3) start centres uvd, batched over frames."""
        est = np.array(starts, dtype=np.float64).reshape(-1, 3)
        cube = self.config.cube_mm
        for _ in range(self.config.iterations):
            crops, transforms = [], []
            for depth, c in zip(frames, est):
                crop, t = crop_depth(depth, c, cube, self.config.size, intr=intr)
                crops.append(crop)
                transforms.append(t)
            with torch.inference_mode():
                x = torch.from_numpy(np.stack(crops)[:, None]).to(self.device)
                norm = self.network(x).double().cpu().numpy()  # (N, 3)
            est = np.stack([t.norm_to_uvd(n) for t, n in zip(transforms, norm)])
            bad = ~(np.isfinite(est).all(axis=1) & (est[:, 2] > 0))
            if bad.any():  # a refiner output off the camera's front: keep the last estimate
                est[bad] = [t.centre_uvd for t, b in zip(transforms, bad) if b]
        return est

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
                starts = self.detect(frames, intr) if frames else np.zeros((0, 3))
            except HandganError:  # a frame without a hand: find it, keep the others
                kept = []
                for k, i in enumerate(index):
                    try:
                        kept.append((k, self.detect([frames[k]], intr)[0]))
                    except HandganError as e:
                        failures[i] = str(e)
                frames = [frames[k] for k, _ in kept]
                index = [index[k] for k, _ in kept]
                starts = np.array([c for _, c in kept]).reshape(-1, 3)
            if frames:
                centres[index] = self.refine(frames, starts, intr)
            bar.update(min(start + CHUNK, count) - start)
        bar.close()
        return centres, failures


# ------------------------------------------------------------------------------------------------
# Training
# ------------------------------------------------------------------------------------------------

def _offsets(rng: np.random.Generator, count: int, scale_mm: float) -> np.ndarray:
    """(count, 3) random 3D shifts: isotropic Gaussians whose sigma is drawn log-uniformly from
    scale/8 to scale, so the refiner sees both the detection's large errors and the small ones
    it must polish in its later iterations."""
    sigma = scale_mm * np.exp(rng.uniform(np.log(1 / 8), 0.0, size=(count, 1)))
    return rng.normal(size=(count, 3)) * sigma


@dataclass
class LocalizerSamples:
    """What the two networks learn from (one pass over the labelled frames)."""

    frames: np.ndarray   # (N, 1, h, w) float16 detector inputs
    cells: np.ndarray    # (N, 3) float32 detector targets (flat cell, offset x, offset y)
    crops: np.ndarray    # (M, 1, S, S) float16 refiner crops
    targets: np.ndarray  # (M, 3) float32 true palm centre in each crop's normalised frame


def localizer_samples(depth_of: Callable[[int], np.ndarray], frames: Sequence[int],
                      centres_uvd: np.ndarray, intr: Intrinsics, config: LocalizerConfig,
                      seed: int = 0, progress: bool = False) -> LocalizerSamples:
    """Detector inputs and targets for every labelled frame, and ``samples_per_frame`` refiner
    crops around its true palm centre shifted by :func:`_offsets`."""
    if not len(frames):
        raise HandganError("the hand localiser has no labelled frames to learn from")
    rng = np.random.default_rng((seed, 0x10C))
    stride = detector_stride(intr)
    truth_xyz = intr.uvd_to_xyz(np.asarray(centres_uvd, np.float64))
    inputs, crops, targets = [], [], []
    for k, i in enumerate(tqdm(frames, desc="localiser data", unit="frame",
                               disable=not progress, dynamic_ncols=True)):
        depth = depth_of(int(i))
        inputs.append(detector_input(depth, stride).astype(np.float16))
        for offset in _offsets(rng, config.samples_per_frame, config.offset_mm):
            c = intr.xyz_to_uvd(truth_xyz[k] + offset)
            if not c[2] > 0:
                continue
            crop, t = crop_depth(depth, c, config.cube_mm, config.size, intr=intr)
            crops.append(crop.astype(np.float16))
            targets.append(t.xyz_to_norm(truth_xyz[k]).astype(np.float32))
    grid = (-(-inputs[0].shape[0] // CELL), -(-inputs[0].shape[1] // CELL))
    cells = detector_target(np.asarray(centres_uvd)[:, :2], stride, grid).astype(np.float32)
    return LocalizerSamples(np.stack(inputs)[:, None], cells, np.stack(crops)[:, None],
                            np.stack(targets))


def shift_frames(x: torch.Tensor, cells: torch.Tensor, grid: tuple[int, int],
                 generator: torch.Generator, max_cells: int = 2) -> tuple[torch.Tensor,
                                                                         torch.Tensor]:
    """Detector augmentation: each frame moved by a whole number of cells (up to ``max_cells``
    each way; uncovered pixels = background) with its target cell, so the detector learns the
    hand's look rather than where hands tend to be in the training frames."""
    b = len(x)
    gh, gw = grid
    cell_y, cell_x = cells[:, 0].long() // gw, cells[:, 0].long() % gw
    dy = torch.randint(-max_cells, max_cells + 1, (b,), generator=generator)
    dx = torch.randint(-max_cells, max_cells + 1, (b,), generator=generator)
    dy = torch.clamp(cell_y + dy, 0, gh - 1) - cell_y  # the target stays in the frame
    dx = torch.clamp(cell_x + dx, 0, gw - 1) - cell_x
    out = torch.ones_like(x)
    h, w = x.shape[-2:]
    for k in range(b):
        sy, sx = int(dy[k]) * CELL, int(dx[k]) * CELL
        src = x[k, :, max(-sy, 0):h - max(sy, 0), max(-sx, 0):w - max(sx, 0)]
        out[k, :, max(sy, 0):max(sy, 0) + src.shape[1], max(sx, 0):max(sx, 0) + src.shape[2]] = src
    moved = cells.clone()
    moved[:, 0] = ((cell_y + dy) * gw + cell_x + dx).to(cells.dtype)
    return out, moved


def _fit(network: nn.Module, loss_of: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
         x_all: torch.Tensor, y_all: torch.Tensor, epochs: int, batch_size: int, lr: float,
         device: torch.device, seed: int, desc: str, progress: bool,
         augment: Callable[[torch.Tensor, torch.Tensor, torch.Generator],
                           tuple[torch.Tensor, torch.Tensor]] | None = None) -> float:
    """Adam with a cosine decay over ``epochs`` passes; returns the last epoch's mean loss."""
    generator = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(network.parameters(), lr=lr)
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


def train_localizer(depth_of: Callable[[int], np.ndarray], frames: Sequence[int],
                    centres_uvd: np.ndarray, intr: Intrinsics, config: LocalizerConfig,
                    device: str | torch.device = "cpu", seed: int = 0, progress: bool = False
                    ) -> Localizer:
    """Train the detector and the refiner on labelled frames.

    Args:
        depth_of: frame index -> (H, W) depth in mm (a reader's ``depth``).
        frames: the labelled frames to learn from (at most ``config.max_frames`` are used).
        centres_uvd: (len(frames), 3) their true palm centres uvd.
        intr: the frames' camera.
        config: crops, networks and schedule.
        device: where to train.
        seed: seeds the frame subset, the shifts, the initial weights and the batch order.
        progress: progress bars.

    Returns:
        The trained :class:`Localizer` (on the CPU, eval mode).
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
        detector = HandDetector(config.detector_width).to(device)
        refiner = CentreRefiner(config.size, config.width).to(device)
    grid = (-(-samples.frames.shape[2] // CELL), -(-samples.frames.shape[3] // CELL))
    _fit(detector, detector_loss, torch.from_numpy(samples.frames),
         torch.from_numpy(samples.cells), config.detector_epochs, config.batch_size // 2,
         config.lr, device, seed, "hand detector", progress,
         augment=lambda x, y, g: shift_frames(x, y, grid, g))
    _fit(refiner, refiner_loss, torch.from_numpy(samples.crops),
         torch.from_numpy(samples.targets), config.epochs, config.batch_size, config.lr,
         device, seed + 1, "centre refiner", progress)
    return Localizer(config, refiner.cpu(), "cpu", detector.cpu())


def localisation_errors(centres_uvd: np.ndarray, truth_uvd: np.ndarray, intr: Intrinsics
                        ) -> np.ndarray:
    """(N,) 3D distances in mm between located and true centres (NaN rows stay NaN)."""
    return np.linalg.norm(intr.uvd_to_xyz(np.asarray(centres_uvd, np.float64))
                          - intr.uvd_to_xyz(np.asarray(truth_uvd, np.float64)), axis=-1)


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



# ------------------------------------------------------------------------------------------------
# A run's localiser: trained once per run folder, used to centre crops
# ------------------------------------------------------------------------------------------------

LOCALIZER_FILE = "localizer.pt"  # in the run folder; every checkpoint also carries it


def fit_run_localizer(run_dir: str | os.PathLike, config: LocalizerConfig, reader: Any,
                      labeled_frames: np.ndarray, val_frames: np.ndarray, seed: int = 0,
                      device: str | torch.device = "cpu", progress: bool = False
                      ) -> tuple[Localizer, dict | None]:
    """The run's localiser: ``RUN/localizer.pt`` when it was trained with ``config`` on these
    frames (a resumed run), else trained now on the labelled frames and saved (atomically).

    Args:
        run_dir: the run folder.
        config: the localiser settings.
        reader: the training split's reader (``depth``, ``joints_uvd``, ``centre_joint``,
            ``intrinsics``).
        labeled_frames: reader frames whose labels the run may use.
        val_frames: held-out reader frames the localisation error is measured on (may be empty).

    Returns:
        (localizer, record): record = {"event": "localizer", ...validation summary, seconds}
        when trained now, None when loaded.
    """
    path = Path(run_dir) / LOCALIZER_FILE
    identity = {"config": dataclasses.asdict(config), "seed": seed,
                "frames": hashlib.sha256(np.asarray(labeled_frames, np.int64).tobytes()
                                         ).hexdigest()}
    if path.is_file():
        saved = load_checkpoint(path)
        if saved.get("identity") == identity:
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
