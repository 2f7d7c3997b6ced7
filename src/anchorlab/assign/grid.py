"""YOLO-style grid assignment: one cell per object, chosen by size (level) and centre (cell).

Priors are the cells of all levels in the fixed order of :mod:`anchorlab.anchors` (level-major, then
row-major): cell ``(y, x)`` of level ``l`` is prior ``start_l + y * W_l + x`` with ``start_l = sum_{k<l}
H_k W_k``, exactly the order of ``grid_points(feature_sizes, strides)`` with one point per cell.

Rules:

* **Level**: the first level whose size range holds ``s = max(w, h)`` (input pixels), half-open
  ``lo <= s < hi`` so that each size has one level. An object in no range (gaps in ``size_ranges``)
  gets no cell and level -1; it is not counted as a loser.
* **Cell**: ``(floor(cx / stride), floor(cy / stride))``, clamped to the grid.
* **Collisions** (``collision``): when several objects claim one cell,

  - ``"nearest"`` (default, the fix): the object whose centre is nearest the **cell centre**
    ``((x + 0.5) * stride, (y + 0.5) * stride)`` wins (Euclidean distance; ties: the lower object
    index). The result never depends on the order objects are written in.
  - ``"last"``: the object with the **highest index** wins, exactly what a target writer looping over
    the objects in annotation order (``target[cell] = object``) leaves behind: "last writer wins",
    whatever the distances. Reproduces the bug of YOLO-style target builders for experiments.
  - ``"move"``: ``"nearest"``, then the losers move to a neighbour level (below).

  The others are losers: they never appear in ``matched``.
* ``collision="move"`` (also ``move_losers_to_neighbour_level=True``): all first-round losers try the
  **next coarser** level at
  their centre cell there; a cell is free only if no object was placed on it before, and losers
  competing for one free cell are resolved by the same nearest-centre rule. Those still without a
  cell then try the **next finer** level the same way. A moved object never displaces one placed
  earlier. Objects left without a cell are the final losers.

Vectorised: each round computes every object's (cell, distance) at once and resolves the winners of
every cell with two ``scatter_reduce(amin)`` (distance, then index; ``"last"``: one ``amax`` over
the index). Shape legend (docs/architecture.md):
B images, M objects (padded), R cells over all levels, L levels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch

from anchorlab.assign import BACKGROUND
from anchorlab.assign.common import pad_boxes

__all__ = ["COLLISION_POLICIES", "YOLO_SIZE_RANGES", "GridAssignment", "grid_assign"]

#: The collision policies of ``grid_assign`` (``model.grid.collision``).
COLLISION_POLICIES = ("last", "nearest", "move")

#: Default per-level ranges of ``max(w, h)`` for three levels (strides 8, 16, 32), input pixels.
YOLO_SIZE_RANGES: tuple[tuple[float, float], ...] = ((0.0, 64.0), (64.0, 128.0), (128.0, math.inf))


class GridAssignment(NamedTuple):
    """Result of :func:`grid_assign`.

    matched: ``[B, R]`` int64, the object index owning each cell or ``BACKGROUND``.
    level_of_gt: ``[B, M]`` int64, the level the object is placed on (its size level if it lost;
        -1 for padding and objects in no size range).
    cell_of_gt: ``[B, M]`` int64, the object's prior index ``0..R-1``, or -1 when it has none.
    collisions: ``[B]`` int64, number of final losers (objects that lost their cell and, if moving was
        on, found no free neighbour-level cell either).
    losers: ``[B, M]`` bool, the final losers.
    moved: ``[B, M]`` bool, objects placed on a neighbour level after losing their own cell.
    """

    matched: torch.Tensor
    level_of_gt: torch.Tensor
    cell_of_gt: torch.Tensor
    collisions: torch.Tensor
    losers: torch.Tensor
    moved: torch.Tensor


class _Levels(NamedTuple):
    heights: torch.Tensor  # [L] int64
    widths: torch.Tensor  # [L] int64
    starts: torch.Tensor  # [L] int64
    strides: torch.Tensor  # [L] float
    num_priors: int


def _place(
    centres: torch.Tensor, level: torch.Tensor, taken: torch.Tensor, levels: _Levels, last: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """One round: objects with ``level >= 0`` claim their centre cell there unless ``taken [B, R]``; the
    nearest claimant wins each cell (``last``: the highest object index).

    Returns ``(cell [B, M] int64, won [B, M] bool)``; ``cell`` is only meaningful where ``won``.
    """
    num_images, num_objects = level.shape
    lvl = level.clamp(min=0)
    h, w = levels.heights[lvl], levels.widths[lvl]
    stride = levels.strides[lvl]
    gx = torch.minimum((centres[..., 0] / stride).floor().to(torch.int64).clamp(min=0), (w - 1).clamp(min=0))
    gy = torch.minimum((centres[..., 1] / stride).floor().to(torch.int64).clamp(min=0), (h - 1).clamp(min=0))
    cell = levels.starts[lvl] + gy * w + gx
    active = (level >= 0) & (h > 0) & (w > 0)
    if levels.num_priors == 0 or num_objects == 0:
        return cell, active & False
    active &= ~taken.gather(1, cell.clamp(0, levels.num_priors - 1))
    dist = ((gx + 0.5) * stride - centres[..., 0]).square() + ((gy + 0.5) * stride - centres[..., 1]).square()

    dump = num_images * levels.num_priors  # one extra slot for inactive objects
    batch = torch.arange(num_images, device=level.device)[:, None]
    key = torch.where(active, batch * levels.num_priors + cell, dump).reshape(-1)
    obj = torch.arange(num_objects, device=level.device).expand(num_images, num_objects).reshape(-1)
    if last:  # the last writer: the highest index among each cell's claimants
        latest = torch.full((dump + 1,), -1, device=level.device, dtype=torch.int64)
        latest = latest.scatter_reduce(0, key, torch.where(active.reshape(-1), obj, -1), reduce="amax")
        return cell, (active.reshape(-1) & (obj == latest[key])).reshape(num_images, num_objects)
    dist_flat = torch.where(active, dist, math.inf).reshape(-1)
    best = dist.new_full((dump + 1,), math.inf).scatter_reduce(0, key, dist_flat, reduce="amin")
    nearest = active.reshape(-1) & (dist_flat == best[key])
    first = torch.full((dump + 1,), num_objects, device=level.device, dtype=torch.int64)
    first = first.scatter_reduce(0, key, torch.where(nearest, obj, num_objects), reduce="amin")
    won = nearest & (obj == first[key])
    return cell, won.reshape(num_images, num_objects)


def grid_assign(
    gt_boxes: Sequence[torch.Tensor],
    feature_sizes: Sequence[Sequence[int]],
    strides: Sequence[float],
    *,
    size_ranges: Sequence[tuple[float, float]] = YOLO_SIZE_RANGES,
    collision: str = "nearest",
    move_losers_to_neighbour_level: bool = False,
) -> GridAssignment:
    """Assign ``B`` images' objects (list of xyxy ``[M_i, 4]``, input pixels) to grid cells.

    ``feature_sizes`` ``[(H_l, W_l)]`` and ``strides`` describe the levels (finest first),
    ``size_ranges`` one ``(lo, hi)`` of ``max(w, h)`` per level, ``collision`` one of
    ``COLLISION_POLICIES`` (``move_losers_to_neighbour_level=True`` is the older spelling of
    ``"move"``). See the module docstring for the rules.
    """
    if collision not in COLLISION_POLICIES:
        raise ValueError(f"collision {collision!r} is not one of {', '.join(COLLISION_POLICIES)}")
    if move_losers_to_neighbour_level:
        if collision == "last":
            raise ValueError("move_losers_to_neighbour_level=True needs collision 'nearest' or 'move'")
        collision = "move"
    sizes = [tuple(int(v) for v in hw) for hw in feature_sizes]
    if not (len(sizes) == len(strides) == len(size_ranges)) or not sizes:
        raise ValueError(
            f"need one entry per level in feature_sizes, strides and size_ranges, got {len(sizes)}, "
            f"{len(strides)} and {len(size_ranges)}"
        )
    if any(h < 0 or w < 0 for h, w in sizes) or any(s <= 0 for s in strides):
        raise ValueError(
            f"feature sizes must be non-negative and strides positive, got {sizes}, {list(strides)}"
        )
    gt, _, valid = pad_boxes(gt_boxes)
    if not gt.is_floating_point():
        gt = gt.float()
    device = gt.device
    num_images, num_objects = valid.shape
    counts = torch.tensor([h * w for h, w in sizes], device=device, dtype=torch.int64)
    levels = _Levels(
        heights=torch.tensor([h for h, _ in sizes], device=device, dtype=torch.int64),
        widths=torch.tensor([w for _, w in sizes], device=device, dtype=torch.int64),
        starts=torch.cumsum(counts, 0) - counts,
        strides=torch.tensor([float(s) for s in strides], device=device, dtype=gt.dtype),
        num_priors=int(counts.sum()),
    )
    num_levels = len(sizes)

    centres = (gt[..., :2] + gt[..., 2:]) / 2  # [B, M, 2]
    extent = (gt[..., 2:] - gt[..., :2]).amax(dim=-1)  # [B, M]
    bounds = torch.as_tensor(size_ranges, device=device, dtype=gt.dtype).reshape(-1, 2)
    fits = (extent[..., None] >= bounds[:, 0]) & (extent[..., None] < bounds[:, 1])  # [B, M, L]
    size_level = torch.where(fits.any(-1), fits.to(torch.int8).argmax(-1), -1)
    size_level = torch.where(valid, size_level, -1)

    taken = torch.zeros((num_images, levels.num_priors), dtype=torch.bool, device=device)
    cell_of_gt = torch.full((num_images, num_objects), -1, dtype=torch.int64, device=device)
    level_of_gt = size_level.clone()
    cell, won = _place(centres, size_level, taken, levels, last=collision == "last")
    losers = (size_level >= 0) & ~won
    placed = won
    cell_of_gt = torch.where(won, cell, cell_of_gt)
    moved = torch.zeros_like(won)
    if collision == "move":
        for step in (1, -1):  # next coarser, then next finer
            taken = _mark(taken, cell_of_gt, placed)
            target = size_level + step
            retry = losers & (target >= 0) & (target < num_levels)
            cell, won = _place(centres, torch.where(retry, target, -1), taken, levels)
            cell_of_gt = torch.where(won, cell, cell_of_gt)
            level_of_gt = torch.where(won, target, level_of_gt)
            placed, moved, losers = placed | won, moved | won, losers & ~won

    matched = torch.full((num_images, levels.num_priors), BACKGROUND, dtype=torch.int64, device=device)
    if num_objects and levels.num_priors:
        batch = torch.arange(num_images, device=device)[:, None].expand_as(cell_of_gt)
        obj = torch.arange(num_objects, device=device).expand_as(cell_of_gt)
        matched[batch[placed], cell_of_gt[placed]] = obj[placed]
    return GridAssignment(
        matched=matched,
        level_of_gt=level_of_gt,
        cell_of_gt=cell_of_gt,
        collisions=losers.sum(dim=1),
        losers=losers,
        moved=moved,
    )


def _mark(taken: torch.Tensor, cell: torch.Tensor, placed: torch.Tensor) -> torch.Tensor:
    """``taken [B, R]`` with the cells of the ``placed`` objects set."""
    taken = taken.clone()
    batch = torch.arange(taken.shape[0], device=taken.device)[:, None].expand_as(cell)
    taken[batch[placed], cell[placed]] = True
    return taken
