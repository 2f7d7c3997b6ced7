"""Anchor proposals from the data: range-based octave anchors, YOLOv2 k-means shapes and the min / max
recipe of the "anchor boxes: when, where and how" tutorial (``propose_seed``).

Shape legend (docs/architecture.md): N objects (all images), S shapes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from anchorlab.anchors import AnchorGenerator
from anchorlab.design.stats import BoxStats, ResizedBoxes, _wh_of, shape_iou


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


def propose_seed(
    data: BoxStats | ResizedBoxes | np.ndarray,
    *,
    levels: tuple[int, int] = (3, 7),
    num_scales: int = 3,
    aspect_ratios: tuple[float, ...] = (1.0, 0.5),
    offset: float = 0.5,
) -> Proposal:
    """The tutorial's recipe: ``num_scales`` sizes evenly spaced (linearly) from the smallest side of any
    object (``min`` over objects of ``min(w, h)``) to the largest (``max`` of ``max(w, h)``), ratios 1:1
    and 2:1 (width twice the height: ``h / w = 0.5``), every size x ratio at every location of every
    level, anchors centred in their cells (``offset`` 0.5). A size is the square root of the anchor's
    area (anchorlab's convention), so the 2:1 anchor of size ``s`` is ``s sqrt(2)`` x ``s / sqrt(2)``."""
    wh = _wh_of(data)
    lo_level, hi_level = levels
    if num_scales < 1:
        raise ValueError(f"num_scales must be >= 1, got {num_scales}")
    smallest, largest = float(wh.min()), float(wh.max())
    sizes = [_round(v) for v in np.linspace(smallest, largest, num_scales)]
    if len(set(sizes)) < len(sizes):  # every object of one size: keep one anchor size
        sizes = sorted(set(sizes))
    notes = [
        f"sizes evenly spaced from the smallest object side ({smallest:.1f} px) to the largest "
        f"({largest:.1f} px), the same on every level P{lo_level}..P{hi_level}; anchors at cell centres"
    ]
    anchors = {
        "sizes": [list(sizes) for _ in range(lo_level, hi_level + 1)],
        "aspect_ratios": [float(r) for r in aspect_ratios],
        "offset": float(offset),
    }
    return Proposal("seed", anchors, lo_level, hi_level, notes)


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
