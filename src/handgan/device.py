"""Which torch device a run or an estimator uses."""
from __future__ import annotations

import torch

from handgan.errors import HandganError


def resolve_device(device: str | torch.device) -> torch.device:
    """"auto" -> CUDA if available, else CPU; anything else as torch reads it, checked."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise HandganError(f"bad device {device!r} ({e})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise HandganError(f"device {device!r}: CUDA is not available here (use cpu or auto)")
    return dev
