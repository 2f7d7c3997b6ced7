"""Mosaic augmentation: one training sample made of four images in a 2x2 layout.

With probability ``p`` a sample becomes a mosaic of its own image and three other images of the training
set drawn at random, on a canvas of the sample's own size (so the resize / flip / jitter transforms that
follow, and the batch shapes, are unchanged). A random centre ``(xc, yc)`` in the middle half of the canvas
splits it into four quadrants; the four images go to the quadrants in a random order. Each image is
scaled (keeping its aspect ratio) by the smallest factor that covers its quadrant and a random window of
it the quadrant's size is cut out (``torchvision.transforms.v2.functional.resized_crop`` on the image and
on ``tv_tensors.BoundingBoxes``), so the canvas has no empty border and objects shrink by the quadrant's
share of the canvas.

Boxes follow their pixels. An object is kept when at least ``min_visible`` of its (scaled) area is still
inside its quadrant and both sides are at least ``min_box_size`` pixels; crowd regions are cut the same
way and kept while both sides are at least ``min_box_size``. Randomness comes from torch's global RNG, which
the loader seeds per sample, so a mosaic is reproducible (and resumable) like any other augmentation.
An unreadable image drawn for a tile is replaced by the next readable one, with a warning.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

from anchorlab.data.core import DataError
from anchorlab.data.loader import DetectionDataset, _Unreadable

__all__ = ["Mosaic", "mosaic_tiles"]

Target = dict[str, Any]
#: One mosaic input: ``(image uint8 [3, H, W], boxes [M, 4] xyxy, labels [M], crowd [C, 4] xyxy)``.
Tile = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def _area(boxes: torch.Tensor) -> torch.Tensor:
    return (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)


def _min_side(boxes: torch.Tensor) -> torch.Tensor:
    return torch.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])


def _place(
    tile: Tile, quadrant: tuple[int, int, int, int], min_visible: float, min_box_size: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Cut ``tile`` to fill ``quadrant = (top, left, height, width)`` of the canvas.

    Returns ``(pixels [3, qh, qw], boxes [M', 4], labels [M'], crowd [C', 4], dropped)``, boxes in canvas
    coordinates."""
    image, boxes, labels, crowd = tile
    top, left, qh, qw = quadrant
    h, w = int(image.shape[-2]), int(image.shape[-1])
    scale = max(qh / h, qw / w)
    ch, cw = min(h, max(1, round(qh / scale))), min(w, max(1, round(qw / scale)))
    y0 = int(torch.randint(h - ch + 1, ()).item())
    x0 = int(torch.randint(w - cw + 1, ()).item())
    size = [qh, qw]
    pixels = F.resized_crop(tv_tensors.Image(image), y0, x0, ch, cw, size, antialias=True)

    def cut(b: torch.Tensor) -> torch.Tensor:
        bb = tv_tensors.BoundingBoxes(b, format="XYXY", canvas_size=(h, w))
        out = F.resized_crop(bb, y0, x0, ch, cw, size)  # translated, clamped to the window, resized
        return out.as_subclass(torch.Tensor) + torch.tensor([left, top, left, top], dtype=b.dtype)

    placed, placed_crowd = cut(boxes), cut(crowd)
    full_area = _area(boxes) * (qh / ch) * (qw / cw)
    keep = (_area(placed) >= min_visible * full_area) & (_min_side(placed) >= min_box_size)
    keep &= full_area > 0
    keep_crowd = _min_side(placed_crowd) >= min_box_size
    dropped = int(keep.numel() - keep.sum())
    return pixels.as_subclass(torch.Tensor), placed[keep], labels[keep], placed_crowd[keep_crowd], dropped


