"""Box formats, the IoU family and the delta-xywh ``BoxCoder``.

Inside anchorlab every box is absolute-pixel ``xyxy`` float32 with ``x1 <= x2`` and ``y1 <= y2``.
The conversions at the edges (COCO ``xywh`` in and out, YOLO normalised ``cxcywh`` in) live here and
nowhere else. IoU functions wrap ``torchvision.ops`` so there is one implementation of each.

Shape legend (docs/architecture.md): B images, M ground-truth objects, R priors (anchors or points),
K classes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torchvision.ops import box_area, box_iou, complete_box_iou, distance_box_iou, generalized_box_iou

__all__ = [
    "BBOX_XFORM_CLIP",
    "BoxCoder",
    "box_area",
    "box_iou",
    "clip_boxes",
    "complete_box_iou",
    "cxcywh_to_xyxy",
    "distance_box_iou",
    "generalized_box_iou",
    "pairwise_iou",
    "xywh_to_xyxy",
    "xyxy_to_cxcywh",
    "xyxy_to_xywh",
    "yolo_to_xyxy",
]

#: Largest log-scale a decoded width/height delta may take (detectron2's and torchvision's clamp).
BBOX_XFORM_CLIP = math.log(1000.0 / 16)


def xywh_to_xyxy(boxes):
    """COCO ``[x, y, w, h]`` -> ``xyxy``; works on numpy arrays and tensors of shape ``[..., 4]``."""
    out = boxes.copy() if isinstance(boxes, np.ndarray) else boxes.clone()
    out[..., 2] = boxes[..., 0] + boxes[..., 2]
    out[..., 3] = boxes[..., 1] + boxes[..., 3]
    return out


def xyxy_to_xywh(boxes):
    """``xyxy`` -> COCO ``[x, y, w, h]``; numpy or tensor ``[..., 4]``."""
    out = boxes.copy() if isinstance(boxes, np.ndarray) else boxes.clone()
    out[..., 2] = boxes[..., 2] - boxes[..., 0]
    out[..., 3] = boxes[..., 3] - boxes[..., 1]
    return out


def cxcywh_to_xyxy(boxes):
    """``[cx, cy, w, h]`` -> ``xyxy``; numpy or tensor ``[..., 4]``."""
    out = boxes.copy() if isinstance(boxes, np.ndarray) else boxes.clone()
    half_w, half_h = boxes[..., 2] / 2, boxes[..., 3] / 2
    out[..., 0] = boxes[..., 0] - half_w
    out[..., 1] = boxes[..., 1] - half_h
    out[..., 2] = boxes[..., 0] + half_w
    out[..., 3] = boxes[..., 1] + half_h
    return out


def xyxy_to_cxcywh(boxes):
    """``xyxy`` -> ``[cx, cy, w, h]``; numpy or tensor ``[..., 4]``."""
    out = boxes.copy() if isinstance(boxes, np.ndarray) else boxes.clone()
    out[..., 0] = (boxes[..., 0] + boxes[..., 2]) / 2
    out[..., 1] = (boxes[..., 1] + boxes[..., 3]) / 2
    out[..., 2] = boxes[..., 2] - boxes[..., 0]
    out[..., 3] = boxes[..., 3] - boxes[..., 1]
    return out


def yolo_to_xyxy(boxes, width: float, height: float):
    """YOLO normalised ``[cx, cy, w, h]`` in 0..1 -> absolute-pixel ``xyxy`` for an image of that size."""
    scale = np.array([width, height, width, height], dtype=np.float64)
    if not isinstance(boxes, np.ndarray):
        scale = torch.as_tensor(scale, dtype=boxes.dtype, device=boxes.device)
    return cxcywh_to_xyxy(boxes * scale)


def clip_boxes(boxes: torch.Tensor, height: float, width: float) -> torch.Tensor:
    """Clip ``xyxy`` boxes ``[..., 4]`` to an image of ``height x width`` (out of place)."""
    x = boxes[..., 0::2].clamp(0, width)
    y = boxes[..., 1::2].clamp(0, height)
    return torch.stack((x[..., 0], y[..., 0], x[..., 1], y[..., 1]), dim=-1)


def pairwise_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """IoU matrix ``[M, R]`` of ``xyxy`` boxes ``[M, 4]`` and ``[R, 4]``; empty inputs give empty matrices.

    Two zero-area boxes have IoU 0 (``box_iou`` divides 0 by 0 there and returns NaN)."""
    if boxes1.numel() == 0 or boxes2.numel() == 0:
        return boxes1.new_zeros((boxes1.shape[0], boxes2.shape[0]))
    no_union = (box_area(boxes1)[:, None] <= 0) & (box_area(boxes2)[None, :] <= 0)
    return box_iou(boxes1, boxes2).masked_fill_(no_union, 0.0)


class BoxCoder:
    """Delta-xywh box coding (R-CNN): ``(dx, dy, dw, dh) = ((gx - ax) / aw, (gy - ay) / ah, log gw/aw,
    log gh/ah)``, then normalised as ``(delta - means) / stds``.

    ``encode(anchors, gt) -> deltas`` and ``decode(anchors, deltas) -> boxes`` broadcast over any
    leading dimensions: anchors ``[..., 4]`` xyxy, deltas ``[..., 4]``. Decoding clamps ``dw, dh`` at
    ``log(1000 / 16)`` so an untrained head cannot overflow ``exp``.
    """

    def __init__(
        self,
        means: Sequence[float] = (0.0, 0.0, 0.0, 0.0),
        stds: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
        clip: float = BBOX_XFORM_CLIP,
    ) -> None:
        if len(means) != 4 or len(stds) != 4:
            raise ValueError(f"BoxCoder needs 4 means and 4 stds, got {list(means)} and {list(stds)}")
        if any(s <= 0 for s in stds):
            raise ValueError(f"BoxCoder stds must be positive, got {list(stds)}")
        self.means = tuple(float(m) for m in means)
        self.stds = tuple(float(s) for s in stds)
        self.clip = float(clip)

    def __repr__(self) -> str:
        return f"BoxCoder(means={self.means}, stds={self.stds})"

    def _stats(self, ref: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        means = torch.tensor(self.means, dtype=ref.dtype, device=ref.device)
        stds = torch.tensor(self.stds, dtype=ref.dtype, device=ref.device)
        return means, stds

    def encode(self, anchors: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        """Deltas ``[..., 4]`` that turn ``anchors`` into ``gt`` (both ``[..., 4]`` xyxy, broadcastable)."""
        aw = anchors[..., 2] - anchors[..., 0]
        ah = anchors[..., 3] - anchors[..., 1]
        ax = anchors[..., 0] + 0.5 * aw
        ay = anchors[..., 1] + 0.5 * ah
        gw = gt[..., 2] - gt[..., 0]
        gh = gt[..., 3] - gt[..., 1]
        gx = gt[..., 0] + 0.5 * gw
        gy = gt[..., 1] + 0.5 * gh
        deltas = torch.stack(((gx - ax) / aw, (gy - ay) / ah, torch.log(gw / aw), torch.log(gh / ah)), dim=-1)
        means, stds = self._stats(deltas)
        return (deltas - means) / stds

    def decode(self, anchors: torch.Tensor, deltas: torch.Tensor) -> torch.Tensor:
        """Boxes ``[..., 4]`` xyxy from ``anchors`` and ``deltas`` (both ``[..., 4]``, broadcastable)."""
        means, stds = self._stats(deltas)
        deltas = deltas * stds + means
        aw = anchors[..., 2] - anchors[..., 0]
        ah = anchors[..., 3] - anchors[..., 1]
        ax = anchors[..., 0] + 0.5 * aw
        ay = anchors[..., 1] + 0.5 * ah
        dw = deltas[..., 2].clamp(max=self.clip)
        dh = deltas[..., 3].clamp(max=self.clip)
        cx = ax + deltas[..., 0] * aw
        cy = ay + deltas[..., 1] * ah
        w = aw * torch.exp(dw)
        h = ah * torch.exp(dh)
        return torch.stack((cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h), dim=-1)
