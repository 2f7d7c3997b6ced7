"""Optimizers and learning-rate schedules, in iterations or in wall-clock time (``train.max_minutes``)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from anchorlab.config import TrainConfig

__all__ = ["build_optimizer", "build_scheduler", "lr_factor"]


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD (momentum) or AdamW; no weight decay on norm layers and biases. The fused implementations
    (one kernel over all parameters; on CPU too) where the parameters' device has them (docs/training.md)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    fused = _fused_supported(decay + no_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, fused=fused)
    return torch.optim.AdamW(groups, lr=cfg.lr, fused=fused)


def _fused_supported(params: list[torch.Tensor]) -> bool | None:
    """True when every parameter is a floating-point tensor on a device with fused optimizers (CPU, CUDA);
    None (torch's default choice) otherwise."""
    ok = bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    return True if ok else None


def lr_factor(it: int, cfg: TrainConfig, time_fraction: float | None = None) -> float:
    """Multiplier of the base lr at iteration ``it``: linear warm-up over ``warmup_iters`` iterations, then
    step, cosine or constant over ``iterations``.

    With a wall-clock budget (``train.max_minutes``) pass ``time_fraction`` = elapsed / budget: the
    schedule then runs on whichever ends first, time or iterations (it is evaluated at
    ``max(time_fraction, it / iterations)`` of the way), so the cosine reaches its floor (1 % of the lr)
    exactly when the budget runs out, whatever the speed of the machine.
    """
    if time_fraction is None:
        at = it
    else:
        at = min(1.0, max(time_fraction, it / max(1, cfg.iterations))) * cfg.iterations
    if cfg.schedule == "step":
        factor = cfg.gamma ** sum(at >= s for s in cfg.steps)
    elif cfg.schedule == "cosine":
        progress = min(1.0, at / max(1, cfg.iterations))
        factor = 0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        factor = 1.0
    if it < cfg.warmup_iters:
        alpha = it / cfg.warmup_iters
        factor *= cfg.warmup_factor * (1 - alpha) + alpha
    return factor


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, time_fraction: Callable[[], float] | None = None
) -> torch.optim.lr_scheduler.LambdaLR:
    """``LambdaLR`` of :func:`lr_factor`; ``time_fraction()`` (elapsed / budget, read at each step) makes
    the schedule time-based (``train.max_minutes``)."""
    if time_fraction is None:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: lr_factor(it, cfg))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: lr_factor(it, cfg, time_fraction()))
