"""Max-IoU assignment (RetinaNet, SSD, RPN): thresholds, an ignore band and low-quality matches.

For every prior, take its highest-IoU object over all objects of its image:

* ``IoU >= pos_iou``             -> positive, matched to that object (the argmax);
* ``neg_iou <= IoU < pos_iou``   -> ``IGNORE`` (contributes to no loss);
* ``IoU < neg_iou``              -> ``BACKGROUND``.

Low-quality matches (``low_quality=True``): each object also keeps **all** its best priors (every prior
whose IoU equals that object's maximum, ties included) if that maximum is ``> low_quality_min_iou``;
those priors are matched to **that** object, whatever their own argmax (as mmdetection's
``MaxIoUAssigner(gt_max_assign_all=True)``; torchvision and detectron2 flip such a prior to positive but
keep its argmax object, so an object whose best prior prefers another object gets nothing there). When
several objects claim the same prior as their best, the one with the highest IoU wins (ties: lowest
index).

Crowd regions (COCO ``iscrowd``): ``BACKGROUND`` priors covered by a crowd box with
intersection-over-prior-area ``>= crowd_ioa`` become ``IGNORE``; positives and the ignore band stay.

Everything is batched: GTs are padded to ``[B, M, 4]``, one ``[B, M, R]`` IoU tensor is built and the
padded rows are set to -1 so they never match. No Python loop over priors or objects.
Shape legend (docs/architecture.md): B images, M objects, R priors.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

from anchorlab.assign import BACKGROUND, IGNORE
from anchorlab.assign.common import batched_ioa, batched_iou, pad_boxes

__all__ = ["Assignment", "max_iou_assign"]


class Assignment(NamedTuple):
    """Result of an assigner.

    matched: ``[B, R]`` int64, the matched object index ``0..M_i-1``, ``BACKGROUND`` or ``IGNORE``.
    max_iou: ``[B, R]`` float, each prior's highest IoU with an object of its image (0 without objects).
    num_pos: ``[B]`` int64, positives per image.
    """

    matched: torch.Tensor
    max_iou: torch.Tensor
    num_pos: torch.Tensor


def max_iou_assign(
    priors: torch.Tensor,
    gt_boxes: Sequence[torch.Tensor],
    *,
    pos_iou: float = 0.5,
    neg_iou: float = 0.4,
    low_quality: bool = True,
    low_quality_min_iou: float = 0.0,
    crowd: Sequence[torch.Tensor] | None = None,
    crowd_ioa: float = 0.5,
) -> Assignment:
    """Assign priors ``[R, 4]`` (xyxy) to the objects of ``B`` images, ``gt_boxes`` a list of ``[M_i, 4]``.

    Defaults are RetinaNet's (0.5 / 0.4, low-quality matches on). For an RPN use ``pos_iou=0.7,
    neg_iou=0.3``; for a 2-way split with no ignore band set ``neg_iou == pos_iou``. ``crowd`` is an
    optional list of ``B`` tensors ``[C_i, 4]`` of crowd regions. See the module docstring for the rules.
    """
    if not neg_iou <= pos_iou:
        raise ValueError(f"need neg_iou <= pos_iou, got neg_iou={neg_iou}, pos_iou={pos_iou}")
    if priors.ndim != 2 or priors.shape[-1] != 4:
        raise ValueError(f"priors must have shape [R, 4], got {tuple(priors.shape)}")
    if crowd is not None and len(crowd) != len(gt_boxes):
        raise ValueError(f"got {len(gt_boxes)} images of gt_boxes but {len(crowd)} of crowd regions")
    device, dtype = priors.device, priors.dtype
    num_images, num_priors = len(gt_boxes), priors.shape[0]
    gt, _, valid = pad_boxes(gt_boxes, device=device, dtype=dtype)  # [B, M, 4], [B, M]

    if gt.shape[1] == 0 or num_priors == 0:
        matched = torch.full((num_images, num_priors), BACKGROUND, dtype=torch.int64, device=device)
        max_iou = torch.zeros((num_images, num_priors), dtype=dtype, device=device)
    else:
        iou = batched_iou(gt, priors).masked_fill(~valid[:, :, None], -1.0)  # [B, M, R]
        max_iou, argmax = iou.max(dim=1)  # [B, R]
        matched = torch.where(
            max_iou >= pos_iou,
            argmax,
            torch.where(max_iou < neg_iou, BACKGROUND, IGNORE),
        )
        if low_quality:
            gt_best = iou.max(dim=2, keepdim=True).values  # [B, M, 1]; padded rows: -1
            claims = (iou == gt_best) & valid[:, :, None] & (gt_best > low_quality_min_iou)  # [B, M, R]
            claim_iou, claimant = torch.where(claims, iou, torch.full_like(iou, -2.0)).max(dim=1)
            matched = torch.where(claim_iou > -2.0, claimant, matched)
        max_iou = max_iou.clamp(min=0)

    if crowd is not None and num_priors > 0:
        crowd_boxes, _, crowd_valid = pad_boxes(crowd, device=device, dtype=dtype)  # [B, C, 4]
        if crowd_boxes.shape[1] > 0:
            ioa = batched_ioa(crowd_boxes, priors).masked_fill(~crowd_valid[:, :, None], 0.0)  # [B, C, R]
            covered = ioa.max(dim=1).values >= crowd_ioa
            matched = torch.where((matched == BACKGROUND) & covered, IGNORE, matched)

    return Assignment(matched=matched, max_iou=max_iou, num_pos=(matched >= 0).sum(dim=1))
