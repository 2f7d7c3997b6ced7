"""Detection transforms on ``torchvision.transforms.v2``: resize by the shortest edge, flip, colour jitter.

A transform is a callable ``(image, target) -> (image, target)``: ``image`` a uint8 ``[3, H, W]`` tensor,
``target`` a dict with ``boxes [M, 4]`` xyxy, ``labels [M]`` and optionally ``crowd [C, 4]`` (ignore
regions, transformed like boxes). The output image is float32 in 0..1 ``[3, h, w]``; the target gets
``orig_size (H, W)``, ``size (h, w)``, ``scale (sx, sy)`` (resized / original) and ``dropped`` (objects
removed because they became smaller than a pixel). Other target keys pass through unchanged.

Images are NOT normalised by default: the detector normalises inside the model, so ``predict`` and
``export`` take plain 0..1 images. ``normalize=(mean, std)`` exists for models that do not.

Randomness (size choice, flip, jitter) comes from torch's global RNG only; the loader seeds it per sample.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F
from torchvision.transforms.v2._utils import query_size

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "DetectionTransform",
    "ResizeShortestEdge",
    "boxes_to_original",
    "build_transforms",
    "shortest_edge_size",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Target = dict[str, Any]
TransformFn = Callable[[torch.Tensor, Target], tuple[torch.Tensor, Target]]


def shortest_edge_size(height: int, width: int, short: int, max_size: int | None) -> tuple[int, int]:
    """Output ``(h, w)`` with the shorter side ``short`` and the longer side at most ``max_size``, keeping
    the aspect ratio (detectron2's ``ResizeShortestEdge``; e.g. 100x300, short 128, max 200 -> 67x200)."""
    scale = short / min(height, width)
    new_h, new_w = height * scale, width * scale
    if max_size is not None and max(new_h, new_w) > max_size:
        shrink = max_size / max(new_h, new_w)
        new_h, new_w = new_h * shrink, new_w * shrink
    return max(1, int(new_h + 0.5)), max(1, int(new_w + 0.5))


def torchvision_resize_size(height: int, width: int, short: int, max_size: int) -> tuple[int, int]:
    """The size torchvision's ``GeneralizedRCNNTransform`` resizes to: its float32 scale
    ``min(short / min(h, w), max_size / max(h, w))``, then ``floor(side * scale)`` (e.g. 480x640 at
    800 / 1333 -> 799x1066: the float32 scale is just under 5/3)."""
    sides = torch.tensor([height, width]).to(torch.float32)
    scale = torch.min(float(short) / sides.min(), float(max_size) / sides.max()).item()
    return max(1, math.floor(height * scale)), max(1, math.floor(width * scale))


#: ``data.resize`` modes: anchorlab's (rounded size, antialiased when shrinking) or torchvision's
#: detection transform (floored float32 size, plain bilinear).
RESIZE_MODES = ("antialias", "torchvision")


class ResizeShortestEdge(v2.Transform):
    """Resize image and boxes together so the shorter side is ``min_size`` (one drawn uniformly from a
    tuple) and the longer side at most ``max_size``. ``scale_jitter`` replaces ``min_size`` when given:
    two values ``(lo, hi)`` draw an integer uniformly from ``lo..hi`` inclusive, three or more draw one
    of the listed sizes. The size is drawn once per sample, so every input of the sample gets the same."""

    def __init__(
        self,
        min_size: int | Sequence[int],
        max_size: int | None,
        *,
        scale_jitter: Sequence[int] | None = None,
        mode: str = "antialias",
    ) -> None:
        super().__init__()
        if mode not in RESIZE_MODES or (mode == "torchvision" and max_size is None):
            raise ValueError(
                f"resize mode {mode!r} is not one of {', '.join(RESIZE_MODES)} (torchvision needs max_size)"
            )
        self.mode = mode
        sizes = (min_size,) if isinstance(min_size, int) else tuple(int(s) for s in min_size)
        if not sizes or min(sizes) < 1:
            raise ValueError(f"min_size must be a positive int or a non-empty tuple, got {min_size!r}")
        if scale_jitter is not None:
            scale_jitter = tuple(int(v) for v in scale_jitter)
            lo_above_hi = len(scale_jitter) == 2 and scale_jitter[0] > scale_jitter[1]
            if not scale_jitter or min(scale_jitter) < 1 or lo_above_hi:
                raise ValueError(
                    f"scale_jitter must be (lo, hi) with 1 <= lo <= hi or a list of 3+ positive sizes, "
                    f"got {scale_jitter!r}"
                )
        if max_size is not None and max_size < 1:
            raise ValueError(f"max_size must be positive or None, got {max_size}")
        self.min_size = sizes
        self.max_size = max_size
        self.scale_jitter = scale_jitter

    def sample_short_side(self) -> int:
        if self.scale_jitter is not None and len(self.scale_jitter) == 2:
            lo, hi = self.scale_jitter
            return int(torch.randint(lo, hi + 1, ()).item())
        choices = self.scale_jitter if self.scale_jitter is not None else self.min_size
        if len(choices) == 1:
            return choices[0]
        return choices[int(torch.randint(len(choices), ()).item())]

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = query_size(flat_inputs)
        if self.mode == "torchvision":
            return {"size": torchvision_resize_size(height, width, self.sample_short_side(), self.max_size)}
        return {"size": shortest_edge_size(height, width, self.sample_short_side(), self.max_size)}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        antialias = self.mode == "antialias"
        return self._call_kernel(F.resize, inpt, size=list(params["size"]), antialias=antialias)


def _empty_boxes(x: Any) -> torch.Tensor:
    if x is None:
        return torch.zeros((0, 4), dtype=torch.float32)
    return torch.as_tensor(x, dtype=torch.float32).reshape(-1, 4)


class DetectionTransform:
    """Run a v2 pipeline on ``(image, target)``, then clamp boxes to the image and drop those (and their
    labels) whose width or height fell below ``min_box_size`` pixels; crowd regions likewise."""

    def __init__(self, pipeline: v2.Transform, *, min_box_size: float = 1.0) -> None:
        self.pipeline = pipeline
        self.clamp = v2.ClampBoundingBoxes()
        self.sanitize = v2.SanitizeBoundingBoxes(min_size=min_box_size, labels_getter=_get_labels)
        # a module-level getter, not labels_getter=None (torchvision turns that into a lambda, which cannot
        # be pickled: data-loader workers under the spawn start method, the default on macOS and Windows
        # and in `compare --jobs` workers, would fail)
        self.sanitize_crowd = v2.SanitizeBoundingBoxes(min_size=min_box_size, labels_getter=_no_labels)

    def __call__(self, image: torch.Tensor, target: Target) -> tuple[torch.Tensor, Target]:
        height, width = int(image.shape[-2]), int(image.shape[-1])
        boxes = _empty_boxes(target.get("boxes"))
        labels = torch.as_tensor(target.get("labels", torch.zeros(0)), dtype=torch.int64).reshape(-1)
        if labels.shape[0] != boxes.shape[0]:
            raise ValueError(f"{boxes.shape[0]} boxes but {labels.shape[0]} labels")
        canvas = (height, width)
        sample = {
            "image": tv_tensors.Image(image),
            "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=canvas),
            "labels": labels,
            "crowd": tv_tensors.BoundingBoxes(
                _empty_boxes(target.get("crowd")), format="XYXY", canvas_size=canvas
            ),
        }
        out = self.pipeline(sample)
        kept = self.sanitize({"boxes": self.clamp(out["boxes"]), "labels": out["labels"]})
        crowd = self.sanitize_crowd({"crowd": self.clamp(out["crowd"])})["crowd"]
        new_h, new_w = (int(s) for s in out["image"].shape[-2:])
        result = dict(target)
        result.update(
            boxes=kept["boxes"].as_subclass(torch.Tensor),
            labels=kept["labels"],
            crowd=crowd.as_subclass(torch.Tensor),
            orig_size=(height, width),
            size=(new_h, new_w),
            scale=(new_w / width, new_h / height),
            dropped=int(target.get("dropped", 0)) + int(boxes.shape[0] - kept["boxes"].shape[0]),
        )
        return out["image"].as_subclass(torch.Tensor), result

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.pipeline})"


