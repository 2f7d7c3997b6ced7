"""Exact best possible recall of an ``AnchorGenerator`` on the real anchor grid of each padded image.

Shape legend (docs/architecture.md): N objects (all images), B images, A anchors per location.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from anchorlab.anchors import AnchorGenerator
from anchorlab.data.batch import size_divisor
from anchorlab.data.core import DetectionSet
from anchorlab.design.stats import BUCKETS, ResizedBoxes, resize_boxes, shape_iou


@dataclass
class Coverage:
    """Per object (``[N]``): the best IoU with any anchor, the level index of that anchor, and how many
    anchors reach ``pos_iou``. ``summary()`` aggregates it (JSON-able)."""

    pos_iou: float
    best_iou: np.ndarray
    best_level: np.ndarray
    num_positive: np.ndarray
    bucket: np.ndarray
    level_names: list[str]

    def summary(self) -> dict[str, Any]:
        def agg(mask: np.ndarray) -> dict[str, Any]:
            n = int(mask.sum())
            if not n:
                return {"objects": 0, "bpr": None, "mean_best_iou": None, "anchors_per_object": None}
            return {
                "objects": n,
                "bpr": float((self.best_iou[mask] >= self.pos_iou).mean()),
                "mean_best_iou": float(self.best_iou[mask].mean()),
                "anchors_per_object": float(self.num_positive[mask].mean()),
            }

        every = np.ones(self.best_iou.shape, bool)
        out = {"pos_iou": self.pos_iou, **agg(every)}
        n = self.num_positive
        out["anchors_per_object_median"] = float(np.median(n)) if n.size else None
        out["zero_positive"] = int((n == 0).sum())
        out["per_level"] = {name: agg(self.best_level == i) for i, name in enumerate(self.level_names)}
        out["per_bucket"] = {name: agg(self.bucket == b) for b, name in enumerate(BUCKETS)}
        return out


def _chunks(span: np.ndarray, per_location: int, budget: int) -> list[tuple[int, int]]:
    """Consecutive ``[start, end)`` ranges of objects whose padded windows ``span [N, 2]`` hold at most
    ``budget`` candidate anchors."""
    out, start, n = [], 0, len(span)
    while start < n:
        ahead = span[start : start + budget // per_location + 1]  # a chunk never holds more objects
        run = np.maximum.accumulate(ahead, axis=0).prod(1) * per_location * np.arange(1, len(ahead) + 1)
        end = start + max(1, int(np.searchsorted(run, budget, side="right")))
        out.append((start, end))
        start = end
    return out


def _reach(wh: np.ndarray, a_wh: np.ndarray, t: float) -> np.ndarray:
    """``[N, 2]``: the largest centre offsets ``|dx|, |dy|`` at which an anchor of shape ``a_wh [A, 2]``
    can still reach IoU ``t`` with an object of shape ``wh [N, 2]`` (max over the shapes that can reach
    it; negative when none can). IoU >= t needs ``inter >= t / (1 + t) (area_o + area_a)`` and
    ``inter <= overlap_x * min(h, h_a)`` with ``overlap_x <= (w + w_a) / 2 - |dx|``."""
    need = t / (1 + t) * (wh.prod(1)[:, None] + a_wh.prod(1)[None, :])  # [N, A]
    lo_side = np.minimum(wh[:, None, :], a_wh[None, :, :])  # [N, A, 2]
    reach = (wh[:, None, :] + a_wh[None, :, :]) / 2 - need[..., None] / lo_side[..., ::-1]
    ok = shape_iou(wh, a_wh) >= t - 1e-9  # [N, A]
    return np.where(ok[..., None], reach + 1e-6 * (1 + np.abs(reach)), -1.0).max(1)


def _overlap(centres: torch.Tensor, half: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Overlap ``[n, K, A]`` along one axis of anchors centred at ``centres [n, K]`` with half sides
    ``half [A]`` and the objects' intervals ``gt [n, 2]`` (lo, hi)."""
    lo = torch.maximum(centres[:, :, None] - half, gt[:, None, None, 0])
    hi = torch.minimum(centres[:, :, None] + half, gt[:, None, None, 1])
    return (hi - lo).clamp(min=0)


