"""The exportable graph of a ``Detector`` (``ExportWrapper``): priors from the feature maps' symbolic
shapes, decoding, and for the "full" mode the in-graph selection with fixed-size outputs. Modes and
outputs are described in ``anchorlab.export``, which re-exports every public name here.

Shape legend (docs/architecture.md): B images, R priors, K classes, L levels, D detections per image.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import nms

from anchorlab.models.detector import Detector
from anchorlab.models.heads.centernet import CenterNetHead
from anchorlab.models.heads.fcos import FCOSHead, distances_to_boxes
from anchorlab.models.heads.grid import GridHead
from anchorlab.models.heads.retina import RetinaHead

__all__ = ["EXPORT_MODES", "FULL_OUTPUTS", "INPUT_NAME", "RAW_OUTPUTS", "ExportError", "ExportWrapper"]

EXPORT_MODES = ("full", "raw")
INPUT_NAME = "images"
FULL_OUTPUTS = ("boxes", "scores", "labels", "num_detections")
RAW_OUTPUTS = ("boxes", "scores", "num_priors_per_level")


class ExportError(RuntimeError):
    """A detector or option that cannot be exported; the message says why and what to use."""


def _grid(feature: torch.Tensor, stride: Any, offset: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Cell positions ``x, y [H*W]`` (row-major) of ``feature [B, C, H, W]``, from its symbolic shape;
    ``stride``: one number or ``(stride_y, stride_x)``."""
    stride_y, stride_x = stride if isinstance(stride, tuple) else (stride, stride)
    xs = (torch.arange(feature.shape[-1], device=feature.device, dtype=torch.float32) + offset) * stride_x
    ys = (torch.arange(feature.shape[-2], device=feature.device, dtype=torch.float32) + offset) * stride_y
    cy, cx = torch.meshgrid(ys, xs, indexing="ij")
    return cx.reshape(-1), cy.reshape(-1)


def _points(features: Sequence[torch.Tensor], strides: Sequence[int], offset: float, spacing: Sequence[Any]):
    """``grid_points`` computed from the maps: ``(points [R, 2] (x, y), point_strides [R])``; points
    spaced by ``spacing`` (per level a stride or ``(stride_y, stride_x)``)."""
    points, point_strides = [], []
    for feature, stride, step in zip(features, strides, spacing, strict=True):
        cx, cy = _grid(feature, step, offset)
        points.append(torch.stack((cx, cy), dim=1))
        point_strides.append(torch.full_like(cx, float(stride)))
    return torch.cat(points), torch.cat(point_strides)


