"""One function per assignment strategy, run on a chunk of same-size images, returning what the report counts.

Every runner takes the chunk's objects flat (``boxes [N, 4]`` xyxy after the resize, ``img [N]``
non-decreasing image index in the chunk), its crowd regions and a ``Geometry`` of the padded size,
and returns a ``ChunkOut``: the positives (object, prior) and the *claims* (image, location, object)
whose locations held by two or more objects are the collisions. Shape legend: N objects of the chunk,
P pairs, R priors of one image.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from anchorlab.anchors import AnchorGenerator, grid_points
from anchorlab.assign import BACKGROUND, FCOS_REGRESS_RANGES, IGNORE, grid_assign
from anchorlab.config import Config
from anchorlab.models.build import build_anchor_generator
from anchorlab.report import sparse

__all__ = ["STRATEGIES", "ChunkOut", "Geometry", "fcos_ranges", "grid_size_ranges", "run_strategy"]

STRATEGIES: tuple[str, ...] = ("max_iou", "free_anchor", "fcos", "centernet", "grid")
CENTERNET_STRIDE = 4
FCOS_CENTER_SAMPLING = 1.5


def fcos_ranges(min_level: int, max_level: int) -> list[tuple[float, float]]:
    """``FCOS_REGRESS_RANGES`` of P3..P7 for the config's levels (``(4 s, 8 s)`` outside P3..P7), the first
    opened down to 0 and the last up to infinity so that every object has a level."""
    out = [
        FCOS_REGRESS_RANGES[lv - 3] if 3 <= lv <= 7 else (4.0 * 2**lv, 8.0 * 2**lv)
        for lv in range(min_level, max_level + 1)
    ]
    out[0], out[-1] = (0.0, out[0][1]), (out[-1][0], math.inf)
    return [(float(lo), float(hi)) for lo, hi in out]


def grid_size_ranges(min_level: int, max_level: int) -> list[tuple[float, float]]:
    """Ranges of ``max(w, h)`` per level for the grid strategy: level ``l`` takes ``[8 s_{l-1}, 8 s_l)``,
    the first from 0 and the last to infinity (``YOLO_SIZE_RANGES`` for strides 8, 16, 32)."""
    strides = [2**lv for lv in range(min_level, max_level + 1)]
    bounds = [0.0] + [8.0 * s for s in strides[:-1]] + [math.inf]
    return list(itertools.pairwise(bounds))


@dataclass
class Geometry:
    """Priors of one padded image size ``(H, W)`` (multiples of the largest stride)."""

    cfg: Config
    padded: tuple[int, int]
    device: torch.device
    dtype: torch.dtype = torch.float32
    gen: AnchorGenerator = field(init=False)

    def __post_init__(self) -> None:
        m = self.cfg.model
        self.levels = list(range(m.fpn.min_level, m.fpn.max_level + 1))
        self.strides = [2**lv for lv in self.levels]
        h, w = self.padded
        self.feature_sizes = [(h // s, w // s) for s in self.strides]
        cells = torch.tensor([fh * fw for fh, fw in self.feature_sizes], device=self.device)
        self.loc_starts = torch.cumsum(cells, 0) - cells  # [L] first location (= point) of each level
        self.num_locations = int(cells.sum())
        self.gen = build_anchor_generator(m)
        self.anchors = self.gen.grid_anchors(self.feature_sizes, self.device, self.dtype)  # [R, 4]
        self.shapes = sparse.anchor_shapes(self.gen, self.feature_sizes, self.device, self.dtype)
        per_loc = torch.tensor(self.gen.num_anchors_per_location(), device=self.device)
        self.prior_starts = torch.cumsum(cells * per_loc, 0) - cells * per_loc
        self.per_location = per_loc
        self.points, self.point_strides = grid_points(
            self.feature_sizes, self.strides, self.device, self.dtype
        )
        self.level_geometry = [
            (s, fh, fw, int(st))
            for s, (fh, fw), st in zip(
                self.strides, self.feature_sizes, self.loc_starts.tolist(), strict=True
            )
        ]
        self.centernet_hw = (h // CENTERNET_STRIDE, w // CENTERNET_STRIDE)

    def level_of_location(self, loc: torch.Tensor) -> torch.Tensor:
        return torch.searchsorted(self.loc_starts, loc, right=True) - 1

    def location_of_anchor(self, prior: torch.Tensor) -> torch.Tensor:
        """Location ``[P]`` (cell over all levels, level-major) of anchor indices ``prior [P]``."""
        lvl = torch.searchsorted(self.prior_starts, prior, right=True) - 1
        return self.loc_starts[lvl] + (prior - self.prior_starts[lvl]) // self.per_location[lvl]


class ChunkOut(NamedTuple):
    """What one strategy did on a chunk. ``pos_*`` are ``[P]``; claims are ``[Q]``."""

    pos_obj: torch.Tensor  # object (chunk index) a positive prior serves
    pos_prior: torch.Tensor  # the prior's index in the strategy's prior order
    claim_img: torch.Tensor
    claim_loc: torch.Tensor  # location within the image (levels concatenated)
    claim_level: torch.Tensor
    claim_obj: torch.Tensor
    ignored: int
    priors: int  # priors of the chunk (images x priors per image)
    per_object: dict[str, torch.Tensor]  # extra [N] float statistics
    scalars: dict[str, int]  # extra counts


def _anchor_claims(geo: Geometry, img: torch.Tensor, prior: torch.Tensor, obj: torch.Tensor) -> tuple:
    loc = geo.location_of_anchor(prior)
    return img, loc, geo.level_of_location(loc), obj


def _max_iou(geo, boxes, img, crowd, crowd_img, num_images, pairs) -> ChunkOut:
    a = geo.cfg.model.assign
    num_priors = geo.anchors.shape[0]
    ukey, matched = sparse.resolve_max_iou(
        pairs, img, num_priors, pos_iou=a.pos_iou, neg_iou=a.neg_iou, low_quality=a.low_quality
    )
    pos = matched >= 0
    pimg, pprior, pobj = ukey[pos] // num_priors, ukey[pos] % num_priors, matched[pos]
    ignored = int((matched == IGNORE).sum())
    if crowd.shape[0]:
        covered = sparse.crowd_covered_anchors(geo.anchors, geo.shapes, crowd, crowd_img, a.crowd_ioa)
        ignored += int((~torch.isin(covered, ukey[matched != BACKGROUND])).sum())
    return ChunkOut(
        pobj, pprior, *_anchor_claims(geo, pimg, pprior, pobj), ignored, num_images * num_priors, {}, {}
    )


def _free_anchor(geo, boxes, img, crowd, crowd_img, num_images, pairs) -> ChunkOut:
    num_priors, n = geo.anchors.shape[0], boxes.shape[0]
    k = min(geo.cfg.model.free_anchor.bag_size, num_priors)
    bag = sparse.free_anchor_bags(pairs, n, k)
    bobj, bprior, biou = pairs.obj[bag], pairs.prior[bag], pairs.iou[bag]
    pimg = img[bobj]
    iou_sum = torch.zeros(n, device=boxes.device, dtype=torch.float64).index_add_(0, bobj, biou.double())
    good = torch.bincount(bobj[biou >= 0.5], minlength=n).double()
    _, shared = torch.unique(pimg * num_priors + bprior, return_counts=True)
    return ChunkOut(
        bobj, bprior, *_anchor_claims(geo, pimg, bprior, bobj), 0, num_images * num_priors,
        {"bag_mean_iou": iou_sum / max(k, 1), "bag_low_iou_share": (k - good) / max(k, 1)},
        {"anchors_in_2plus_bags": int((shared >= 2).sum()), "bag_anchors": int(shared.numel())},
    )  # fmt: skip


def _fcos(geo, boxes, img, crowd, crowd_img, num_images, pairs) -> ChunkOut:
    m = geo.cfg.model.fpn
    ranges = torch.tensor(fcos_ranges(m.min_level, m.max_level), device=boxes.device, dtype=boxes.dtype)
    obj, point, area = sparse.fcos_pairs(
        geo.points, geo.point_strides, geo.level_geometry, ranges, boxes, radius=FCOS_CENTER_SAMPLING
    )
    num_points = geo.points.shape[0]
    ukey, winner, _ = sparse.resolve_fcos(obj, point, area, img, num_points)
    ignored = 0
    if crowd.shape[0]:
        inside = sparse.fcos_crowd_points(geo.level_geometry, geo.points, crowd, crowd_img)
        ignored = int((~torch.isin(inside, ukey)).sum())
    claims = (img[obj], point, geo.level_of_location(point), obj)  # every candidate claims its point
    return ChunkOut(winner, ukey % num_points, *claims, ignored, num_images * num_points, {}, {})


def _centernet(geo, boxes, img, crowd, crowd_img, num_images, pairs) -> ChunkOut:
    out_h, out_w = geo.centernet_hw
    index, mask = sparse.centernet_cells(boxes, geo.centernet_hw, CENTERNET_STRIDE)
    obj = torch.nonzero(mask).reshape(-1)
    key = img[obj] * (out_h * out_w) + index[obj]
    _, inv, counts = torch.unique(key, return_inverse=True, return_counts=True)
    claims = (img[obj], index[obj], torch.zeros_like(obj), obj)
    return ChunkOut(
        obj, index[obj], *claims, 0, num_images * out_h * out_w, {},
        {"collided_objects": int((counts[inv] >= 2).sum())},
    )  # fmt: skip


def _grid(geo, boxes, img, crowd, crowd_img, num_images, pairs) -> ChunkOut:
    m = geo.cfg.model.fpn
    counts = torch.bincount(img, minlength=num_images).tolist()
    ranges = grid_size_ranges(m.min_level, m.max_level)
    ga = grid_assign(list(torch.split(boxes, counts)), geo.feature_sizes, geo.strides, size_ranges=ranges)
    valid = (
        torch.arange(ga.cell_of_gt.shape[1], device=boxes.device)[None]
        < torch.tensor(counts, device=boxes.device)[:, None]
    )
    cell, level = ga.cell_of_gt[valid], ga.level_of_gt[valid]  # [N], flat order
    won = torch.nonzero(cell >= 0).reshape(-1)
    # the cell each object claims on its size level (as grid_assign's first round computes it)
    obj = torch.nonzero(level >= 0).reshape(-1)
    lvl = level[obj]
    stride = torch.tensor(geo.strides, device=boxes.device, dtype=boxes.dtype)[lvl]
    fh = torch.tensor([h for h, _ in geo.feature_sizes], device=boxes.device)[lvl]
    fw = torch.tensor([w for _, w in geo.feature_sizes], device=boxes.device)[lvl]
    c = (boxes[obj, :2] + boxes[obj, 2:]) / 2
    gx = torch.minimum((c[:, 0] / stride).floor().long().clamp(min=0), fw - 1)
    gy = torch.minimum((c[:, 1] / stride).floor().long().clamp(min=0), fh - 1)
    claims = (img[obj], geo.loc_starts[lvl] + gy * fw + gx, lvl, obj)
    return ChunkOut(won, cell[won], *claims, 0, num_images * geo.num_locations, {}, {})


_RUNNERS = {
    "max_iou": _max_iou,
    "free_anchor": _free_anchor,
    "fcos": _fcos,
    "centernet": _centernet,
    "grid": _grid,
}


def run_strategy(
    name: str,
    geo: Geometry,
    boxes: torch.Tensor,
    img: torch.Tensor,
    crowd: torch.Tensor,
    crowd_img: torch.Tensor,
    num_images: int,
    pairs: sparse.AnchorPairs | None = None,
) -> ChunkOut:
    """Run strategy ``name`` on a chunk; anchor strategies need ``pairs`` from ``sparse.anchor_pairs``."""
    return _RUNNERS[name](geo, boxes, img, crowd, crowd_img, num_images, pairs)
