"""CenterNet head ("Objects as Points", Zhou et al., 2019, ``ctdet``): objects are heatmap peaks.

* Input: the **finest** feature map only (``features[0]``; build the FPN with ``min_level=2`` for
  CenterNet's output stride 4). The paper upsamples the backbone's stride-32 output with deconvolutions
  (ResNet) or uses DLA's aggregation; here the FPN's top-down path plays that "upsampling neck": P2 has
  stride 4 and sees the coarser stages through the lateral + top-down sums. Coarser FPN outputs are
  computed but unused (their 3x3 output convs get no gradient).
* Three branches, each ``3x3 conv + ReLU + 1x1 conv``: ``heatmap`` (K channels, bias -2.19 =
  ``-log((1 - 0.1) / 0.1)``), ``size`` (w, h in output cells) and ``offset`` (sub-cell centre).
* Loss (``centernet_targets``, CornerNet gaussian radius, min overlap 0.7): penalty-reduced focal loss
  (alpha 2, beta 4) / number of objects; size and offset L1 at each object's centre cell (gathered by
  flat index). The L1 terms divide by the number of regressed values (``2 x objects``), i.e. a
  per-coordinate mean, exactly as the official ``RegL1Loss`` (``mask.sum()`` counts both coordinates)
  which the published weights (size 0.1, offset 1) were tuned with.
* Inference: ``sigmoid(heatmap)``, peaks where the 3x3 max-pool equals the value, the ``topk`` best
  (class, cell) of each image in one batched ``topk``, boxes ``((x + dx) +- w / 2) * stride`` in input
  pixels, clipped; **no NMS**; ``score_thresh`` and ``max_detections`` from the inference config.

Outputs stay spatial (``[B, C, H, W]``, one level) because peak extraction needs the map; flattening
with ``reshape(B, C, H * W)`` gives the usual ``(y, x)`` order. Shape legend: B images, M objects,
K classes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from anchorlab.assign import centernet_targets
from anchorlab.distributed import mean_across_ranks
from anchorlab.losses.basic import penalty_reduced_focal_loss
from anchorlab.models.heads.fcos import select_detections

__all__ = ["CenterNetHead"]


def _branch(in_channels: int, channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, channels, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(channels, out_channels, 1),
    )


def _gather(maps: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``maps [B, C, H, W]`` at flat cells ``index [B, N]`` -> ``[B, N, C]``."""
    flat = maps.flatten(2)  # [B, C, HW]
    return flat.gather(2, index[:, None, :].expand(-1, flat.shape[1], -1)).transpose(1, 2)


