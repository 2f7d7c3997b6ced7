"""FCOS assignment: points inside a box, centre sampling, per-level regress ranges, min-area tie-break.

The rules follow the FCOS paper and the authors' / mmdetection's ``FCOSHead.get_targets``. A point
``(x, y)`` of stride ``s`` is a **candidate** for an object ``(x1, y1, x2, y2)`` when

1. it lies strictly inside the box: ``min(l, t, r, b) > 0`` with ``l = x - x1, t = y - y1,
   r = x2 - x, b = y2 - y``; with centre sampling (``center_sampling_radius`` not ``None``) it must
   instead lie strictly inside the **centre region** ``centre +- radius * s``, clipped to the box
   (so it is also inside the box);
2. its largest regression distance lies in the point's regress range, **closed at both ends**:
   ``lo <= max(l, t, r, b) <= hi`` (mmdetection's inequality; a distance of exactly 64 qualifies at
   both P3 ``(0, 64)`` and P4 ``(64, 128)``). The test uses the distances to the real box, not to the
   centre region.

A point with several candidates goes to the one of **minimal area** (ties: the lowest object index);
a point with none is ``BACKGROUND``. With ``crowd`` regions, background points strictly inside a crowd
box become ``IGNORE``. Regression targets are ``(l, t, r, b)`` in input pixels (divide by the stride
yourself if the head regresses normalised distances) and ``centerness = sqrt(min(l, r) / max(l, r) *
min(t, b) / max(t, b))``; both are 0 on non-positive points.

Note the scale rule differs from torchvision's ``FCOS`` (it accepts ``4 s <= max <= 8 s``, i.e.
``(32, 64)`` at P3 with the first lower and last upper bound opened); pass ``regress_ranges``
per point to reproduce it.

Everything is batched: objects are padded to ``[B, M, 4]``, candidate masks are ``[B, M, R]`` and the
min-area choice is one ``argmin`` over ``M``. The code uses the equivalent centred form: inside the
clipped centre region is ``|x - cx| < min(w / 2, radius * s)`` (same for ``y``) and ``max(l, r) =
|x - cx| + w / 2`` (identical up to float rounding exactly at a boundary).
Shape legend (docs/architecture.md): B images, M objects, R points.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch

from anchorlab.assign import BACKGROUND, IGNORE
from anchorlab.assign.common import gather_matched, pad_boxes

__all__ = ["FCOS_REGRESS_RANGES", "FcosAssignment", "fcos_assign", "level_index_from_strides"]

#: The paper's per-level ranges of ``max(l, t, r, b)`` for P3..P7 (input pixels).
FCOS_REGRESS_RANGES: tuple[tuple[float, float], ...] = (
    (0.0, 64.0),
    (64.0, 128.0),
    (128.0, 256.0),
    (256.0, 512.0),
    (512.0, math.inf),
)


class FcosAssignment(NamedTuple):
    """Result of :func:`fcos_assign`.

    matched: ``[B, R]`` int64, object index ``0..M_i-1``, ``BACKGROUND`` or ``IGNORE``.
    reg_targets: ``[B, R, 4]`` float, ``(l, t, r, b)`` distances in pixels for positives, 0 elsewhere.
    centerness: ``[B, R]`` float in ``(0, 1]`` for positives, 0 elsewhere.
    num_pos: ``[B]`` int64, positives per image.
    """

    matched: torch.Tensor
    reg_targets: torch.Tensor
    centerness: torch.Tensor
    num_pos: torch.Tensor


def level_index_from_strides(point_strides: torch.Tensor) -> torch.Tensor:
    """Level ``[R]`` of every point: the rank of its stride among the distinct strides (finest = 0)."""
    distinct = torch.unique(point_strides)  # sorted ascending
    return torch.searchsorted(distinct, point_strides.contiguous())


def _point_ranges(
    regress_ranges: Sequence[tuple[float, float]] | torch.Tensor,
    level_index: torch.Tensor | None,
    point_strides: torch.Tensor,
) -> torch.Tensor:
    """Per-point ``[R, 2]`` ranges ``(lo, hi)`` from per-level ranges (or given per point)."""
    num_points = point_strides.shape[0]
    device, dtype = point_strides.device, point_strides.dtype
    per_point = isinstance(regress_ranges, torch.Tensor) and tuple(regress_ranges.shape) == (num_points, 2)
    if per_point and level_index is None:
        return regress_ranges.to(device=device, dtype=dtype)
    table = torch.as_tensor(regress_ranges, device=device, dtype=dtype).reshape(-1, 2)
    if level_index is None:
        level_index = level_index_from_strides(point_strides)
        num_levels = int(torch.unique(point_strides).numel())
        if num_points and num_levels != table.shape[0]:
            raise ValueError(
                f"got {table.shape[0]} regress ranges but the points have {num_levels} distinct strides; "
                "pass level_index explicitly"
            )
    level_index = level_index.to(device=device, dtype=torch.int64)
    if level_index.shape != (num_points,):
        raise ValueError(f"level_index must be [R] = [{num_points}], got {tuple(level_index.shape)}")
    if num_points and (int(level_index.min()) < 0 or int(level_index.max()) >= table.shape[0]):
        raise ValueError(f"level_index must lie in 0..{table.shape[0] - 1} (one entry per regress range)")
    return table[level_index]


def _distances(points: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``l, t, r, b`` each ``[B, M, R]`` from points ``[R, 2]`` and boxes ``[B, M, 4]``."""
    x, y = points[:, 0][None, None, :], points[:, 1][None, None, :]
    return (
        x - boxes[..., 0:1],
        y - boxes[..., 1:2],
        boxes[..., 2:3] - x,
        boxes[..., 3:4] - y,
    )


