"""Inference: a raw depth frame (or a crop) -> 3D joints, with the discriminator's pose branch.

    est = Estimator.from_checkpoint("runs/x/checkpoints/best.pt")
    pred = est.estimate(depth_mm)             # (H, W) mm -> Prediction: uvd (J, 3), xyz (J, 3)
    preds = est.estimate_batch([d1, d2])      # one network call for several frames

A frame goes through: hand localisation (the checkpoint's ``localize.Localizer``, else
``localize_hand``; skipped when a centre is given) -> cube crop with the checkpoint's cube and
size (``crop_depth``; on a GPU cut there, ``deviceaugment.FrameBatch``) -> the pose network
(normalised joints) -> back to full-frame uvd and camera xyz with the crop's exact
``CropTransform``.

The command ``handgan predict`` is :func:`predict_files`: frame sources (``frames.py``) through
``sequence.predict_frames`` (outputs, video, smoothing), drawn by ``overlay.py``.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from handgan.camera import Intrinsics
from handgan.checkpoint import load_checkpoint
from handgan.device import resolve_device
from handgan.deviceaugment import FrameBatch
from handgan.errors import HandganError
from handgan.export import onnx_bytes, onnxruntime_session
from handgan.frames import read_depth_frame  # noqa: F401  (API: in frames.py)
from handgan.localize import Localizer
from handgan.networks import CropSpec, load_networks, read_crop_spec
from handgan.preprocess import CropTransform, crop_depth, localize_hand
from handgan.sequence import PredictReport, _rounded, open_sources, predict_frames

BACKENDS = ("torch", "onnxruntime")


@dataclass(frozen=True, eq=False)
class Prediction:
    """3D joints of one frame: (J, 3) float64 ``uvd`` (u, v px in the full frame, d mm) and
    ``xyz`` (camera mm, the camera's y convention), the crop centre used (localised or given)
    and the crop's ``CropTransform``."""

    uvd: np.ndarray
    xyz: np.ndarray
    joint_names: tuple[str, ...]
    centre_uvd: np.ndarray
    transform: CropTransform = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``{"joints": {name: {"uvd": [u, v, d], "xyz": [x, y, z]}}, ...}``."""
        return {
            "joints": {name: {"uvd": _rounded(u), "xyz": _rounded(x)}
                       for name, u, x in zip(self.joint_names, self.uvd, self.xyz)},
            "centre_uvd": _rounded(self.centre_uvd),
            "cube_mm": _rounded(self.transform.cube_mm),
            "crop_size": self.transform.size,
        }


class Estimator:
    """The pose estimator of a trained checkpoint, from full depth frames or from crops.

    Build it with :meth:`from_checkpoint`. ``network`` maps normalised crops (B, 1, S, S) in
    [-1, 1] to normalised joints (B, J, 3) (what ``export.export_onnx`` writes); it runs under
    ``torch.inference_mode`` (backend "torch", on ``device``) or in an onnxruntime session of
    the same network (backend "onnxruntime", CPU). ``spec``: size, cube, camera, joint names.
    """

    def __init__(self, network: torch.nn.Module, spec: CropSpec,
                 device: str | torch.device = "cpu", backend: str = "torch",
                 threads: int | None = None, localizer: Localizer | None = None) -> None:
        if backend not in BACKENDS:
            raise HandganError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        self.device = resolve_device(device) if backend == "torch" else torch.device("cpu")
        self.network = network.to(self.device).eval().requires_grad_(False)
        self.spec = spec
        self.localizer = localizer
        self.backend = backend
        self._session = None
        if backend == "onnxruntime":
            example = {"crops": torch.zeros(1, 1, spec.size, spec.size)}
            self._session = onnxruntime_session(onnx_bytes(self.network, example, ["joints"]),
                                                threads=threads)
        elif self.device.type == "cpu":
            # oneDNN's convolutions run faster on channels-last tensors (seed model, 2 cores:
            # 1.25x for a batch of 64, 1.07x for one crop); the weights are converted once, here.
            self.network.to(memory_format=torch.channels_last)
        # One forward pass, so kernel selection and allocation happen before the first frame.
        self.predict_norm(np.full((1, self.size, self.size), 1.0, dtype=np.float32))

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: str | torch.device = "auto",
                        threads: int | None = None, backend: str = "torch") -> Estimator:
        """The pose branch of a training checkpoint, warmed up.

        Args:
            device: "auto" (CUDA if available), "cpu", "cuda", ... (backend "torch" only).
            threads: CPU threads of the network: torch's intra-op threads (process-wide), or the
                onnxruntime session's. None keeps the library's default (torch: the physical
                cores, the fastest on an idle machine; on a machine busy with other work, 1 thread
                avoids waiting for a descheduled worker thread at every layer).
            backend: "torch", or "onnxruntime" (CPU; the same network exported to ONNX in
                memory, usually faster for one frame; needs ``pip install 'handgan[export]'``).

        Raises:
            HandganError: a bad checkpoint (one line naming the file), or onnxruntime missing
                for that backend.
        """
        if threads is not None and backend == "torch":
            torch.set_num_threads(int(threads))
        ckpt = load_checkpoint(path)
        cfg, network = load_networks(path, ["estimator"], ckpt=ckpt)
        spec = read_crop_spec(ckpt, cfg.model, path)
        where = resolve_device(device) if backend == "torch" else torch.device("cpu")
        localizer = (Localizer.from_state(ckpt["localizer"], where, str(path))  # its networks
                     if ckpt.get("localizer") is not None else None)       # beside the estimator
        return cls(network, spec, where, backend=backend, threads=threads, localizer=localizer)

    @property
    def size(self) -> int:
        return self.spec.size

    @property
    def joint_names(self) -> tuple[str, ...]:
        return self.spec.joint_names

    @property
    def intrinsics(self) -> Intrinsics:
        """The training camera: the default for frames given without intrinsics."""
        return self.spec.intrinsics

    def locate(self, depth_mm: np.ndarray, intrinsics: Intrinsics | None = None) -> np.ndarray:
        """(H, W) frame -> (3,) hand centre uvd: the checkpoint's learned localiser when it has
        one (``localize.Localizer``), else ``localize_hand`` with the checkpoint's cube.
        HandganError for a bad frame or "no hand found: ..."."""
        return self.locate_batch([depth_mm], intrinsics)[0]

    def locate_batch(self, frames: Sequence[np.ndarray] | FrameBatch,
                     intrinsics: Intrinsics | None = None) -> np.ndarray:
        """:meth:`locate` for several frames of one camera: (N, 3) centres uvd, the learned
        localiser's networks run once over all frames (HandganError if any frame fails)."""
        intr = intrinsics or self.spec.intrinsics
        if not isinstance(frames, FrameBatch):
            frames = FrameBatch([check_depth_frame(d, intr) for d in frames], self.device)
        if not len(frames):
            return np.empty((0, 3))
        if self.localizer is not None:
            return self.localizer.locate_batch(frames, intr)
        return np.stack([localize_hand(d, intr, cube_mm=self.spec.cube_mm[2])
                         for d in frames.frames])

    def crop(self, depth_mm: np.ndarray, centre_uvd: np.ndarray,
             intrinsics: Intrinsics | None = None) -> tuple[np.ndarray, CropTransform]:
        """The normalised (S, S) crop around ``centre_uvd`` and its transform."""
        intr = intrinsics or self.spec.intrinsics
        return crop_depth(depth_mm, centre_uvd, self.spec.cube_mm, self.spec.size, intr=intr)

    def predict_norm(self, crops: np.ndarray | torch.Tensor) -> np.ndarray:
        """Normalised crops (B, S, S) or (B, 1, S, S) -> normalised joints (B, J, 3) float32."""
        x = torch.as_tensor(crops, dtype=torch.float32)  # no copy for float32 numpy input
        if x.ndim == 3:
            x = x.unsqueeze(1)  # (B, 1, S, S)
        s = self.spec.size
        if x.ndim != 4 or x.shape[1:] != (1, s, s):
            raise HandganError(f"crops must be (B, {s}, {s}) or (B, 1, {s}, {s}), got shape "
                               f"{tuple(x.shape)}")
        if self._session is not None:
            feed = {"crops": np.ascontiguousarray(x.numpy())}
            return self._session.run(None, feed)[0]  # (B, J, 3)
        with torch.inference_mode():
            joints = self.network(x.to(self.device, non_blocking=True))
        return joints.cpu().numpy()  # (B, J, 3)

    def estimate(self, depth_mm: np.ndarray, intrinsics: Intrinsics | None = None,
                 centre_uvd: np.ndarray | None = None) -> Prediction:
        """3D joints of the hand in one full (H, W) depth frame in mm (any integer or float
        dtype; 0 or NaN = no depth) of the camera ``intrinsics`` (None = the checkpoint's),
        cropped around ``centre_uvd`` (None = localise the hand). HandganError for a frame
        that is not a depth frame (shape, dtype, size) or where no hand is found."""
        return self.estimate_batch([depth_mm], intrinsics, [centre_uvd])[0]

    def estimate_batch(self, frames: Iterable[np.ndarray], intrinsics: Intrinsics | None = None,
                       centres_uvd: Sequence[np.ndarray | None] | None = None
                       ) -> list[Prediction]:
        """:meth:`estimate` for several frames of one camera, with one network call
        (``centres_uvd``: an optional crop centre per frame; None entries are localised)."""
        intr = intrinsics or self.spec.intrinsics
        frames = list(frames)
        centres = list(centres_uvd) if centres_uvd is not None else [None] * len(frames)
        if len(centres) != len(frames):
            raise ValueError(f"{len(frames)} frames but {len(centres)} centres")
        if not frames:
            return []
        batch = FrameBatch([check_depth_frame(d, intr) for d in frames], self.device)
        todo = [i for i, c in enumerate(centres) if c is None]
        if todo:  # one batched localisation
            part = batch if len(todo) == len(frames) else \
                FrameBatch([batch.frames[i] for i in todo], self.device)
            for i, c in zip(todo, self.locate_batch(part, intr)):
                centres[i] = c
        transforms = [CropTransform(c, self.spec.cube_mm, self.size, intr) for c in centres]
        return self.estimate_crops(batch.crops(range(len(frames)), transforms), transforms)

    def estimate_crop(self, crop: np.ndarray, transform: CropTransform) -> Prediction:
        """Joints of one normalised (S, S) crop, mapped to the frame with its transform."""
        return self.estimate_crops(np.asarray(crop, dtype=np.float32)[None], [transform])[0]

    def estimate_crops(self, crops: np.ndarray, transforms: Sequence[CropTransform]
                       ) -> list[Prediction]:
        """One Prediction per normalised crop of a batch (B, S, S) or (B, 1, S, S) (an array
        or a tensor), each mapped with its transform."""
        if len(crops) != len(transforms):
            raise ValueError(f"{len(crops)} crops but {len(transforms)} transforms")
        if len(crops) == 0:
            return []
        return [Prediction(t.norm_to_uvd(n), t.norm_to_xyz(n), self.spec.joint_names,
                           t.centre_uvd, t) for n, t in zip(self.predict_norm(crops), transforms)]


def check_depth_frame(depth_mm: Any, intr: Intrinsics) -> np.ndarray:
    """The frame as an ndarray if it is a 2-D numeric (not bool) depth image of the camera's
    size, else a HandganError (which says how to pass other intrinsics)."""
    depth = np.asarray(depth_mm)
    if depth.ndim != 2:
        raise HandganError(f"not a depth frame: expected a 2-D (H, W) array, got shape "
                           f"{depth.shape}")
    if depth.dtype.kind not in "iuf":
        raise HandganError(f"not a depth frame: expected integer or float mm, got dtype "
                           f"{depth.dtype}")
    if depth.shape != (intr.height, intr.width):
        raise HandganError(f"frame is {depth.shape[1]}x{depth.shape[0]} but the camera is "
                           f"{intr.width}x{intr.height} (give the frame's intrinsics, "
                           "e.g. --intrinsics fx,fy,cx,cy,width,height)")
    return depth

def predict_files(estimator: Estimator, inputs: Sequence[str | os.PathLike],
                  out: str | os.PathLike | None = None, intrinsics: Intrinsics | None = None,
                  overlay: bool = True, progress: bool = False,
                  on_failure: Callable[[str], None] | None = None, video: str | None = None,
                  fps: float = 15.0, smooth: float | None = None,
                  max_frames: int | None = None) -> PredictReport:
    """``handgan predict``: estimate every frame of ``inputs``; a bad frame does not stop the
    rest. Inputs are what ``sequence.open_sources`` reads (``intrinsics``: the camera of plain
    frame files, None = the checkpoint's; ``max_frames``: at most this many frames of each
    recording or camera); the rest is ``sequence.predict_frames``, which says what is written.
    """
    sources = open_sources(inputs, intrinsics, max_frames=max_frames)
    return predict_frames(estimator, sources, out=out, overlay=overlay, video=video, fps=fps,
                          smooth=smooth, progress=progress, on_failure=on_failure,
                          inputs=inputs)
