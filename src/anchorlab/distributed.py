"""Distributed training helpers around ``torch.distributed`` (launched by ``torchrun``).

``torchrun`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; ``init_from_env`` starts the process group
(nccl on CUDA, gloo on CPU). Everything here is a no-op in a single process, so library code may call
``mean_across_ranks`` unconditionally.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "barrier",
    "gather_objects",
    "init_from_env",
    "is_distributed",
    "is_main",
    "mean_across_ranks",
    "rank",
    "shutdown",
    "world_size",
]


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def is_main() -> bool:
    """Rank 0 (or the only process): the one that writes logs, checkpoints and reports."""
    return rank() == 0


def init_from_env(device: str = "auto") -> tuple[int, int, torch.device]:
    """Join the process group described by torchrun's environment; returns ``(rank, world_size, device)``.

    Without ``WORLD_SIZE`` > 1 in the environment nothing is initialised and ``device`` is resolved as
    usual. With CUDA each process takes ``cuda:LOCAL_RANK``.
    """
    from anchorlab.engine.common import resolve_device

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, resolve_device(device)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    if not is_distributed():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=30))
    return dist.get_rank(), dist.get_world_size(), dev


def shutdown() -> None:
    if is_distributed():
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def mean_across_ranks(value: torch.Tensor) -> torch.Tensor:
    """Average a (non-differentiable) tensor over ranks, e.g. the number of positives that normalises a
    loss, so every rank divides by the same number; identity in a single process."""
    if not is_distributed():
        return value
    value = value.detach().clone().float()
    dist.all_reduce(value)
    return value / dist.get_world_size()


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` in a single process."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
