"""Exponential moving average (EMA) of a model's weights, used for evaluation and inference.

After every optimizer step that was taken, ``ModelEMA.update(model)`` moves each floating-point entry of
the EMA copy's state dict (parameters and buffers such as BatchNorm running statistics) towards the
model's: ``ema = d * ema + (1 - d) * model`` with the warmed-up decay
``d = decay * (1 - exp(-updates / tau))`` (YOLOv5's ramp: early updates follow the fast-changing model
almost exactly, later ones average over about ``1 / (1 - decay)`` steps). Integer buffers
(BatchNorm's ``num_batches_tracked``) are copied. The update is a handful of ``torch._foreach_*`` calls
over the whole tensor lists, on the model's device.

Checkpoints (``engine.train``): with EMA on, ``model`` holds the EMA weights (what ``anchorlab eval``,
``predict``, ``export`` and ``compare`` load), ``train_model`` the raw training weights and ``ema`` the
update count, so ``--resume`` continues both exactly (:meth:`ModelEMA.checkpoint_entries`,
:meth:`ModelEMA.restore`).
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn

__all__ = ["ModelEMA", "unwrap_model"]


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module under ``DistributedDataParallel`` and/or ``torch.compile`` wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):  # torch.compile's OptimizedModule
            model = model._orig_mod
        else:
            return model


class ModelEMA:
    """An EMA copy (``self.module``, always in eval mode, no gradients) of ``model``'s weights.

    ``decay`` is the long-run decay per update and ``tau`` the time constant (in updates) of its ramp
    from 0 (``tau = 0``: no ramp). The copy lives on the model's device; floating-point tensors are kept
    in float32 whatever the model's dtype.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9998, tau: float = 2000.0) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"train.ema_decay must be in [0, 1), got {decay}")
        if tau < 0:
            raise ValueError(f"train.ema_tau must be >= 0, got {tau}")
        self.decay, self.tau = float(decay), float(tau)
        self.updates = 0
        self.module = copy.deepcopy(unwrap_model(model)).float().eval()
        self.module.requires_grad_(False)

    def current_decay(self, updates: int | None = None) -> float:
        """The decay applied at update number ``updates`` (1-based; default: the last one)."""
        n = self.updates if updates is None else updates
        ramp = 1.0 - math.exp(-n / self.tau) if self.tau > 0 else 1.0
        return self.decay * ramp

    def _pairs(self, model: nn.Module) -> tuple[list[torch.Tensor], ...]:
        mine, theirs = self.module.state_dict(), unwrap_model(model).state_dict()
        if mine.keys() != theirs.keys():
            missing = sorted(set(mine) ^ set(theirs))[:5]
            raise ValueError(f"the model's state dict differs from the EMA copy's (e.g. {missing})")
        ema_f, model_f, ema_i, model_i = [], [], [], []
        for key, ema_t in mine.items():
            model_t = theirs[key].detach()
            if ema_t.is_floating_point():
                ema_f.append(ema_t)
                model_f.append(model_t if model_t.dtype == ema_t.dtype else model_t.to(ema_t.dtype))
            else:
                ema_i.append(ema_t)
                model_i.append(model_t)
        return ema_f, model_f, ema_i, model_i

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One EMA step towards ``model`` (call after each optimizer step that was taken)."""
        self.updates += 1
        d = self.current_decay()
        ema_f, model_f, ema_i, model_i = self._pairs(model)
        if ema_f:
            torch._foreach_lerp_(ema_f, model_f, 1.0 - d)  # ema + (1 - d) (model - ema)
        if ema_i:
            torch._foreach_copy_(ema_i, model_i)

    @torch.no_grad()
    def reset(self, model: nn.Module) -> None:
        """Restart the average from ``model``'s current weights (update count 0)."""
        self.module.load_state_dict(unwrap_model(model).state_dict())
        self.updates = 0

    def checkpoint_entries(self, model: nn.Module) -> dict[str, Any]:
        """Checkpoint entries: ``model`` = EMA weights (for inference), ``train_model`` = the training
        weights, ``ema`` = the update count and settings."""
        return {
            "model": self.module.state_dict(),
            "train_model": unwrap_model(model).state_dict(),
            "ema": {"updates": self.updates, "decay": self.decay, "tau": self.tau},
        }

    def restore(self, state: dict[str, Any], model: nn.Module) -> bool:
        """Continue the average saved in checkpoint ``state``; without one (a run trained without EMA),
        start it from ``model`` (which must already hold the resumed weights). True if restored."""
        if "ema" not in state:
            self.reset(model)
            return False
        self.module.load_state_dict(state["model"])
        self.updates = int(state["ema"]["updates"])
        return True
