"""Batched helpers shared by the assigners: padding per-image GT lists and batched IoU / IoA.

``torchvision.ops.box_iou`` is not batched (``[M, 4] x [R, 4] -> [M, R]``), so ``batched_iou`` is
written here with broadcasting to compute one ``[B, M, R]`` matrix for a whole padded batch; on
non-degenerate boxes it equals ``box_iou`` per image (tested). Where torchvision divides 0 by 0 (two
zero-area boxes) it returns NaN; ``batched_iou`` returns 0 there so padded rows never produce NaN.

Shape legend (docs/architecture.md): B images, M ground-truth objects (padded to the batch maximum), R priors.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["batched_ioa", "batched_iou", "gather_matched", "pad_boxes"]


def pad_boxes(
    boxes: Sequence[torch.Tensor],
    labels: Sequence[torch.Tensor] | None = None,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Pad per-image boxes ``[M_i, 4]`` (and labels ``[M_i]``) to ``M = max M_i``.

    Returns ``(boxes [B, M, 4], labels [B, M] or None when not given, valid [B, M] bool)``; padded
    boxes are zeros and padded labels ``-1``. ``device``/``dtype`` default to the first tensor's
    (and to cpu/float32 for an empty batch).
    """
    if labels is not None and len(labels) != len(boxes):
        raise ValueError(f"got {len(boxes)} box tensors but {len(labels)} label tensors")
    if device is None:
        device = boxes[0].device if len(boxes) else torch.device("cpu")
    if dtype is None:
        dtype = boxes[0].dtype if len(boxes) and boxes[0].is_floating_point() else torch.float32
    for i, b in enumerate(boxes):
        if b.ndim != 2 or b.shape[-1] != 4:
            raise ValueError(f"boxes[{i}] must have shape [M_i, 4], got {tuple(b.shape)}")
    counts = [int(b.shape[0]) for b in boxes]
    num_images, m = len(boxes), max(counts, default=0)
    valid = (
        torch.arange(m, device=device)[None, :]
        < torch.tensor(counts, device=device, dtype=torch.int64)[:, None]
    )
    padded = torch.zeros((num_images, m, 4), device=device, dtype=dtype)
    if m:
        padded[valid] = torch.cat([b.to(device=device, dtype=dtype) for b in boxes])
    if labels is None:
        return padded, None, valid
    padded_labels = torch.full((num_images, m), -1, device=device, dtype=torch.int64)
    if m:
        padded_labels[valid] = torch.cat(
            [lab.to(device=device, dtype=torch.int64).reshape(-1) for lab in labels]
        )
    return padded, padded_labels, valid


def _inter_areas(
    boxes1: torch.Tensor, boxes2: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Intersections ``[B, M, R]`` and areas ``[B, M, 1]``, ``[B or 1, 1, R]``."""
    if boxes1.ndim != 3 or boxes1.shape[-1] != 4:
        raise ValueError(f"boxes1 must have shape [B, M, 4], got {tuple(boxes1.shape)}")
    if boxes2.ndim == 2:
        boxes2 = boxes2[None]
    if boxes2.ndim != 3 or boxes2.shape[-1] != 4:
        raise ValueError(f"boxes2 must have shape [R, 4] or [B, R, 4], got {tuple(boxes2.shape)}")
    a = boxes1[:, :, None, :]  # [B, M, 1, 4]
    b = boxes2[:, None, :, :]  # [B|1, 1, R, 4]
    iw = (torch.minimum(a[..., 2], b[..., 2]) - torch.maximum(a[..., 0], b[..., 0])).clamp(min=0)
    ih = (torch.minimum(a[..., 3], b[..., 3]) - torch.maximum(a[..., 1], b[..., 1])).clamp(min=0)
    area1 = (boxes1[..., 2] - boxes1[..., 0]) * (boxes1[..., 3] - boxes1[..., 1])
    area2 = (boxes2[..., 2] - boxes2[..., 0]) * (boxes2[..., 3] - boxes2[..., 1])
    return iw * ih, area1[:, :, None], area2[:, None, :]


def _safe_div(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """``num / den`` with 0 where ``den <= 0`` (and finite gradients there)."""
    ok = den > 0
    return torch.where(ok, num / torch.where(ok, den, torch.ones_like(den)), torch.zeros_like(num))


def batched_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """IoU ``[B, M, R]`` of xyxy ``boxes1 [B, M, 4]`` with ``boxes2 [R, 4]`` (shared) or ``[B, R, 4]``."""
    inter, area1, area2 = _inter_areas(boxes1, boxes2)
    return _safe_div(inter, area1 + area2 - inter)


def batched_ioa(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """Intersection over the area of the SECOND argument, ``[B, M, R]``.

    For crowd regions call ``batched_ioa(crowd [B, C, 4], priors [R, 4])``: the fraction of each prior
    covered by each crowd box. Zero-area ``boxes2`` give 0.
    """
    inter, _, area2 = _inter_areas(boxes1, boxes2)
    return _safe_div(inter, area2.expand_as(inter))


def gather_matched(values: torch.Tensor, matched: torch.Tensor, fill: float | int = 0) -> torch.Tensor:
    """Per-prior targets from per-object ``values [B, M, ...]`` and ``matched [B, R]``: ``[B, R, ...]``.

    Priors with a negative match (``BACKGROUND``/``IGNORE``) get ``fill``. Works for ``M = 0``.
    """
    num_images, num_priors = matched.shape
    tail = values.shape[2:]
    if values.shape[1] == 0:
        return values.new_full((num_images, num_priors, *tail), fill)
    index = matched.clamp(min=0)
    out = torch.gather(
        values,
        1,
        index.reshape(num_images, num_priors, *([1] * len(tail))).expand(num_images, num_priors, *tail),
    )
    keep = (matched >= 0).reshape(num_images, num_priors, *([1] * len(tail)))
    return torch.where(keep, out, torch.full_like(out, fill))
