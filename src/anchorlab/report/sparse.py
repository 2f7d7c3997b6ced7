"""Exact sparse equivalents of the assigners, for reports over whole datasets.

A dense assigner builds ``[B, M, R]`` tensors: ~200k RetinaNet anchors per 800 x 1333 image make a
COCO-sized report take half an hour. Almost every (object, prior) pair is irrelevant: a prior far
from an object, or of a very different size, has an IoU below every threshold that matters. The
functions here enumerate, per object and prior shape, the **window of grid cells** where a pair can
matter (a necessary condition widened by rounding margins), compute the exact quantities of the
dense code on those pairs only (same float expressions, so bitwise-equal values), and resolve
per prior with ``scatter_reduce``. The tests check them against ``max_iou_assign``, ``fcos_assign``,
``centernet_targets`` and a dense ``topk`` on random and hand-made cases.

Why it is exact (max-IoU): an object's pairs are enumerated down to ``tau = min(neg_iou, L)`` where
``L`` is the IoU of one real anchor (the one nearest the centre, per shape), so every pair with
``IoU >= neg_iou`` and every object's best anchors (``>= L``) are present; pairs left out have
``IoU < neg_iou`` and change no decision. A FreeAnchor bag (top ``k``) is exact when at least ``k``
pairs reach ``tau``; otherwise that object is re-enumerated with every overlapping anchor.

Inputs are flat over a chunk of ``B`` images: ``boxes [N, 4]`` xyxy and ``img [N]`` (image of each
object, non-decreasing). Object indices in outputs are positions in that flat list.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from anchorlab.anchors import AnchorGenerator
from anchorlab.assign import BACKGROUND, IGNORE

__all__ = [
    "AnchorPairs",
    "AnchorShapes",
    "anchor_pairs",
    "anchor_shapes",
    "centernet_cells",
    "crowd_covered_anchors",
    "expand_windows",
    "fcos_crowd_points",
    "fcos_pairs",
    "free_anchor_bags",
    "resolve_fcos",
    "resolve_max_iou",
]

_RELAX = 1e-4  # relative slack on thresholds used for windows (never for decisions)


class AnchorShapes(NamedTuple):
    """One row per (level, anchor index) ``S``: size, stride and where its priors sit in ``[R]``."""

    width: torch.Tensor  # [S]
    height: torch.Tensor  # [S]
    stride: torch.Tensor  # [S]
    level: torch.Tensor  # [S] int64, 0 = finest
    anchor: torch.Tensor  # [S] int64, anchor index a at a location
    per_location: torch.Tensor  # [S] int64, A_l
    start: torch.Tensor  # [S] int64, first prior of the level
    loc_start: torch.Tensor  # [S] int64, first location of the level (locations = cells of all levels)
    grid_h: torch.Tensor  # [S] int64
    grid_w: torch.Tensor  # [S] int64
    offset: float


def anchor_shapes(
    gen: AnchorGenerator, feature_sizes: list[tuple[int, int]], device: torch.device, dtype: torch.dtype
) -> AnchorShapes:
    """The ``S`` anchor shapes of ``gen`` on feature maps ``[(H_l, W_l)]``."""
    cols: dict[str, list] = {k: [] for k in AnchorShapes._fields[:-1]}
    start = loc_start = 0
    for level, ((h, w), a_l) in enumerate(zip(feature_sizes, gen.num_anchors_per_location(), strict=True)):
        base = gen.base_anchors(level, device, dtype)
        for a in range(a_l):
            cols["width"].append(float(base[a, 2] - base[a, 0]))
            cols["height"].append(float(base[a, 3] - base[a, 1]))
            for key, value in (
                ("stride", float(gen.strides[level])), ("level", level), ("anchor", a),
                ("per_location", a_l), ("start", start), ("loc_start", loc_start), ("grid_h", h),
                ("grid_w", w),
            ):  # fmt: skip
                cols[key].append(value)
        start += h * w * a_l
        loc_start += h * w
    out = {
        k: torch.tensor(v, device=device, dtype=dtype if k in ("width", "height", "stride") else torch.int64)
        for k, v in cols.items()
    }
    return AnchorShapes(**out, offset=gen.offset)


def expand_windows(
    x0: torch.Tensor, x1: torch.Tensor, y0: torch.Tensor, y1: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every cell of inclusive windows ``[x0, x1] x [y0, y1]`` (each ``[I]``; empty if ``x1 < x0``).

    Returns ``(item [P], x [P], y [P])``, items in order, row-major inside an item. No Python loop."""
    nx = (x1 - x0 + 1).clamp(min=0)
    ny = (y1 - y0 + 1).clamp(min=0)
    n = nx * ny
    item = torch.repeat_interleave(torch.arange(n.shape[0], device=n.device), n)
    local = torch.arange(item.shape[0], device=n.device) - (torch.cumsum(n, 0) - n)[item]
    nxi = nx[item]
    return item, x0[item] + local % nxi, y0[item] + local // nxi