class ExportWrapper(nn.Module):
    """``images [B, 3, H, W]`` in 0..1 -> the outputs of ``mode`` (module docstring); an export-friendly
    re-statement of ``Detector.forward`` + ``head.postprocess`` (no Python ints taken from shapes, no
    per-image Python loop, fixed-size outputs).

    Args:
        model: the detector (its head is a ``RetinaHead`` -- hard negative mining's included, scored by
            its ``class_scores`` --, ``FCOSHead``, ``GridHead`` or ``CenterNetHead``).
        mode: ``"full"`` or ``"raw"``.
        inference: overrides of ``model.inference`` (score_thresh, topk_per_level, nms_iou,
            max_detections).
    """

    def __init__(
        self, model: Detector, mode: str = "full", inference: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__()
        if mode not in EXPORT_MODES:
            raise ExportError(f"export mode {mode!r} is not one of {', '.join(EXPORT_MODES)}")
        head = model.head
        if not isinstance(head, (RetinaHead, FCOSHead, GridHead, CenterNetHead)):
            raise ExportError(
                f"ONNX export supports the retinanet (also with hard negative mining), free_anchor, fcos, "
                f"centernet and grid heads; {type(head).__name__} is not one of them (see docs/export.md)"
            )
        self.model, self.mode = model, mode
        settings = {"score_thresh": 0.05, "topk_per_level": 1000, "nms_iou": 0.5, "max_detections": 100}
        settings.update(model.inference)
        settings.update(inference or {})
        if isinstance(head, CenterNetHead):  # peaks: one "level", head.topk candidates, no NMS
            settings.update(topk_per_level=head.topk, nms_iou=None)
        self.settings = settings
        if isinstance(head, RetinaHead):
            generator = model.anchor_generator
            base = [
                generator.base_anchors(level, dtype=torch.float32) for level in range(generator.num_levels)
            ]
            self.register_buffer("base_anchors", torch.stack(base), persistent=False)  # [L, A, 4]
            self.anchor_offset = generator.offset

    # -- graph pieces ------------------------------------------------------------------------------
    def candidates(
        self, features: list[torch.Tensor], canvas: Sequence[Any]
    ) -> tuple[torch.Tensor, torch.Tensor, list]:
        """Per prior: decoded ``boxes [B, R, 4]``, ``scores [B, R, K]``, and the priors per level;
        ``canvas``: the input's ``(H, W)`` (for ``Detector.canvas_strides``)."""
        model, head = self.model, self.model.head
        strides = model.strides
        spacing: list[Any] = list(strides)
        if getattr(model, "canvas_strides", False):  # torchvision's prior spacing: canvas // map size
            spacing = [(canvas[0] // f.shape[-2], canvas[1] // f.shape[-1]) for f in features]
        if isinstance(head, CenterNetHead):
            out = head(features)
            heat = out["heatmap"].sigmoid()
            heat = heat * (F.max_pool2d(heat, 3, stride=1, padding=1) == heat).to(heat.dtype)
            cx, cy = _grid(heat, 1, 0.0)
            xy = torch.stack((cx, cy))[None] + out["offset"].flatten(2)  # [B, 2, HW] in cells
            half = out["size"].flatten(2) / 2
            boxes = torch.cat((xy - half, xy + half), dim=1).transpose(1, 2) * strides[0]
            return boxes, heat.flatten(2).transpose(1, 2), [heat.shape[-2] * heat.shape[-1]]
        out = head(features)
        per_level = [f.shape[-2] * f.shape[-1] for f in features]
        if isinstance(head, RetinaHead):
            anchors = []
            for level, (feature, step) in enumerate(zip(features, spacing, strict=True)):
                cx, cy = _grid(feature, step, self.anchor_offset)
                shifts = torch.stack((cx, cy, cx, cy), dim=1)
                anchors.append((shifts[:, None, :] + self.base_anchors[level][None]).reshape(-1, 4))
            boxes = head.coder.decode(torch.cat(anchors)[None], out["box_deltas"])
            scores = head.class_scores(out["cls_logits"])  # HNM: softmax, background dropped
            return boxes, scores, [n * head.num_anchors for n in per_level]
        if isinstance(head, FCOSHead):
            points, _ = _points(features, strides, head.point_offset, spacing)
            boxes = distances_to_boxes(points[None], out["box_dist"])
            scores = (out["cls_logits"].sigmoid() * out["centerness"].sigmoid()[..., None]).sqrt()
            return boxes, scores, per_level
        corners, point_strides = _points(features, strides, 0.0, spacing)  # GridHead
        boxes = GridHead.decode(out["box_raw"], corners[None], point_strides[None])
        scores = out["obj_logits"].sigmoid()[..., None] * out["cls_logits"].sigmoid()
        return boxes, scores, per_level

    def detections(
        self, boxes: torch.Tensor, scores: torch.Tensor, per_level: list, height: Any, width: Any
    ) -> tuple[torch.Tensor, ...]:
        """Per-level top-k, threshold, clip, class-wise NMS, pad to ``max_detections`` (no batch loop)."""
        s = self.settings
        num_images, _, num_classes = scores.shape
        cand_boxes, cand_scores, cand_labels, start = [], [], [], 0
        for count in per_level:
            level = scores[:, start : start + count].reshape(num_images, count * num_classes)
            top, index = level.topk(torch.sym_min(s["topk_per_level"], count * num_classes), dim=1)
            prior = index // num_classes + start
            cand_boxes.append(boxes.gather(1, prior[..., None].expand(-1, -1, 4)))
            cand_scores.append(top)
            cand_labels.append(index % num_classes)
            start = start + count
        boxes = torch.cat(cand_boxes, dim=1)  # [B, N, 4]
        scores, labels = torch.cat(cand_scores, dim=1), torch.cat(cand_labels, dim=1)  # [B, N]
        upper = torch.stack((width, height, width, height)).to(boxes.dtype)
        boxes = torch.minimum(boxes.clamp(min=0), upper)
        image = torch.arange(num_images, device=boxes.device)[:, None].expand_as(labels)
        keep = scores > s["score_thresh"]
        if not s.get("keep_empty_boxes", False):
            keep = keep & (boxes[..., 2] > boxes[..., 0]) & (boxes[..., 3] > boxes[..., 1])
        boxes, scores, labels, image = boxes[keep], scores[keep], labels[keep], image[keep]
        if s["nms_iou"] is not None:
            # Class-wise and image-wise in one NMS: shift each class along x and each image along y by
            # more than the image size (torchvision's coordinate trick, per axis to keep offsets small).
            span = torch.maximum(width, height) + 1
            shift = torch.stack((labels, image), dim=1).to(boxes.dtype) * span  # [N, 2]
            order = nms(boxes + shift.repeat(1, 2), scores, s["nms_iou"])  # decreasing score
        else:
            order = scores.argsort(descending=True)
        boxes, scores, labels, image = boxes[order], scores[order], labels[order], image[order]
        # Rank of each detection within its image (they arrive by decreasing score), then scatter.
        onehot = (image[:, None] == torch.arange(num_images, device=image.device)).long()  # [N, B]
        rank = (onehot.cumsum(0) * onehot).sum(1) - 1
        max_det = s["max_detections"]
        slot = torch.where(rank < max_det, image * max_det + rank, num_images * max_det)
        out_boxes = boxes.new_zeros((num_images * max_det + 1, 4)).index_copy(0, slot, boxes)
        out_scores = scores.new_zeros((num_images * max_det + 1,)).index_copy(0, slot, scores)
        out_labels = labels.new_full((num_images * max_det + 1,), -1).index_copy(0, slot, labels)
        return (
            out_boxes[:-1].reshape(num_images, max_det, 4),
            out_scores[:-1].reshape(num_images, max_det),
            out_labels[:-1].reshape(num_images, max_det),
            onehot.sum(0).clamp(max=max_det),
        )

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``images [B, 3, H, W]`` in 0..1, ``H`` and ``W`` multiples of ``model.size_divisible``."""
        model = self.model
        x = (images - model.pixel_mean) / model.pixel_std
        features = list(model.backbone(x))
        boxes, scores, per_level = self.candidates(features, images.shape[-2:])
        if self.mode == "raw":
            counts = torch.stack([torch.scalar_tensor(n, dtype=torch.int64) for n in per_level])
            return boxes, scores, counts
        height = torch.scalar_tensor(images.shape[-2], dtype=torch.float32)
        width = torch.scalar_tensor(images.shape[-1], dtype=torch.float32)
        return self.detections(boxes, scores, per_level, height, width)