def coverage(
    data: ResizedBoxes | DetectionSet,
    generator: AnchorGenerator,
    *,
    pos_iou: float = 0.5,
    min_size: int | Sequence[int] | None = None,
    max_size: int | None = None,
    size_divisible: int | None = None,
    budget: int = 1 << 21,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
    progress: Callable[[int], None] | None = None,
) -> Coverage:
    """Best possible recall of ``generator``'s anchors on the real grid of each padded image.

    Each image is padded to a multiple of ``size_divisible`` (default: ``size_divisor`` of the largest
    stride, as the detector does); level ``l`` has ``ceil(H / stride_l) x ceil(W / stride_l)``
    locations. Rather than
    all ``R`` anchors, each object is compared with the anchors of the grid
    window that can matter -- exactly: the 2x2 locations nearest its centre hold its best anchor of
    each shape (IoU falls with |dx| and |dy|), and an anchor with IoU >= t has its centre inside the box
    grown by ``max(0, 1/2 - t) x`` the anchor's side, a window searched only on levels where some
    anchor shape can reach t. ``budget`` bounds the candidates per batch. ``progress(n)`` is called
    with the number of (object, level) pairs done. Pass a ``DetectionSet`` with ``min_size``/``max_size``.
    """
    if isinstance(data, DetectionSet):
        if min_size is None:
            raise ValueError("coverage of a DetectionSet needs min_size (and max_size) for the resize")
        data = resize_boxes(data, min_size=min_size, max_size=max_size)
    boxes, n = data.boxes, len(data.boxes)
    strides = generator.strides
    div = size_divisible or size_divisor(max(strides))
    padded = np.ceil(data.image_sizes / div) * div  # [B, 2] (h, w)
    best = np.zeros(n)
    best_level = np.zeros(n, np.int64)
    positives = np.zeros(n, np.int64)
    gt = torch.as_tensor(boxes, dtype=dtype, device=device)
    wh = data.wh
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    for level, stride in enumerate(strides):
        base = generator.base_anchors(level, device=device, dtype=dtype)  # [A, 4] centred at 0
        half = base[:, 2:]  # [A, 2] half widths / heights
        a_area = (4 * half.prod(1))[None, None, None, :]
        a_wh = (2 * half).cpu().numpy().astype(np.float64)
        grid = np.ceil(padded[data.image_index][:, ::-1] / stride).astype(np.int64)  # [N, 2] (W, H)
        reach = _reach(wh, a_wh, pos_iou)  # [N, 2] largest |dx|, |dy| at which IoU >= t is possible
        off = generator.offset
        near = np.floor(centre / stride - off)
        full = (reach >= 0).all(1, keepdims=True)
        lo = np.where(full, np.minimum(np.ceil((centre - reach) / stride - off), near), near)
        hi = np.where(full, np.maximum(np.floor((centre + reach) / stride - off), near + 1), near + 1)
        lo = np.clip(lo, 0, grid - 1).astype(np.int64)
        hi = np.clip(hi, 0, grid - 1).astype(np.int64)
        span = hi - lo + 1  # [N, 2] window (nx, ny)
        order = np.argsort(span.prod(1), kind="stable")
        for start, end in _chunks(span[order], len(a_wh), budget):
            idx = order[start:end]
            nx, ny = (int(v) for v in span[idx].max(0))
            steps = torch.arange(max(nx, ny), device=device, dtype=dtype)
            lo_t = torch.as_tensor(lo[idx], device=device, dtype=dtype)
            g = gt[idx]
            # IoU is separable on the grid: overlap_x [n, nx, A] x overlap_y [n, ny, A] -> [n, ny, nx, A]
            ox = _overlap((lo_t[:, 0:1] + steps[:nx] + off) * stride, half[:, 0], g[:, 0::2])
            oy = _overlap((lo_t[:, 1:2] + steps[:ny] + off) * stride, half[:, 1], g[:, 1::2])
            inter = oy[:, :, None, :] * ox[:, None, :, :]
            area = ((g[:, 2] - g[:, 0]) * (g[:, 3] - g[:, 1]))[:, None, None, None]
            iou = inter / (area + a_area - inter)
            span_t = torch.as_tensor(span[idx], device=device)
            valid = (steps[:ny][None, :, None] < span_t[:, 1, None, None]) & (
                steps[:nx][None, None, :] < span_t[:, 0, None, None]
            )
            iou = torch.where(valid[..., None], iou, -1.0).reshape(len(idx), -1)
            lvl_best = iou.max(1).values.cpu().numpy()
            better = lvl_best > best[idx]
            best[idx] = np.where(better, lvl_best, best[idx])
            best_level[idx] = np.where(better, level, best_level[idx])
            positives[idx] += (iou >= pos_iou).sum(1).cpu().numpy()
            if progress is not None:
                progress(len(idx))
    names = [f"P{round(math.log2(s))}" for s in strides]
    return Coverage(float(pos_iou), best, best_level, positives, data.bucket, names)
