"""Fast R-CNN box head on FPN features (Girshick 2015; Lin et al., 2017), the second stage of Faster R-CNN.

Proposals are pooled with ``torchvision.ops.MultiScaleRoIAlign`` (7x7, sampling ratio 2; the FPN paper's
level rule ``k = floor(4 + log2(sqrt(wh) / 224))`` clamped to the pooled levels), flattened and passed
through two fully connected layers (1024 each) into ``K + 1`` class logits (background is class ``K``)
and class-specific box deltas ``[K, 4]`` (``BoxCoder`` stds 0.1, 0.1, 0.2, 0.2).

Training: the ground-truth boxes join each image's proposals; max-IoU assignment at 0.5 without an
ignore band or low-quality matches; 512 samples per image at up to 25 % positives; cross-entropy over
the samples plus smooth L1 (beta 1/9, as torchvision) on the positives' deltas of their own class, both
divided by the number of samples. Inference: softmax, per-class boxes, score > 0.05, clip, class-wise
NMS 0.5, 100 detections per image. Batched over images except for building ``roi_align``'s box lists.

Shape legend (docs/architecture.md): B images, M objects, P proposals per image, N pooled RoIs, K classes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import MultiScaleRoIAlign

from anchorlab.assign import BACKGROUND, IGNORE, batched_iou, gather_matched, pad_boxes
from anchorlab.assign.sampling import sample_pos_neg
from anchorlab.boxes import BoxCoder
from anchorlab.losses.basic import smooth_l1_loss
from anchorlab.models.heads.rpn import clip_to_sizes, nms_per_image

__all__ = ["RoIBoxHead", "assign_proposals"]


def assign_proposals(
    proposals: torch.Tensor,
    valid: torch.Tensor,
    gt_boxes: Sequence[torch.Tensor],
    *,
    pos_iou: float = 0.5,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Add each image's ground truth to its proposals and match them by max IoU (no ignore band).

    Args:
        proposals: ``[B, P, 4]`` xyxy; valid: ``[B, P]`` bool (padding is ``False``).
        gt_boxes: B tensors ``[M_i, 4]``.

    Returns:
        ``(boxes [B, P + M, 4], valid [B, P + M], matched [B, P + M])``: the proposals followed by the
        padded ground truth; ``matched`` is the object index (IoU ``>= pos_iou``), ``BACKGROUND``, or
        ``IGNORE`` for padding.
    """
    gt, _, gt_valid = pad_boxes(gt_boxes, device=proposals.device, dtype=proposals.dtype)  # [B, M, 4]
    boxes = torch.cat([proposals, gt], dim=1)
    valid = torch.cat([valid, gt_valid], dim=1)
    if gt.shape[1] == 0:
        matched = torch.full(valid.shape, BACKGROUND, dtype=torch.int64, device=boxes.device)
    else:
        iou = batched_iou(gt, boxes).masked_fill(~gt_valid[:, :, None], -1.0)  # [B, M, P + M]
        max_iou, argmax = iou.max(dim=1)
        matched = torch.where(max_iou >= pos_iou, argmax, BACKGROUND)
    return boxes, valid, torch.where(valid, matched, IGNORE)


