"""FCOS head (Tian et al., 2019, with the FCOS v2 / mmdetection refinements): per-point classification,
``(l, t, r, b)`` distances and centerness, no anchors.

* Towers: a classification tower and a regression tower (``num_convs`` 3x3 convs, GroupNorm), shared
  across levels (``retina._tower``). ``cls_logits`` and ``box_dist`` come from 3x3 convs on their towers;
  ``centerness`` from a 3x3 conv on the **regression** tower (``centerness_on_reg``, FCOS v2).
* Distances: ``relu(scale_l * x) * stride_l`` in input pixels, with one learnable ``scale_l`` per level
  (init 1): mmdetection's ``norm_on_bbox`` variant, which regresses distances in strides so one head
  serves every level. ``norm_on_bbox=False`` gives the original ``exp(scale_l * x) * stride_l``.
* Points: cell centres ``((x + 0.5) s, (y + 0.5) s)`` (``grid_points(offset=0.5)``; the authors' code
  uses ``x s + s // 2``, identical for even strides), in the fixed level-major, ``(y, x)`` order.
* Loss (``fcos_assign``: centre sampling 1.5, per-level regress ranges, min-area tie-break): focal loss
  over every non-ignored point / ``num_pos``; IoU-family box loss (GIoU by default) on positives
  weighted by the centerness target / the sum of those targets; centerness BCE on positives /
  ``num_pos``.
* Inference: score ``sqrt(sigmoid(cls) * sigmoid(centerness))`` (torchvision's FCOS; the geometric mean
  keeps the score on the scale of a probability, so one ``score_thresh`` suits every head), per-level
  top-k above the threshold, decode, clip, class-wise NMS, ``max_detections``.

Shape legend (docs/architecture.md): B images, M objects, R points, K classes.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from anchorlab.anchors import grid_points
from anchorlab.assign import IGNORE, fcos_assign, gather_matched, pad_boxes
from anchorlab.distributed import mean_across_ranks
from anchorlab.losses.basic import sigmoid_focal_loss
from anchorlab.losses.iou import IOU_KINDS, iou_loss
from anchorlab.models.heads.postprocess import gather_priors, level_topk, loose_bound, select_detections
from anchorlab.models.heads.retina import _tower, flatten_levels

__all__ = ["FCOSHead", "default_regress_ranges", "distances_to_boxes", "select_detections"]


def default_regress_ranges(strides: Sequence[int]) -> list[tuple[float, float]]:
    """``(4 s, 8 s)`` per level of stride ``s`` (finest first), the first opened down to 0 and the last up
    to infinity: ``FCOS_REGRESS_RANGES`` for P3-P7, ``(0, 64), (64, 128), (128, inf)`` for P3-P5 (the
    ranges ``anchorlab assign-report`` uses too)."""
    if len(strides) < 1:
        raise ValueError("need at least one level")
    bounds = [0.0] + [8.0 * s for s in strides[:-1]] + [math.inf]
    return list(itertools.pairwise(bounds))


def distances_to_boxes(points: torch.Tensor, dist: torch.Tensor) -> torch.Tensor:
    """``points [..., 2]`` ``(x, y)`` and ``dist [..., 4]`` ``(l, t, r, b)`` -> xyxy boxes ``[..., 4]``."""
    return torch.cat((points - dist[..., :2], points + dist[..., 2:]), dim=-1)


class FCOSHead(nn.Module):
    """FCOS towers and predictors shared across levels; see the module docstring.

    Args:
        in_channels: channels of every FPN level.
        num_classes: foreground classes ``K``.
        strides: the levels' strides (one learnable scale per level).
        channels, num_convs, norm: the towers ("none" | "gn" | "bn"; FCOS uses GN).
        conv_bias: the towers' convs have a bias (None: only when ``norm`` is "none").
        point_offset: points at ``(cell + point_offset) * stride`` (0.5: cell centres; 0: torchvision).
        prior_prob: initial foreground probability of the classifier.
        regress_ranges: per-level ``(lo, hi)`` of ``max(l, t, r, b)``; None: ``default_regress_ranges``.
        center_sampling_radius: in strides; None: every point inside the box is a candidate.
        centerness_on_reg: centerness predicted from the regression tower (else the class tower).
        norm_on_bbox: distances ``relu(s x) * stride`` (else ``exp(s x) * stride``).
        box_loss: one of ``IOU_KINDS``.
        focal_alpha, focal_gamma: classification focal loss.
        cls_weight, box_weight, centerness_weight: multiply the three losses.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        strides: Sequence[int],
        *,
        channels: int = 256,
        num_convs: int = 4,
        norm: str = "gn",
        conv_bias: bool | None = None,
        prior_prob: float = 0.01,
        regress_ranges: Sequence[tuple[float, float]] | None = None,
        center_sampling_radius: float | None = 1.5,
        centerness_on_reg: bool = True,
        norm_on_bbox: bool = True,
        box_loss: str = "giou",
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        cls_weight: float = 1.0,
        box_weight: float = 1.0,
        centerness_weight: float = 1.0,
        point_offset: float = 0.5,
    ) -> None:
        super().__init__()
        if box_loss not in IOU_KINDS:
            raise ValueError(f"FCOS box_loss {box_loss!r} is not one of {', '.join(IOU_KINDS)}")
        self.num_classes = num_classes
        self.strides = [int(s) for s in strides]
        ranges = list(regress_ranges) if regress_ranges is not None else default_regress_ranges(strides)
        if len(ranges) != len(self.strides):
            raise ValueError(
                f"got {len(ranges)} regress ranges for {len(self.strides)} levels {self.strides}"
            )
        self.regress_ranges = [(float(lo), float(hi)) for lo, hi in ranges]
        self.center_sampling_radius = center_sampling_radius
        self.centerness_on_reg, self.norm_on_bbox = centerness_on_reg, norm_on_bbox
        self.box_loss = box_loss
        self.focal_alpha, self.focal_gamma = focal_alpha, focal_gamma
        self.cls_weight, self.box_weight, self.centerness_weight = cls_weight, box_weight, centerness_weight

        self.cls_tower = _tower(in_channels, channels, num_convs, norm, conv_bias)
        self.box_tower = _tower(in_channels, channels, num_convs, norm, conv_bias)
        last = channels if num_convs > 0 else in_channels
        self.cls_logits = nn.Conv2d(last, num_classes, 3, padding=1)
        self.bbox_pred = nn.Conv2d(last, 4, 3, padding=1)
        self.centerness = nn.Conv2d(last, 1, 3, padding=1)
        for conv in (self.cls_logits, self.bbox_pred, self.centerness):
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - prior_prob) / prior_prob))
        self.scales = nn.Parameter(torch.ones(len(self.strides)))
        self.point_offset = float(point_offset)

    def forward(self, features: Sequence[torch.Tensor]) -> dict[str, Any]:
        """``features [B, C, H_l, W_l]`` per level -> ``cls_logits [B, R, K]``, ``box_dist [B, R, 4]``
        (``l, t, r, b`` in input pixels), ``centerness [B, R]`` (logits), ``num_priors_per_level``."""
        if len(features) != len(self.strides):
            raise ValueError(
                f"FCOSHead built for {len(self.strides)} levels got {len(features)} feature maps"
            )
        cls_maps, box_maps, ctr_maps = [], [], []
        for level, feature in enumerate(features):
            cls_feat = self.cls_tower(feature)
            box_feat = self.box_tower(feature)
            cls_maps.append(self.cls_logits(cls_feat))
            raw = self.bbox_pred(box_feat) * self.scales[level]
            dist = F.relu(raw) if self.norm_on_bbox else raw.clamp(max=math.log(1e4)).exp()
            box_maps.append(dist * self.strides[level])
            ctr_maps.append(self.centerness(box_feat if self.centerness_on_reg else cls_feat))
        return {
            "cls_logits": flatten_levels(cls_maps, self.num_classes),
            "box_dist": flatten_levels(box_maps, 4),
            "centerness": flatten_levels(ctr_maps, 1).squeeze(-1),
            "num_priors_per_level": [int(f.shape[-2] * f.shape[-1]) for f in features],
        }

    def priors(
        self,
        feature_sizes: Sequence[tuple[int, int]],
        strides: Sequence[int],
        device: torch.device,
        dtype: torch.dtype,
        grid_strides: Sequence[tuple[int, int]] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(points [R, 2] (x, y) at ``(cell + point_offset) * stride``, point_strides [R])`` in the outputs'
        order (``point_offset`` 0.5: cell centres)."""
        return grid_points(
            feature_sizes,
            strides,
            device=device,
            dtype=dtype,
            offset=self.point_offset,
            grid_strides=grid_strides,
        )

    # -- training ----------------------------------------------------------------------------------
    def loss(
        self,
        outputs: dict[str, Any],
        priors: tuple[torch.Tensor, torch.Tensor],
        targets: Sequence[dict[str, torch.Tensor]],
    ) -> dict[str, torch.Tensor]:
        """``loss_cls``, ``loss_box``, ``loss_centerness`` for per-image ``targets`` (``boxes [M_i, 4]``
        xyxy, ``labels [M_i]``, optional ``crowd [C_i, 4]``)."""
        points, point_strides = priors
        cls_logits, box_dist, ctr_logits = outputs["cls_logits"], outputs["box_dist"], outputs["centerness"]
        if len(targets) != cls_logits.shape[0]:
            raise ValueError(f"got {len(targets)} targets for a batch of {cls_logits.shape[0]} images")
        if points.shape[0] != cls_logits.shape[1]:
            raise ValueError(f"got {points.shape[0]} points for {cls_logits.shape[1]} head outputs per image")
        dtype = points.dtype
        gt_boxes = [t["boxes"].to(dtype) for t in targets]
        crowd = None
        if any("crowd" in t for t in targets):
            crowd = [t.get("crowd", points.new_zeros((0, 4))).to(dtype) for t in targets]
        assignment = fcos_assign(
            points,
            point_strides,
            gt_boxes,
            regress_ranges=self.regress_ranges,
            center_sampling_radius=self.center_sampling_radius,
            crowd=crowd,
        )
        matched = assignment.matched  # [B, R]
        positive = matched >= 0
        # every rank divides by the same counts (identity in a single process)
        num_pos = mean_across_ranks(positive.sum()).to(cls_logits.dtype).clamp(min=1)

        _, labels, _ = pad_boxes(gt_boxes, [t["labels"] for t in targets], device=points.device, dtype=dtype)
        matched_labels = gather_matched(labels, matched, fill=-1)  # [B, R]
        classes = torch.arange(self.num_classes, device=points.device)
        cls_target = matched_labels[..., None] == classes  # [B, R, K]
        focal = sigmoid_focal_loss(cls_logits, cls_target, self.focal_alpha, self.focal_gamma)
        considered = (matched != IGNORE).to(focal.dtype)
        loss_cls = (focal * considered[..., None]).sum() / num_pos

        # Box and centerness: positives only (selected, so untrained outputs elsewhere cannot matter).
        ctr_target = assignment.centerness[positive]  # [P]
        pred_boxes = distances_to_boxes(points.expand_as(box_dist[..., :2])[positive], box_dist[positive])
        gt = distances_to_boxes(
            points.expand_as(box_dist[..., :2])[positive], assignment.reg_targets[positive]
        )
        per_point = iou_loss(pred_boxes, gt, kind=self.box_loss)
        loss_box = (per_point * ctr_target).sum() / mean_across_ranks(ctr_target.sum()).clamp(min=1e-6)
        bce = F.binary_cross_entropy_with_logits(ctr_logits[positive], ctr_target, reduction="sum")
        loss_ctr = bce / num_pos
        return {
            "loss_cls": self.cls_weight * loss_cls,
            "loss_box": self.box_weight * loss_box,
            "loss_centerness": self.centerness_weight * loss_ctr,
        }

    # -- inference ---------------------------------------------------------------------------------
    @torch.no_grad()
    def postprocess(
        self,
        outputs: dict[str, Any],
        priors: tuple[torch.Tensor, torch.Tensor],
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
        ``D <= max_detections``); scores ``sqrt(sigmoid(cls) * sigmoid(centerness))``, per image and level
        the ``topk_per_level`` best above ``score_thresh`` (``level_topk``), decode, NMS."""
        points = priors[0]
        cls_logits, box_dist = outputs["cls_logits"], outputs["box_dist"]
        ctr = outputs["centerness"].sigmoid()  # [B, R]
        point, scores, labels = level_topk(
            cls_logits.amax(dim=-1).sigmoid() * ctr,  # each point's best score, squared
            lambda rows: (gather_priors(cls_logits, rows).sigmoid() * ctr.gather(1, rows)[..., None]).sqrt(),
            outputs.get("num_priors_per_level") or [cls_logits.shape[1]],
            topk_per_level,
            loose_bound(score_thresh * abs(score_thresh)),
        )
        return select_detections(
            distances_to_boxes(points[point], gather_priors(box_dist, point)),
            scores,
            labels,
            image_sizes,
            score_thresh=score_thresh,
            nms_iou=nms_iou,
            max_detections=max_detections,
            return_pre_nms=return_pre_nms,
            keep_empty_boxes=keep_empty_boxes,
        )