def _pair_iou(a: torch.Tensor, b: torch.Tensor, over_b: bool = False) -> torch.Tensor:
    """Elementwise IoU (or intersection over ``b``'s area) of ``a [P, 4]`` and ``b [P, 4]``, written like
    ``assign.common.batched_iou`` so the values are bitwise equal."""
    iw = (torch.minimum(a[:, 2], b[:, 2]) - torch.maximum(a[:, 0], b[:, 0])).clamp(min=0)
    ih = (torch.minimum(a[:, 3], b[:, 3]) - torch.maximum(a[:, 1], b[:, 1])).clamp(min=0)
    inter = iw * ih
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    den = area_b if over_b else (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]) + area_b - inter
    ok = den > 0
    return torch.where(ok, inter / torch.where(ok, den, torch.ones_like(den)), torch.zeros_like(inter))


def _prior_index(sh: AnchorShapes, s: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return sh.start[s] + (y * sh.grid_w[s] + x) * sh.per_location[s] + sh.anchor[s]


def _anchor_windows(
    boxes: torch.Tensor, sh: AnchorShapes, tau: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cell windows ``[N * S]`` (object-major) holding every anchor of IoU ``>= tau [N]`` with the object.

    IoU >= t needs intersection I >= t (A_a + A_b) / (1 + t); as the intersection height is at most
    min(h_a, h), the intersection width must reach I / min(h_a, h), which bounds |dx| (same for y)."""
    w, h = (boxes[:, 2] - boxes[:, 0])[:, None], (boxes[:, 3] - boxes[:, 1])[:, None]  # [N, 1]
    cx, cy = ((boxes[:, 0] + boxes[:, 2]) / 2)[:, None], ((boxes[:, 1] + boxes[:, 3]) / 2)[:, None]
    wa, ha, s = sh.width[None], sh.height[None], sh.stride[None]  # [1, S]
    t = (tau * (1 - _RELAX))[:, None]
    need = t * (wa * ha + w * h) / (1 + t)  # [N, S]
    gx, gy = need / torch.minimum(ha, h), need / torch.minimum(wa, w)
    ok = (gx <= torch.minimum(wa, w)) & (gy <= torch.minimum(ha, h))
    dx, dy = (wa + w) / 2 - gx, (ha + h) / 2 - gy
    gw, gh = sh.grid_w[None], sh.grid_h[None]
    x0 = ((cx - dx) / s - sh.offset).floor().long().clamp(min=0)
    x1 = torch.minimum(((cx + dx) / s - sh.offset).ceil().long(), gw - 1)
    y0 = ((cy - dy) / s - sh.offset).floor().long().clamp(min=0)
    y1 = torch.minimum(((cy + dy) / s - sh.offset).ceil().long(), gh - 1)
    x1 = torch.where(ok, x1, x0 - 1)
    return x0.reshape(-1), x1.reshape(-1), y0.reshape(-1), y1.reshape(-1)


def _pairs_for(
    anchors: torch.Tensor, sh: AnchorShapes, boxes: torch.Tensor, objs: torch.Tensor, tau: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(obj, prior, iou)`` with ``iou > 0`` for objects ``objs`` (indices into ``boxes``)."""
    num_shapes = sh.width.shape[0]
    item, x, y = expand_windows(*_anchor_windows(boxes[objs], sh, tau))
    obj, s = objs[item // num_shapes], item % num_shapes
    prior = _prior_index(sh, s, x, y)
    iou = _pair_iou(boxes[obj], anchors[prior])
    keep = iou > 0
    return obj[keep], prior[keep], iou[keep]


class AnchorPairs(NamedTuple):
    """Sparse (object, anchor) pairs of a chunk, sorted by object then decreasing IoU."""

    obj: torch.Tensor  # [P] int64
    prior: torch.Tensor  # [P] int64
    iou: torch.Tensor  # [P] float


def anchor_pairs(
    anchors: torch.Tensor, sh: AnchorShapes, boxes: torch.Tensor, *, neg_iou: float, bag_size: int = 0
) -> AnchorPairs:
    """All pairs needed for an exact max-IoU assignment and FreeAnchor bags of ``bag_size`` (module doc)."""
    n = boxes.shape[0]
    device = boxes.device
    empty = torch.zeros(0, dtype=torch.int64, device=device)
    if n == 0 or anchors.shape[0] == 0:
        return AnchorPairs(empty, empty, anchors.new_zeros(0))
    num_shapes = sh.width.shape[0]
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    s = torch.arange(num_shapes, device=device)[None, :].expand(n, -1)
    gx = torch.minimum(((cx[:, None] / sh.stride) - sh.offset).round().long().clamp(min=0), sh.grid_w - 1)
    gy = torch.minimum(((cy[:, None] / sh.stride) - sh.offset).round().long().clamp(min=0), sh.grid_h - 1)
    near = _pair_iou(
        boxes[:, None, :].expand(n, num_shapes, 4).reshape(-1, 4),
        anchors[_prior_index(sh, s, gx, gy)].reshape(-1, 4),
    )
    tau = near.reshape(n, num_shapes).amax(dim=1).clamp(max=neg_iou)  # [N], a real anchor reaches it
    objs = torch.arange(n, device=device)
    obj, prior, iou = _sorted(*_pairs_for(anchors, sh, boxes, objs, tau))
    k = min(bag_size, anchors.shape[0])
    if k > 0:
        reached = torch.bincount(obj[iou >= tau[obj]], minlength=n)
        redo = (reached < k) & (tau > 0)
        if bool(redo.any()):
            # the k-th best IoU seen so far is reached by k real anchors: enumerate down to it (or to 0)
            rank = _rank(obj, n)
            kth = iou.new_zeros(n).index_put_((obj[rank == k - 1],), iou[rank == k - 1])
            keep = ~redo[obj]
            o2, p2, i2 = _pairs_for(anchors, sh, boxes, objs[redo], kth[redo])
            obj, prior, iou = _sorted(
                torch.cat((obj[keep], o2)), torch.cat((prior[keep], p2)), torch.cat((iou[keep], i2))
            )
    return AnchorPairs(obj, prior, iou)


def _sorted(obj: torch.Tensor, prior: torch.Tensor, iou: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Pairs sorted by object, then by decreasing IoU (one sort on ``obj + (1 - iou) / 2`` in float64)."""
    order = torch.sort(obj.double() + (1 - iou.double()) / 2).indices
    return obj[order], prior[order], iou[order]


def _rank(obj: torch.Tensor, num_objects: int) -> torch.Tensor:
    """Position ``[P]`` of each pair among its object's pairs (pairs sorted by object)."""
    counts = torch.bincount(obj, minlength=num_objects)
    return torch.arange(obj.shape[0], device=obj.device) - (torch.cumsum(counts, 0) - counts)[obj]


def _first_by_key(inv: torch.Tensor, num: int, value: torch.Tensor, obj: torch.Tensor, big: int):
    """Per key: the largest ``value`` and the lowest ``obj`` reaching it (``[U]`` each)."""
    best = value.new_full((num,), -math.inf).scatter_reduce(0, inv, value, reduce="amax")
    hit = value == best[inv]
    who = torch.full((num,), big, dtype=torch.int64, device=inv.device)
    who = who.scatter_reduce(0, inv, torch.where(hit, obj, big), reduce="amin")
    return best, who


def resolve_max_iou(
    pairs: AnchorPairs,
    img: torch.Tensor,
    num_priors: int,
    *,
    pos_iou: float,
    neg_iou: float,
    low_quality: bool = True,
    low_quality_min_iou: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``max_iou_assign`` on pairs: ``(key [U], matched [U])`` for every touched prior
    ``key = image * R + prior``; ``matched`` is an object index, ``IGNORE`` or ``BACKGROUND``."""
    n = img.shape[0]
    key = img[pairs.obj] * num_priors + pairs.prior
    ukey, inv = torch.unique(key, return_inverse=True)
    best, arg = _first_by_key(inv, ukey.shape[0], pairs.iou, pairs.obj, n)
    matched = torch.where(best >= pos_iou, arg, torch.where(best < neg_iou, BACKGROUND, IGNORE))
    if low_quality and pairs.obj.numel():
        gt_best = pairs.iou.new_zeros(n).scatter_reduce(0, pairs.obj, pairs.iou, reduce="amax")[pairs.obj]
        claim = (pairs.iou == gt_best) & (gt_best > low_quality_min_iou)
        claim_iou, claimant = _first_by_key(
            inv, ukey.shape[0], torch.where(claim, pairs.iou, -2.0), pairs.obj, n
        )
        matched = torch.where(claim_iou > -2.0, claimant, matched)
    return ukey, matched


def free_anchor_bags(pairs: AnchorPairs, num_objects: int, bag_size: int) -> torch.Tensor:
    """Mask ``[P]`` of the pairs in their object's bag (top ``bag_size`` by IoU; pairs are pre-sorted)."""
    return _rank(pairs.obj, num_objects) < bag_size


def crowd_covered_anchors(
    anchors: torch.Tensor, sh: AnchorShapes, crowd: torch.Tensor, crowd_img: torch.Tensor, crowd_ioa: float
) -> torch.Tensor:
    """Keys ``image * R + prior`` (unique) of anchors covered by a crowd box with IoA ``>= crowd_ioa``."""
    if crowd.shape[0] == 0:
        return torch.zeros(0, dtype=torch.int64, device=crowd.device)
    num_shapes = sh.width.shape[0]
    item, x, y = expand_windows(*_anchor_windows(crowd, sh, torch.zeros(crowd.shape[0], device=crowd.device)))
    c, s = item // num_shapes, item % num_shapes
    prior = _prior_index(sh, s, x, y)
    ioa = _pair_iou(crowd[c], anchors[prior], over_b=True)
    keep = ioa >= crowd_ioa
    return torch.unique(crowd_img[c[keep]] * anchors.shape[0] + prior[keep])


def fcos_pairs(
    points: torch.Tensor,
    point_strides: torch.Tensor,
    level_geometry: list[tuple[int, int, int, int]],
    ranges: torch.Tensor,
    boxes: torch.Tensor,
    *,
    radius: float | None = 1.5,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """FCOS candidates ``(obj [P], point [P], area [P])``: points in the centre region (or the box when
    ``radius`` is None) whose ``max(l, t, r, b)`` lies in their level's range ``ranges [L, 2]``.
    ``level_geometry`` holds ``(stride, H, W, start)`` per level. Same float expressions as
    ``fcos_assign``."""
    geo = torch.tensor(level_geometry, device=boxes.device, dtype=torch.int64).reshape(-1, 4)  # [L, 4]
    num_levels = geo.shape[0]
    stride = geo[:, 0].to(boxes.dtype)[None]  # [1, L]
    half_w = ((boxes[:, 2] - boxes[:, 0]) / 2)[:, None]
    half_h = ((boxes[:, 3] - boxes[:, 1]) / 2)[:, None]
    cx, cy = ((boxes[:, 0] + boxes[:, 2]) / 2)[:, None], ((boxes[:, 1] + boxes[:, 3]) / 2)[:, None]
    rx, ry = half_w, half_h
    if radius is not None:
        rx, ry = torch.minimum(half_w, stride * radius), torch.minimum(half_h, stride * radius)
    x0 = ((cx - rx) / stride - 0.5).floor().long().clamp(min=0)
    x1 = torch.minimum(((cx + rx) / stride - 0.5).ceil().long(), geo[:, 2][None] - 1)
    y0 = ((cy - ry) / stride - 0.5).floor().long().clamp(min=0)
    y1 = torch.minimum(((cy + ry) / stride - 0.5).ceil().long(), geo[:, 1][None] - 1)
    item, x, y = expand_windows(x0.reshape(-1), x1.reshape(-1), y0.reshape(-1), y1.reshape(-1))
    obj, lvl = item // num_levels, item % num_levels
    point = geo[lvl, 3] + y * geo[lvl, 2] + x
    gt, p, ps = boxes[obj], points[point], point_strides[point]
    hw, hh = (gt[:, 2] - gt[:, 0]) / 2, (gt[:, 3] - gt[:, 1]) / 2
    dx = (p[:, 0] - (gt[:, 0] + gt[:, 2]) / 2).abs()
    dy = (p[:, 1] - (gt[:, 1] + gt[:, 3]) / 2).abs()
    inside = (dx < hw) & (dy < hh)
    if radius is not None:
        r = ps * radius
        inside &= (dx < r) & (dy < r)
    max_dist = torch.maximum(dx + hw, dy + hh)
    rng = ranges[lvl]
    cand = inside & (max_dist >= rng[:, 0]) & (max_dist <= rng[:, 1])
    return obj[cand], point[cand], (4 * hw * hh)[cand]


def resolve_fcos(
    obj: torch.Tensor, point: torch.Tensor, area: torch.Tensor, img: torch.Tensor, num_points: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Min-area choice per point: ``(key [U], winner [U], candidates [U])``, ``key = image * R + point``."""
    key = img[obj] * num_points + point
    ukey, inv, counts = torch.unique(key, return_inverse=True, return_counts=True)
    _, winner = _first_by_key(inv, ukey.shape[0], -area, obj, img.shape[0])
    return ukey, winner, counts


def fcos_crowd_points(
    level_geometry: list[tuple[int, int, int, int]],
    points: torch.Tensor,
    crowd: torch.Tensor,
    crowd_img: torch.Tensor,
) -> torch.Tensor:
    """Keys ``image * R + point`` (unique) of points strictly inside a crowd box."""
    if crowd.shape[0] == 0:
        return torch.zeros(0, dtype=torch.int64, device=crowd.device)
    geo = torch.tensor(level_geometry, device=crowd.device, dtype=torch.int64).reshape(-1, 4)
    stride = geo[:, 0].to(crowd.dtype)[None]
    x0 = (crowd[:, 0:1] / stride - 0.5).floor().long().clamp(min=0)
    x1 = torch.minimum((crowd[:, 2:3] / stride - 0.5).ceil().long(), geo[:, 2][None] - 1)
    y0 = (crowd[:, 1:2] / stride - 0.5).floor().long().clamp(min=0)
    y1 = torch.minimum((crowd[:, 3:4] / stride - 0.5).ceil().long(), geo[:, 1][None] - 1)
    item, x, y = expand_windows(x0.reshape(-1), x1.reshape(-1), y0.reshape(-1), y1.reshape(-1))
    c, lvl = item // geo.shape[0], item % geo.shape[0]
    point = geo[lvl, 3] + y * geo[lvl, 2] + x
    p, b = points[point], crowd[c]
    inside = (
        (p[:, 0] - b[:, 0] > 0) & (p[:, 1] - b[:, 1] > 0) & (b[:, 2] - p[:, 0] > 0) & (b[:, 3] - p[:, 1] > 0)
    )
    return torch.unique(crowd_img[c[inside]] * points.shape[0] + point[inside])


def centernet_cells(
    boxes: torch.Tensor, out_hw: tuple[int, int], stride: int = 4
) -> tuple[torch.Tensor, torch.Tensor]:
    """CenterNet's centre cell of each object: ``(index [N] = y * W + x, mask [N])`` exactly as
    ``centernet_targets`` (boxes divided by the stride, clipped to the grid, degenerate ones masked)."""
    out_h, out_w = out_hw
    b = boxes / stride
    x1, x2 = b[:, 0].clamp(0, out_w - 1), b[:, 2].clamp(0, out_w - 1)
    y1, y2 = b[:, 1].clamp(0, out_h - 1), b[:, 3].clamp(0, out_h - 1)
    mask = (x2 - x1 > 0) & (y2 - y1 > 0)
    cell_x, cell_y = ((x1 + x2) / 2).floor().long(), ((y1 + y2) / 2).floor().long()
    return torch.where(mask, cell_y * out_w + cell_x, 0), mask
