"""CenterNet targets ("Objects as Points"): class heatmaps of gaussians, size, offset and centre index.

Follows the official ``ctdet`` target code (xingyizhou/CenterNet, ``datasets/sample/ctdet.py``):

* boxes are divided by ``stride`` (output units) and **clipped** to ``[0, W - 1] x [0, H - 1]``;
  an object whose clipped width or height is 0 gets no target (``mask`` False);
* ``centre = ((x1 + x2) / 2, (y1 + y2) / 2)`` of the clipped box, ``cell = floor(centre)`` (always on
  the grid thanks to the clipping), ``offset = centre - cell``, ``index = cell_y * W + cell_x``;
* ``size = (w, h)`` of the clipped box in **output units** (CenterNet's choice; multiply by the stride
  for pixels);
* ``radius = max(min_radius, int(gaussian_radius(ceil(h), ceil(w), min_overlap)))``, and the object
  draws ``exp(-(dx^2 + dy^2) / (2 sigma^2))`` with ``sigma = (2 r + 1) / 6`` on the square window
  ``|dx|, |dy| <= r`` around its cell (``draw_umich_gaussian``; windows are truncated at the borders);
  objects of one class combine by element-wise max. The official code zeroes values below
  ``eps * max``; inside the window the smallest value is ``exp(-9 r^2 / (r + 1/2)^2) > 1e-4``, so
  that cut never fires and is not reproduced.

``gaussian_radius`` is CornerNet's function **as is** (CenterNet imports it unchanged). Its known quirk
(discussed in princeton-vl/CornerNet's issues): each of the three cases (one corner in / both in /
both out) solves ``a r^2 + b r + c = 0`` for the radius at which the IoU equals ``min_overlap``, but
the code returns ``(b + sqrt(b^2 - 4ac)) / 2``: it divides by 2 instead of ``2a`` (``a = 4`` and
``4 min_overlap`` in cases 2 and 3) and, in cases 1 and 2, takes the larger root where the smaller one
is the bound. The result is not the exact "corners within r keep IoU >= min_overlap" radius; it is
larger (for a 10 x 10 box at 0.7: 2.73 instead of 0.98, from case 3, which is the minimum in
practice). Published CenterNet results rely on these values, so we match the code, not the algebra.

Drawing is vectorised over objects: each object's (separable) gaussian is evaluated on the whole
output grid ``[B, M, H, W]`` and reduced per class with ``scatter_reduce(amax)``; when ``B*M*H*W``
exceeds ``max_elements`` the objects are processed in chunks. Shape legend (docs/architecture.md): B images,
M objects (padded), K classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

from anchorlab.assign.common import pad_boxes

__all__ = ["CenterNetTargets", "centernet_targets", "gaussian_radius"]


class CenterNetTargets(NamedTuple):
    """Result of :func:`centernet_targets` (entries of padded / unusable objects are 0 and ``mask`` False).

    heatmap: ``[B, K, H, W]`` float, max of the class's gaussians; exactly 1.0 at each object's cell.
    size: ``[B, M, 2]`` float, ``(w, h)`` in output units.
    offset: ``[B, M, 2]`` float, ``centre - floor(centre)`` in output units, in ``[0, 1)``.
    index: ``[B, M]`` int64, flat cell index ``y * W + x`` of the centre.
    mask: ``[B, M]`` bool, the object has targets.
    collisions: ``[B]`` int64, objects whose centre cell is shared with another object (any class).
    radius: ``[B, M]`` int64, gaussian radius in cells.
    """

    heatmap: torch.Tensor
    size: torch.Tensor
    offset: torch.Tensor
    index: torch.Tensor
    mask: torch.Tensor
    collisions: torch.Tensor
    radius: torch.Tensor


def gaussian_radius(
    height: torch.Tensor | float, width: torch.Tensor | float, min_overlap: float = 0.7
) -> torch.Tensor:
    """CornerNet's gaussian radius for boxes of ``height`` x ``width`` (any broadcastable shapes).

    Exactly CornerNet's / CenterNet's formula including its quirk (module docstring): the minimum of
    ``(b1 + sqrt(b1^2 - 4 a1 c1)) / 2`` over the three cases. Computed in float64; returns float64
    for float64 input and the input's (or float32's) dtype otherwise. No rounding: callers apply
    ``int`` as CenterNet does.
    """
    h = torch.as_tensor(height)
    out_dtype = h.dtype if h.is_floating_point() else torch.float32
    h, w = h.double(), torch.as_tensor(width, device=h.device).double()
    b1 = h + w
    c1 = w * h * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + (b1**2 - 4 * c1).sqrt()) / 2
    b2 = 2 * (h + w)
    c2 = (1 - min_overlap) * w * h
    r2 = (b2 + (b2**2 - 4 * 4 * c2).sqrt()) / 2
    a3 = 4 * min_overlap
    b3 = -2 * min_overlap * (h + w)
    c3 = (min_overlap - 1) * w * h
    r3 = (b3 + (b3**2 - 4 * a3 * c3).sqrt()) / 2
    return torch.minimum(torch.minimum(r1, r2), r3).to(out_dtype)


def _axis_gaussian(cell: torch.Tensor, radius: torch.Tensor, length: int, dtype: torch.dtype) -> torch.Tensor:
    """1-D factors ``[B, M, length]``: ``exp(-d^2 / (2 sigma^2))`` on ``|d| <= r``, 0 outside."""
    d = torch.arange(length, device=cell.device, dtype=torch.float64)[None, None, :] - cell[..., None]
    r = radius[..., None].to(torch.float64)
    sigma = (2 * r + 1) / 6
    g = torch.exp(-(d * d) / (2 * sigma * sigma))
    return torch.where(d.abs() <= r, g, torch.zeros_like(g)).to(dtype)


def centernet_targets(
    gt_boxes: Sequence[torch.Tensor],
    gt_labels: Sequence[torch.Tensor],
    num_classes: int,
    output_size: tuple[int, int],
    stride: int = 4,
    *,
    min_overlap: float = 0.7,
    min_radius: int = 0,
    max_elements: int = 1 << 24,
) -> CenterNetTargets:
    """CenterNet training targets for ``B`` images.

    ``gt_boxes``: list of xyxy ``[M_i, 4]`` in input pixels; ``gt_labels``: list of ``[M_i]`` in
    ``0..K-1`` with ``K = num_classes``; ``output_size = (H, W)`` of the heatmap; ``stride`` the input
    pixels per output cell. ``max_elements`` bounds the ``[B, M, H, W]`` drawing buffer (chunked over
    objects beyond it). See the module docstring for the rules.
    """
    out_h, out_w = (int(v) for v in output_size)
    if num_classes < 1 or out_h < 1 or out_w < 1 or stride <= 0 or min_radius < 0:
        raise ValueError(
            f"need num_classes >= 1, a positive output size and stride, min_radius >= 0; got {num_classes}, "
            f"{(out_h, out_w)}, {stride}, {min_radius}"
        )
    gt, labels, valid = pad_boxes(gt_boxes, gt_labels)  # [B, M, 4], [B, M], [B, M]
    assert labels is not None
    if not gt.is_floating_point():
        gt = gt.float()
    device, dtype = gt.device, gt.dtype
    num_images, num_objects = valid.shape
    if bool((valid & ((labels < 0) | (labels >= num_classes))).any()):
        raise ValueError(f"labels must lie in 0..{num_classes - 1}")

    box = gt / stride
    box = torch.stack(
        (
            box[..., 0].clamp(0, out_w - 1),
            box[..., 1].clamp(0, out_h - 1),
            box[..., 2].clamp(0, out_w - 1),
            box[..., 3].clamp(0, out_h - 1),
        ),
        dim=-1,
    )
    w, h = box[..., 2] - box[..., 0], box[..., 3] - box[..., 1]
    mask = valid & (w > 0) & (h > 0)
    centre = torch.stack(((box[..., 0] + box[..., 2]) / 2, (box[..., 1] + box[..., 3]) / 2), dim=-1)
    cell = centre.floor()
    radius = gaussian_radius(h.double().ceil(), w.double().ceil(), min_overlap).floor().clamp(min=0)
    radius = torch.where(mask, radius.clamp(min=float(min_radius)), torch.zeros_like(radius)).to(torch.int64)

    zeros2 = torch.zeros_like(centre)
    size = torch.where(mask[..., None], torch.stack((w, h), dim=-1), zeros2)
    offset = torch.where(mask[..., None], centre - cell, zeros2)
    cell = cell.to(torch.int64)
    index = torch.where(mask, cell[..., 1] * out_w + cell[..., 0], torch.zeros_like(radius))

    heatmap = torch.zeros((num_images, num_classes, out_h * out_w), device=device, dtype=dtype)
    if num_objects and num_images:
        gx = _axis_gaussian(cell[..., 0].double(), radius, out_w, dtype) * mask[..., None]  # [B, M, W]
        gy = _axis_gaussian(cell[..., 1].double(), radius, out_h, dtype)  # [B, M, H]
        chunk = max(1, max_elements // (num_images * out_h * out_w))
        for start in range(0, num_objects, chunk):
            sl = slice(start, start + chunk)
            g = (gy[:, sl, :, None] * gx[:, sl, None, :]).reshape(num_images, -1, out_h * out_w)
            idx = labels[:, sl].clamp(min=0)[:, :, None].expand_as(g)
            heatmap.scatter_reduce_(1, idx, g, reduce="amax", include_self=True)

    same = (index[:, :, None] == index[:, None, :]) & mask[:, :, None] & mask[:, None, :]
    same &= ~torch.eye(num_objects, dtype=torch.bool, device=device)
    collisions = same.any(dim=2).sum(dim=1)
    return CenterNetTargets(
        heatmap=heatmap.reshape(num_images, num_classes, out_h, out_w),
        size=size,
        offset=offset,
        index=index,
        mask=mask,
        collisions=collisions,
        radius=radius,
    )
