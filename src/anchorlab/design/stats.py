"""Box statistics after the evaluation resize: ``resize_boxes``, ``box_stats``, ``shape_iou``.

Shape legend (docs/architecture.md): N objects (all images), B images.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from anchorlab.data.core import DetectionSet

#: COCO size buckets by area (pixels² after resize): [lo, hi).
BUCKETS: dict[str, tuple[float, float]] = {
    "small": (0.0, 32.0**2),
    "medium": (32.0**2, 96.0**2),
    "large": (96.0**2, math.inf),
}
PERCENTILES = (5, 25, 50, 75, 95)


@dataclass
class ResizedBoxes:
    """All objects after the resize: ``boxes [N, 4]`` xyxy float64, ``labels [N]``, ``image_index [N]``
    into ``image_sizes [B, 2]`` (resized ``(h, w)``); ``dropped`` boxes fell under 1 px."""

    boxes: np.ndarray
    labels: np.ndarray
    image_index: np.ndarray
    image_sizes: np.ndarray
    class_names: list[str]
    dropped: int = 0

    @property
    def wh(self) -> np.ndarray:
        """``[N, 2]`` widths and heights."""
        return self.boxes[:, 2:] - self.boxes[:, :2]

    @property
    def bucket(self) -> np.ndarray:
        """``[N]`` index into ``BUCKETS`` by area after resize."""
        area = self.wh.prod(axis=1)
        return np.searchsorted([hi for _, hi in list(BUCKETS.values())[:-1]], area, side="right")


def _resized_sizes(hw: np.ndarray, min_size: int | Sequence[int], max_size: int | None) -> np.ndarray:
    """``[B, 2]`` resized ``(h, w)``; the same arithmetic as ``data.transforms.shortest_edge_size``."""
    short = min_size if isinstance(min_size, int) else max(min_size)
    scale = short / hw.min(axis=1)
    new = hw * scale[:, None]
    if max_size is not None:
        big = new.max(axis=1)
        new = np.where((big > max_size)[:, None], new * (max_size / big)[:, None], new)
    return np.maximum(1, np.floor(new + 0.5))


def resize_boxes(ds: DetectionSet, *, min_size: int | Sequence[int], max_size: int | None) -> ResizedBoxes:
    """Every non-crowd box of ``ds`` after the evaluation resize (see the module docstring)."""
    hw = np.array([(im.height, im.width) for im in ds.images], np.float64).reshape(-1, 2)
    sizes = _resized_sizes(hw, min_size, max_size) if len(hw) else hw
    counts = np.array([im.num_objects for im in ds.images], np.int64)
    index = np.repeat(np.arange(len(hw)), counts)
    if counts.sum():
        boxes = np.concatenate([im.boxes for im in ds.images]).astype(np.float64)
        labels = np.concatenate([im.labels for im in ds.images]).astype(np.int64)
    else:
        boxes, labels = np.zeros((0, 4)), np.zeros(0, np.int64)
    scale = (sizes / hw)[index][:, ::-1]  # [N, 2] (sx, sy)
    boxes = boxes * np.tile(scale, 2)
    limit = np.tile(sizes[index][:, ::-1], 2)  # (w, h, w, h)
    boxes = np.clip(boxes, 0, limit)
    keep = ((boxes[:, 2:] - boxes[:, :2]) >= 1).all(axis=1)
    return ResizedBoxes(
        boxes[keep], labels[keep], index[keep], sizes.astype(np.int64), ds.class_names, int((~keep).sum())
    )


def _summary(x: np.ndarray) -> dict[str, float | int | None]:
    out: dict[str, float | int | None] = {"count": int(x.size), "mean": float(x.mean()) if x.size else None}
    qs = np.percentile(x, PERCENTILES) if x.size else [None] * len(PERCENTILES)
    out.update({f"p{p}": (None if q is None else float(q)) for p, q in zip(PERCENTILES, qs, strict=True)})
    return out


def _quantities(wh: np.ndarray) -> dict[str, dict]:
    w, h = wh[:, 0], wh[:, 1]
    return {
        "width": _summary(w),
        "height": _summary(h),
        "aspect": _summary(h / np.maximum(w, 1e-12)),
        "size": _summary(np.sqrt(w * h)),
    }


@dataclass
class BoxStats:
    """Statistics of the resized boxes: per quantity (``width``, ``height``, ``aspect`` = h/w, ``size`` =
    sqrt(area)) a summary ``{count, mean, p5, p25, p50, p75, p95}``, overall, per class and per bucket."""

    min_size: int | list[int]
    max_size: int | None
    num_images: int
    overall: dict[str, dict]
    per_class: dict[str, dict]
    per_bucket: dict[str, dict]
    boxes: ResizedBoxes = field(repr=False)

    @property
    def num_objects(self) -> int:
        return int(self.boxes.boxes.shape[0])

    def to_dict(self) -> dict[str, Any]:
        return {
            "resize": {"min_size": self.min_size, "max_size": self.max_size, "note": "boxes after resize"},
            "num_images": self.num_images,
            "num_objects": self.num_objects,
            "dropped_under_1px": self.boxes.dropped,
            "overall": self.overall,
            "per_class": self.per_class,
            "per_bucket": self.per_bucket,
        }


def box_stats(ds: DetectionSet, *, min_size: int | Sequence[int], max_size: int | None) -> BoxStats:
    """Width/height/aspect/size statistics of ``ds``'s boxes after the resize (areas bucketed after it)."""
    rb = resize_boxes(ds, min_size=min_size, max_size=max_size)
    wh, bucket = rb.wh, rb.bucket
    per_class = {name: _quantities(wh[rb.labels == k]) for k, name in enumerate(rb.class_names)}
    per_bucket = {name: _quantities(wh[bucket == b]) for b, name in enumerate(BUCKETS)}
    ms = min_size if isinstance(min_size, int) else list(min_size)
    return BoxStats(ms, max_size, len(ds.images), _quantities(wh), per_class, per_bucket, rb)


def _wh_of(data: BoxStats | ResizedBoxes | np.ndarray) -> np.ndarray:
    if isinstance(data, BoxStats):
        data = data.boxes
    wh = data.wh if isinstance(data, ResizedBoxes) else np.asarray(data, np.float64).reshape(-1, 2)
    wh = wh[(wh > 0).all(axis=1)]
    if not len(wh):
        raise ValueError("no boxes with positive width and height to design anchors from")
    return wh


def shape_iou(wh: np.ndarray, shapes: np.ndarray) -> np.ndarray:
    """IoU ``[N, S]`` of centre-aligned shapes ``wh [N, 2]`` and ``shapes [S, 2]`` (the best IoU any
    placement of an anchor of that shape can reach)."""
    inter = np.minimum(wh[:, None, 0], shapes[None, :, 0]) * np.minimum(wh[:, None, 1], shapes[None, :, 1])
    union = wh.prod(1)[:, None] + shapes.prod(1)[None, :] - inter
    return inter / union
