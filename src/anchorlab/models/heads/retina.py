"""RetinaNet head (Lin et al., 2017) with two losses: focal + box regression ("focal") or FreeAnchor's
learning-to-match bags ("free_anchor").

Head protocol (what ``Detector`` calls; FCOS / CenterNet / grid heads implement the same three methods):

* ``forward(features: list[[B, C, H_l, W_l]]) -> dict`` of raw outputs, flattened over priors in the
  fixed order (level-major, then row-major ``(y, x)``, then anchor index) plus ``"num_priors_per_level"``;
* ``loss(outputs, priors, targets) -> dict[str, Tensor]`` of already weighted losses;
* ``postprocess(outputs, priors, image_sizes, **inference) -> list[{"boxes", "scores", "labels"}]``.

Shape legend (docs/architecture.md): B images, M objects, R anchors, K classes, A anchors per location.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from anchorlab.assign import IGNORE, gather_matched, max_iou_assign, pad_boxes
from anchorlab.boxes import BoxCoder
from anchorlab.distributed import mean_across_ranks
from anchorlab.losses.basic import PositiveNormalizer, l1_loss, sigmoid_focal_loss, smooth_l1_loss
from anchorlab.losses.free_anchor import free_anchor_loss
from anchorlab.losses.iou import iou_loss
from anchorlab.models.heads.postprocess import gather_priors, level_topk, loose_bound, select_detections

__all__ = ["BOX_LOSSES", "LOSS_MODES", "RetinaHead", "flatten_levels"]

LOSS_MODES = ("focal", "free_anchor")
BOX_LOSSES = ("smooth_l1", "l1", "iou", "giou", "diou", "ciou")


def flatten_levels(maps: Sequence[torch.Tensor], channels: int) -> torch.Tensor:
    """Per-level maps ``[B, A*channels, H_l, W_l]`` -> ``[B, sum_l H_l W_l A, channels]``.

    Channel ``a * channels + c`` is anchor ``a``, output ``c``; the result is ordered level-major, then
    ``(y, x)``, then ``a`` -- the order of ``AnchorGenerator.grid_anchors``. On channels_last maps the
    permute is free (no copy before the concatenation).
    """
    flat = [m.permute(0, 2, 3, 1).reshape(m.shape[0], -1, channels) for m in maps]
    return flat[0] if len(flat) == 1 else torch.cat(flat, dim=1)


def _tower(
    in_channels: int, channels: int, num_convs: int, norm: str, bias: bool | None = None
) -> nn.Sequential:
    """``num_convs`` x (3x3 conv, norm, ReLU); the convs have a bias when ``bias`` (None: without a norm)."""
    layers: list[nn.Module] = []
    bias = norm == "none" if bias is None else bias
    for i in range(num_convs):
        conv = nn.Conv2d(in_channels if i == 0 else channels, channels, 3, padding=1, bias=bias)
        nn.init.normal_(conv.weight, std=0.01)
        if conv.bias is not None:
            nn.init.zeros_(conv.bias)
        layers.append(conv)
        if norm == "gn":
            layers.append(nn.GroupNorm(math.gcd(32, channels), channels))
        elif norm == "bn":
            layers.append(nn.BatchNorm2d(channels))
        elif norm != "none":
            raise ValueError(f"head norm {norm!r} is not one of none, gn, bn")
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class RetinaHead(nn.Module):
    """Classification and box towers shared across levels, A anchors per location, K classes.

    Args:
        in_channels: channels of every FPN level.
        num_anchors: anchors per location ``A`` (the same on every level).
        num_classes: foreground classes ``K``.
        channels, num_convs, norm: the towers (``num_convs`` 3x3 convs + ReLU, norm "none" | "gn" | "bn").
        conv_bias: the towers' convs have a bias (None: only when ``norm`` is "none").
        prior_prob: initial foreground probability of the classifier (bias ``-log((1 - p) / p)``).
        loss_mode: "focal" (RetinaNet) or "free_anchor" (FreeAnchor bags, see ``free_anchor_loss``).
        coder: box coding of ``box_deltas`` (default stds 0.1, 0.1, 0.2, 0.2).
        pos_iou, neg_iou, low_quality, crowd_ioa: ``max_iou_assign`` arguments ("focal" only).
        focal_alpha, focal_gamma: focal loss; box_loss: one of ``BOX_LOSSES``; smooth_l1_beta: also the
            FreeAnchor localisation beta.
        cls_weight, box_weight: multiply ``loss_cls`` / ``loss_box`` ("focal" only).
        normalizer_momentum: running average of the positives count (0 = this batch's count).
        free_anchor: keyword arguments of ``free_anchor_loss`` (bag_size, bbox_thr, alpha, gamma, reg_weight).
    """

    def __init__(
        self,
        in_channels: int,
        num_anchors: int,
        num_classes: int,
        *,
        channels: int = 256,
        num_convs: int = 4,
        norm: str = "none",
        conv_bias: bool | None = None,
        prior_prob: float = 0.01,
        loss_mode: str = "focal",
        coder: BoxCoder | None = None,
        pos_iou: float = 0.5,
        neg_iou: float = 0.4,
        low_quality: bool = True,
        crowd_ioa: float = 0.5,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        box_loss: str = "smooth_l1",
        smooth_l1_beta: float = 0.11,
        cls_weight: float = 1.0,
        box_weight: float = 1.0,
        normalizer_momentum: float = 0.9,
        free_anchor: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if loss_mode not in LOSS_MODES:
            raise ValueError(f"loss_mode {loss_mode!r} is not one of {', '.join(LOSS_MODES)}")
        if box_loss not in BOX_LOSSES:
            raise ValueError(f"box_loss {box_loss!r} is not one of {', '.join(BOX_LOSSES)}")
        self.num_anchors, self.num_classes = num_anchors, num_classes
        self.cls_tower = _tower(in_channels, channels, num_convs, norm, conv_bias)
        self.box_tower = _tower(in_channels, channels, num_convs, norm, conv_bias)
        last = channels if num_convs > 0 else in_channels
        self.cls_logits = nn.Conv2d(last, num_anchors * num_classes, 3, padding=1)
        self.bbox_pred = nn.Conv2d(last, num_anchors * 4, 3, padding=1)
        for conv in (self.cls_logits, self.bbox_pred):
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - prior_prob) / prior_prob))

        self.loss_mode = loss_mode
        self.coder = coder if coder is not None else BoxCoder(stds=(0.1, 0.1, 0.2, 0.2))
        self.assign_kwargs = {
            "pos_iou": pos_iou,
            "neg_iou": neg_iou,
            "low_quality": low_quality,
            "crowd_ioa": crowd_ioa,
        }
        self.focal_alpha, self.focal_gamma = focal_alpha, focal_gamma
        self.box_loss, self.smooth_l1_beta = box_loss, smooth_l1_beta
        self.cls_weight, self.box_weight = cls_weight, box_weight
        self.normalizer = PositiveNormalizer(normalizer_momentum)
        # The running count lives in a buffer so checkpoints (and DDP buffer broadcasts) carry it.
        self.register_buffer("loss_normalizer", self.normalizer.value.clone().float())
        self.free_anchor_kwargs = dict(free_anchor or {})

    def forward(self, features: Sequence[torch.Tensor]) -> dict[str, Any]:
        """``features`` ``[B, C, H_l, W_l]`` per level -> ``cls_logits [B, R, K]``, ``box_deltas [B, R, 4]``
        and ``num_priors_per_level`` (``H_l W_l A`` per level, Python ints)."""
        cls_maps, box_maps = [], []
        for feature in features:
            cls_maps.append(self.cls_logits(self.cls_tower(feature)))
            box_maps.append(self.bbox_pred(self.box_tower(feature)))
        return {
            "cls_logits": flatten_levels(cls_maps, self.num_classes),
            "box_deltas": flatten_levels(box_maps, 4),
            "num_priors_per_level": [int(f.shape[-2] * f.shape[-1]) * self.num_anchors for f in features],
        }

    # -- training ----------------------------------------------------------------------------------
    def loss(
        self, outputs: dict[str, Any], anchors: torch.Tensor, targets: Sequence[dict[str, torch.Tensor]]
    ) -> dict[str, torch.Tensor]:
        """Losses for ``outputs`` of ``forward``, ``anchors [R, 4]`` and per-image ``targets`` (``boxes
        [M_i, 4]`` xyxy, ``labels [M_i]`` in ``0..K-1``, optional ``crowd [C_i, 4]``).

        "focal" -> ``loss_cls``, ``loss_box``; "free_anchor" -> ``loss_positive_bag``,
        ``loss_negative_bag`` (FreeAnchor's ``alpha`` balances those two; crowd regions are not used).
        """
        cls_logits, box_deltas = outputs["cls_logits"], outputs["box_deltas"]
        if len(targets) != cls_logits.shape[0]:
            raise ValueError(f"got {len(targets)} targets for a batch of {cls_logits.shape[0]} images")
        if anchors.shape[0] != cls_logits.shape[1]:
            raise ValueError(
                f"got {anchors.shape[0]} anchors for {cls_logits.shape[1]} head outputs per image"
            )
        gt_boxes = [t["boxes"].to(anchors.dtype) for t in targets]
        gt_labels = [t["labels"] for t in targets]
        if self.loss_mode == "free_anchor":
            losses = free_anchor_loss(
                anchors,
                cls_logits,
                box_deltas,
                gt_boxes,
                gt_labels,
                smoothl1_beta=self.smooth_l1_beta,
                coder=self.coder,
                **self.free_anchor_kwargs,
            )
            return {
                "loss_positive_bag": losses["positive_bag_loss"],
                "loss_negative_bag": losses["negative_bag_loss"],
            }
        return self._focal_loss(cls_logits, box_deltas, anchors, gt_boxes, gt_labels, targets)

    def _focal_loss(
        self,
        cls_logits: torch.Tensor,
        box_deltas: torch.Tensor,
        anchors: torch.Tensor,
        gt_boxes: list[torch.Tensor],
        gt_labels: list[torch.Tensor],
        targets: Sequence[dict[str, torch.Tensor]],
    ) -> dict[str, torch.Tensor]:
        crowd = None
        if any("crowd" in t for t in targets):
            crowd = [t.get("crowd", anchors.new_zeros((0, 4))).to(anchors.dtype) for t in targets]
        assignment = max_iou_assign(anchors, gt_boxes, crowd=crowd, **self.assign_kwargs)
        matched = assignment.matched  # [B, R]
        boxes, labels, _ = pad_boxes(gt_boxes, gt_labels, device=anchors.device, dtype=anchors.dtype)
        positive = matched >= 0
        considered = (matched != IGNORE).to(cls_logits.dtype)

        # Classification: every non-ignored anchor, one-hot target at the matched object's class.
        matched_labels = gather_matched(labels, matched, fill=-1)  # [B, R]
        classes = torch.arange(self.num_classes, device=anchors.device)
        cls_target = matched_labels[..., None] == classes  # [B, R, K]
        focal = sigmoid_focal_loss(cls_logits, cls_target, self.focal_alpha, self.focal_gamma)
        loss_cls = (focal * considered[..., None]).sum()

        # Box regression: positives only. Non-positives regress onto their own anchor (finite, masked).
        matched_boxes = torch.where(positive[..., None], gather_matched(boxes, matched), anchors[None])
        if self.box_loss in ("smooth_l1", "l1"):
            target = self.coder.encode(anchors[None], matched_boxes)  # [B, R, 4]
            if self.box_loss == "l1":
                per_anchor = l1_loss(box_deltas, target).sum(-1)
            else:
                per_anchor = smooth_l1_loss(box_deltas, target, beta=self.smooth_l1_beta).sum(-1)
        else:
            pred_boxes = self.coder.decode(anchors[None], box_deltas)
            per_anchor = iou_loss(pred_boxes, matched_boxes, kind=self.box_loss)
        loss_box = (per_anchor * positive.to(per_anchor.dtype)).sum()

        num_pos = mean_across_ranks(assignment.num_pos.sum())  # every rank divides by the same count
        if self.training:
            self.normalizer.value = self.loss_normalizer
            normalizer = self.normalizer.update(num_pos)
            self.loss_normalizer.copy_(normalizer)
        else:  # evaluation losses do not move the running average
            normalizer = num_pos.to(cls_logits.dtype).clamp(min=1)
        return {
            "loss_cls": self.cls_weight * loss_cls / normalizer,
            "loss_box": self.box_weight * loss_box / normalizer,
        }

    # -- inference ---------------------------------------------------------------------------------
    def class_scores(self, cls_logits: torch.Tensor) -> torch.Tensor:
        """``cls_logits [B, R, C]`` -> the class probabilities ``[B, R, K]`` that ``postprocess`` ranks
        and returns (here ``sigmoid``, ``C = K``); the ONNX graph scores priors with it."""
        return cls_logits.sigmoid()

    @torch.no_grad()
    def postprocess(
        self,
        outputs: dict[str, Any],
        anchors: torch.Tensor,
        image_sizes: Sequence[tuple[int, int]],
        *,
        score_thresh: float = 0.05,
        topk_per_level: int = 1000,
        nms_iou: float = 0.5,
        max_detections: int = 100,
        return_pre_nms: bool = False,
        keep_empty_boxes: bool = False,
    ) -> list[dict[str, torch.Tensor]]:
        """Detections per image: ``boxes [D, 4]`` xyxy clipped to the image's ``(h, w)``, ``scores [D]``,
        ``labels [D]``, ``D <= max_detections``, sorted by decreasing score.

        Per image and level, the ``topk_per_level`` highest (anchor, class) scores (``level_topk``, batched
        over images) above ``score_thresh`` are decoded; then class-wise NMS per image. With
        ``return_pre_nms`` the candidates entering NMS are returned too (``pre_nms_boxes``,
        ``pre_nms_scores``, ``pre_nms_labels``), e.g. for NMS-recall evaluation.
        """
        cls_logits, box_deltas = outputs["cls_logits"], outputs["box_deltas"]
        # sigmoid is monotonic: rank logits, then take the sigmoid of the kept values only.
        anchor, logits, labels = level_topk(
            cls_logits.amax(dim=-1),
            lambda rows: gather_priors(cls_logits, rows),
            outputs.get("num_priors_per_level") or [cls_logits.shape[1]],
            topk_per_level,
            loose_bound(score_thresh, "logit"),
        )
        boxes = self.coder.decode(anchors[anchor], gather_priors(box_deltas, anchor))
        return select_detections(
            boxes,
            logits.sigmoid(),
            labels,
            image_sizes,
            score_thresh=score_thresh,
            nms_iou=nms_iou,
            max_detections=max_detections,
            return_pre_nms=return_pre_nms,
            keep_empty_boxes=keep_empty_boxes,
        )
