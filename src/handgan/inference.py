"""Inference: a raw depth frame (or a crop) -> 3D joints, with the discriminator's pose branch.

    est = Estimator.from_checkpoint("runs/x/checkpoints/best.pt")
    pred = est.estimate(depth_mm)             # (H, W) mm -> Prediction: uvd (J, 3), xyz (J, 3)
    preds = est.estimate_batch([d1, d2])      # one network call for several frames

A frame goes through: hand localisation (``localize_hand``, skipped when a centre is given) ->
cube crop with the checkpoint's cube and size (``crop_depth``) -> the pose network (normalised
joints) -> back to full-frame uvd and camera xyz with the crop's exact ``CropTransform``.

The command ``handgan predict`` is :func:`predict_files`: frame sources (``frames.py``: files,
labelled folders, RealSense recordings and cameras; ``sequence.open_sources``) through
``sequence.predict_frames`` (outputs, video, smoothing), drawn by ``overlay.py``. The networks
come from the checkpoint through ``networks.load_networks``.
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
from handgan.errors import HandganError
from handgan.export import onnx_bytes, onnxruntime_session
from handgan.frames import read_depth_frame  # noqa: F401  (API: in frames.py)
from handgan.localize import Localizer
from handgan.networks import CropSpec, load_networks, read_crop_spec
from handgan.preprocess import CropTransform, crop_depth, localize_hand
from handgan.sequence import PredictReport, open_sources, predict_frames

BACKENDS = ("torch", "onnxruntime")


# --------------------------------------------------------------------------------------------
# The estimator
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class Prediction:
    """3D joints of one frame.

    Attributes:
        uvd: (J, 3) float64 u, v px in the full frame and d mm.
        xyz: (J, 3) float64 camera coordinates in mm (the camera's y convention).
        joint_names: J names, in the order of the rows.
        centre_uvd: (3,) the crop centre used (localised or given).
        transform: the crop's ``CropTransform`` (maps normalised joints <-> frame).
    """

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


def _rounded(values: np.ndarray) -> list[float]:
    return [round(float(v), 4) for v in values]  # 1e-4 px / mm: far below any model's error


class Estimator:
    """The pose estimator of a trained checkpoint, from full depth frames or from crops.

    Build it with :meth:`from_checkpoint`. The network runs under ``torch.inference_mode``
    (backend "torch") or in an onnxruntime session of the same network (backend "onnxruntime").

    Attributes:
        network: ``nn.Module`` mapping normalised crops (B, 1, S, S) in [-1, 1] to normalised
            joints (B, J, 3) (what ``export.export_onnx`` writes). Eval mode, no gradients.
        spec: how crops are made (size, cube, default camera, joint names).
        device: where the torch network runs (CPU for the onnxruntime backend).
        backend: "torch" or "onnxruntime".
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
        self._warm_up()

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: str | torch.device = "auto",
                        threads: int | None = None, backend: str = "torch") -> Estimator:
        """Load the pose branch of a training checkpoint.

        Args:
            path: checkpoint file (``last.pt`` / ``best.pt``).
            device: "auto" (CUDA if available), "cpu", "cuda", ... (backend "torch" only).
            threads: CPU threads of the network: torch's intra-op threads (process-wide), or the
                onnxruntime session's. None keeps the library's default (torch: the physical
                cores, the fastest on an idle machine; on a machine busy with other work, 1 thread
                avoids waiting for a descheduled worker thread at every layer).
            backend: "torch", or "onnxruntime" (CPU; the same network exported to ONNX in
                memory, usually faster for one frame; needs ``pip install 'handgan[export]'``).

        Returns:
            An Estimator, warmed up (the first real frame does not pay for kernel set-up).

        Raises:
            HandganError: missing, corrupt, foreign or code-carrying checkpoint (one line naming
                the file), or onnxruntime missing for that backend.
        """
        if threads is not None and backend == "torch":
            torch.set_num_threads(int(threads))
        ckpt = load_checkpoint(path)
        cfg, network = load_networks(path, ["estimator"], ckpt=ckpt)
        spec = read_crop_spec(ckpt, cfg.model, path)
        localizer = (Localizer.from_state(ckpt["localizer"], where=str(path))
                     if ckpt.get("localizer") is not None else None)
        return cls(network, spec, device, backend=backend, threads=threads, localizer=localizer)

    # ---- properties -----------------------------------------------------------------------

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

    # ---- steps ----------------------------------------------------------------------------

    def locate(self, depth_mm: np.ndarray, intrinsics: Intrinsics | None = None) -> np.ndarray:
        """(H, W) frame -> (3,) hand centre uvd: the checkpoint's learned localiser when it has
        one (``localize.Localizer``), else ``localize_hand`` with the checkpoint's cube.

        Raises:
            HandganError: bad frame, or "no hand found: ...".
        """
        intr = intrinsics or self.spec.intrinsics
        depth = check_depth_frame(depth_mm, intr)
        if self.localizer is not None:
            return self.localizer.locate(depth, intr)
        return localize_hand(depth, intr, cube_mm=self.spec.cube_mm[2])

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

    # ---- public estimates ------------------------------------------------------------------

    def estimate(self, depth_mm: np.ndarray, intrinsics: Intrinsics | None = None,
                 centre_uvd: np.ndarray | None = None) -> Prediction:
        """3D joints of the hand in one full depth frame.

        Args:
            depth_mm: (H, W) depth in mm (any integer or float dtype; 0 or NaN = no depth); H, W
                must be the camera's.
            intrinsics: the frame's camera; None = the checkpoint's training camera.
            centre_uvd: (3,) crop centre u, v px, d mm; None = localise the hand.

        Returns:
            A :class:`Prediction` (uvd and xyz in the frame's camera).

        Raises:
            HandganError: not a depth frame (shape, dtype, size), or no hand found.
        """
        intr = intrinsics or self.spec.intrinsics
        depth = check_depth_frame(depth_mm, intr)
        centre = self.locate(depth, intr) if centre_uvd is None else centre_uvd
        crop, transform = self.crop(depth, centre, intr)
        return self.estimate_crop(crop, transform)

    def estimate_batch(self, frames: Iterable[np.ndarray], intrinsics: Intrinsics | None = None,
                       centres_uvd: Sequence[np.ndarray | None] | None = None
                       ) -> list[Prediction]:
        """:meth:`estimate` for several frames of one camera, with one network call.

        Args:
            frames: (H, W) depth frames in mm.
            intrinsics: their camera; None = the checkpoint's.
            centres_uvd: optional crop centre per frame (None entries are localised).

        Returns:
            One Prediction per frame, in order.
        """
        intr = intrinsics or self.spec.intrinsics
        frames = list(frames)
        centres = list(centres_uvd) if centres_uvd is not None else [None] * len(frames)
        if len(centres) != len(frames):
            raise ValueError(f"{len(frames)} frames but {len(centres)} centres")
        crops, transforms = [], []
        for depth, centre in zip(frames, centres):
            depth = check_depth_frame(depth, intr)
            crop, transform = self.crop(depth, self.locate(depth, intr) if centre is None
                                        else centre, intr)
            crops.append(crop)
            transforms.append(transform)
        return self.estimate_crops(np.stack(crops) if crops else
                                   np.empty((0, self.size, self.size), np.float32), transforms)

    def estimate_crop(self, crop: np.ndarray, transform: CropTransform) -> Prediction:
        """Joints of one normalised (S, S) crop, mapped to the frame with its transform."""
        crop = np.asarray(crop, dtype=np.float32)
        return self.estimate_crops(crop[None], [transform])[0]

    def estimate_crops(self, crops: np.ndarray, transforms: Sequence[CropTransform]
                       ) -> list[Prediction]:
        """Joints of a batch of normalised crops (B, S, S), each mapped with its transform.

        Returns:
            One Prediction per crop.
        """
        if len(crops) != len(transforms):
            raise ValueError(f"{len(crops)} crops but {len(transforms)} transforms")
        if len(crops) == 0:
            return []
        norm = self.predict_norm(crops)
        return [self._to_prediction(n, t) for n, t in zip(norm, transforms)]

    def _to_prediction(self, norm: np.ndarray, transform: CropTransform) -> Prediction:
        xyz = transform.norm_to_xyz(norm)  # (J, 3) mm
        uvd = transform.norm_to_uvd(norm)  # (J, 3) px, px, mm
        return Prediction(uvd, xyz, self.spec.joint_names, transform.centre_uvd, transform)

    def _warm_up(self) -> None:
        """One forward pass, so kernel selection and allocation happen before the first frame."""
        self.predict_norm(np.full((1, self.size, self.size), 1.0, dtype=np.float32))


