"""Hand localisation in a full depth frame: detection, then a learned centre refiner.

1. Detection, :func:`~handgan.preprocess.localize_hand`: the nearest object's centre of mass,
   refined in a cube (DeepPrior++'s CoM). On a real or full-frame synthetic scene it lands on the
   hand, but the centre of mass of what the camera sees is not the palm centre: the visible
   surface lies in front of the palm and the forearm pulls it (tens of mm, docs/results.md).
2. :class:`CentreRefiner`: a small CNN that looks at a coarse crop around the current estimate
   (a cube of ``cube_mm``, ``size`` px) and regresses where the palm centre lies in that crop's
   normalised frame. Applied ``iterations`` times, each crop centred on the last estimate, as
   DeepPrior++'s refinement network is.

Training (:func:`train_localizer`) uses labelled frames only: crops centred on the detection
and on the labelled palm centre shifted by random 3D offsets, the target being the labelled palm
centre in each crop's normalised frame (``CropTransform.xyz_to_norm``), so the network learns a
correction whatever the estimate's error. :class:`Localizer` bundles the refiner and its
settings; its state travels inside training checkpoints under ``"localizer"``.
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
    width: int = 16             # channels of the first conv; doubles per layer
    epochs: int = 15
    batch_size: int = 128
    lr: float = 1e-3
    samples_per_frame: int = 4  # crops per labelled frame: the detection + shifted true centres
    offset_mm: float = 80.0     # scale of the random 3D shifts of the true centre (see _offsets)
    max_frames: int = 4000      # labelled frames used at most (a random subset beyond)

    def __post_init__(self) -> None:
        def check(ok: bool, message: str) -> None:
            if not ok:
                raise ValueError(message)

        check(self.size >= 16 and self.size % 16 == 0, f"size must be a multiple of 16, got "
              f"{self.size}")
        check(self.cube_mm > 0, f"cube_mm must be > 0, got {self.cube_mm}")
        check(self.iterations >= 0, f"iterations must be >= 0, got {self.iterations}")
        for name in ("width", "epochs", "batch_size", "samples_per_frame", "max_frames"):
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


class Localizer:
    """Detection + learned refinement: full frames -> hand centre uvd (the palm centre).

    Attributes:
        config: the refiner's settings (crop size, cube, iterations).
        network: the :class:`CentreRefiner`, eval mode, no gradients.
        device: where the network runs.
    """

    def __init__(self, config: LocalizerConfig, network: CentreRefiner,
                 device: str | torch.device = "cpu") -> None:
        self.config = config
        self.device = torch.device(device)
        self.network = network.to(self.device).eval().requires_grad_(False)

    # ---- state --------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """Plain data for a checkpoint (``weights_only``-safe)."""
        return {"config": dataclasses.asdict(self.config),
                "network": {k: v.detach().cpu() for k, v in self.network.state_dict().items()}}

    @classmethod
    def from_state(cls, state: Mapping[str, Any], device: str | torch.device = "cpu",
                   where: str = "checkpoint") -> Localizer:
        """Rebuild from :meth:`state`; HandganError naming ``where`` if it does not fit."""
        try:
            config = LocalizerConfig(**state["config"])
            network = CentreRefiner(config.size, config.width)
            network.load_state_dict(state["network"])
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise HandganError(f"{where}: its hand localiser does not load "
                               f"({str(e).splitlines()[0]})") from None
        return cls(config, network, device)

    def fingerprint(self) -> str:
        """Identity of the weights and settings (crop caches centred by this localiser use it)."""
        h = hashlib.sha256(repr(sorted(dataclasses.asdict(self.config).items())).encode())
        for name, value in self.network.state_dict().items():
            h.update(name.encode())
            h.update(value.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()[:24]

    # ---- inference ----------------------------------------------------------------------------

    def locate(self, depth_mm: np.ndarray, intr: Intrinsics) -> np.ndarray:
        """(H, W) frame in mm -> (3,) palm centre uvd. HandganError "no hand found: ..."."""
        start = localize_hand(depth_mm, intr, cube_mm=self.config.cube_mm)
        return self.refine([depth_mm], start[None], intr)[0]

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
            frames, starts, index = [], [], []
            for i in range(start, min(start + CHUNK, count)):
                try:
                    depth = depth_of(i)
                    starts.append(localize_hand(depth, intr, cube_mm=self.config.cube_mm))
                except HandganError as e:
                    failures[i] = str(e)
                    continue
                frames.append(depth)
                index.append(i)
            if frames:
                centres[index] = self.refine(frames, np.stack(starts), intr)
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


def refiner_samples(depth_of: Callable[[int], np.ndarray], frames: Sequence[int],
                    centres_xyz: np.ndarray, intr: Intrinsics, config: LocalizerConfig,
                    seed: int = 0, progress: bool = False
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Training crops of the refiner: for each labelled frame the crop around its detection and
    ``samples_per_frame - 1`` crops around its true palm centre shifted by :func:`_offsets`.

    Returns:
        crops: (M, 1, S, S) float16 normalised crops.
        targets: (M, 3) float32 true palm centre in each crop's normalised frame.
    """
    rng = np.random.default_rng((seed, 0x10C))
    crops, targets = [], []
    for k, i in enumerate(tqdm(frames, desc="localiser data", unit="frame",
                               disable=not progress, dynamic_ncols=True)):
        depth = depth_of(int(i))
        truth = centres_xyz[k]
        starts = [intr.xyz_to_uvd(truth + o) for o in
                  _offsets(rng, config.samples_per_frame - 1, config.offset_mm)]
        try:
            starts.append(localize_hand(depth, intr, cube_mm=config.cube_mm))
        except HandganError:
            pass  # no detection on this frame: its shifted crops still teach the refiner
        for c in starts:
            if not c[2] > 0:
                continue
            crop, t = crop_depth(depth, c, config.cube_mm, config.size, intr=intr)
            crops.append(crop.astype(np.float16))
            targets.append(t.xyz_to_norm(truth).astype(np.float32))
    if not crops:
        raise HandganError("the hand localiser has no training crops (no labelled frames)")
    return np.stack(crops)[:, None], np.stack(targets)


