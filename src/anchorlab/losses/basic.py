"""Element-wise detection losses: sigmoid focal, penalty-reduced heatmap focal, smooth L1, L1.

Every loss takes ``reduction="none"|"mean"|"sum"``; normalising by the number of positives is the
caller's job (see ``PositiveNormalizer``). ``"mean"`` of an empty tensor is 0 (kept in the graph).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss as _tv_sigmoid_focal_loss

__all__ = [
    "REDUCTIONS",
    "PositiveNormalizer",
    "l1_loss",
    "penalty_reduced_focal_loss",
    "reduce_loss",
    "sigmoid_focal_loss",
    "smooth_l1_loss",
]

REDUCTIONS = ("none", "mean", "sum")


def _check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {', '.join(REDUCTIONS)}; got {reduction!r}")


def reduce_loss(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    """Apply ``reduction`` ("none" | "mean" | "sum"); the mean of an empty tensor is ``0 * sum``."""
    _check_reduction(reduction)
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return loss.mean() if loss.numel() > 0 else 0.0 * loss.sum()
    return loss


def sigmoid_focal_loss(
    inputs: torch.Tensor,
    targets: torch.Tensor,
    alpha: float = 0.25,
    gamma: float = 2.0,
    reduction: str = "none",
) -> torch.Tensor:
    """RetinaNet focal loss on logits ``inputs`` and 0/1 ``targets`` of the same shape (e.g. ``[B, R, K]``).

    ``torchvision.ops.sigmoid_focal_loss`` itself (alpha 0.25, gamma 2; ``alpha < 0`` disables the
    weighting), with the reduction checked here so a typo fails with the allowed values.
    """
    _check_reduction(reduction)
    return _tv_sigmoid_focal_loss(
        inputs, targets.to(inputs.dtype), alpha=alpha, gamma=gamma, reduction=reduction
    )


def smooth_l1_loss(
    pred: torch.Tensor, target: torch.Tensor, beta: float = 0.11, reduction: str = "none"
) -> torch.Tensor:
    """Smooth L1 (Huber / beta): ``0.5 x**2 / beta`` for ``|x| < beta`` else ``|x| - 0.5 beta``.

    ``beta=0.11`` is RetinaNet's (detectron2). For ``beta < 1e-5`` it is plain L1 (avoids dividing by
    ~0, as detectron2 does).
    """
    _check_reduction(reduction)
    if beta < 1e-5:
        return l1_loss(pred, target, reduction=reduction)
    return reduce_loss(F.smooth_l1_loss(pred, target, beta=beta, reduction="none"), reduction)


def l1_loss(pred: torch.Tensor, target: torch.Tensor, reduction: str = "none") -> torch.Tensor:
    """``|pred - target|`` element-wise, then ``reduction``."""
    return reduce_loss((pred - target).abs(), reduction)


def penalty_reduced_focal_loss(
    pred_logits: torch.Tensor,
    heatmap: torch.Tensor,
    alpha: float = 2.0,
    beta: float = 4.0,
    reduction: str = "sum",
) -> torch.Tensor:
    """CornerNet / CenterNet heatmap focal loss on logits ``[B, K, H, W]`` and a gaussian target heatmap.

    With ``p = sigmoid(x)`` and target ``y``: where ``y == 1`` (object centres) the loss is
    ``-(1 - p)**alpha * log(p)``, elsewhere ``-(1 - y)**beta * p**alpha * log(1 - p)``. The logs come
    from ``logsigmoid`` so no clamping of ``p`` is needed (CenterNet clamps ``p`` to ``[1e-4, 1 - 1e-4]``).
    The caller divides by the number of objects (``max(num_pos, 1)``).
    """
    _check_reduction(reduction)
    heatmap = heatmap.to(pred_logits.dtype)
    pos = heatmap >= 1
    log_p = F.logsigmoid(pred_logits)
    log_not_p = F.logsigmoid(-pred_logits)
    pos_loss = -torch.exp(alpha * log_not_p) * log_p
    neg_loss = -((1 - heatmap).clamp(min=0) ** beta) * torch.exp(alpha * log_p) * log_not_p
    return reduce_loss(torch.where(pos, pos_loss, neg_loss), reduction)


class PositiveNormalizer:
    """Running average of the number of positives, to normalise classification/box losses.

    detectron2's RetinaNet ``loss_normalizer``: ``value = m * value + (1 - m) * max(num_pos, 1)``
    starting from ``initial=100``. ``update`` works on tensors only (no ``.item()``, no host sync);
    in distributed training all-reduce (average) ``num_pos`` before calling it.
    """

    def __init__(self, momentum: float = 0.9, initial: float = 100.0) -> None:
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self.momentum = float(momentum)
        self.initial = float(initial)
        self.value: torch.Tensor = torch.tensor(self.initial)

    def update(self, num_pos: torch.Tensor) -> torch.Tensor:
        """Fold in this step's positives (a tensor of any shape, summed) and return the new normaliser."""
        num_pos = torch.as_tensor(num_pos)
        dtype = num_pos.dtype if num_pos.is_floating_point() else torch.float32
        total = num_pos.sum().to(dtype).clamp(min=1)
        previous = self.value.to(device=total.device, dtype=dtype)
        self.value = (self.momentum * previous + (1 - self.momentum) * total).detach()
        return self.value

    def state_dict(self) -> dict[str, Any]:
        return {"value": float(self.value), "momentum": self.momentum}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = torch.tensor(float(state["value"]))
        self.momentum = float(state.get("momentum", self.momentum))

    def __repr__(self) -> str:
        return f"PositiveNormalizer(momentum={self.momentum}, value={float(self.value):.3f})"
