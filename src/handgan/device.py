"""Which torch device a run or an estimator uses."""
from __future__ import annotations

import os
import time

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


def to_device_async(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A CPU tensor on ``device``; to a GPU from pinned memory, without waiting for its queue
    (a copy from pageable memory waits for every kernel queued before it)."""
    return t if device.type == "cpu" else t.pin_memory().to(device, non_blocking=True)


def cores() -> int:
    """CPU cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def other_runnable(samples: int = 5, interval_s: float = 0.05, own: int = 1) -> float:
    """Runnable threads on the machine besides this process's ``own`` busy threads, averaged
    over a few samples of /proc/loadavg's instantaneous count (0.0 where /proc is missing).
    Unlike the 1-minute load average it does not remember a job that just ended."""
    counts = []
    for k in range(samples):
        try:
            with open("/proc/loadavg") as f:
                running = int(f.read().split()[3].split("/")[0])
        except (OSError, ValueError, IndexError):
            return 0.0
        counts.append(running - own)  # this process's threads (one of them is reading)
        if k + 1 < samples:
            time.sleep(interval_s)
    return max(0.0, sum(counts) / len(counts))


def training_threads() -> int:
    """CPU threads for a training process: the cores other jobs leave free, at least 1.
    On 2 cores beside another busy job, 2 threads wait for each other at every layer (one of
    them is descheduled): 1 thread keeps going at about half speed (docs/training.md)."""
    return max(1, cores() - round(other_runnable()))


def oversubscribed(threads: int) -> bool:
    """Whether this process's threads and the other runnable ones outnumber the cores."""
    return other_runnable(samples=1, own=threads) + threads > cores() + 0.5