def train_localizer(depth_of: Callable[[int], np.ndarray], frames: Sequence[int],
                    centres_uvd: np.ndarray, intr: Intrinsics, config: LocalizerConfig,
                    device: str | torch.device = "cpu", seed: int = 0, progress: bool = False,
                    log: Callable[[dict], None] | None = None) -> Localizer:
    """Train a :class:`CentreRefiner` on labelled frames.

    Args:
        depth_of: frame index -> (H, W) depth in mm (a reader's ``depth``).
        frames: the labelled frames to learn from (at most ``config.max_frames`` are used).
        centres_uvd: (len(frames), 3) their true palm centres uvd.
        intr: the frames' camera.
        config: crops, network and schedule.
        device: where to train.
        seed: seeds the frame subset, the shifts, the initial weights and the batch order.
        progress: progress bars.
        log: called with {"epoch", "loss"} after every epoch.

    Returns:
        The trained :class:`Localizer` (eval mode).
    """
    frames = np.asarray(frames, dtype=np.int64)
    centres_uvd = np.asarray(centres_uvd, dtype=np.float64)
    if len(frames) > config.max_frames:
        keep = np.sort(np.random.default_rng((seed, 0x5EB)).choice(len(frames), config.max_frames,
                                                                     replace=False))
        frames, centres_uvd = frames[keep], centres_uvd[keep]
    crops, targets = refiner_samples(depth_of, frames, intr.uvd_to_xyz(centres_uvd), intr,
                                     config, seed, progress)
    device = torch.device(device)
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        network = CentreRefiner(config.size, config.width).to(device)
    opt = torch.optim.Adam(network.parameters(), lr=config.lr)
    x_all, y_all = torch.from_numpy(crops), torch.from_numpy(targets)
    steps_per_epoch = max(1, len(x_all) // config.batch_size)
    total = steps_per_epoch * config.epochs
    bar = tqdm(total=total, desc="localiser", unit="step", disable=not progress,
               dynamic_ncols=True)
    network.train()
    step = 0
    for epoch in range(config.epochs):
        order = torch.randperm(len(x_all), generator=generator)
        running = 0.0
        for b in range(steps_per_epoch):
            idx = order[b * config.batch_size:(b + 1) * config.batch_size]
            x = x_all[idx].to(device).float()
            y = y_all[idx].to(device)
            for group in opt.param_groups:  # cosine decay to 0 over the whole schedule
                group["lr"] = config.lr * 0.5 * (1 + math.cos(math.pi * step / total))
            loss = F.smooth_l1_loss(network(x), y, beta=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            running += loss.item()
            step += 1
            bar.update(1)
        if log is not None:
            log({"epoch": epoch + 1, "loss": running / steps_per_epoch})
    bar.close()
    return Localizer(config, network.cpu(), "cpu")


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
