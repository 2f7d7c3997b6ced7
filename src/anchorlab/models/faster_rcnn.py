"""Faster R-CNN with FPN (Ren et al., 2015; Lin et al., 2017) as a ``Detector`` head, and the builders.

``FasterRCNNHead`` follows the ``Detector`` head protocol (see ``models/detector.py``): ``forward`` runs
the RPN on every pyramid level (P2-P6) and keeps the RoI levels (P2-P5) for the second stage; ``loss``
computes the RPN losses, turns the RPN outputs into detached proposals and trains the RoI box head on
them; ``postprocess`` does the same at inference. Its priors are the RPN anchors (one size per level x 3
ratios) from the ``Detector``'s anchor generator.

``loss`` takes an optional ``image_sizes``, which the ``Detector`` passes to heads whose ``loss`` accepts
it, so that training proposals are clipped to each image as at inference (without them, to the padded
batch canvas).

``models/build.py`` translates the config (``_faster_rcnn``; ``_dense_hnm`` for RetinaNet with SSD hard
negative mining).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from anchorlab.models.heads.roi import RoIBoxHead
from anchorlab.models.heads.rpn import RegionProposalNetwork

__all__ = ["FasterRCNNHead"]


class FasterRCNNHead(nn.Module):
    """RPN + RoI box head over one feature pyramid.

    Args:
        rpn: the region proposal network (its anchors are the detector's priors).
        roi: the box head; it pools the first ``roi.num_levels`` feature maps.
        stride: stride of the first (finest) feature map, to know the padded canvas size.
    """

    def __init__(self, rpn: RegionProposalNetwork, roi: RoIBoxHead, stride: int) -> None:
        super().__init__()
        self.rpn, self.roi, self.stride = rpn, roi, int(stride)

    def forward(self, features: Sequence[torch.Tensor]) -> dict[str, Any]:
        """RPN outputs (``objectness [B, R]``, ``rpn_deltas [B, R, 4]``, ``rpn_per_level``) plus the RoI
        ``features`` and the padded ``canvas (H, W)``."""
        outputs = self.rpn(features)
        outputs["features"] = list(features[: self.roi.num_levels])
        height, width = features[0].shape[-2:]
        outputs["canvas"] = (int(height) * self.stride, int(width) * self.stride)
        return outputs

    def _sizes(
        self, outputs: dict[str, Any], sizes: Sequence[tuple[int, int]] | None, n: int
    ) -> torch.Tensor:
        device = outputs["objectness"].device
        if sizes is None:
            return torch.tensor([outputs["canvas"]] * n, device=device)
        return torch.tensor([tuple(s) for s in sizes], device=device)

    def loss(
        self,
        outputs: dict[str, Any],
        anchors: torch.Tensor,
        targets: Sequence[dict[str, torch.Tensor]],
        image_sizes: Sequence[tuple[int, int]] | None = None,
    ) -> dict[str, torch.Tensor]:
        """``loss_rpn_obj``, ``loss_rpn_box`` (RPN) and ``loss_cls``, ``loss_box`` (RoI head)."""
        num_images = outputs["objectness"].shape[0]
        if len(targets) != num_images:
            raise ValueError(f"got {len(targets)} targets for a batch of {num_images} images")
        gt_boxes = [t["boxes"].to(anchors.dtype) for t in targets]
        gt_labels = [t["labels"] for t in targets]
        crowd = None
        if any("crowd" in t for t in targets):
            crowd = [t.get("crowd", anchors.new_zeros((0, 4))).to(anchors.dtype) for t in targets]
        losses = self.rpn.loss(outputs, anchors, gt_boxes, crowd=crowd)
        proposals, _, valid = self.rpn.proposals(
            outputs, anchors, self._sizes(outputs, image_sizes, num_images)
        )
        losses.update(
            self.roi.loss(outputs["features"], proposals, valid, gt_boxes, gt_labels, outputs["canvas"])
        )
        return losses

    @torch.no_grad()
    def postprocess(
        self,
        outputs: dict[str, Any],
        anchors: torch.Tensor,
        image_sizes: Sequence[tuple[int, int]],
        *,
        score_thresh: float = 0.05,
        nms_iou: float = 0.5,
        max_detections: int = 100,
        return_pre_nms: bool = False,
        topk_per_level: int | None = None,
        keep_empty_boxes: bool = False,
    ) -> list[dict[str, torch.Tensor]]:
        """Detections per image; ``topk_per_level`` (a dense-head setting) is accepted and unused: the RPN's
        ``post_nms_top_n`` bounds the candidates. ``return_pre_nms`` adds the RoI stage's NMS inputs;
        ``keep_empty_boxes`` keeps boxes of any size (else those under 0.01 px go, as in torchvision)."""
        sizes = self._sizes(outputs, image_sizes, len(image_sizes))
        proposals, _, valid = self.rpn.proposals(outputs, anchors, sizes)
        return self.roi.postprocess(
            outputs["features"],
            proposals,
            valid,
            sizes,
            outputs["canvas"],
            score_thresh=score_thresh,
            nms_iou=nms_iou,
            max_detections=max_detections,
            return_pre_nms=return_pre_nms,
            min_size=0.0 if keep_empty_boxes else 1e-2,
        )
