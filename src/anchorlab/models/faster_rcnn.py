"""Faster R-CNN with FPN (Ren et al., 2015; Lin et al., 2017) as a ``Detector`` head, and the builders.

``FasterRCNNHead`` follows the ``Detector`` head protocol (see ``models/detector.py``): ``forward`` runs
the RPN on every pyramid level (P2-P6) and keeps the RoI levels (P2-P5) for the second stage; ``loss``
computes the RPN losses, turns the RPN outputs into detached proposals and trains the RoI box head on
them; ``postprocess`` does the same at inference. Its priors are the RPN anchors (one size per level x 3
ratios) from the ``Detector``'s anchor generator.

``loss`` takes an optional ``image_sizes``, which the ``Detector`` passes to heads whose ``loss`` accepts
it, so that training proposals are clipped to each image as at inference (without them, to the padded
batch canvas).

``build_faster_rcnn(cfg)`` and ``build_dense_hnm(cfg)`` (RetinaNet + SSD hard negative mining) translate a
``ModelConfig``; ``models/build.py`` maps detector names to them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from anchorlab.anchors import AnchorGenerator
from anchorlab.boxes import BoxCoder
from anchorlab.config import ModelConfig
from anchorlab.models.backbone import BackboneFPN, build_backbone
from anchorlab.models.detector import Detector
from anchorlab.models.heads.hnm import HardNegativeHead
from anchorlab.models.heads.roi import RoIBoxHead
from anchorlab.models.heads.rpn import RegionProposalNetwork

__all__ = ["FasterRCNNHead", "build_dense_hnm", "build_faster_rcnn"]


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
    ) -> list[dict[str, torch.Tensor]]:
        """Detections per image; ``topk_per_level`` (a dense-head setting) is accepted and unused: the RPN's
        ``post_nms_top_n`` bounds the candidates. ``return_pre_nms`` adds the RoI stage's NMS inputs."""
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
        )


def _backbone(cfg: ModelConfig) -> BackboneFPN:
    return build_backbone(
        cfg.backbone.name,
        weights=cfg.backbone.weights,
        norm=cfg.backbone.norm,
        trainable_layers=cfg.backbone.trainable_layers,
        fpn_channels=cfg.fpn.channels,
        min_level=cfg.fpn.min_level,
        max_level=cfg.fpn.max_level,
    )


def _detector_kwargs(cfg: ModelConfig) -> dict[str, Any]:
    return {
        "num_classes": cfg.num_classes,
        "pixel_mean": cfg.pixel_mean,
        "pixel_std": cfg.pixel_std,
        "channels_last": cfg.channels_last,
        "inference": cfg.inference.model_dump(),
    }


def build_faster_rcnn(cfg: ModelConfig) -> Detector:
    """Faster R-CNN from ``cfg`` (``model.rpn``, ``model.roi``, ``model.fpn`` levels, ``model.anchors``)."""
    if cfg.num_classes is None:
        raise ValueError("model.num_classes is not set")
    if cfg.sampler != "none":
        raise ValueError(
            f"model.sampler {cfg.sampler!r} is for dense heads; faster_rcnn samples with model.rpn/roi"
        )
    levels = list(range(cfg.fpn.min_level, cfg.fpn.max_level + 1))
    if not cfg.fpn.min_level <= cfg.roi.max_level <= cfg.fpn.max_level:
        raise ValueError(
            f"model.roi.max_level {cfg.roi.max_level} is outside the FPN levels "
            f"P{cfg.fpn.min_level}..P{cfg.fpn.max_level}"
        )
    sizes = cfg.anchors.sizes or [[8.0 * 2**level] for level in levels]
    if len(sizes) != len(levels):
        raise ValueError(f"model.anchors.sizes has {len(sizes)} levels but the FPN has {len(levels)}")
    anchors = AnchorGenerator(sizes, [list(cfg.anchors.aspect_ratios)], [2**level for level in levels])
    per_location = set(anchors.num_anchors_per_location())
    if len(per_location) != 1:
        raise ValueError(
            f"the RPN head needs the same anchors per location on every level, got {per_location}"
        )
    backbone = _backbone(cfg)
    r, o = cfg.rpn, cfg.roi
    rpn = RegionProposalNetwork(
        backbone.out_channels,
        per_location.pop(),
        pos_iou=r.pos_iou,
        neg_iou=r.neg_iou,
        num_samples=r.batch_size_per_image,
        positive_fraction=r.positive_fraction,
        pre_nms_top_n=r.pre_nms_top_n,
        post_nms_top_n=r.post_nms_top_n,
        nms_iou=r.nms_iou,
        min_size=r.min_size,
        smooth_l1_beta=r.smooth_l1_beta,
        obj_weight=r.obj_weight,
        box_weight=r.box_weight,
    )
    roi = RoIBoxHead(
        backbone.out_channels,
        cfg.num_classes,
        o.max_level - cfg.fpn.min_level + 1,
        pooler_size=o.pooler_size,
        sampling_ratio=o.sampling_ratio,
        fc_channels=o.fc_channels,
        coder=BoxCoder(stds=o.box_coder_stds),
        pos_iou=o.pos_iou,
        num_samples=o.batch_size_per_image,
        positive_fraction=o.positive_fraction,
        smooth_l1_beta=o.smooth_l1_beta,
        cls_weight=o.cls_weight,
        box_weight=o.box_weight,
    )
    head = FasterRCNNHead(rpn, roi, backbone.strides[0])
    return Detector(backbone, head, anchors, **_detector_kwargs(cfg))


def build_dense_hnm(cfg: ModelConfig, anchors: AnchorGenerator) -> Detector:
    """RetinaNet anchors + towers with SSD hard negative mining (``model.sampler: hard_negative``,
    ``model.hnm``); ``anchors`` is the RetinaNet anchor generator (``build.build_anchor_generator(cfg)``)."""
    if cfg.num_classes is None:
        raise ValueError("model.num_classes is not set")
    per_location = set(anchors.num_anchors_per_location())
    if len(per_location) != 1:
        raise ValueError(
            f"the dense head needs the same anchors per location on every level, got {per_location}"
        )
    backbone = _backbone(cfg)
    head = HardNegativeHead(
        backbone.out_channels,
        per_location.pop(),
        cfg.num_classes,
        neg_pos_ratio=cfg.hnm.neg_pos_ratio,
        min_negatives=cfg.hnm.min_negatives,
        channels=cfg.head.channels,
        num_convs=cfg.head.num_convs,
        norm=cfg.head.norm,
        prior_prob=cfg.head.prior_prob,
        coder=BoxCoder(stds=cfg.box_coder_stds),
        pos_iou=cfg.assign.pos_iou,
        neg_iou=cfg.assign.neg_iou,
        low_quality=cfg.assign.low_quality,
        crowd_ioa=cfg.assign.crowd_ioa,
        box_loss=cfg.loss.box,
        smooth_l1_beta=cfg.loss.smooth_l1_beta,
        cls_weight=cfg.loss.cls_weight,
        box_weight=cfg.loss.box_weight,
    )
    return Detector(backbone, head, anchors, **_detector_kwargs(cfg))
