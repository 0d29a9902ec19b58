"""Multi-process training with torchrun: the process group and the few collectives training needs.

    torchrun --nproc_per_node=4 -m handgan train --out runs/x          # one node, 4 GPUs
    torchrun --nnodes=2 --node_rank=0 --master_addr=HOST --nproc_per_node=8 -m handgan train ...

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; without them training runs
in one process and nothing here does anything. The backend is NCCL when the run uses CUDA and gloo
on CPU. Each process drives one device (``cuda:LOCAL_RANK``) and takes its share of every global
batch; the networks are wrapped in DistributedDataParallel, which averages their gradients.
"""
from __future__ import annotations

import gc
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from handgan.errors import HandganError


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 writes files, logs and draws the progress bar."""
        return self.rank == 0


def init_distributed(device_type: str) -> DistInfo:
    """Join the torchrun process group (once per process); DistInfo() outside torchrun."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]),
                    int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_available():
        raise HandganError("launched by torchrun, but this torch build has no torch.distributed")
    if not dist.is_initialized():
        # Import torch.distributed.nn.functional while no process group exists: its functions
        # take ``group=group.WORLD`` as a default argument, bound at first import; DDP imports
        # it, so imported after init it holds the default group for good. destroy_process_group
        # then cannot free the group, gloo's worker threads outlive it, and a worker that frees a
        # Python tensor while the interpreter shuts down aborts the process (SIGABRT after a
        # finished run: torchrun reports the job failed).
        import torch.distributed.nn.functional as _  # noqa: F401
        if device_type == "cuda":
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo",
                                timeout=timedelta(minutes=30))
    return info


def shutdown(info: DistInfo) -> None:
    """Leave the process group once the DDP wrappers are gone (their reducers hold the group,
    hence the collect): the group is freed and its worker threads end here, not at exit."""
    if info.enabled and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def mean_over_ranks(values: dict[str, float], info: DistInfo, device: torch.device
                    ) -> dict[str, float]:
    """The average of each value over all processes (for logging the losses of a global batch)."""
    if not info.enabled or not values:
        return values
    t = torch.tensor(list(values.values()), dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return dict(zip(values, (t / info.world_size).tolist()))


def gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's ``obj`` in rank order (a one-element list when not distributed)."""
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, info: DistInfo) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
