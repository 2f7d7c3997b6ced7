"""Priors on feature-map grids: anchor boxes (RetinaNet, FreeAnchor, RPN) and points (FCOS, CenterNet).

Order (pinned by ``tests/test_anchors.py``): all levels concatenated **level-major**, then
**row-major** ``(y, x)`` inside a level, then the **anchor index** at a location. Heads must flatten
their outputs ``[B, A*C, H, W] -> [B, H*W*A, C]`` in exactly this order (permute to ``[B, H, W, A, C]``).

Anchor index ``a`` at a location enumerates ``sizes x aspect_ratios`` size-major:
``a = size_index * len(ratios) + ratio_index``. An aspect ratio is ``h / w``; the area is kept at
``size**2``, so ``w = size / sqrt(ratio)`` and ``h = size * sqrt(ratio)``. Base anchors are not rounded
(detectron2's choice) unless ``round_base`` (torchvision rounds their corners to integers and
enumerates ratio-major; imported torchvision models set ``round_base`` and reorder their head).

Grid offset: the anchor centre of cell ``(y, x)`` is ``((x + offset) * stride, (y + offset) * stride)``.
Anchors default to ``offset=0`` (the cell's top-left corner) like torchvision and detectron2's default;
points default to ``offset=0.5`` (the cell centre) like FCOS. Both are keyword arguments.

Shape legend (docs/architecture.md): R priors, L levels.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence

import torch

__all__ = ["AnchorGenerator", "canvas_strides", "grid_points"]

_CACHE_SIZE = 16
_FeatureSizes = tuple[tuple[int, int], ...]
_points_cache: OrderedDict[tuple, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()


def _normalise_sizes(feature_sizes: Sequence[Sequence[int]]) -> _FeatureSizes:
    out = []
    for hw in feature_sizes:
        h, w = (int(v) for v in hw)
        if h < 0 or w < 0:
            raise ValueError(f"feature sizes must be non-negative (H, W) pairs, got {tuple(hw)}")
        out.append((h, w))
    return tuple(out)


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    """Compute grids in float64 when asked for it, else float32 (exact for pixel coordinates < 2**24)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def canvas_strides(feature_sizes: Sequence[Sequence[int]], canvas: Sequence[int]) -> list[tuple[int, int]]:
    """torchvision's grid spacing per level: ``(canvas_h // H_l, canvas_w // W_l)`` for a padded canvas
    ``(H, W)``; the true stride where the canvas is a multiple of it, less on coarse levels otherwise
    (e.g. 61 instead of 64 for P6 of an 800-px-high canvas)."""
    return [(int(canvas[0]) // int(h), int(canvas[1]) // int(w)) for h, w in feature_sizes]


def _grid_centres(
    height: int,
    width: int,
    stride: float | tuple[float, float],
    offset: float,
    device: torch.device,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Centres ``x, y`` of shape ``[H*W]`` of one level's cells, row-major ``(y, x)``; ``stride`` is one
    number or ``(stride_y, stride_x)``."""
    stride_y, stride_x = stride if isinstance(stride, tuple) else (stride, stride)
    xs = (torch.arange(width, device=device, dtype=dtype) + offset) * stride_x
    ys = (torch.arange(height, device=device, dtype=dtype) + offset) * stride_y
    cy, cx = torch.meshgrid(ys, xs, indexing="ij")
    return cx.reshape(-1), cy.reshape(-1)


def _cache_put(cache: OrderedDict, key: tuple, value) -> None:
    cache[key] = value
    cache.move_to_end(key)
    while len(cache) > _CACHE_SIZE:
        cache.popitem(last=False)


class AnchorGenerator:
    """Anchor boxes for a feature pyramid.

    Args:
        sizes: per level, the anchor sizes (square root of the area, pixels of the input image).
        aspect_ratios: per level, the ratios ``h / w``; a single entry is broadcast to every level.
        strides: per level, the feature stride in input pixels.
        offset: grid offset in cells (0 = top-left of the cell, 0.5 = its centre).
        round_base: round the base anchors' corners to integers (torchvision's AnchorGenerator).

    ``grid_anchors`` returns ``[R, 4]`` xyxy anchors in the fixed order of the module docstring and
    caches them per ``(feature sizes, device, dtype)`` (a small LRU): the returned tensor is shared,
    so never modify it in place.
    """

    def __init__(
        self,
        sizes: Sequence[Sequence[float]],
        aspect_ratios: Sequence[Sequence[float]],
        strides: Sequence[int],
        offset: float = 0.0,
        round_base: bool = False,
    ) -> None:
        sizes = [tuple(float(s) for s in level) for level in sizes]
        ratios = [tuple(float(r) for r in level) for level in aspect_ratios]
        if len(ratios) == 1 and len(sizes) > 1:
            ratios = ratios * len(sizes)
        if not (len(sizes) == len(ratios) == len(strides)) or not sizes:
            raise ValueError(
                f"need one entry per level in sizes, aspect_ratios and strides, got {len(sizes)}, "
                f"{len(ratios)} and {len(strides)} levels"
            )
        for name, levels in (("sizes", sizes), ("aspect_ratios", ratios)):
            if any(not level or any(v <= 0 or not math.isfinite(v) for v in level) for level in levels):
                raise ValueError(
                    f"{name} must be non-empty lists of positive numbers per level, got {levels}"
                )
        if any(s <= 0 for s in strides):
            raise ValueError(f"strides must be positive, got {list(strides)}")
        self.sizes: tuple[tuple[float, ...], ...] = tuple(sizes)
        self.aspect_ratios: tuple[tuple[float, ...], ...] = tuple(ratios)
        self.strides: tuple[int, ...] = tuple(int(s) for s in strides)
        self.offset = float(offset)
        self.round_base = bool(round_base)
        self._cache: OrderedDict[tuple, torch.Tensor] = OrderedDict()

    @classmethod
    def retinanet(
        cls,
        min_level: int = 3,
        max_level: int = 7,
        octave_base_scale: float = 4,
        scales_per_octave: int = 3,
        aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
        offset: float = 0.0,
        round_base: bool = False,
    ) -> AnchorGenerator:
        """RetinaNet anchors: at level ``l`` (stride ``2**l``) sizes ``octave_base_scale * 2**l * 2**(i / n)``
        for ``i < n = scales_per_octave`` (32, 40.3, 50.8 at P3 by default), 9 anchors per location."""
        if min_level > max_level or scales_per_octave < 1:
            raise ValueError(
                f"need min_level <= max_level and scales_per_octave >= 1, got {min_level}, {max_level}, "
                f"{scales_per_octave}"
            )
        levels = range(min_level, max_level + 1)
        strides = [2**level for level in levels]
        octaves = [2 ** (i / scales_per_octave) for i in range(scales_per_octave)]
        sizes = [[octave_base_scale * s * o for o in octaves] for s in strides]
        return cls(sizes, [list(aspect_ratios)] * len(strides), strides, offset=offset, round_base=round_base)

    def __repr__(self) -> str:
        return (
            f"AnchorGenerator(sizes={self.sizes}, aspect_ratios={self.aspect_ratios}, "
            f"strides={self.strides}, offset={self.offset}, round_base={self.round_base})"
        )

    @property
    def num_levels(self) -> int:
        return len(self.strides)

    def num_anchors_per_location(self) -> list[int]:
        """``A_l`` per level: ``len(sizes[l]) * len(aspect_ratios[l])``."""
        return [len(s) * len(r) for s, r in zip(self.sizes, self.aspect_ratios, strict=True)]

    def base_anchors(
        self, level: int, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        """Anchors ``[A_l, 4]`` xyxy of one level centred at 0, size-major then ratio."""
        size = torch.tensor(self.sizes[level], device=device, dtype=dtype)
        ratio = torch.tensor(self.aspect_ratios[level], device=device, dtype=dtype)
        sqrt_r = ratio.sqrt()
        w = (size[:, None] / sqrt_r[None, :]).reshape(-1)
        h = (size[:, None] * sqrt_r[None, :]).reshape(-1)
        base = torch.stack((-w / 2, -h / 2, w / 2, h / 2), dim=1)
        return base.round() if self.round_base else base

    def _check(self, feature_sizes: Sequence[Sequence[int]]) -> _FeatureSizes:
        sizes = _normalise_sizes(feature_sizes)
        if len(sizes) != self.num_levels:
            raise ValueError(
                f"got {len(sizes)} feature sizes for an AnchorGenerator of {self.num_levels} levels"
            )
        return sizes

    def level_ranges(self, feature_sizes: Sequence[Sequence[int]]) -> list[tuple[int, int]]:
        """``[(start, end)]`` per level: the rows of ``grid_anchors(feature_sizes)`` that belong to it."""
        ranges, start = [], 0
        for (h, w), a in zip(self._check(feature_sizes), self.num_anchors_per_location(), strict=True):
            ranges.append((start, start + h * w * a))
            start += h * w * a
        return ranges

    def grid_anchors(
        self,
        feature_sizes: Sequence[Sequence[int]],
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        grid_strides: Sequence[tuple[int, int]] | None = None,
    ) -> torch.Tensor:
        """Anchors ``[R, 4]`` xyxy for feature maps of sizes ``[(H_l, W_l)]``, ``R = sum H_l W_l A_l``.

        Row ``start_l + (y * W_l + x) * A_l + a`` is anchor ``a`` centred at
        ``((x + offset) * stride_l, (y + offset) * stride_l)``; ``grid_strides`` (per level
        ``(stride_y, stride_x)``, e.g. ``canvas_strides``) replaces ``stride_l`` for the centres.
        """
        sizes = self._check(feature_sizes)
        device = torch.device(device) if device is not None else torch.device("cpu")
        spacing = tuple(grid_strides) if grid_strides is not None else self.strides
        key = (sizes, device, dtype, spacing)
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
        work = _work_dtype(dtype)
        levels = []
        for level, ((h, w), stride) in enumerate(zip(sizes, spacing, strict=True)):
            cx, cy = _grid_centres(h, w, stride, self.offset, device, work)
            shifts = torch.stack((cx, cy, cx, cy), dim=1)  # [H*W, 4]
            base = self.base_anchors(level, device, work)  # [A, 4]
            levels.append((shifts[:, None, :] + base[None, :, :]).reshape(-1, 4))
        anchors = torch.cat(levels, dim=0).to(dtype)
        _cache_put(self._cache, key, anchors)
        return anchors


def grid_points(
    feature_sizes: Sequence[Sequence[int]],
    strides: Sequence[int],
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    offset: float = 0.5,
    grid_strides: Sequence[tuple[int, int]] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Points for anchor-free heads: ``(points [R, 2] as (x, y), point_strides [R])``; ``grid_strides``
    (per level ``(stride_y, stride_x)``) replaces the strides for the points' positions only.

    Same order as the anchors with one prior per location: level-major, then row-major ``(y, x)``;
    point ``start_l + y * W_l + x`` is ``((x + offset) * stride_l, (y + offset) * stride_l)``. FCOS uses
    ``offset=0.5`` (cell centres, the default); CenterNet's peaks use ``offset=0``. Results are cached
    per ``(sizes, strides, offset, device, dtype)``: never modify them in place.
    """
    sizes = _normalise_sizes(feature_sizes)
    if len(sizes) != len(strides):
        raise ValueError(f"got {len(sizes)} feature sizes but {len(strides)} strides")
    device = torch.device(device) if device is not None else torch.device("cpu")
    spacing = tuple(grid_strides) if grid_strides is not None else tuple(int(s) for s in strides)
    key = (sizes, tuple(int(s) for s in strides), float(offset), device, dtype, spacing)
    cached = _points_cache.get(key)
    if cached is not None:
        _points_cache.move_to_end(key)
        return cached
    work = _work_dtype(dtype)
    points, point_strides = [], []
    for (h, w), stride, step in zip(sizes, strides, spacing, strict=True):
        cx, cy = _grid_centres(h, w, step, offset, device, work)
        points.append(torch.stack((cx, cy), dim=1))
        point_strides.append(torch.full((h * w,), float(stride), device=device, dtype=work))
    result = (torch.cat(points).to(dtype), torch.cat(point_strides).to(dtype))
    _cache_put(_points_cache, key, result)
    return result
