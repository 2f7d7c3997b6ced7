"""RetinaNet architecture trained the SSD way: softmax over ``K + 1`` classes with hard negative mining.

``HardNegativeHead`` is a ``RetinaHead`` whose classifier has one extra logit per anchor, background =
class ``K``. Loss (Liu et al., 2016): max-IoU assignment as RetinaNet's (``pos_iou``, ``neg_iou``,
low-quality matches, crowd regions -> ignore); cross-entropy over all positives plus, per image, the
background anchors of highest cross-entropy, ``neg_pos_ratio`` (3) per positive (``hard_negative_mining``);
box regression (smooth L1 / L1 / IoU family, as ``RetinaHead``) over the positives; both divided by the
batch's number of positives. Inference: softmax foreground probabilities (background dropped), then
``RetinaHead.postprocess`` (per-level top-k, score threshold, class-wise NMS) on their logits.

Initialisation: foreground logits start at 0 and the background logit at ``log(K (1 - p) / p)``, so the
softmax gives background probability ``1 - p`` (``prior_prob``, 0.01): like RetinaNet's prior, the
untrained head predicts "almost surely background" and the first steps are not dominated by negatives.

Shape legend (docs/architecture.md): B images, R anchors, K foreground classes, A anchors per location.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from anchorlab.assign import BACKGROUND, gather_matched, max_iou_assign, pad_boxes
from anchorlab.assign.sampling import hard_negative_mining
from anchorlab.losses.basic import l1_loss, smooth_l1_loss
from anchorlab.losses.iou import iou_loss
from anchorlab.models.heads.retina import RetinaHead

__all__ = ["HardNegativeHead"]


class HardNegativeHead(RetinaHead):
    """``RetinaHead`` with ``K + 1`` softmax outputs per anchor and SSD hard negative mining.

    Args:
        in_channels, num_anchors, num_classes: as ``RetinaHead`` (``num_classes`` = foreground ``K``).
        neg_pos_ratio: hard negatives per positive; min_negatives: kept even without positives.
        **kwargs: ``RetinaHead`` arguments (towers, ``coder``, assignment thresholds, ``box_loss``,
            ``smooth_l1_beta``, ``cls_weight``, ``box_weight``, ``prior_prob``); ``loss_mode`` and the focal
            and FreeAnchor arguments are not used.

    ``self.num_classes`` is the number of classifier outputs ``K + 1`` (what ``forward`` flattens);
    ``self.num_foreground`` is ``K``.
    """

    def __init__(
        self,
        in_channels: int,
        num_anchors: int,
        num_classes: int,
        *,
        neg_pos_ratio: float = 3.0,
        min_negatives: int = 0,
        **kwargs: Any,
    ) -> None:
        kwargs.pop("loss_mode", None)
        super().__init__(in_channels, num_anchors, num_classes + 1, **kwargs)
        self.num_foreground = num_classes
        self.neg_pos_ratio, self.min_negatives = neg_pos_ratio, min_negatives
        prior = kwargs.get("prior_prob", 0.01)
        with torch.no_grad():
            bias = self.cls_logits.bias.view(num_anchors, num_classes + 1)
            bias.zero_()
            bias[:, num_classes] = math.log(num_classes * (1 - prior) / prior)

    def loss(
        self, outputs: dict[str, Any], anchors: torch.Tensor, targets: Sequence[dict[str, torch.Tensor]]
    ) -> dict[str, torch.Tensor]:
        """``loss_cls`` (softmax CE, positives + hard negatives) and ``loss_box``, divided by #positives."""
        logits, box_deltas = outputs["cls_logits"], outputs["box_deltas"]  # [B, R, K + 1], [B, R, 4]
        if len(targets) != logits.shape[0] or anchors.shape[0] != logits.shape[1]:
            raise ValueError(
                f"got {len(targets)} targets and {anchors.shape[0]} anchors for outputs {tuple(logits.shape)}"
            )
        gt_boxes = [t["boxes"].to(anchors.dtype) for t in targets]
        crowd = None
        if any("crowd" in t for t in targets):
            crowd = [t.get("crowd", anchors.new_zeros((0, 4))).to(anchors.dtype) for t in targets]
        matched = max_iou_assign(anchors, gt_boxes, crowd=crowd, **self.assign_kwargs).matched  # [B, R]
        boxes, labels, _ = pad_boxes(
            gt_boxes, [t["labels"] for t in targets], device=anchors.device, dtype=anchors.dtype
        )
        positive = matched >= 0
        target = torch.where(positive, gather_matched(labels, matched, fill=-1), self.num_foreground)
        ce = F.cross_entropy(logits.flatten(0, 1), target.flatten(), reduction="none").view_as(target)
        hard = hard_negative_mining(
            ce, positive, matched == BACKGROUND, self.neg_pos_ratio, min_negatives=self.min_negatives
        )
        loss_cls = (ce * (positive | hard).to(ce.dtype)).sum()

        image, prior = positive.nonzero(as_tuple=True)
        pred, pos_anchors = box_deltas[image, prior], anchors[prior]
        gt = boxes[image, matched[image, prior]]
        if self.box_loss in ("smooth_l1", "l1"):
            encoded = self.coder.encode(pos_anchors, gt)
            if self.box_loss == "l1":
                loss_box = l1_loss(pred, encoded, reduction="sum")
            else:
                loss_box = smooth_l1_loss(pred, encoded, beta=self.smooth_l1_beta, reduction="sum")
        else:
            loss_box = iou_loss(self.coder.decode(pos_anchors, pred), gt, kind=self.box_loss, reduction="sum")
        normalizer = positive.sum().clamp(min=1).to(logits.dtype)
        return {
            "loss_cls": self.cls_weight * loss_cls / normalizer,
            "loss_box": self.box_weight * loss_box / normalizer,
        }

    def class_scores(self, cls_logits: torch.Tensor) -> torch.Tensor:
        """``cls_logits [B, R, K + 1]`` -> softmax foreground probabilities ``[B, R, K]`` (background
        dropped): what ``postprocess`` ranks and returns, and what the ONNX graph scores priors with."""
        return cls_logits.softmax(dim=-1)[..., : self.num_foreground]

    @torch.no_grad()
    def postprocess(
        self,
        outputs: dict[str, Any],
        anchors: torch.Tensor,
        image_sizes: Sequence[tuple[int, int]],
        **inference: Any,
    ) -> list[dict[str, torch.Tensor]]:
        """``RetinaHead.postprocess`` on the logits of the softmax foreground probabilities: the sigmoid
        there gives back exactly those probabilities, and ranking by them is unchanged."""
        probs = self.class_scores(outputs["cls_logits"])
        return super().postprocess(
            dict(outputs, cls_logits=torch.logit(probs)), anchors, image_sizes, **inference
        )