class RoIBoxHead(nn.Module):
    """RoIAlign over ``num_levels`` FPN levels + 2 FC layers + class / box predictors.

    Args:
        in_channels: FPN channels; num_classes: foreground classes ``K``; num_levels: pooled levels
            (the first ``num_levels`` feature maps passed in, e.g. P2-P5).
        pooler_size, sampling_ratio: of ``MultiScaleRoIAlign``; fc_channels: width of the two FC layers.
        coder: box coding (default stds 0.1, 0.1, 0.2, 0.2).
        pos_iou, num_samples, positive_fraction: assignment and sampling per image.
        smooth_l1_beta, cls_weight, box_weight: the losses.
        void_classes: extra classifier outputs after background (``K + 1 ..``), in the softmax but never
            a target nor a detection (torchvision's COCO models' unused ids).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        num_levels: int,
        *,
        pooler_size: int = 7,
        sampling_ratio: int = 2,
        fc_channels: int = 1024,
        coder: BoxCoder | None = None,
        pos_iou: float = 0.5,
        num_samples: int = 512,
        positive_fraction: float = 0.25,
        smooth_l1_beta: float = 1.0 / 9.0,
        cls_weight: float = 1.0,
        box_weight: float = 1.0,
        void_classes: int = 0,
    ) -> None:
        super().__init__()
        self.num_classes, self.num_levels = num_classes, num_levels
        self.void_classes = int(void_classes)
        self.names = [f"p{i}" for i in range(num_levels)]
        self.pooler = MultiScaleRoIAlign(self.names, pooler_size, sampling_ratio)
        self.fc1 = nn.Linear(in_channels * pooler_size**2, fc_channels)
        self.fc2 = nn.Linear(fc_channels, fc_channels)
        self.cls_score = nn.Linear(fc_channels, num_classes + 1 + self.void_classes)
        self.bbox_pred = nn.Linear(fc_channels, num_classes * 4)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        for layer in (self.cls_score, self.bbox_pred):
            nn.init.zeros_(layer.bias)
        self.coder = coder if coder is not None else BoxCoder(stds=(0.1, 0.1, 0.2, 0.2))
        self.pos_iou, self.num_samples, self.positive_fraction = pos_iou, num_samples, positive_fraction
        self.smooth_l1_beta, self.cls_weight, self.box_weight = smooth_l1_beta, cls_weight, box_weight

    def forward(
        self, features: Sequence[torch.Tensor], rois: list[torch.Tensor], canvas: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``rois``: B tensors ``[N_i, 4]`` on the padded ``canvas (H, W)`` -> ``class_logits [N, K + 1]``,
        ``box_deltas [N, K, 4]`` with ``N = sum N_i`` in image order (``K + 1 + void_classes`` logits)."""
        named = dict(zip(self.names, features[: self.num_levels], strict=True))
        pooled = self.pooler(named, rois, [canvas])  # [N, C, S, S]
        hidden = F.relu(self.fc2(F.relu(self.fc1(pooled.flatten(1)))))
        return self.cls_score(hidden), self.bbox_pred(hidden).view(-1, self.num_classes, 4)

    def loss(
        self,
        features: Sequence[torch.Tensor],
        proposals: torch.Tensor,
        valid: torch.Tensor,
        gt_boxes: Sequence[torch.Tensor],
        gt_labels: Sequence[torch.Tensor],
        canvas: tuple[int, int],
    ) -> dict[str, torch.Tensor]:
        """``loss_cls`` and ``loss_box`` for detached ``proposals [B, P, 4]`` (``valid [B, P]``)."""
        with torch.no_grad():
            boxes, valid, matched = assign_proposals(proposals, valid, gt_boxes, pos_iou=self.pos_iou)
            pos, neg = sample_pos_neg(matched, self.num_samples, self.positive_fraction)
            sampled = pos | neg  # [B, P + M]
            gt, labels, _ = pad_boxes(gt_boxes, gt_labels, device=boxes.device, dtype=boxes.dtype)
            target_labels = torch.where(pos, gather_matched(labels, matched, fill=-1), self.num_classes)
            matched_boxes = gather_matched(gt, matched)  # [B, P + M, 4], zeros where not positive
        rois = [b[s] for b, s in zip(boxes, sampled, strict=True)]
        class_logits, box_deltas = self(features, rois, canvas)
        target_labels, pos_flat = target_labels[sampled], pos[sampled]  # [N]
        num_sampled = max(int(target_labels.numel()), 1)
        loss_cls = F.cross_entropy(class_logits, target_labels, reduction="sum")
        pos_index = pos_flat.nonzero().squeeze(1)
        pred = box_deltas[pos_index, target_labels[pos_index]]  # [N_pos, 4]
        target = self.coder.encode(boxes[sampled][pos_index], matched_boxes[sampled][pos_index])
        loss_box = smooth_l1_loss(pred, target, beta=self.smooth_l1_beta, reduction="sum")
        return {
            "loss_cls": self.cls_weight * loss_cls / num_sampled,
            "loss_box": self.box_weight * loss_box / num_sampled,
        }

    @torch.no_grad()
    def postprocess(
        self,
        features: Sequence[torch.Tensor],
        proposals: torch.Tensor,
        valid: torch.Tensor,
        image_sizes: torch.Tensor,
        canvas: tuple[int, int],
        *,
        score_thresh: float = 0.05,
        nms_iou: float = 0.5,
        max_detections: int = 100,
        min_size: float = 1e-2,
        return_pre_nms: bool = False,
    ) -> list[dict[str, torch.Tensor]]:
        """Detections per image (``boxes [D, 4]``, ``scores [D]``, ``labels [D]``, by decreasing score)
        from ``proposals [B, P, 4]`` with ``valid [B, P]``, clipped to ``image_sizes [B, 2]`` ``(h, w)``."""
        num_images, num_props = valid.shape
        k = self.num_classes
        rois = [p[v] for p, v in zip(proposals, valid, strict=True)]
        class_logits, box_deltas = self(features, rois, canvas)
        probs = class_logits.softmax(dim=-1)[:, :k]  # [N, K], background dropped
        decoded = self.coder.decode(proposals[valid][:, None, :], box_deltas)  # [N, K, 4]
        scores = probs.new_zeros((num_images, num_props, k))
        boxes = decoded.new_zeros((num_images, num_props, k, 4))
        scores[valid], boxes[valid] = probs, decoded
        scores = scores.reshape(num_images, num_props * k)
        boxes = clip_to_sizes(boxes.reshape(num_images, num_props * k, 4), image_sizes)
        labels = torch.arange(k, device=scores.device).repeat(num_props).expand(num_images, -1)
        wh = boxes[..., 2:] - boxes[..., :2]
        candidates = (
            valid.repeat_interleave(k, dim=1) & (scores > score_thresh) & (wh >= min_size).all(dim=-1)
        )
        kept, keep = nms_per_image(boxes, scores, labels, candidates, nms_iou, max_detections)
        results = []
        for i in range(num_images):
            index = kept[i][keep[i]]
            det = {"boxes": boxes[i, index], "scores": scores[i, index], "labels": labels[i, index]}
            if return_pre_nms:
                c = candidates[i]
                det.update(
                    pre_nms_boxes=boxes[i][c], pre_nms_scores=scores[i][c], pre_nms_labels=labels[i][c]
                )
            results.append(det)
        return results