class CenterNetHead(nn.Module):
    """Heatmap, size and offset branches on the finest feature map; see the module docstring.

    Args:
        in_channels: channels of the feature map.
        num_classes: foreground classes ``K``.
        channels: hidden channels of each branch (CenterNet: 64 for ResNet / DLA).
        prior_prob: initial heatmap probability (0.1 -> bias -2.19).
        min_overlap: CornerNet radius parameter of the target gaussians.
        heatmap_weight, size_weight, offset_weight: multiply the three losses.
        topk: peaks kept per image at inference.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        channels: int = 64,
        prior_prob: float = 0.1,
        min_overlap: float = 0.7,
        heatmap_weight: float = 1.0,
        size_weight: float = 0.1,
        offset_weight: float = 1.0,
        topk: int = 100,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.heatmap = _branch(in_channels, channels, num_classes)
        self.size = _branch(in_channels, channels, 2)
        self.offset = _branch(in_channels, channels, 2)
        for branch in (self.size, self.offset):
            nn.init.zeros_(branch[-1].bias)
        nn.init.constant_(self.heatmap[-1].bias, -math.log((1 - prior_prob) / prior_prob))
        self.min_overlap = min_overlap
        self.heatmap_weight, self.size_weight, self.offset_weight = heatmap_weight, size_weight, offset_weight
        self.topk = topk

    def forward(self, features: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        """``features[0] [B, C, H, W]`` -> ``heatmap [B, K, H, W]`` (logits), ``size [B, 2, H, W]``
        ``(w, h)`` and ``offset [B, 2, H, W]`` ``(dx, dy)``, both in output cells."""
        x = features[0]
        return {"heatmap": self.heatmap(x), "size": self.size(x), "offset": self.offset(x)}

    def priors(
        self,
        feature_sizes: Sequence[tuple[int, int]],
        strides: Sequence[int],
        device: torch.device,
        dtype: torch.dtype,
    ) -> dict[str, Any]:
        """No priors: the output grid's ``size (H, W)`` and ``stride`` (of the finest level)."""
        return {"size": tuple(int(v) for v in feature_sizes[0]), "stride": int(strides[0])}

    # -- training ----------------------------------------------------------------------------------
    def loss(
        self,
        outputs: dict[str, torch.Tensor],
        priors: dict[str, Any],
        targets: Sequence[dict[str, torch.Tensor]],
    ) -> dict[str, torch.Tensor]:
        """``loss_heatmap``, ``loss_size``, ``loss_offset`` for per-image ``targets`` (``boxes [M_i, 4]``
        xyxy in input pixels, ``labels [M_i]``)."""
        heat = outputs["heatmap"]
        if len(targets) != heat.shape[0]:
            raise ValueError(f"got {len(targets)} targets for a batch of {heat.shape[0]} images")
        device = heat.device
        t = centernet_targets(
            [tg["boxes"].to(device=device, dtype=torch.float32) for tg in targets],
            [tg["labels"].to(device) for tg in targets],
            self.num_classes,
            priors["size"],
            priors["stride"],
            min_overlap=self.min_overlap,
        )
        num_objects = mean_across_ranks(t.mask.sum()).to(heat.dtype)  # the same on every rank
        loss_heat = penalty_reduced_focal_loss(heat, t.heatmap, reduction="sum") / num_objects.clamp(min=1)
        mask = t.mask[..., None].to(heat.dtype)  # [B, M, 1]
        values = (2 * num_objects).clamp(min=1)
        size = _gather(outputs["size"], t.index)  # [B, M, 2]
        offset = _gather(outputs["offset"], t.index)
        loss_size = ((size - t.size.to(size.dtype)).abs() * mask).sum() / values
        loss_offset = ((offset - t.offset.to(offset.dtype)).abs() * mask).sum() / values
        return {
            "loss_heatmap": self.heatmap_weight * loss_heat,
            "loss_size": self.size_weight * loss_size,
            "loss_offset": self.offset_weight * loss_offset,
        }

    # -- inference ---------------------------------------------------------------------------------
    @torch.no_grad()
    def postprocess(
        self,
        outputs: dict[str, torch.Tensor],
        priors: dict[str, Any],
        image_sizes: Sequence[tuple[int, int]],
        *,
        score_thresh: float = 0.05,
        max_detections: int = 100,
        return_pre_nms: bool = False,
        keep_empty_boxes: bool = False,
        **_: Any,
    ) -> list[dict[str, torch.Tensor]]:
        """Detections per image (``boxes [D, 4]`` xyxy clipped, ``scores [D]``, ``labels [D]``,
        ``D <= min(topk, max_detections)``), from the heatmap peaks; no NMS (``nms_iou`` and
        ``topk_per_level`` of the shared inference config are ignored)."""
        heat = outputs["heatmap"].sigmoid()
        num_images, _, height, width = heat.shape
        peak = F.max_pool2d(heat, 3, stride=1, padding=1) == heat
        heat = heat * peak
        scores, index = heat.reshape(num_images, -1).topk(min(self.topk, heat[0].numel()), dim=1)  # [B, k]
        labels = index // (height * width)
        cell = index % (height * width)
        size = _gather(outputs["size"], cell)  # [B, k, 2]
        offset = _gather(outputs["offset"], cell)
        xy = torch.stack(((cell % width).to(size.dtype), (cell // width).to(size.dtype)), dim=-1) + offset
        boxes = torch.cat((xy - size / 2, xy + size / 2), dim=-1) * priors["stride"]
        return select_detections(
            boxes,
            scores,
            labels,
            image_sizes,
            score_thresh=score_thresh,
            nms_iou=None,
            max_detections=max_detections,
            return_pre_nms=return_pre_nms,
            keep_empty_boxes=keep_empty_boxes,
        )
