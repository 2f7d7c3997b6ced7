"""IoU-family box losses for paired xyxy boxes: ``1 - IoU``, GIoU, DIoU, CIoU.

Same formulas and ``eps`` placement as ``torchvision.ops.generalized_box_iou_loss`` /
``distance_box_iou_loss`` / ``complete_box_iou_loss`` (equal to 1e-6 on valid boxes, tested), written
once here so every kind is safe on the inputs an untrained head produces:

* zero-area boxes: torchvision's CIoU divides by the box height (``atan(w / h)``) which is ``inf`` or
  ``0 / 0`` for a zero-height box and poisons the gradient; here the ratio is ``w / (h + eps)``;
* inverted boxes (``x2 < x1``): widths/heights are clamped at 0 for the areas, so the union never
  goes negative;
* disjoint boxes: the intersection is ``clamp(min=0)`` (finite zero gradient), GIoU/DIoU still pull.

All values and gradients are finite for finite inputs.
"""

from __future__ import annotations

import math

import torch

from anchorlab.losses.basic import reduce_loss

__all__ = ["IOU_KINDS", "iou_loss"]

IOU_KINDS = ("iou", "giou", "diou", "ciou")


def iou_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    kind: str = "iou",
    reduction: str = "none",
    eps: float = 1e-7,
) -> torch.Tensor:
    """Loss between paired xyxy boxes ``pred [..., 4]`` and ``target [..., 4]`` (broadcastable).

    kind: ``"iou"`` (1 - IoU), ``"giou"`` (1 - GIoU), ``"diou"`` (1 - IoU + d^2/c^2) or ``"ciou"``
    (DIoU + alpha v, alpha without gradient as in the paper and torchvision).
    reduction: ``"none"`` (shape ``[...]``), ``"mean"`` or ``"sum"``.
    """
    if kind not in IOU_KINDS:
        raise ValueError(f"kind must be one of {', '.join(IOU_KINDS)}; got {kind!r}")
    if reduction not in ("none", "mean", "sum"):
        raise ValueError(f"reduction must be one of none, mean, sum; got {reduction!r}")
    if pred.shape[-1] != 4 or target.shape[-1] != 4:
        raise ValueError(f"boxes must have shape [..., 4], got {tuple(pred.shape)} and {tuple(target.shape)}")
    if not pred.is_floating_point() or pred.dtype not in (torch.float32, torch.float64):
        pred = pred.float()
    target = target.to(pred.dtype)

    x1, y1, x2, y2 = pred.unbind(dim=-1)
    x1g, y1g, x2g, y2g = target.unbind(dim=-1)
    w, h = (x2 - x1).clamp(min=0), (y2 - y1).clamp(min=0)
    wg, hg = (x2g - x1g).clamp(min=0), (y2g - y1g).clamp(min=0)
    iw = (torch.minimum(x2, x2g) - torch.maximum(x1, x1g)).clamp(min=0)
    ih = (torch.minimum(y2, y2g) - torch.maximum(y1, y1g)).clamp(min=0)
    inter = iw * ih
    union = w * h + wg * hg - inter
    iou = inter / (union + eps)
    if kind == "iou":
        return reduce_loss(1 - iou, reduction)

    # smallest enclosing box
    cw = torch.maximum(x2, x2g) - torch.minimum(x1, x1g)
    ch = torch.maximum(y2, y2g) - torch.minimum(y1, y1g)
    if kind == "giou":
        area_c = cw.clamp(min=0) * ch.clamp(min=0)
        return reduce_loss(1 - iou + (area_c - union) / (area_c + eps), reduction)

    diag2 = cw**2 + ch**2 + eps
    centre_dist2 = ((x1 + x2 - x1g - x2g) / 2) ** 2 + ((y1 + y2 - y1g - y2g) / 2) ** 2
    loss = 1 - iou + centre_dist2 / diag2
    if kind == "ciou":
        v = (4 / math.pi**2) * (torch.atan(wg / (hg + eps)) - torch.atan(w / (h + eps))) ** 2
        with torch.no_grad():
            alpha = v / (1 - iou + v + eps)
        loss = loss + alpha * v
    return reduce_loss(loss, reduction)
