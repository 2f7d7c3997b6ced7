"""Assignment report: every strategy run on a dataset's ground truth, no model.

For each strategy (max-IoU, FreeAnchor bags, FCOS, CenterNet, YOLO grid) the report counts the objects
that get no positive prior (overall, per COCO size bucket, per class), the positives per object, the
locations claimed by two or more objects (collisions, per level) and the ignored priors. Boxes are
resized as the config's evaluation transform does and the priors are those of the real padded grid
(multiple of ``2**max_level``, as the collate pads). Images are grouped by padded size and processed
in chunks with the exact sparse assigners of :mod:`anchorlab.report.sparse`. See docs/assignment.md.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from anchorlab.config import Config
from anchorlab.data.batch import size_divisor
from anchorlab.data.core import DetectionSet, ImageRecord
from anchorlab.data.transforms import shortest_edge_size
from anchorlab.report import sparse
from anchorlab.report.strategies import (
    CENTERNET_STRIDE,
    FCOS_CENTER_SAMPLING,
    STRATEGIES,
    ChunkOut,
    Geometry,
    fcos_ranges,
    grid_size_ranges,
    run_strategy,
)

__all__ = [
    "SIZE_BUCKETS",
    "STRATEGIES",
    "ImageAssignment",
    "assignment_report",
    "check_strategies",
    "image_assignment",
]

#: COCO's size buckets on the box area after the resize: small < 32^2 <= medium < 96^2 <= large.
SIZE_BUCKETS: tuple[tuple[str, float, float], ...] = (
    ("small", 0.0, 32.0**2),
    ("medium", 32.0**2, 96.0**2),
    ("large", 96.0**2, math.inf),
)
_MAX_CHUNK_OBJECTS = 3000
_MAX_CHUNK_IMAGES = 256


def check_strategies(strategies: Sequence[str]) -> tuple[str, ...]:
    """The strategies in the canonical order; ``ValueError`` naming the valid ones for an unknown name."""
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown or not strategies:
        raise ValueError(f"unknown strategy {', '.join(unknown) or '(none)'}; valid: {', '.join(STRATEGIES)}")
    return tuple(s for s in STRATEGIES if s in strategies)


@dataclass
class _Resized:
    """Images in processing order (grouped by padded size) with their objects flat in the same order."""

    index: np.ndarray  # [B] dataset index of each image
    padded: np.ndarray  # [B, 2] padded (H, W)
    obj_start: np.ndarray  # [B + 1]
    boxes: np.ndarray  # [N, 4] float32, resized xyxy
    labels: np.ndarray  # [N]
    crowd_start: np.ndarray  # [B + 1]
    crowd: np.ndarray  # [C, 4]
    dropped: int


def _resize(ds: DetectionSet, cfg: Config, indices: Sequence[int]) -> _Resized:
    """The evaluation resize (shorter side ``max(min_size)``, capped at ``max_size``) of ``indices``;
    boxes clamped to the image, those under 1 px dropped (as ``DetectionTransform``)."""
    short = cfg.data.min_size if isinstance(cfg.data.min_size, int) else max(cfg.data.min_size)
    div = size_divisor(2**cfg.model.fpn.max_level)
    recs = [ds.images[i] for i in indices]
    sizes = np.array([shortest_edge_size(r.height, r.width, short, cfg.data.max_size) for r in recs]).reshape(
        -1, 2
    )
    padded = -(-sizes // div) * div
    order = np.lexsort((padded[:, 1], padded[:, 0])) if len(recs) else np.zeros(0, np.int64)
    recs, sizes, padded = [recs[i] for i in order], sizes[order], padded[order]

    def flat(get) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        arrs = [np.asarray(get(r), np.float32).reshape(-1, 4) for r in recs]
        counts = np.array([len(a) for a in arrs], np.int64)
        boxes = np.concatenate(arrs) if arrs else np.zeros((0, 4), np.float32)
        owner = np.repeat(np.arange(len(recs)), counts)
        hw = np.array([[r.height, r.width] for r in recs], np.float64).reshape(-1, 2)
        scale = (sizes / np.maximum(hw, 1))[owner][:, ::-1]  # (sx, sy)
        canvas = sizes[owner][:, ::-1].astype(np.float32)
        b = (boxes * np.tile(scale, 2)).astype(np.float32)
        b = np.clip(b, 0, np.tile(canvas, 2))
        keep = ((b[:, 2] - b[:, 0]) >= 1) & ((b[:, 3] - b[:, 1]) >= 1)
        kept = np.bincount(owner[keep], minlength=len(recs))
        return b[keep], np.concatenate(([0], np.cumsum(kept))), keep, int((~keep).sum())

    boxes, obj_start, keep, dropped = flat(lambda r: r.boxes)
    labels = np.concatenate(
        [np.asarray(r.labels, np.int64).reshape(-1) for r in recs] or [np.zeros(0, np.int64)]
    )
    crowd, crowd_start, _, _ = flat(lambda r: r.crowd)
    return _Resized(
        np.asarray(indices, np.int64)[order],
        padded,
        obj_start,
        boxes,
        labels[keep],
        crowd_start,
        crowd,
        dropped,
    )


def _chunks(rs: _Resized) -> list[tuple[int, int]]:
    """``[(first, end)]`` image ranges: one padded size each, bounded in images and objects."""
    out, start = [], 0
    for i in range(1, len(rs.index) + 1):
        size_change = i == len(rs.index) or tuple(rs.padded[i]) != tuple(rs.padded[start])
        full = i - start >= _MAX_CHUNK_IMAGES or rs.obj_start[i] - rs.obj_start[start] >= _MAX_CHUNK_OBJECTS
        if size_change or full:
            out.append((start, i))
            start = i
    return out


class _Acc:
    """Dataset-wide accumulators of one strategy."""

    def __init__(self, num_objects: int, num_images: int, num_levels: int) -> None:
        self.positives = np.zeros(num_objects, np.int64)
        self.per_object: dict[str, np.ndarray] = {}
        self.scalars: dict[str, int] = {}
        self.coll_level = np.zeros(num_levels, np.int64)
        self.coll_image = np.zeros(num_images, np.int64)
        self.ignored = self.priors = 0

    def add(self, out: ChunkOut, obj0: int, n: int, img0: int, num_images: int, num_levels: int) -> None:
        self.positives[obj0 : obj0 + n] += torch.bincount(out.pos_obj, minlength=n).cpu().numpy()
        for k, v in out.per_object.items():
            self.per_object.setdefault(k, np.zeros_like(self.positives, dtype=np.float64))[
                obj0 : obj0 + n
            ] = v.cpu().numpy()
        for k, v in out.scalars.items():
            self.scalars[k] = self.scalars.get(k, 0) + v
        self.ignored += out.ignored
        self.priors += out.priors
        if out.claim_obj.numel():
            locs = int(out.claim_loc.max()) + 1
            key = out.claim_img * locs + out.claim_loc
            # distinct (location, object) pairs, then locations with two or more objects
            k = torch.unique(key * (n + 1) + out.claim_obj) // (n + 1)
            uk, counts = torch.unique_consecutive(k, return_counts=True)
            hit = counts >= 2
            level = out.claim_level[_first_index(key, uk)][hit]
            self.coll_level += torch.bincount(level, minlength=num_levels).cpu().numpy()[:num_levels]
            self.coll_image[img0 : img0 + num_images] += (
                torch.bincount(uk[hit] // locs, minlength=num_images).cpu().numpy()
            )


def _first_index(keys: torch.Tensor, uk: torch.Tensor) -> torch.Tensor:
    """For each of the sorted unique keys ``uk``, one position in ``keys`` holding it."""
    order = torch.argsort(keys)
    return order[torch.searchsorted(keys[order], uk)]


def _quantiles(x: np.ndarray) -> dict[str, float | None]:
    if x.size == 0:
        return {"mean": None, "p10": None, "median": None, "p90": None}
    p10, p50, p90 = np.percentile(x, [10, 50, 90])
    return {"mean": float(x.mean()), "p10": float(p10), "median": float(p50), "p90": float(p90)}


def _zero_stats(zero: np.ndarray, groups: np.ndarray, names: Sequence[str]) -> dict[str, dict]:
    out = {}
    for i, name in enumerate(names):
        mask = groups == i
        n, z = int(mask.sum()), int(zero[mask].sum())
        out[name] = {"objects": n, "zero_positive": z, "share": z / n if n else None}
    return out


def _summary(
    acc: _Acc, bucket: np.ndarray, labels: np.ndarray, class_names: list[str], level_names: list[str]
):
    zero = acc.positives == 0
    n = len(zero)
    by_class = {k: v for k, v in _zero_stats(zero, labels, class_names).items() if v["objects"]}
    out = {
        "zero_positive": {
            "count": int(zero.sum()),
            "share": float(zero.mean()) if n else None,
            "by_size": _zero_stats(zero, bucket, [b[0] for b in SIZE_BUCKETS]),
            "by_class": by_class,
        },
        "positives_per_object": _quantiles(acc.positives.astype(np.float64)),
        "collisions": {
            "locations": int(acc.coll_level.sum()),
            "per_level": dict(zip(level_names, acc.coll_level.tolist(), strict=True)),
        },
        "ignored": {"count": acc.ignored, "share": acc.ignored / acc.priors if acc.priors else None},
        "priors": {"total": acc.priors},
    }
    extra: dict = {k: (float(v.mean()) if n else None) for k, v in acc.per_object.items()}
    extra.update(acc.scalars)
    if extra:
        out["extra"] = extra
    return out


def _inputs(rs: _Resized, a: int, b: int, device: torch.device):
    o0, o1, c0, c1 = rs.obj_start[a], rs.obj_start[b], rs.crowd_start[a], rs.crowd_start[b]
    img = torch.from_numpy(np.repeat(np.arange(b - a), np.diff(rs.obj_start[a : b + 1]))).to(device)
    cimg = torch.from_numpy(np.repeat(np.arange(b - a), np.diff(rs.crowd_start[a : b + 1]))).to(device)
    boxes = torch.from_numpy(rs.boxes[o0:o1]).to(device)
    crowd = torch.from_numpy(rs.crowd[c0:c1]).to(device)
    return boxes, img, crowd, cimg


def _run_chunk(
    cfg: Config, geo: Geometry, strategies, boxes, img, crowd, cimg, num_images
) -> dict[str, ChunkOut]:
    pairs = None
    if {"max_iou", "free_anchor"} & set(strategies):
        bag = cfg.model.free_anchor.bag_size if "free_anchor" in strategies else 0
        pairs = sparse.anchor_pairs(
            geo.anchors, geo.shapes, boxes, neg_iou=cfg.model.assign.neg_iou, bag_size=bag
        )
    return {s: run_strategy(s, geo, boxes, img, crowd, cimg, num_images, pairs) for s in strategies}


def assignment_report(
    ds: DetectionSet,
    cfg: Config,
    strategies: Sequence[str] = STRATEGIES,
    *,
    max_images: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    device: torch.device | str | None = None,
    threads: int | None = 1,
) -> dict:
    """Run ``strategies`` on the (first ``max_images``) images of ``ds``; a JSON-serialisable dict.

    ``progress(done_images, total_images)`` is called after every chunk. ``threads`` sets torch's CPU
    threads for the call (restored after; ``None`` keeps them): the work is many medium-sized tensor ops
    that gain little from threads and lose much to oversubscription (docs/assignment.md)."""
    strategies = check_strategies(strategies)
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _report(ds, cfg, strategies, max_images, progress, device)
    finally:
        torch.set_num_threads(before)


def _report(ds, cfg, strategies, max_images, progress, device) -> dict:
    t0 = time.perf_counter()
    device = torch.device(device) if device is not None else torch.device("cpu")
    count = len(ds) if max_images is None else min(len(ds), max_images)
    rs = _resize(ds, cfg, range(count))
    m = cfg.model
    fpn_levels = [f"P{lv}" for lv in range(m.fpn.min_level, m.fpn.max_level + 1)]
    level_names = {s: fpn_levels for s in strategies}
    if "centernet" in level_names:
        level_names["centernet"] = [f"stride{CENTERNET_STRIDE}"]
    accs = {s: _Acc(len(rs.boxes), count, len(level_names[s])) for s in strategies}
    geos: dict[tuple[int, int], Geometry] = {}
    for a, b in _chunks(rs):
        size = (int(rs.padded[a, 0]), int(rs.padded[a, 1]))
        if size not in geos:
            geos = {size: Geometry(cfg, size, device)}  # keep one: images are sorted by size
        boxes, img, crowd, cimg = _inputs(rs, a, b, device)
        outs = _run_chunk(cfg, geos[size], strategies, boxes, img, crowd, cimg, b - a)
        for s, out in outs.items():
            accs[s].add(out, int(rs.obj_start[a]), len(boxes), a, b - a, len(level_names[s]))
        if progress is not None:
            progress(b, count)

    areas = (rs.boxes[:, 2] - rs.boxes[:, 0]) * (rs.boxes[:, 3] - rs.boxes[:, 1])
    bucket = np.searchsorted([hi for _, _, hi in SIZE_BUCKETS[:-1]], areas, side="right")
    names = ds.class_names
    per_image_objects = np.diff(rs.obj_start)
    collisions = sum(acc.coll_image for acc in accs.values()) if accs else np.zeros(count, np.int64)
    top = np.lexsort((-per_image_objects, -collisions))[:10]
    ranges = fcos_ranges(m.fpn.min_level, m.fpn.max_level)
    return {
        "data": str(ds.source) if ds.source is not None else None,
        "images": count,
        "objects": len(rs.boxes),
        "dropped_objects": rs.dropped,
        "crowd_regions": len(rs.crowd),
        "image_sizes": len({tuple(p) for p in rs.padded.tolist()}),
        "resize": {
            "min_size": cfg.data.min_size,
            "max_size": cfg.data.max_size,
            "pad_to": 2**m.fpn.max_level,
        },
        "settings": {
            "levels": fpn_levels,
            "max_iou": m.assign.model_dump(),
            "anchors": m.anchors.model_dump(),
            "free_anchor": {"bag_size": m.free_anchor.bag_size},
            "fcos": {
                "regress_ranges": [[lo, _finite(hi)] for lo, hi in ranges],
                "center_sampling": FCOS_CENTER_SAMPLING,
            },
            "centernet": {"stride": CENTERNET_STRIDE},
            "grid": {
                "size_ranges": [
                    [lo, _finite(hi)] for lo, hi in grid_size_ranges(m.fpn.min_level, m.fpn.max_level)
                ]
            },
        },
        "size_buckets": {name: int((bucket == i).sum()) for i, (name, _, _) in enumerate(SIZE_BUCKETS)},
        "strategies": {s: _summary(accs[s], bucket, rs.labels, names, level_names[s]) for s in strategies},
        "crowded_images": [
            {
                "index": int(rs.index[i]),
                "id": int(ds.images[rs.index[i]].id),
                "objects": int(per_image_objects[i]),
                "collisions": int(collisions[i]),
            }
            for i in top
        ],
        "seconds": round(time.perf_counter() - t0, 3),
    }


def _finite(x: float) -> float | None:
    """JSON has no infinity: ``None`` stands for an open upper bound."""
    return None if math.isinf(x) else x


@dataclass
class ImageAssignment:
    """One image's positives per strategy, in resized pixels.

    ``boxes [M, 4]`` / ``labels [M]`` the kept objects; ``positives[strategy] = (priors, obj)`` with
    ``priors [P, 4]`` anchor boxes (max_iou, free_anchor) or ``[P, 2]`` points (fcos, centernet, grid cell
    centres) and ``obj [P]`` the index of the object each serves."""

    record: ImageRecord
    size: tuple[int, int]
    padded: tuple[int, int]
    boxes: np.ndarray
    labels: np.ndarray
    positives: dict[str, tuple[np.ndarray, np.ndarray]]


def image_assignment(
    ds: DetectionSet, index: int, cfg: Config, strategies: Sequence[str] = STRATEGIES
) -> ImageAssignment:
    """The positives of every strategy on image ``index`` of ``ds`` (for pictures)."""
    strategies = check_strategies(strategies)
    rs = _resize(ds, cfg, [index])
    rec = ds.images[index]
    short = cfg.data.min_size if isinstance(cfg.data.min_size, int) else max(cfg.data.min_size)
    size = shortest_edge_size(rec.height, rec.width, short, cfg.data.max_size)
    padded = (int(rs.padded[0, 0]), int(rs.padded[0, 1]))
    device = torch.device("cpu")
    geo = Geometry(cfg, padded, device)
    boxes, img, crowd, cimg = _inputs(rs, 0, 1, device)
    outs = _run_chunk(cfg, geo, strategies, boxes, img, crowd, cimg, 1)
    positives = {}
    for s, out in outs.items():
        p = out.pos_prior
        if s in ("max_iou", "free_anchor"):
            priors = geo.anchors[p]
        elif s == "centernet":
            w = geo.centernet_hw[1]
            priors = (torch.stack((p % w, p // w), 1).float() + 0.5) * CENTERNET_STRIDE
        else:  # fcos points and grid cells are the same locations (cell centres)
            priors = geo.points[p]
        positives[s] = (priors.cpu().numpy(), out.pos_obj.cpu().numpy())
    return ImageAssignment(rec, size, padded, rs.boxes, rs.labels, positives)
