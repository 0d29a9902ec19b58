"""ONNX export of the pose estimator (or the generator), checked against PyTorch.

    result = export_onnx("runs/x/checkpoints/best.pt", "pose.onnx")   # what="estimator"
    print(result.max_abs_diff)        # onnxruntime vs PyTorch on a random batch

The estimator graph maps ``crops`` (B, 1, S, S) normalised depth to ``joints`` (B, J, 3)
normalised joints; the generator graph maps ``joints`` (B, J, 3) to ``crops`` (B, 1, S, S),
clean (without the sensor model's random missing pixels). The batch axis is dynamic. Cropping and
mapping joints back to mm stay in Python (``inference.Estimator``): they depend on the frame, not
on learned weights.

Needs the ``export`` extra (``pip install 'handgan[export]'``: onnx, onnxruntime). The graph is
written by torch's TorchScript-based exporter (``dynamo=False``), which needs nothing beyond torch
itself; the newer torch.export-based one would add onnxscript as a dependency.
"""
from __future__ import annotations

import inspect
import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from handgan.atomic import atomic_write
from handgan.checkpoint import load_checkpoint
from handgan.errors import HandganError
from handgan.networks import load_networks, read_crop_spec
from handgan.outputs import check_outputs

DEFAULT_OPSET = 17
# What torch's TorchScript exporter supports (9: the graph's ops need at least that).
MIN_OPSET = 9
MAX_OPSET = getattr(torch.onnx._constants, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", 20)
WHATS = ("estimator", "generator")
MAX_ABS_DIFF = 1e-4  # normalised units (1e-4 x 150 mm = 0.015 mm for a 300 mm cube)
_INSTALL_HINT = "install the export extra: pip install 'handgan[export]'"


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_onnx` wrote and how well onnxruntime agrees with PyTorch:
    ``max_abs_diff`` over the random check batch of ``batch``, in the output's units (None when
    not verified), and for the estimator in mm (times cube_z / 2: an upper bound of the
    per-coordinate joint difference after mapping back)."""

    path: Path
    what: str
    opset: int
    max_abs_diff: float | None
    batch: int
    max_abs_diff_mm: float | None = None


class _ExportedGenerator(nn.Module):
    """The generator as exported: clean crops, without the random missing pixels of its sensor
    model (``model.gen_edge_dropout``)."""

    def __init__(self, gen: nn.Module):
        super().__init__()
        self.gen = gen

    def forward(self, joints: torch.Tensor) -> torch.Tensor:
        return self.gen(joints, clean=True)


def export_onnx(checkpoint: str | os.PathLike, path: str | os.PathLike,
                what: str = "estimator", opset: int = DEFAULT_OPSET, verify: bool = True,
                batch: int = 4, seed: int = 0) -> ExportResult:
    """Export the "estimator" (crops -> joints) or "generator" (joints -> crops) of a training
    checkpoint to ONNX with a dynamic batch axis.

    The graph is checked with ``onnx.checker``, then (``verify``) run with onnxruntime on a
    random batch of ``batch`` (from ``seed``) and compared with PyTorch; the file is written
    (atomically) only after that. HandganError for a bad checkpoint, onnx / onnxruntime
    missing, or onnxruntime disagreeing with PyTorch by more than ``MAX_ABS_DIFF``.
    """
    if what not in WHATS:
        raise HandganError(f"what must be one of {', '.join(WHATS)}, got {what!r}")
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise HandganError(f"--opset {opset}: this torch exports opsets {MIN_OPSET} to "
                           f"{MAX_OPSET}")
    check_outputs([path], inputs=[checkpoint], option="--onnx")
    onnx = _require("onnx")
    if verify:
        _require("onnxruntime")
    ckpt = load_checkpoint(checkpoint)
    run_cfg, net = load_networks(checkpoint, [what], ckpt=ckpt)
    cfg, spec = run_cfg.model, read_crop_spec(ckpt, run_cfg.model, checkpoint)
    g = torch.Generator().manual_seed(seed)
    if what == "estimator":
        module: nn.Module = net
        example = {"crops": torch.rand(batch, 1, cfg.size, cfg.size, generator=g) * 2 - 1}
    else:
        example = {"joints": torch.randn(batch, cfg.num_joints, 3, generator=g) * 0.5}
        module = _ExportedGenerator(net).eval()
    outputs = ["joints" if what == "estimator" else "crops"]
    model_bytes = onnx_bytes(module, example, outputs, opset)
    try:
        onnx.checker.check_model(onnx.load_from_string(model_bytes))
    except Exception as e:  # the checker's own exception types vary between onnx versions
        raise HandganError(f"exported {what} graph failed onnx.checker ({e})") from None

    diff = None
    if verify:
        with torch.inference_mode():
            expected = module(*example.values()).numpy()
        got = onnxruntime_session(model_bytes).run(None, {k: v.numpy()
                                                          for k, v in example.items()})[0]
        diff = float(np.max(np.abs(got - expected)))
        if not diff <= MAX_ABS_DIFF:
            raise HandganError(f"onnxruntime and PyTorch disagree by {diff:.3g} on the exported "
                               f"{what} (limit {MAX_ABS_DIFF:g}); {path} not written")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: f.write(model_bytes))
    diff_mm = None if diff is None or what != "estimator" else diff * spec.cube_mm[2] / 2
    return ExportResult(path, what, opset, diff, batch, diff_mm)


def onnx_bytes(module: nn.Module, example: dict[str, torch.Tensor], outputs: list[str],
               opset: int = DEFAULT_OPSET) -> bytes:
    """Serialise ``module`` (eval mode; called as ``module(*example.values())``, ``example``:
    input name -> tensor) to ONNX bytes with axis 0 of every input and output dynamic."""
    buffer = io.BytesIO()
    dynamic = {name: {0: "batch"} for name in [*example, *outputs]}
    kwargs = {}
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        kwargs["dynamo"] = False  # torch >= 2.5 defaults to the exporter that needs onnxscript
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation notices
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), tuple(example.values()), buffer,
                          input_names=list(example), output_names=outputs,
                          dynamic_axes=dynamic, opset_version=opset, do_constant_folding=True,
                          **kwargs)
    return buffer.getvalue()


def onnxruntime_session(model: bytes | str | os.PathLike, threads: int | None = None):
    """An onnxruntime CPU ``InferenceSession`` for ONNX bytes or a .onnx file, with ``threads``
    intra-op threads (None = onnxruntime's default, all cores)."""
    ort = _require("onnxruntime")
    options = ort.SessionOptions()
    # Its threads would otherwise spin after each run, taking the cores from whatever runs
    # next in this process (the localiser's torch networks: 2x slower on 2 cores).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads is not None:
        options.intra_op_num_threads = threads
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def _require(name: str):
    try:
        return __import__(name)
    except ImportError:
        raise HandganError(f"ONNX export needs the {name} package: {_INSTALL_HINT}") from None