def mosaic_tiles(
    tiles: list[Tile],
    size: tuple[int, int],
    *,
    min_visible: float = 0.25,
    min_box_size: float = 1.0,
    center_range: tuple[float, float] = (0.25, 0.75),
) -> tuple[torch.Tensor, dict[str, Any]]:
    """A 2x2 mosaic of four tiles on a ``size = (H, W)`` canvas (H, W >= 2), tiles in quadrant order
    top-left, top-right, bottom-left, bottom-right. Returns ``(image uint8 [3, H, W], {"boxes" [M, 4],
    "labels" [M], "crowd" [C, 4], "dropped": objects removed})``; draws the centre and the crop windows
    from torch's global RNG."""
    if len(tiles) != 4:
        raise ValueError(f"a mosaic needs 4 tiles, got {len(tiles)}")
    height, width = size
    if height < 2 or width < 2:
        raise ValueError(f"a mosaic canvas needs at least 2x2 pixels, got {height}x{width}")
    lo, hi = center_range
    u = lo + (hi - lo) * torch.rand(2)
    xc = min(max(round(float(u[0]) * width), 1), width - 1)
    yc = min(max(round(float(u[1]) * height), 1), height - 1)
    quadrants = [
        (0, 0, yc, xc),
        (0, xc, yc, width - xc),
        (yc, 0, height - yc, xc),
        (yc, xc, height - yc, width - xc),
    ]
    canvas = torch.empty((3, height, width), dtype=torch.uint8)
    parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    dropped = 0
    for tile, quadrant in zip(tiles, quadrants, strict=True):
        pixels, boxes, labels, crowd, lost = _place(tile, quadrant, min_visible, min_box_size)
        top, left, qh, qw = quadrant
        canvas[:, top : top + qh, left : left + qw] = pixels
        parts.append((boxes, labels, crowd))
        dropped += lost
    boxes, labels, crowd = (torch.cat(p) for p in zip(*parts, strict=True))
    return canvas, {"boxes": boxes, "labels": labels, "crowd": crowd, "dropped": dropped}


def _other_indices(index: int, n: int, count: int = 3) -> list[int]:
    """``count`` distinct random indices of ``0..n-1`` other than ``index`` (repeated when ``n <= count``),
    in O(count) draws whatever ``n``."""
    taken, drawn = [index], []
    for _ in range(min(count, n - 1)):
        k = int(torch.randint(n - len(taken), ()).item())
        for t in sorted(taken):  # the k-th index that is not taken yet
            k += k >= t
        taken.append(k)
        drawn.append(k)
    drawn = drawn or [index]
    return [drawn[i % len(drawn)] for i in range(count)]


class Mosaic:
    """The dataset hook (``DetectionDataset(..., mosaic=Mosaic(p))``): with probability ``p`` replace the
    sample ``(image uint8 [3, H, W], target)`` of image ``index`` by a mosaic of it and three other
    (distinct) images of ``dataset`` on an ``H x W`` canvas. Other target keys (``image_id``, sizes)
    stay the sample's."""

    def __init__(
        self,
        p: float,
        *,
        min_visible: float = 0.25,
        min_box_size: float = 1.0,
        center_range: tuple[float, float] = (0.25, 0.75),
    ) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"data.mosaic must be a probability in [0, 1], got {p}")
        if not 0.0 <= min_visible <= 1.0:
            raise ValueError(f"min_visible must be in [0, 1], got {min_visible}")
        if not 0.0 < center_range[0] <= center_range[1] < 1.0:
            raise ValueError(f"center_range must satisfy 0 < lo <= hi < 1, got {center_range}")
        self.p, self.min_visible, self.min_box_size = p, min_visible, min_box_size
        self.center_range = center_range

    def _tile(self, dataset: DetectionDataset, index: int) -> Tile:
        """Image ``index`` (or the next readable one) with its annotation."""
        n = len(dataset)
        for attempt in range(n):
            j = (index + attempt) % n
            try:
                image = dataset.read_image(j)
            except _Unreadable as err:
                if dataset.strict:
                    raise DataError(f"cannot read image {dataset.data.images[j].file}: {err}") from err
                warnings.warn(
                    f"mosaic: skipping unreadable image {dataset.data.images[j].file}: {err}",
                    RuntimeWarning,
                    stacklevel=2,
                )
                continue
            record = dataset.data.images[j]
            return (
                image,
                torch.as_tensor(record.boxes, dtype=torch.float32).reshape(-1, 4),
                torch.as_tensor(record.labels, dtype=torch.int64).reshape(-1),
                torch.as_tensor(record.crowd, dtype=torch.float32).reshape(-1, 4),
            )
        raise DataError(f"mosaic: no readable image among the {n} images of the dataset")

    def __call__(
        self, dataset: DetectionDataset, index: int, image: torch.Tensor, target: Target
    ) -> tuple[torch.Tensor, Target]:
        height, width = int(image.shape[-2]), int(image.shape[-1])
        if self.p <= 0 or float(torch.rand(())) >= self.p or height < 2 or width < 2:
            return image, target
        own = (image, target["boxes"], target["labels"], target["crowd"])
        tiles = [own, *(self._tile(dataset, k) for k in _other_indices(index, len(dataset)))]
        order = torch.randperm(4).tolist()
        canvas, placed = mosaic_tiles(
            [tiles[i] for i in order],
            (height, width),
            min_visible=self.min_visible,
            min_box_size=self.min_box_size,
            center_range=self.center_range,
        )
        dropped = int(target.get("dropped", 0)) + placed.pop("dropped")
        return canvas, {**target, **placed, "dropped": dropped}