def _get_labels(sample: dict[str, Any]) -> torch.Tensor:
    return sample["labels"]


def _no_labels(sample: dict[str, Any]) -> None:
    return None


def build_transforms(
    train: bool,
    *,
    min_size: int | tuple[int, ...],
    max_size: int | None,
    hflip: float = 0.5,
    scale_jitter: Sequence[int] | None = None,
    photometric: bool = False,
    normalize: tuple[Sequence[float], Sequence[float]] | None = None,
    min_box_size: float = 1.0,
    resize: str = "antialias",
) -> DetectionTransform:
    """The detection pipeline: shortest-edge resize (capped at ``max_size``), then in training a horizontal
    flip with probability ``hflip`` and optionally mild colour jitter, then float32 0..1 (and
    ``normalize = (mean, std)`` if given; off by default, the model normalises). ``resize``: one of
    ``RESIZE_MODES`` for evaluation ("torchvision" reproduces torchvision's detection resize).

    Training draws the shorter side from ``min_size`` (a tuple) or ``scale_jitter`` (``(lo, hi)`` or a list
    of 3+ sizes, see ``ResizeShortestEdge``); evaluation
    is deterministic: the largest of ``min_size``, no flip, no jitter."""
    steps: list[v2.Transform] = []
    if train:
        steps.append(ResizeShortestEdge(min_size, max_size, scale_jitter=scale_jitter))
        if hflip > 0:
            steps.append(v2.RandomHorizontalFlip(p=hflip))
        if photometric:
            steps.append(v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02))
    else:
        short = min_size if isinstance(min_size, int) else max(min_size)
        if resize == "torchvision":  # torchvision resizes the float image (no rounding to uint8 between)
            steps.append(v2.ToDtype(torch.float32, scale=True))
        steps.append(ResizeShortestEdge(short, max_size, mode=resize))
    steps.append(v2.ToDtype(torch.float32, scale=True))
    if normalize is not None:
        mean, std = normalize
        steps.append(v2.Normalize(mean=list(mean), std=list(std)))
    return DetectionTransform(v2.Compose(steps), min_box_size=min_box_size)


def boxes_to_original(
    boxes: torch.Tensor,
    scale: tuple[float, float] | torch.Tensor,
    orig_size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Map ``[K, 4]`` xyxy boxes predicted on the resized image back to the original image by undoing
    ``scale = (sx, sy)``; clip to ``orig_size = (h, w)`` when given."""
    sx, sy = (float(s) for s in scale)
    factor = boxes.new_tensor([sx, sy, sx, sy])
    out = boxes / factor
    if orig_size is not None:
        h, w = orig_size
        out = torch.minimum(out.clamp(min=0), out.new_tensor([w, h, w, h]))
    return out
