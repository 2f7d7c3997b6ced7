"""A synthetic detection dataset: shapes on textured backgrounds, written as PNGs + COCO JSON.

The class of an object is its SHAPE (rectangle, ellipse, triangle, cross, diamond, star, hexagon, arrow);
colour (from one class-independent palette), fill (solid or outlined), aspect ratio (1:3..3:1) and
orientation vary independently of it. Backgrounds are a colour gradient plus low-frequency noise plus
pixel noise. Category ids are ``10, 20, 30, ...`` (deliberately not ``0..K-1``). One ``numpy`` Generator
seeded by ``seed`` draws everything, so the same arguments give byte-identical files.

``crowded=True`` puts the centres of 2-3 overlapping objects into one stride-16 cell of each image, the
case where assignment strategies (max-IoU, FCOS, centre-cell grids) disagree.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter

from anchorlab.data.coco import write_coco
from anchorlab.data.core import Category, DetectionSet, ImageRecord

__all__ = ["SHAPES", "SyntheticPaths", "make_synthetic"]

SHAPES = ("rectangle", "ellipse", "triangle", "cross", "diamond", "star", "hexagon", "arrow")
PALETTE = np.array(
    [(230, 60, 50), (40, 160, 70), (50, 90, 220), (240, 200, 40), (170, 60, 200), (30, 190, 200),
     (250, 130, 30), (245, 245, 245), (25, 25, 25), (150, 90, 40)],
    dtype=np.float64,
)  # fmt: skip
CELL = 16  # the stride whose cells crowded mode fills


class SyntheticPaths(NamedTuple):
    root: Path
    train: Path
    val: Path
    images: Path


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """``[size, size, 3]`` float: gradient between two mid-tone colours + low-frequency + pixel noise."""
    c0, c1 = rng.uniform(50, 200, 3), rng.uniform(50, 200, 3)
    theta = rng.uniform(0, 2 * np.pi)
    t = np.linspace(-0.5, 0.5, size)
    ramp = np.cos(theta) * t[None, :] + np.sin(theta) * t[:, None] + 0.5  # [size, size] in ~0..1
    img = c0 + (c1 - c0) * ramp[..., None]
    grid = rng.normal(0, 14, (6, 6, 3))  # low-frequency noise, bilinearly upsampled
    idx = np.linspace(0, 5, size)
    i0 = np.minimum(idx.astype(int), 4)
    f = (idx - i0)[:, None, None]
    rows = grid[i0] * (1 - f) + grid[i0 + 1] * f  # [size, 6, 3]
    fx = f.transpose(1, 0, 2)
    low = rows[:, i0] * (1 - fx) + rows[:, i0 + 1] * fx
    return img + low + rng.normal(0, 4, (size, size, 3))


def _polygon(shape: str, box: np.ndarray, flip: int) -> list[tuple[float, float]]:
    """Vertices of ``shape`` filling ``box`` (x1, y1, x2, y2, pixel centres); ``flip`` 0..3 turns it."""
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    if shape == "triangle":
        pts = [(-1, 1), (1, 1), (0, -1)]
    elif shape == "diamond":
        pts = [(0, -1), (1, 0), (0, 1), (-1, 0)]
    elif shape == "cross":
        a = 1 / 3
        pts = [(-a, -1), (a, -1), (a, -a), (1, -a), (1, a), (a, a), (a, 1), (-a, 1), (-a, a), (-1, a),
               (-1, -a), (-a, -a)]  # fmt: skip
    elif shape == "star":
        ang = np.pi * (np.arange(10) / 5 - 0.5)
        rad = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        pts = list(zip(rad * np.cos(ang), rad * np.sin(ang), strict=True))
    elif shape == "hexagon":
        pts = [(-0.5, -1), (0.5, -1), (1, 0), (0.5, 1), (-0.5, 1), (-1, 0)]
    else:  # arrow, pointing right before the flip
        pts = [(-1, -0.35), (0.1, -0.35), (0.1, -1), (1, 0), (0.1, 1), (0.1, 0.35), (-1, 0.35)]
    p = np.asarray(pts, np.float64)
    if flip % 2:
        p = -p  # upside down / pointing left
    if flip >= 2:
        p = p[:, ::-1]  # turned by 90 degrees
    lo, hi = p.min(0), p.max(0)
    p = (p - lo) / (hi - lo)  # fill the box exactly, so the box is tight
    return [(x1 + u * w, y1 + v * h) for u, v in zip(p[:, 0], p[:, 1], strict=True)]


def _draw(im: Image.Image, shape: str, box: np.ndarray, colour: tuple, width: int, flip: int) -> None:
    """Draw into integer ``box`` [x1, y1, x2, y2) (x2, y2 exclusive); ``width`` 0 = solid, else an outline
    of that many pixels inside the shape (the filled mask minus its erosion: exact for concave shapes)."""
    inner = np.array([box[0], box[1], box[2] - 1, box[3] - 1], np.float64)
    mask = Image.new("L", im.size, 0)
    draw = ImageDraw.Draw(mask)
    if shape == "rectangle":
        draw.rectangle(inner.tolist(), fill=255)
    elif shape == "ellipse":
        draw.ellipse(inner.tolist(), fill=255)
    else:
        draw.polygon(_polygon(shape, inner, flip), fill=255)
    if width:  # erode only around the box (crop pads with zeros outside the image)
        pad = width + 1
        x1, y1, x2, y2 = (int(v) for v in box)
        region = mask.crop((x1 - pad, y1 - pad, x2 + pad, y2 + pad))
        region = ImageChops.subtract(region, region.filter(ImageFilter.MinFilter(2 * width + 1)))
        mask = Image.new("L", im.size, 0)
        mask.paste(region, (x1 - pad, y1 - pad))
    im.paste(colour, mask=mask)


def _layout(rng, size, n, lo, hi, crowded) -> np.ndarray:
    """``[n, 4]`` integer xyxy boxes in ``size x size``; sides log-uniform in ``lo..hi``, aspect 1:3..3:1."""
    side = np.exp(rng.uniform(np.log(lo), np.log(hi), n))
    ratio = np.exp(rng.uniform(np.log(1 / 3), np.log(3), n))
    w = np.clip(np.round(side * np.sqrt(ratio)), 2, size).astype(int)
    h = np.clip(np.round(side / np.sqrt(ratio)), 2, size).astype(int)
    boxes = np.zeros((n, 4), int)
    k_crowd = min(n, int(rng.integers(2, 4))) if crowded else 0
    cell = rng.integers(1, max(size // CELL - 1, 2), 2) * CELL  # top-left of the shared cell
    for k in range(n):
        for _ in range(20):  # avoid heavy overlaps outside the crowd (rejection sampling)
            if k < k_crowd:
                c = cell + rng.integers(3, CELL - 2, 2)
                x1, y1 = np.clip(c - [w[k] // 2, h[k] // 2], 0, [size - w[k], size - h[k]])
            else:
                x1, y1 = rng.integers(0, size - w[k] + 1), rng.integers(0, size - h[k] + 1)
            b = np.array([x1, y1, x1 + w[k], y1 + h[k]])
            if k < k_crowd or k == 0:
                break
            iw = np.clip(np.minimum(b[2], boxes[:k, 2]) - np.maximum(b[0], boxes[:k, 0]), 0, None)
            ih = np.clip(np.minimum(b[3], boxes[:k, 3]) - np.maximum(b[1], boxes[:k, 1]), 0, None)
            if (iw * ih / (w[k] * h[k])).max() < 0.25:
                break
        boxes[k] = b
    return boxes


def make_synthetic(
    out_dir: str | os.PathLike,
    images: int = 200,
    seed: int = 0,
    size: int = 128,
    classes: int = 3,
    min_object: int = 16,
    max_object: int = 64,
    objects: tuple[int, int] = (1, 4),
    crowded: bool = False,
    val_fraction: float = 0.25,
    val_images: int | None = None,
    progress: Callable[[int], None] | None = None,
    overwrite: bool = False,
) -> SyntheticPaths:
    """Write ``images`` PNGs (``size x size``) to ``out_dir/images`` and ``train.json`` / ``val.json``.

    ``classes`` shapes (1..8, see ``SHAPES``); object sides log-uniform in ``min_object..max_object``
    pixels; ``objects=(lo, hi)`` objects per image; the last ``val_images`` (default
    ``round(images * val_fraction)``) images form the validation split. ``progress(i)`` is called
    after each image. Returns the paths. Existing files it would write (``train.json``, ``val.json``,
    ``images/img_*.png``) are a ``FileExistsError`` unless ``overwrite``.
    """
    if not 1 <= classes <= len(SHAPES):
        raise ValueError(f"classes must be in 1..{len(SHAPES)}, got {classes}")
    if images < 1 or size < 32:
        raise ValueError(f"need images >= 1 and size >= 32, got images={images}, size={size}")
    if not 2 <= min_object <= max_object:
        raise ValueError(f"need 2 <= min_object <= max_object, got {min_object}, {max_object}")
    if not 0 <= objects[0] <= objects[1]:
        raise ValueError(f"objects must be (min, max) with 0 <= min <= max, got {objects}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n_val = round(images * val_fraction) if val_images is None else val_images
    if not 0 <= n_val < images:
        raise ValueError(f"val_images must be in 0..{images - 1}, got {n_val}")
    root = Path(out_dir)
    img_dir = root / "images"
    targets = [root / "train.json", root / "val.json", *(img_dir / f"img_{i:06d}.png" for i in range(images))]
    existing = [t for t in targets if t.exists()]
    if existing and not overwrite:
        raise FileExistsError(
            f"{root} already holds {len(existing)} file(s) the synthetic data would replace (first: "
            f"{existing[0]}): choose an empty folder, or overwrite explicitly"
        )
    img_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    max_object = min(max_object, size)
    records: list[ImageRecord] = []
    next_ann = 1
    for i in range(images):
        n = int(rng.integers(objects[0], objects[1] + 1))
        n = max(n, 2) if crowded else n
        boxes = _layout(rng, size, n, min_object, max_object, crowded)
        labels = rng.integers(0, classes, n)
        arr = _background(rng, size)
        im = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
        bg_mean = arr.mean(axis=(0, 1))
        for k in np.argsort(-(boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]), kind="stable"):
            dist = np.abs(PALETTE - bg_mean).sum(1)
            choices = np.flatnonzero(dist > 120)  # colours that stand out from this background
            colour = PALETTE[rng.choice(choices) if len(choices) else int(dist.argmax())]
            short = min(boxes[k, 2] - boxes[k, 0], boxes[k, 3] - boxes[k, 1])
            width = int(max(2, short // 6)) if rng.random() < 0.35 and short >= 10 else 0
            shape = SHAPES[int(labels[k])]
            _draw(im, shape, boxes[k], tuple(int(c) for c in colour), width, int(rng.integers(0, 4)))
        pix = np.asarray(im, np.float64) + rng.normal(0, 3, (size, size, 3))
        file = img_dir / f"img_{i:06d}.png"
        Image.fromarray(np.clip(np.round(pix), 0, 255).astype(np.uint8)).save(file, compress_level=1)
        records.append(
            ImageRecord(
                id=i + 1, file=file, width=size, height=size, boxes=boxes.astype(np.float32),
                labels=labels.astype(np.int64), ann_ids=np.arange(next_ann, next_ann + n, dtype=np.int64),
            )
        )  # fmt: skip
        next_ann += n
        if progress is not None:
            progress(i + 1)
    cats = [Category(10 * (k + 1), SHAPES[k], "shape") for k in range(classes)]
    n_train = images - n_val
    train = write_coco(DetectionSet(records[:n_train], cats), root / "train.json", images_root=img_dir)
    val = write_coco(DetectionSet(records[n_train:], cats), root / "val.json", images_root=img_dir)
    return SyntheticPaths(root, train, val, img_dir)