def check_depth_frame(depth_mm: Any, intr: Intrinsics) -> np.ndarray:
    """The frame as an ndarray if it is a 2-D numeric depth image of the camera's size.

    Raises:
        HandganError: wrong number of dimensions, non-numeric dtype (e.g. bool), or a size that
            is not the camera's (the message says how to pass other intrinsics).
    """
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


# --------------------------------------------------------------------------------------------
# Files: frame sources in, predictions out
# --------------------------------------------------------------------------------------------

def predict_files(estimator: Estimator, inputs: Sequence[str | os.PathLike],
                  out: str | os.PathLike | None = None, intrinsics: Intrinsics | None = None,
                  overlay: bool = True, progress: bool = False,
                  on_failure: Callable[[str], None] | None = None, video: str | None = None,
                  fps: float = 15.0, smooth: float | None = None,
                  max_frames: int | None = None) -> PredictReport:
    """Estimate every frame of ``inputs``; a bad frame does not stop the rest.

    Inputs are what ``sequence.open_sources`` reads: depth frame files and folders of them, NYU-
    format labelled folders (true skeleton and error drawn too), RealSense recordings (.bag,
    .db3) and ``realsense[:SERIAL]`` for a live camera. With ``out``: per frame
    ``OUT/<stem>.json`` (uvd and xyz per named joint) and, if ``overlay``,
    ``OUT/<stem>.overlay.png`` (the skeleton on the depth frame); for more than one frame also
    ``OUT/predictions.txt`` (the field's format: one line per frame, J x 3 ``u v d``, in input
    order) and ``OUT/predictions_frames.txt`` (the file of each line; failed frames have no
    line). Every file is written atomically. See ``sequence.predict_frames`` for ``video``,
    ``fps`` and ``smooth``.

    Args:
        estimator: the loaded estimator.
        inputs: depth frame files (.png NYU / 16-bit, .npy), folders, recordings, cameras.
        out: output folder, or None to write nothing.
        intrinsics: the camera of plain frame files; None = the checkpoint's.
        overlay: also draw the overlay PNGs (about 0.1 s a frame).
        progress: show a tqdm progress bar on stderr (several frames, on a terminal only).
        on_failure: called with each failure line as it happens.
        video: a .gif or .mp4 of the overlays.
        fps: the video's frame rate.
        smooth: alpha of the hand-centre smoothing across frames (None = off).
        max_frames: at most this many frames of each recording or camera.

    Returns:
        A :class:`PredictReport`.

    Raises:
        HandganError: an input that does not exist, or ``out`` is an input folder.
    """
    sources = open_sources(inputs, intrinsics, max_frames=max_frames)
    return predict_frames(estimator, sources, out=out, overlay=overlay, video=video, fps=fps,
                          smooth=smooth, progress=progress, on_failure=on_failure,
                          inputs=inputs)
