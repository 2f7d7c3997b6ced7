"""YOLO-style grid head: on every FPN level each cell predicts objectness, K class scores and one box.

* A small tower shared across levels (``num_convs`` 3x3 convs) and one 3x3 predictor with ``1 + K + 4``
  channels per cell: objectness, classes, ``(tx, ty, tw, th)``. The objectness bias starts at the prior
  probability (most cells are background); class scores are conditional on an object and trained on
  positive cells only, so their biases start at ``1 / K`` (at 0.01 the first few hundred steps only
  undid the prior: the quick grid's class loss stayed flat for ~200 iterations).
* Box coding (YOLOX's anchor-free form, cell ``(gx, gy)`` of stride ``s``): centre
  ``((gx + sigmoid(tx)) s, (gy + sigmoid(ty)) s)`` -- always inside the cell that predicts it -- and size
  ``(exp(tw) s, exp(th) s)``, i.e. ``tw = log(w / s)``.
* Assignment (``grid_assign``): the level whose size range holds ``max(w, h)``, the cell holding the
  centre; when several centres share a cell the one nearest the **cell centre** wins
  (``collision="nearest"``); ``"move"`` also moves the losers to a neighbour level, and ``"last"``
  reproduces the "last writer wins" bug for experiments. The number of final losers of the last batch
  is in ``last_stats`` (detached, not a loss).
* Loss: objectness BCE over all cells (assigned cells are positives), class BCE over positives, box loss
  over positives -- ``"l1"`` on ``(sigmoid(tx), sigmoid(ty), tw, th)`` against the encoded targets, or an
  IoU kind (``iou | giou | diou | ciou``) on decoded boxes; each summed and divided by the positives.
* Inference: score ``sigmoid(obj) * sigmoid(cls)``, per-level top-k, decode, clip, class-wise NMS.

Predictions and targets use one flat order: level-major, then ``(y, x)`` (``flatten_levels`` and
``grid_assign`` both), pinned by a test. Shape legend (docs/architecture.md): B images, M objects,
R cells, K classes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from anchorlab.anchors import grid_points
from anchorlab.assign import gather_matched, grid_assign, pad_boxes
from anchorlab.assign.grid import COLLISION_POLICIES
from anchorlab.distributed import mean_across_ranks
from anchorlab.losses.basic import l1_loss
from anchorlab.losses.iou import iou_loss
from anchorlab.models.heads.fcos import default_regress_ranges
from anchorlab.models.heads.postprocess import gather_priors, level_topk, loose_bound, select_detections
from anchorlab.models.heads.retina import _tower, flatten_levels

__all__ = ["GRID_BOX_LOSSES", "GridHead", "GridPriors", "default_size_ranges"]

GRID_BOX_LOSSES = ("l1", "iou", "giou", "diou", "ciou")
_MAX_LOG_SIZE = math.log(1e4)  # exp(tw) never overflows, whatever an untrained head predicts


class GridPriors(NamedTuple):
    """The cells: ``corners [R, 2]`` ``(gx s, gy s)`` (top-left), ``strides [R]``, and the levels'
    ``feature_sizes`` / ``level_strides`` that ``grid_assign`` needs."""

    corners: torch.Tensor
    strides: torch.Tensor
    feature_sizes: list[tuple[int, int]]
    level_strides: list[int]


def default_size_ranges(strides: Sequence[int]) -> list[tuple[float, float]]:
    """``[4 s, 8 s)`` per level of stride ``s``, the first from 0 and the last to infinity
    (``YOLO_SIZE_RANGES`` for strides 8, 16, 32; the ranges ``anchorlab assign-report`` uses)."""
    return default_regress_ranges(strides)


class GridHead(nn.Module):
    """Shared tower + ``1 + K + 4`` predictor per cell on every level; see the module docstring.

    Args:
        in_channels: channels of every FPN level.
        num_classes: foreground classes ``K``.
        channels, num_convs, norm: the shared tower ("none" | "gn" | "bn").
        prior_prob: initial objectness probability (class probabilities start at ``1 / K``).
        size_ranges: per-level ``(lo, hi)`` of ``max(w, h)`` in pixels; None: ``default_size_ranges``.
        collision: ``"nearest"``, ``"last"`` or ``"move"`` (``grid_assign``).
        move_losers: deprecated spelling of ``collision="move"`` (True) or of the default (False).
        box_loss: one of ``GRID_BOX_LOSSES``.
        obj_weight, cls_weight, box_weight: multiply the three losses.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        channels: int = 256,
        num_convs: int = 2,
        norm: str = "gn",
        conv_bias: bool | None = None,
        prior_prob: float = 0.01,
        size_ranges: Sequence[tuple[float, float]] | None = None,
        collision: str = "nearest",
        move_losers: bool | None = None,
        box_loss: str = "giou",
        obj_weight: float = 1.0,
        cls_weight: float = 1.0,
        box_weight: float = 5.0,
    ) -> None:
        super().__init__()
        if box_loss not in GRID_BOX_LOSSES:
            raise ValueError(f"grid box_loss {box_loss!r} is not one of {', '.join(GRID_BOX_LOSSES)}")
        self.num_classes = num_classes
        self.tower = _tower(in_channels, channels, num_convs, norm, conv_bias)
        last = channels if num_convs > 0 else in_channels
        self.pred = nn.Conv2d(last, 1 + num_classes + 4, 3, padding=1)
        nn.init.normal_(self.pred.weight, std=0.01)
        nn.init.zeros_(self.pred.bias)
        with torch.no_grad():
            self.pred.bias[0] = -math.log((1 - prior_prob) / prior_prob)
            self.pred.bias[1 : 1 + num_classes] = -math.log(max(num_classes - 1, 1e-6))  # sigmoid = 1 / K
        self.size_ranges = None if size_ranges is None else [(float(a), float(b)) for a, b in size_ranges]
        if collision not in COLLISION_POLICIES:
            raise ValueError(f"grid collision {collision!r} is not one of {', '.join(COLLISION_POLICIES)}")
        self.collision = "move" if move_losers else collision
        self.box_loss = box_loss
        self.obj_weight, self.cls_weight, self.box_weight = obj_weight, cls_weight, box_weight
        #: Detached statistics of the last ``loss`` call: ``collisions`` (final losers), ``moved``,
        #: ``num_pos`` (python ints).
        self.last_stats: dict[str, int] = {}

    @property
    def move_losers(self) -> bool:
        """Deprecated view of ``collision == "move"`` (setting it True / False picks "move" / "nearest")."""
        return self.collision == "move"

    @move_losers.setter
    def move_losers(self, value: bool) -> None:
        self.collision = "move" if value else "nearest"

    def forward(self, features: Sequence[torch.Tensor]) -> dict[str, Any]:
        """``features [B, C, H_l, W_l]`` per level -> ``obj_logits [B, R]``, ``cls_logits [B, R, K]``,
        ``box_raw [B, R, 4]`` ``(tx, ty, tw, th)`` and ``num_priors_per_level``."""
        flat = flatten_levels([self.pred(self.tower(f)) for f in features], 1 + self.num_classes + 4)
        return {
            "obj_logits": flat[..., 0],
            "cls_logits": flat[..., 1 : 1 + self.num_classes],
            "box_raw": flat[..., 1 + self.num_classes :],
            "num_priors_per_level": [int(f.shape[-2] * f.shape[-1]) for f in features],
        }

    def priors(
        self,
        feature_sizes: Sequence[tuple[int, int]],
        strides: Sequence[int],
        device: torch.device,
        dtype: torch.dtype,
    ) -> GridPriors:
        """The cells of every level, in the outputs' order."""
        corners, point_strides = grid_points(feature_sizes, strides, device=device, dtype=dtype, offset=0.0)
        return GridPriors(
            corners, point_strides, [(int(h), int(w)) for h, w in feature_sizes], [int(s) for s in strides]
        )

    @staticmethod
    def decode(box_raw: torch.Tensor, corners: torch.Tensor, strides: torch.Tensor) -> torch.Tensor:
        """``(tx, ty, tw, th) [..., 4]`` at cells ``corners [..., 2]`` of ``strides [...]`` -> xyxy."""
        s = strides[..., None]
        centre = corners + box_raw[..., :2].sigmoid() * s
        half = box_raw[..., 2:].clamp(max=_MAX_LOG_SIZE).exp() * s / 2
        return torch.cat((centre - half, centre + half), dim=-1)

    # -- training ----------------------------------------------------------------------------------
    def loss(
        self, outputs: dict[str, Any], priors: GridPriors, targets: Sequence[dict[str, torch.Tensor]]
    ) -> dict[str, torch.Tensor]:
        """``loss_obj``, ``loss_cls``, ``loss_box`` for per-image ``targets`` (``boxes [M_i, 4]`` xyxy,
        ``labels [M_i]``); updates ``last_stats``."""
        obj, cls_logits, box_raw = outputs["obj_logits"], outputs["cls_logits"], outputs["box_raw"]
        if len(targets) != obj.shape[0]:
            raise ValueError(f"got {len(targets)} targets for a batch of {obj.shape[0]} images")
        if priors.corners.shape[0] != obj.shape[1]:
            raise ValueError(f"got {priors.corners.shape[0]} cells for {obj.shape[1]} head outputs per image")
        dtype, device = priors.corners.dtype, priors.corners.device
        gt_boxes = [t["boxes"].to(device=device, dtype=dtype) for t in targets]
        ranges = self.size_ranges or default_size_ranges(priors.level_strides)
        assignment = grid_assign(
            gt_boxes,
            priors.feature_sizes,
            priors.level_strides,
            size_ranges=ranges,
            collision=self.collision,
        )
        matched = assignment.matched  # [B, R]
        positive = matched >= 0
        num_pos = positive.sum()
        normalizer = mean_across_ranks(num_pos).to(obj.dtype).clamp(min=1)  # the same on every rank
        self.last_stats = {
            "collisions": int(assignment.collisions.sum()),
            "moved": int(assignment.moved.sum()),
            "num_pos": int(num_pos),
        }

        loss_obj = F.binary_cross_entropy_with_logits(obj, positive.to(obj.dtype), reduction="sum")

        boxes, labels, _ = pad_boxes(gt_boxes, [t["labels"] for t in targets], device=device, dtype=dtype)
        pos_labels = gather_matched(labels, matched, fill=-1)[positive]  # [P]
        cls_target = pos_labels[:, None] == torch.arange(self.num_classes, device=device)
        pos_cls = cls_logits[positive]  # [P, K]
        loss_cls = F.binary_cross_entropy_with_logits(pos_cls, cls_target.to(pos_cls.dtype), reduction="sum")

        gt = gather_matched(boxes, matched)[positive]  # [P, 4]
        raw = box_raw[positive]
        corners, strides = (
            priors.corners.expand(obj.shape[0], -1, -1)[positive],
            priors.strides.expand_as(obj)[positive],
        )
        if self.box_loss == "l1":
            s = strides[:, None]
            centre, size = (gt[:, :2] + gt[:, 2:]) / 2, (gt[:, 2:] - gt[:, :2]).clamp(min=1e-6)
            target = torch.cat(((centre - corners) / s, (size / s).log()), dim=-1)
            pred = torch.cat((raw[:, :2].sigmoid(), raw[:, 2:]), dim=-1)
            per_cell = l1_loss(pred, target).sum(-1)
        else:
            per_cell = iou_loss(self.decode(raw, corners, strides), gt, kind=self.box_loss)
        return {
            "loss_obj": self.obj_weight * loss_obj / normalizer,
            "loss_cls": self.cls_weight * loss_cls / normalizer,
            "loss_box": self.box_weight * per_cell.sum() / normalizer,
        }

    # -- inference ---------------------------------------------------------------------------------
    @torch.no_grad()
    def postprocess(
        self,
        outputs: dict[str, Any],
        priors: GridPriors,
        image_sizes: Sequence[tuple[int, int]],
        *,
        score_thresh: float = 0.05,
        topk_per_level: int = 1000,
        nms_iou: float = 0.5,
        max_detections: int = 100,
        return_pre_nms: bool = False,
        keep_empty_boxes: bool = False,
    ) -> list[dict[str, torch.Tensor]]:
        """Detections per image (``boxes [D, 4]`` xyxy clipped, ``scores [D]``, ``labels [D]``,
        ``D <= max_detections``); score ``sigmoid(obj) * sigmoid(cls)``, per image and level the
        ``topk_per_level`` best above ``score_thresh`` (``level_topk``), decode, NMS."""
        cls_logits, box_raw = outputs["cls_logits"], outputs["box_raw"]
        obj = outputs["obj_logits"].sigmoid()  # [B, R]
        cell, scores, labels = level_topk(
            obj * cls_logits.amax(dim=-1).sigmoid(),  # each cell's best score
            lambda rows: obj.gather(1, rows)[..., None] * gather_priors(cls_logits, rows).sigmoid(),
            outputs.get("num_priors_per_level") or [cls_logits.shape[1]],
            topk_per_level,
            loose_bound(score_thresh),
        )
        return select_detections(
            self.decode(gather_priors(box_raw, cell), priors.corners[cell], priors.strides[cell]),
            scores,
            labels,
            image_sizes,
            score_thresh=score_thresh,
            nms_iou=nms_iou,
            max_detections=max_detections,
            return_pre_nms=return_pre_nms,
            keep_empty_boxes=keep_empty_boxes,
        )
