"""Anchor design from data: box statistics after the resize, proposals and coverage (best possible recall).

* ``resize_boxes`` / ``box_stats``: boxes as the detector sees them -- after the evaluation resize
  (detectron2's ``ResizeShortestEdge``: shorter side ``min_size``, the largest if a list, longer side at most
  ``max_size``), clipped to the image, boxes under 1 px dropped, as ``data.transforms`` does. Sizes, aspect
  ratios (``h / w``) and the COCO size buckets (small < 32², medium < 96², large) use the area AFTER resize.
* ``propose_from_ranges``: RetinaNet-style octave anchors whose ratios are quantiles of the data's aspect
  ratios and whose smallest anchor sits at the data's 5th-percentile size.
* ``kmeans_anchors`` / ``propose_kmeans``: YOLOv2 k-means with distance ``1 - IoU`` of centre-aligned
  ``(w, h)`` shapes, spread over the FPN levels by area.
* ``coverage``: best possible recall of an ``AnchorGenerator`` on the real anchor grid of each padded image.

Shape legend (DESIGN.md): N objects (all images), B images, R priors, L levels, A anchors per location.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from anchorlab.anchors import AnchorGenerator
from anchorlab.data.batch import size_divisor
from anchorlab.data.core import DetectionSet

__all__ = [
    "BUCKETS",
    "BoxStats",
    "Coverage",
    "Proposal",
    "ResizedBoxes",
    "anchor_generator",
    "box_stats",
    "coverage",
    "kmeans_anchors",
    "propose_from_ranges",
    "propose_kmeans",
    "resize_boxes",
    "shape_iou",
]

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


def _round(x: float) -> float:
    return float(f"{x:.3g}")


def _ratio_set(log_ratios: np.ndarray, n: int, weights: np.ndarray | None = None) -> list[float]:
    """``n`` ratios at the centres of equal-mass bins of ``log(h / w)``, rounded, duplicates removed."""
    order = np.argsort(log_ratios)
    v = log_ratios[order]
    w = np.ones_like(v) if weights is None else np.asarray(weights, np.float64)[order]
    cdf = (np.cumsum(w) - 0.5 * w) / w.sum()
    q = np.interp((np.arange(n) + 0.5) / n, cdf, v)
    return sorted({_round(math.exp(x)) for x in q})


@dataclass
class Proposal:
    """A proposed anchor set: ``anchors`` is a ``model.anchors`` config mapping for FPN levels
    ``P{min_level}..P{max_level}``; ``shapes [S, 2]`` are exact k-means shapes when they exist."""

    name: str
    anchors: dict[str, Any]
    min_level: int
    max_level: int
    notes: list[str] = field(default_factory=list)
    shapes: np.ndarray | None = None

    def generator(self) -> AnchorGenerator:
        return anchor_generator(self.anchors, self.min_level, self.max_level)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"anchors": self.anchors, "levels": [self.min_level, self.max_level]}
        out["notes"] = self.notes
        if self.shapes is not None:
            out["kmeans_shapes_wh"] = np.round(self.shapes, 2).tolist()
        return out


def anchor_generator(anchors: dict[str, Any], min_level: int, max_level: int) -> AnchorGenerator:
    """The generator a detector builds from ``model.anchors = anchors`` on FPN levels min..max."""
    from anchorlab.config import AnchorConfig, FPNConfig, ModelConfig
    from anchorlab.models.build import build_anchor_generator

    cfg = ModelConfig(
        fpn=FPNConfig(min_level=min_level, max_level=max_level), anchors=AnchorConfig(**anchors)
    )
    return build_anchor_generator(cfg)


def propose_from_ranges(
    data: BoxStats | ResizedBoxes | np.ndarray,
    *,
    levels: tuple[int, int] = (3, 7),
    scales_per_octave: int = 3,
    num_ratios: int = 3,
    size_quantile: float = 5.0,
    base_scale_range: tuple[float, float] = (2.0, 16.0),
) -> Proposal:
    """Octave anchors from the data's ranges: ratios = ``num_ratios`` quantiles of ``log(h / w)`` (at the
    centres of equal-mass bins); ``octave_base_scale`` puts the smallest anchor (P{min_level}, first
    octave) at the ``size_quantile``-th percentile of sqrt(area) -- or, when the data's
    ``[p_lo, p_hi]`` range is wider than the anchors' span, centres the span on it in log space --
    clipped to ``base_scale_range`` (anchors under ~2.7 x stride miss objects between grid points)."""
    wh = _wh_of(data)
    lo_level, hi_level = levels
    size = np.sqrt(wh.prod(1))
    p_lo, p_hi = np.percentile(size, [size_quantile, 100 - size_quantile])
    top = 2**hi_level * 2 ** ((scales_per_octave - 1) / scales_per_octave)  # largest anchor / base scale
    base = p_lo / 2**lo_level
    notes = []
    if base * top < p_hi:
        base = math.sqrt(base * p_hi / top)
        notes.append(
            f"the data's sizes p{size_quantile:g}..p{100 - size_quantile:g} ({p_lo:.1f}..{p_hi:.1f} px) "
            f"span more than the anchors of P{lo_level}..P{hi_level}: the span is centred on them (log scale)"
        )
    lo_b, hi_b = base_scale_range
    if not lo_b <= base <= hi_b:
        clipped = min(max(base, lo_b), hi_b)
        hint = f"; consider fpn.min_level={lo_level - 1}" if base < lo_b and lo_level > 2 else ""
        notes.append(f"octave_base_scale {base:.2f} clipped to {clipped:g}{hint}")
        base = clipped
    ratios = _ratio_set(np.log(wh[:, 1] / wh[:, 0]), num_ratios)
    anchors = {
        "octave_base_scale": _round(base),
        "scales_per_octave": scales_per_octave,
        "aspect_ratios": ratios,
    }
    return Proposal("ranges", anchors, lo_level, hi_level, notes)


def kmeans_anchors(
    wh: np.ndarray, k: int, *, iters: int = 100, seed: int = 0, max_points: int = 200_000
) -> np.ndarray:
    """YOLOv2 anchors: k-means of ``wh [N, 2]`` with distance ``1 - IoU`` of centre-aligned shapes,
    k-means++ initialisation, cluster means as centres; deterministic for a ``seed``. Sets larger than
    ``max_points`` are subsampled. Returns ``[k, 2]`` shapes sorted by area."""
    wh = _wh_of(wh)
    if k < 1 or len(wh) < k:
        raise ValueError(f"need 1 <= k <= number of boxes, got k={k} for {len(wh)} boxes")
    rng = np.random.default_rng(seed)
    if len(wh) > max_points:
        wh = wh[rng.choice(len(wh), max_points, replace=False)]
    centres = np.empty((k, 2))
    centres[0] = wh[rng.integers(len(wh))]
    dist = 1 - shape_iou(wh, centres[:1])[:, 0]
    for j in range(1, k):  # k-means++: next centre drawn with probability ~ distance²
        p = dist**2
        idx = rng.choice(len(wh), p=p / p.sum()) if p.sum() > 0 else rng.integers(len(wh))
        centres[j] = wh[idx]
        dist = np.minimum(dist, 1 - shape_iou(wh, centres[j : j + 1])[:, 0])
    assign = None
    for _ in range(iters):
        iou = shape_iou(wh, centres)
        new = iou.argmax(1)
        if assign is not None and np.array_equal(new, assign):
            break
        assign = new
        counts = np.bincount(assign, minlength=k)
        sums = np.stack([np.bincount(assign, weights=wh[:, d], minlength=k) for d in range(2)], 1)
        empty = counts == 0
        centres[~empty] = sums[~empty] / counts[~empty, None]
        if empty.any():  # re-seed empty clusters with the worst-covered boxes
            worst = np.argsort(iou.max(1))[: int(empty.sum())]
            centres[empty] = wh[worst]
    return centres[np.argsort(centres.prod(1), kind="stable")]


def propose_kmeans(
    data: BoxStats | ResizedBoxes | np.ndarray,
    *,
    levels: tuple[int, int] = (3, 7),
    anchors_per_level: int = 9,
    num_ratios: int = 3,
    iters: int = 100,
    seed: int = 0,
) -> Proposal:
    """k-means anchors per FPN level. Each box goes to the level whose octave it falls in (level ``l``
    holds sizes ``[b 2**l, b 2**(l+1))`` for the ``octave_base_scale`` ``b`` of ``propose_from_ranges``,
    the extremes to the end levels), and each level with at least ``anchors_per_level`` boxes gets that
    many k-means (1 - IoU) shapes; the others keep the range-based sizes. ``AnchorGenerator`` builds
    ``sizes x ratios`` per level (no paired (size, ratio) lists) and ``model.anchors`` has one ratio list
    for all levels, so the config form is the closest product: ``num_ratios`` shared ratios
    (count-weighted quantiles of the clusters' log(h/w)) and per level ``anchors_per_level / num_ratios``
    sizes (geometric means of the level's cluster sizes, in order). ``Proposal.shapes`` holds the exact
    cluster shapes ``[S, 2]``."""
    wh = _wh_of(data)
    lo_level, hi_level = levels
    if anchors_per_level % num_ratios:
        raise ValueError(
            f"anchors_per_level ({anchors_per_level}) must be a multiple of num_ratios ({num_ratios})"
        )
    n_sizes = anchors_per_level // num_ratios
    ref = propose_from_ranges(wh, levels=levels, scales_per_octave=n_sizes, num_ratios=num_ratios)
    base = ref.anchors["octave_base_scale"]
    level_of = np.clip(np.floor(np.log2(np.sqrt(wh.prod(1)) / base)), lo_level, hi_level).astype(np.int64)
    sizes, shapes, weights, kept = [], [], [], []
    for level in range(lo_level, hi_level + 1):
        sub = wh[level_of == level]
        if len(sub) < anchors_per_level:
            sizes.append([_round(base * 2**level * 2 ** (j / n_sizes)) for j in range(n_sizes)])
            kept.append(f"P{level}")
            continue
        centres = kmeans_anchors(sub, anchors_per_level, iters=iters, seed=seed + level)
        shapes.append(centres)
        weights.append(np.bincount(shape_iou(sub, centres).argmax(1), minlength=anchors_per_level))
        size = np.sqrt(centres.prod(1))  # ascending: centres are sorted by area
        sizes.append([_round(float(np.exp(np.log(c).mean()))) for c in np.array_split(size, n_sizes)])
    notes = [
        f"k-means shapes approximated by {n_sizes} sizes per level x shared ratios (AnchorGenerator takes "
        "sizes x ratios, not paired shapes); exact shapes are in anchor_stats.json"
    ]
    if kept:
        notes.append(
            f"fewer than {anchors_per_level} boxes on {', '.join(kept)}: range-based sizes kept there"
        )
    if shapes:
        shape_arr = np.concatenate(shapes)
        log_r = np.log(shape_arr[:, 1] / shape_arr[:, 0])
        ratios = _ratio_set(log_r, num_ratios, np.concatenate(weights) + 1e-9)
    else:
        shape_arr, ratios = np.zeros((0, 2)), ref.anchors["aspect_ratios"]
    anchors = {"sizes": sizes, "aspect_ratios": ratios}
    return Proposal("kmeans", anchors, lo_level, hi_level, notes, shape_arr)


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
