"""Batching images of different sizes: pad to a common size, a multiple of ``size_divisor`` (at most 32)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["ImageBatch", "pad_images", "size_divisor"]


def size_divisor(max_stride: int) -> int:
    """What batches are padded to: the largest stride, but at most 32.

    Priors come from the real feature-map sizes and the FPN resizes top-down to each lateral's size, so
    padding to P6/P7's 64/128 buys nothing and costs compute (docs/architecture.md).
    """
    return min(int(max_stride), 32)


@dataclass
class ImageBatch:
    """``tensor [B, 3, H, W]`` (zero-padded at the bottom/right) and each image's true ``(h, w)``."""

    tensor: torch.Tensor
    sizes: list[tuple[int, int]]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> ImageBatch:
        return ImageBatch(self.tensor.to(device, non_blocking=non_blocking), self.sizes)

    def pin_memory(self) -> ImageBatch:
        """Called by ``DataLoader(pin_memory=True)`` for custom batch types."""
        return ImageBatch(self.tensor.pin_memory(), self.sizes)

    def __len__(self) -> int:
        return len(self.sizes)


def pad_images(images: list[torch.Tensor], size_divisible: int = 32, fill: float = 0.0) -> ImageBatch:
    """Stack ``[3, h_i, w_i]`` images into ``[B, 3, H, W]`` with ``H, W`` the max sizes rounded up to a
    multiple of ``size_divisible``."""
    if not images:
        raise ValueError("pad_images needs at least one image")
    sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
    h = int(math.ceil(max(s[0] for s in sizes) / size_divisible) * size_divisible)
    w = int(math.ceil(max(s[1] for s in sizes) / size_divisible) * size_divisible)
    out = images[0].new_full((len(images), images[0].shape[0], h, w), fill)
    for i, im in enumerate(images):
        out[i, :, : im.shape[-2], : im.shape[-1]].copy_(im)
    return ImageBatch(out, sizes)
