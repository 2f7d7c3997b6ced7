"""Dense-head post-processing shared by the RetinaNet, FCOS, grid, hard-negative and CenterNet heads.

The selection is torchvision's (per image and level the ``k`` best (prior, class) scores above the score
threshold, decode, clip, class-wise NMS, the ``max_detections`` best), computed so that the work scales
with ``k`` rather than with the ``R K`` scores:

1. ``level_topk``: one reduction over the classes (each prior's best score, ``[B, R]``), then per level
   a ``topk`` over the priors, the scores of the ``k`` chosen priors' classes only (``[B, k, K]``), and
   a ``topk`` over those; batched over images, no sigmoid, sort or ``nonzero`` over all ``R K`` scores.
2. The caller decodes the boxes of those candidates only.
3. ``select_candidates``: clip, drop empty boxes and scores ``<= score_thresh`` (thresholding after
   the ``topk`` keeps the same set as before it: the scores that fail are the lowest), then per image
   class-wise NMS on a score-ordered **prefix** of the candidates, grown until it yields
   ``max_detections`` boxes. Greedy NMS decides each box from the higher-scored ones only, so the kept
   boxes of a prefix are exactly the full run's kept boxes in that prefix: the output is the same as NMS
   over all candidates (up to ties of equal scores), for a fraction of the pairwise IoUs.

Shape legend (docs/architecture.md): B images, R priors, K classes, N candidates.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torchvision.ops import batched_nms

__all__ = ["gather_priors", "level_topk", "loose_bound", "select_candidates", "select_detections"]

_FIRST_PREFIX = 4  # NMS first runs on the best `_FIRST_PREFIX * max_detections` candidates


def loose_bound(thresh: float, space: str = "prob") -> float:
    """A bound on ``best`` for ``level_topk`` below ``thresh`` by a relative 1e-4, so float rounding can
    never skip a prior that holds a score above ``thresh``; ``space="logit"``: ``thresh`` is a
    probability, the bound is on logits (``-inf`` for ``thresh <= 0``, ``inf`` for ``thresh >= 1``)."""
    if space == "logit":
        if thresh <= 0.0 or thresh >= 1.0:
            return -math.inf if thresh <= 0.0 else math.inf
        thresh = math.log(thresh / (1.0 - thresh))
    return thresh - 1e-4 * abs(thresh)


def level_topk(
    best: torch.Tensor,
    scores_of: Callable[[torch.Tensor], torch.Tensor],
    counts: Sequence[int],
    k: int,
    best_thresh: float = -math.inf,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per level, the ``k`` best (prior, class) scores of each image, batched over images, without
    ranking every (prior, class) pair.

    ``best [B, R]``: each prior's best score over its classes, or any value ordered like it (e.g. its
    largest logit); ``scores_of(prior [B, n]) -> [B, n, K]`` the scores of the given priors' classes
    (again any values ranked like the scores; ``k`` ranks them); ``counts``: priors per level (sum R);
    ``best_thresh``: priors whose ``best`` is not above it hold no score above the caller's threshold
    and are skipped (a level takes as many priors as its image with the most survivors needs).
    Returns ``prior [B, N]`` (into R), ``values [B, N]`` (from ``scores_of``) and ``labels [B, N]``; per
    level, the same pairs as a ``topk(k)`` over all of its scores, restricted to scores above the
    threshold, up to ties: the ``k`` best pairs lie in the ``k`` priors with the best ``best`` (a pair in
    any other prior is beaten by the best pair of each of those ``k`` priors).
    """
    num_images = best.shape[0]
    survivors = (best > best_thresh).split(list(counts), dim=1)
    needed = torch.stack([s.sum(dim=1).amax() for s in survivors]).clamp(max=k).tolist() if counts else []
    prior_parts, value_parts, label_parts = [best.new_zeros((num_images, 0), dtype=torch.long)], [], []
    start = 0
    for count, n in zip(counts, needed, strict=True):
        if n > 0:
            rows = best[:, start : start + count].topk(n, dim=1).indices + start  # [B, n]
            values = scores_of(rows)  # [B, n, K]
            num_classes = values.shape[-1]
            top, index = values.reshape(num_images, -1).topk(min(k, values[0].numel()), dim=1)  # [B, k]
            prior_parts.append(rows.gather(1, index // num_classes))
            value_parts.append(top)
            label_parts.append(index % num_classes)
        start += count
    if not value_parts:  # nothing above the threshold anywhere
        empty = scores_of(prior_parts[0])
        return prior_parts[0], empty.reshape(num_images, 0), prior_parts[0].clone()
    return torch.cat(prior_parts, 1), torch.cat(value_parts, 1), torch.cat(label_parts, 1)


def gather_priors(values: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
    """``values [B, R, C]`` at ``prior [B, n]`` -> ``[B, n, C]``."""
    return values.gather(1, prior[..., None].expand(-1, -1, values.shape[-1]))


def _nms_best(
    boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, iou: float, max_detections: int
) -> torch.Tensor:
    """Indices of ``batched_nms(boxes, scores, labels, iou)[:max_detections]``, computed on the smallest
    score-ordered prefix (x4 per step) that yields ``max_detections`` boxes (see the module docstring)."""
    count = scores.numel()
    size = _FIRST_PREFIX * max_detections
    if count <= size:
        return batched_nms(boxes, scores, labels, iou)[:max_detections]
    order = scores.argsort(descending=True)
    while True:
        head = order[:size]
        kept = batched_nms(boxes[head], scores[head], labels[head], iou)
        if kept.numel() >= max_detections or size >= count:
            return head[kept[:max_detections]]
        size *= 4


def select_candidates(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    labels: torch.Tensor,
    image: torch.Tensor,
    image_sizes: Sequence[tuple[int, int]],
    *,
    score_thresh: float,
    nms_iou: float | None,
    max_detections: int,
    return_pre_nms: bool = False,
    keep_empty_boxes: bool = False,
) -> list[dict[str, torch.Tensor]]:
    """Per-image detections from flat candidates ``boxes [N, 4]``, ``scores [N]``, ``labels [N]`` of
    images ``image [N]`` (ascending): clip to each image's ``(h, w)``, drop empty boxes and scores
    ``<= score_thresh``, class-wise NMS (skipped when ``nms_iou`` is None), the ``max_detections``
    best, sorted by decreasing score. ``return_pre_nms`` adds the NMS inputs (``pre_nms_*``);
    ``keep_empty_boxes`` keeps boxes that clipping made empty (torchvision's RetinaNet and FCOS do)."""
    hw = torch.tensor(image_sizes, device=boxes.device, dtype=boxes.dtype).reshape(-1, 2)  # [B, 2] (h, w)
    boxes = torch.minimum(boxes.clamp(min=0), hw.flip(-1).repeat(1, 2)[image])
    keep = scores > score_thresh
    if not keep_empty_boxes:
        keep &= (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    boxes, scores, labels, image = boxes[keep], scores[keep], labels[keep], image[keep]
    sizes = torch.bincount(image, minlength=len(image_sizes)).tolist()
    results = []
    for b, s, lab in zip(boxes.split(sizes), scores.split(sizes), labels.split(sizes), strict=True):
        if nms_iou is None:
            kept = s.argsort(descending=True)[:max_detections]
        else:
            kept = _nms_best(b, s, lab, nms_iou, max_detections)
        det = {"boxes": b[kept], "scores": s[kept], "labels": lab[kept]}
        if return_pre_nms:
            det.update(pre_nms_boxes=b, pre_nms_scores=s, pre_nms_labels=lab)
        results.append(det)
    return results


def select_detections(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    labels: torch.Tensor,
    image_sizes: Sequence[tuple[int, int]],
    *,
    score_thresh: float,
    nms_iou: float | None,
    max_detections: int,
    return_pre_nms: bool = False,
    keep_empty_boxes: bool = False,
) -> list[dict[str, torch.Tensor]]:
    """``select_candidates`` for per-image candidates ``boxes [B, N, 4]``, ``scores [B, N]``,
    ``labels [B, N]`` (e.g. CenterNet's peaks, an exported graph's outputs)."""
    num_images, count = scores.shape
    image = torch.arange(num_images, device=scores.device).repeat_interleave(count)
    return select_candidates(
        boxes.reshape(-1, 4),
        scores.reshape(-1),
        labels.reshape(-1),
        image,
        image_sizes,
        score_thresh=score_thresh,
        nms_iou=nms_iou,
        max_detections=max_detections,
        return_pre_nms=return_pre_nms,
        keep_empty_boxes=keep_empty_boxes,
    )
