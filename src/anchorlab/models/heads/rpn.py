"""Region proposal network (Ren et al., 2015; FPN version of Lin et al., 2017).

A 3x3 conv + ReLU shared across levels, then per anchor one objectness logit and four box deltas
(``BoxCoder`` with stds 1, as torchvision's RPN). Training: max-IoU assignment (0.7 / 0.3, low-quality
matches on), 256 samples per image at up to half positives (``sample_pos_neg``), binary cross-entropy
on the objectness and smooth L1 (beta 1/9) on the positives' deltas, both summed over the batch's
samples and divided by their count. Proposals: per image and level the ``pre_nms_top_n`` anchors of
highest objectness are decoded, clipped, stripped of tiny boxes and NMSed (IoU 0.7) level by level; the
``post_nms_top_n`` best survivors of all levels are the image's proposals. All of it runs batched over
images (one ``topk`` per level, one ``batched_nms`` for the whole batch).

Shape legend (docs/architecture.md): B images, M objects, R anchors, P proposals per image, A anchors
per location.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import batched_nms

from anchorlab.assign import max_iou_assign, pad_boxes
from anchorlab.assign.sampling import sample_pos_neg
from anchorlab.boxes import BoxCoder
from anchorlab.losses.basic import smooth_l1_loss
from anchorlab.models.heads.retina import flatten_levels

__all__ = ["RPNHead", "RegionProposalNetwork", "clip_to_sizes", "nms_per_image"]


def clip_to_sizes(boxes: torch.Tensor, image_sizes: torch.Tensor) -> torch.Tensor:
    """Clip ``boxes [B, N, 4]`` xyxy to per-image ``image_sizes [B, 2]`` ``(h, w)``."""
    upper = image_sizes.flip(-1).repeat(1, 2)[:, None, :].to(boxes.dtype)  # [B, 1, 4] (w, h, w, h)
    return torch.minimum(boxes.clamp(min=0), upper)


def nms_per_image(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    groups: torch.Tensor,
    valid: torch.Tensor,
    iou_threshold: float,
    max_per_image: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """NMS inside each (image, group) of a padded batch, then the best ``max_per_image`` per image.

    Args:
        boxes: ``[B, N, 4]``; scores: ``[B, N]``; groups: ``[B, N]`` int >= 0 (level or class);
        valid: ``[B, N]`` bool, the candidates.

    Returns:
        ``(index [B, D], keep [B, D])``: indices into ``N`` of the kept candidates of each image by
        decreasing score, and which of the ``D = min(max_per_image, most kept in an image)`` slots
        are filled. One ``batched_nms`` call for the whole batch (image and group form its ``idxs``).
    """
    num_images, n = scores.shape
    image = torch.arange(num_images, device=scores.device)[:, None].expand(num_images, n)
    flat = valid.reshape(-1).nonzero().squeeze(1)  # [V] indices into B * N
    num_groups = int(groups.max()) + 1 if groups.numel() else 1
    idxs = image.reshape(-1)[flat] * num_groups + groups.reshape(-1)[flat]
    kept = flat[batched_nms(boxes.reshape(-1, 4)[flat], scores.reshape(-1)[flat], idxs, iou_threshold)]
    # ``kept`` is sorted by decreasing score; a stable sort by image keeps that order inside each image.
    kept_image, order = (kept // n).sort(stable=True)
    kept = kept[order]
    counts = torch.bincount(kept_image, minlength=num_images)  # [B]
    rank = torch.arange(kept.numel(), device=kept.device) - (counts.cumsum(0) - counts)[kept_image]
    slots = int(counts.max().clamp(max=max_per_image)) if kept.numel() else 0
    take = rank < slots
    index = torch.zeros((num_images, slots), dtype=torch.int64, device=scores.device)
    keep = torch.zeros((num_images, slots), dtype=torch.bool, device=scores.device)
    index[kept_image[take], rank[take]] = kept[take] % n
    keep[kept_image[take], rank[take]] = True
    return index, keep


class RPNHead(nn.Module):
    """Shared 3x3 conv + ReLU, then 1x1 convs to ``A`` objectness logits and ``4 A`` deltas per location."""

    def __init__(self, in_channels: int, num_anchors: int) -> None:
        super().__init__()
        self.num_anchors = num_anchors
        self.conv = nn.Conv2d(in_channels, in_channels, 3, padding=1)
        self.objectness = nn.Conv2d(in_channels, num_anchors, 1)
        self.bbox_pred = nn.Conv2d(in_channels, num_anchors * 4, 1)
        for conv in (self.conv, self.objectness, self.bbox_pred):
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, features: Sequence[torch.Tensor]) -> dict[str, Any]:
        """-> ``objectness [B, R]``, ``rpn_deltas [B, R, 4]``, ``rpn_per_level`` (``H_l W_l A``, ints)."""
        obj_maps, box_maps = [], []
        for feature in features:
            hidden = F.relu(self.conv(feature))
            obj_maps.append(self.objectness(hidden))
            box_maps.append(self.bbox_pred(hidden))
        return {
            "objectness": flatten_levels(obj_maps, 1).squeeze(-1),
            "rpn_deltas": flatten_levels(box_maps, 4),
            "rpn_per_level": [int(f.shape[-2] * f.shape[-1]) * self.num_anchors for f in features],
        }


class RegionProposalNetwork(nn.Module):
    """``RPNHead`` + its assignment, sampling, loss and proposal selection.

    Args:
        in_channels, num_anchors: of the FPN levels and the anchor generator (same ``A`` on every level).
        coder: box coding of the deltas (default stds 1, torchvision's RPN).
        pos_iou, neg_iou: max-IoU thresholds (low-quality matches always on, as in the paper).
        num_samples, positive_fraction: anchors sampled per image for the loss and their positive share.
        pre_nms_top_n, post_nms_top_n: ``(train, test)`` candidates per level before NMS and proposals
            per image after it.
        nms_iou: NMS threshold within a level; min_size: proposals narrower or lower are dropped.
        smooth_l1_beta: of the box loss; obj_weight, box_weight: multiply the two losses.
    """

    def __init__(
        self,
        in_channels: int,
        num_anchors: int,
        *,
        coder: BoxCoder | None = None,
        pos_iou: float = 0.7,
        neg_iou: float = 0.3,
        num_samples: int = 256,
        positive_fraction: float = 0.5,
        pre_nms_top_n: tuple[int, int] = (2000, 1000),
        post_nms_top_n: tuple[int, int] = (1000, 1000),
        nms_iou: float = 0.7,
        min_size: float = 1e-3,
        smooth_l1_beta: float = 1.0 / 9.0,
        obj_weight: float = 1.0,
        box_weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.head = RPNHead(in_channels, num_anchors)
        self.coder = coder if coder is not None else BoxCoder()
        self.pos_iou, self.neg_iou = pos_iou, neg_iou
        self.num_samples, self.positive_fraction = num_samples, positive_fraction
        self.pre_nms_top_n, self.post_nms_top_n = tuple(pre_nms_top_n), tuple(post_nms_top_n)
        self.nms_iou, self.min_size = nms_iou, min_size
        self.smooth_l1_beta = smooth_l1_beta
        self.obj_weight, self.box_weight = obj_weight, box_weight

    def forward(self, features: Sequence[torch.Tensor]) -> dict[str, Any]:
        return self.head(features)

    def loss(
        self,
        outputs: dict[str, Any],
        anchors: torch.Tensor,
        gt_boxes: Sequence[torch.Tensor],
        crowd: Sequence[torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """``loss_rpn_obj``, ``loss_rpn_box`` for ``anchors [R, 4]`` and per-image ``gt_boxes [M_i, 4]``."""
        objectness, deltas = outputs["objectness"], outputs["rpn_deltas"]
        if anchors.shape[0] != objectness.shape[1]:
            raise ValueError(
                f"got {anchors.shape[0]} anchors for {objectness.shape[1]} RPN outputs per image"
            )
        with torch.no_grad():
            matched = max_iou_assign(
                anchors, gt_boxes, pos_iou=self.pos_iou, neg_iou=self.neg_iou, low_quality=True, crowd=crowd
            ).matched  # [B, R]
            pos, neg = sample_pos_neg(matched, self.num_samples, self.positive_fraction)
        sampled = pos | neg
        num_sampled = sampled.sum().clamp(min=1).to(objectness.dtype)
        loss_obj = F.binary_cross_entropy_with_logits(
            objectness[sampled], pos[sampled].to(objectness.dtype), reduction="sum"
        )
        image, prior = pos.nonzero(as_tuple=True)
        padded, _, _ = pad_boxes(gt_boxes, device=anchors.device, dtype=anchors.dtype)  # [B, M, 4]
        target = self.coder.encode(anchors[prior], padded[image, matched[image, prior]])
        loss_box = smooth_l1_loss(deltas[image, prior], target, beta=self.smooth_l1_beta, reduction="sum")
        return {
            "loss_rpn_obj": self.obj_weight * loss_obj / num_sampled,
            "loss_rpn_box": self.box_weight * loss_box / num_sampled,
        }

    @torch.no_grad()
    def proposals(
        self, outputs: dict[str, Any], anchors: torch.Tensor, image_sizes: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Detached proposals of every image: ``(boxes [B, P, 4], objectness [B, P], valid [B, P])``,
        clipped to ``image_sizes [B, 2]`` ``(h, w)``, by decreasing objectness, ``P <= post_nms_top_n``."""
        objectness, deltas = outputs["objectness"].detach(), outputs["rpn_deltas"].detach()
        pre_nms = self.pre_nms_top_n[0 if self.training else 1]
        post_nms = self.post_nms_top_n[0 if self.training else 1]
        cand_index, cand_level = [], []
        start = 0
        for level, count in enumerate(outputs["rpn_per_level"]):
            top = objectness[:, start : start + count].topk(min(pre_nms, count), dim=1).indices + start
            cand_index.append(top)
            cand_level.append(torch.full_like(top, level))
            start += count
        index = torch.cat(cand_index, dim=1)  # [B, N]
        scores = objectness.gather(1, index)
        boxes = self.coder.decode(anchors[index], deltas.gather(1, index[..., None].expand(-1, -1, 4)))
        boxes = clip_to_sizes(boxes, image_sizes)
        wide = (boxes[..., 2] - boxes[..., 0] >= self.min_size) & (
            boxes[..., 3] - boxes[..., 1] >= self.min_size
        )
        valid = wide & torch.isfinite(scores)
        kept, keep = nms_per_image(boxes, scores, torch.cat(cand_level, dim=1), valid, self.nms_iou, post_nms)
        boxes = boxes.gather(1, kept[..., None].expand(-1, -1, 4))
        return boxes, scores.gather(1, kept), keep
