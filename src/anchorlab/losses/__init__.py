"""Losses: small functions of tensors with a ``reduction`` argument; weights live with the detector."""

from anchorlab.losses.basic import (
    PositiveNormalizer,
    l1_loss,
    penalty_reduced_focal_loss,
    reduce_loss,
    sigmoid_focal_loss,
    smooth_l1_loss,
)
from anchorlab.losses.free_anchor import free_anchor_loss
from anchorlab.losses.iou import iou_loss

__all__ = [
    "PositiveNormalizer",
    "free_anchor_loss",
    "iou_loss",
    "l1_loss",
    "penalty_reduced_focal_loss",
    "reduce_loss",
    "sigmoid_focal_loss",
    "smooth_l1_loss",
]