def fcos_assign(
    points: torch.Tensor,
    point_strides: torch.Tensor,
    gt_boxes: Sequence[torch.Tensor],
    *,
    regress_ranges: Sequence[tuple[float, float]] | torch.Tensor = FCOS_REGRESS_RANGES,
    level_index: torch.Tensor | None = None,
    center_sampling_radius: float | None = 1.5,
    crowd: Sequence[torch.Tensor] | None = None,
) -> FcosAssignment:
    """Assign points ``[R, 2]`` ``(x, y)`` of strides ``point_strides [R]`` to ``B`` images' objects.

    ``gt_boxes`` is a list of ``B`` xyxy tensors ``[M_i, 4]`` in input pixels. ``regress_ranges`` is
    either one ``(lo, hi)`` per level, indexed by ``level_index [R]`` (default: the rank of each point's
    stride, finest first, which is right for :func:`anchorlab.anchors.grid_points`), or a ``[R, 2]``
    tensor of per-point ranges. ``center_sampling_radius=None`` disables centre sampling (every
    point inside the box is a candidate). ``crowd`` is an optional list of ``B`` tensors ``[C_i, 4]``.
    See the module docstring for the exact rules.
    """
    if points.ndim != 2 or points.shape[-1] != 2:
        raise ValueError(f"points must have shape [R, 2], got {tuple(points.shape)}")
    if point_strides.shape != points.shape[:1]:
        raise ValueError(
            f"point_strides must have shape [R] = [{points.shape[0]}], got {tuple(point_strides.shape)}"
        )
    if center_sampling_radius is not None and center_sampling_radius <= 0:
        raise ValueError(f"center_sampling_radius must be positive or None, got {center_sampling_radius}")
    if crowd is not None and len(crowd) != len(gt_boxes):
        raise ValueError(f"got {len(gt_boxes)} images of gt_boxes but {len(crowd)} of crowd regions")
    device, dtype = points.device, points.dtype
    point_strides = point_strides.to(dtype)
    num_images, num_points = len(gt_boxes), points.shape[0]
    ranges = _point_ranges(regress_ranges, level_index, point_strides)  # [R, 2]
    gt, _, valid = pad_boxes(gt_boxes, device=device, dtype=dtype)  # [B, M, 4], [B, M]

    matched = torch.full((num_images, num_points), BACKGROUND, dtype=torch.int64, device=device)
    if gt.shape[1] > 0 and num_points > 0:
        # |x - cx| < w / 2 is "inside" and |x - cx| + w / 2 = max(l, r): a few ops on [B, M, R] tensors
        half_w = (gt[..., 2:3] - gt[..., 0:1]) / 2  # [B, M, 1]
        half_h = (gt[..., 3:4] - gt[..., 1:2]) / 2
        dx = (points[:, 0] - (gt[..., 0:1] + gt[..., 2:3]) / 2).abs_()  # [B, M, R]
        dy = (points[:, 1] - (gt[..., 1:2] + gt[..., 3:4]) / 2).abs_()
        if center_sampling_radius is None:
            inside = (dx < half_w).logical_and_(dy < half_h)
        else:
            radius = point_strides * center_sampling_radius  # [R]
            inside = (
                (dx < half_w).logical_and_(dy < half_h).logical_and_(dx < radius).logical_and_(dy < radius)
            )
        max_dist = torch.maximum(dx.add_(half_w), dy.add_(half_h))
        del dx, dy
        candidate = inside.logical_and_(max_dist >= ranges[:, 0]).logical_and_(max_dist <= ranges[:, 1])
        candidate.logical_and_(valid[:, :, None])  # [B, M, R]
        area = 4 * half_w * half_h  # [B, M, 1]
        cost = torch.where(candidate, area, math.inf)
        min_area, best = cost.min(dim=1)  # first minimum on ties -> lowest object index
        matched = torch.where(torch.isfinite(min_area), best, matched)

    if crowd is not None and num_points > 0:
        crowd_boxes, _, crowd_valid = pad_boxes(crowd, device=device, dtype=dtype)
        if crowd_boxes.shape[1] > 0:
            cl, ct, cr, cb = _distances(points, crowd_boxes)
            in_crowd = (torch.minimum(torch.minimum(cl, cr), torch.minimum(ct, cb)) > 0) & crowd_valid[
                :, :, None
            ]
            matched = torch.where((matched == BACKGROUND) & in_crowd.any(dim=1), IGNORE, matched)

    box = gather_matched(gt, matched)  # [B, R, 4], zeros where not positive
    positive = matched >= 0
    xy = points[None, :, :]
    reg = torch.cat((xy - box[..., :2], box[..., 2:] - xy), dim=-1)  # l, t, r, b
    reg = torch.where(positive[..., None], reg, torch.zeros_like(reg))
    lr, tb = reg[..., 0::2], reg[..., 1::2]
    ratio = (lr.min(-1).values * tb.min(-1).values) / (lr.max(-1).values * tb.max(-1).values).clamp(
        min=torch.finfo(dtype).tiny
    )
    centerness = torch.where(positive, ratio.clamp(min=0).sqrt(), torch.zeros_like(ratio))
    return FcosAssignment(
        matched=matched, reg_targets=reg, centerness=centerness, num_pos=positive.sum(dim=1)
    )
