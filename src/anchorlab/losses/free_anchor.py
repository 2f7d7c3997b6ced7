"""FreeAnchor loss (Zhang et al., "FreeAnchor: Learning to Match Anchors for Visual Object Detection",
NeurIPS 2019), following the authors' implementation (zhangxiaosong18/FreeAnchor,
``maskrcnn_benchmark/modeling/rpn/free_anchor_loss.py``) and cross-checked against mmdetection's
``FreeAnchorRetinaHead``.

What the authors' code does, and what this module reproduces:

* **Bags.** For every object the ``bag_size`` (50) anchors of highest IoU between the *anchors* and the
  object (``topk`` per object, all anchors of all levels, border-crossing ones included).
* **Positive bag likelihood.** For bag member ``j`` of object ``i``:
  ``P_cls = sigmoid(logit[j, label_i])`` and ``P_loc = exp(-reg_weight * sum_4 smoothL1_beta(delta_j -
  encode(anchor_j, box_i)))`` (smooth L1 summed over the four coordinates, quadratic where ``|d| < beta``).
  ``x = P_cls * P_loc``; mean-max ``= sum(w x) / sum(w)`` with ``w = 1 / clip(1 - x, 1e-12)``, the clip
  being *straight-through* (its gradient is the identity, the authors' ``Clip`` function); gradients flow
  through the weights too. Loss ``= BCE(bag, 1)`` (``F.binary_cross_entropy``: log clamped at -100).
* **Box likelihood** (no gradient: the authors compute it under ``torch.set_grad_enabled(False)``). Decode
  the predicted boxes, IoU of every object with every *predicted* box, saturated-linear
  ``clamp((IoU - t1) / (t2 - t1), 0, 1)`` with ``t1 = bbox_thr`` and ``t2 = max(max_j IoU_ij, t1 + 1e-12)``
  (max over all predictions of that object); per anchor and class the max over the objects of that class,
  zero for classes without objects (the authors' sparse "start ... end" block).
* **Negative term.** ``p = sigmoid(logit) * (1 - box_likelihood)``, loss ``p^gamma * BCE(p, 0)`` over every
  anchor and class of every image (an image without objects has box likelihood 0, so ``p = sigmoid``).
* **Normalisers over the whole batch.** positive: ``sum / max(#objects, 1) * alpha``; negative:
  ``sum / max(#objects * bag_size, 1) * (1 - alpha)``. Under torchrun ``#objects`` is the mean over the
  ranks (``distributed.mean_across_ranks``, like RetinaNet's positive count), so DDP's averaged gradients
  equal one process's on the same global batch.

Differences from the references (all small and deliberate) and implementation notes:

* Decoding clamps only the upward log-scale (``dw, dh <= log(1000 / 16)``) like the authors;
  mmdetection's coder clamps both directions.
* Box geometry uses anchorlab's convention (no ``+1`` in widths): the authors' maskrcnn-benchmark
  ``BoxCoder`` and ``boxlist_iou`` add 1 pixel to widths/heights, mmdetection does not; we follow
  mmdetection and ``anchorlab.boxes``.
* mmdetection clamps the negative ``p`` to ``[1e-12, 1 - 1e-12]`` and uses a plain (zero-gradient)
  ``torch.clamp`` in the mean-max weights; the authors do neither. We follow the authors:
  ``F.binary_cross_entropy`` already keeps values finite (log clamped at -100, backward denominator
  clamped at 1e-12), and the weight clip is straight-through.
* mmdetection returns ``box_deltas.sum() * 0`` as the positive loss of a batch without objects (so the
  regression branch stays in the graph); the authors' empty ``cat`` gives 0 as well. We use mmdetection's
  form.
* Bags have ``min(bag_size, R)`` members when an image has fewer anchors than ``bag_size`` (the authors'
  ``topk`` would raise); the negative normaliser keeps ``bag_size``.
* The mean-max value is clamped to ``<= 1`` before the BCE, guarding against a rounding overshoot that
  would make ``F.binary_cross_entropy`` raise.
* Like the authors (and mmdetection) the probabilities are formed with ``sigmoid`` and the logs clamped
  by ``F.binary_cross_entropy``: in float32 a logit above ~17 rounds ``sigmoid`` to exactly 1, so such
  a negative costs 100 with zero gradient. Values and gradients stay finite for any finite logit.
* Per-(anchor, class) box likelihoods are gathered sparsely (only IoUs above ``bbox_thr`` can be non-zero),
  which computes the same values as the dense ``[R, K]`` matrix without materialising it, and avoids the
  references' float32 ``0 / 0`` when an object has no prediction above ``bbox_thr`` and some IoU equals
  it exactly (``t1 + 1e-12`` rounds to ``t1`` in float32).

Shape legend (docs/architecture.md): B images, M objects, R anchors, K classes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.ops import box_iou

from anchorlab.boxes import BoxCoder
from anchorlab.distributed import mean_across_ranks

__all__ = ["free_anchor_loss", "mean_max", "smooth_l1_sum"]

#: Lower clip of ``1 - x`` in the mean-max weights (authors' value).
_WEIGHT_EPS = 1e-12


def smooth_l1_sum(pred: torch.Tensor, target: torch.Tensor, beta: float) -> torch.Tensor:
    """Smooth L1 ``[...]`` summed over the last dimension.

    Per element ``0.5 d^2 / beta`` where ``|d| < beta``, else ``|d| - beta / 2`` (``d = target - pred``).
    """
    diff = (target - pred).abs()
    return torch.where(diff < beta, 0.5 / beta * diff * diff, diff - 0.5 * beta).sum(dim=-1)


def mean_max(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Mean-max of likelihoods ``x`` in ``[0, 1]`` along ``dim``: ``sum(w x) / sum(w)``, ``w = 1 / (1 - x)``.

    ``1 - x`` is clipped at 1e-12 with a straight-through gradient, as in the authors' code.
    """
    one_minus = 1 - x
    one_minus = one_minus + (one_minus.clamp(min=_WEIGHT_EPS) - one_minus).detach()
    weight = 1 / one_minus
    return (weight * x).sum(dim) / weight.sum(dim)


def _sparse_box_likelihood(
    anchors: torch.Tensor,
    box_deltas: torch.Tensor,
    gt_boxes: list[torch.Tensor],
    gt_labels: list[torch.Tensor],
    num_classes: int,
    bbox_thr: float,
    coder: BoxCoder,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-zero entries of the box likelihood ``P{a_j in A+}`` of shape ``[B, R, K]``, without gradient.

    Returns flat indices into ``[B * R * K]`` (unique, sorted) and their values in ``(0, 1]``.
    """
    num_anchors = anchors.shape[0]
    keys, values = [], []
    with torch.no_grad():
        for b, (boxes, labels) in enumerate(zip(gt_boxes, gt_labels, strict=True)):
            if boxes.shape[0] == 0:
                continue
            pred = coder.decode(anchors, box_deltas[b])  # [R, 4]
            iou = box_iou(boxes, pred)  # [M, R]
            t2 = iou.amax(dim=1).clamp(min=bbox_thr + 1e-12)  # [M]
            obj, anc = (iou > bbox_thr).nonzero(as_tuple=True)
            val = ((iou[obj, anc] - bbox_thr) / (t2[obj] - bbox_thr)).clamp(0, 1)
            keys.append((b * num_anchors + anc) * num_classes + labels[obj])
            values.append(val)
        if not keys:
            empty = box_deltas.new_zeros(0)
            return empty.long(), empty
        key = torch.cat(keys)
        val = torch.cat(values)
        # Max over objects of the same class at the same anchor.
        unique, inverse = torch.unique(key, sorted=True, return_inverse=True)
        prob = val.new_zeros(unique.shape[0]).scatter_reduce(
            0, inverse, val, reduce="amax", include_self=False
        )
    return unique, prob


def free_anchor_loss(
    anchors: torch.Tensor,
    cls_logits: torch.Tensor,
    box_deltas: torch.Tensor,
    gt_boxes: list[torch.Tensor],
    gt_labels: list[torch.Tensor],
    *,
    bag_size: int = 50,
    bbox_thr: float = 0.6,
    alpha: float = 0.5,
    gamma: float = 2.0,
    reg_weight: float = 0.75,
    smoothl1_beta: float = 0.11,
    coder: BoxCoder = BoxCoder(stds=(0.1, 0.1, 0.2, 0.2)),
) -> dict[str, torch.Tensor]:
    """FreeAnchor's positive and negative bag losses for a batch (see the module docstring).

    Args:
        anchors: ``[R, 4]`` xyxy anchors of all levels (level-major order, as the head flattens).
        cls_logits: ``[B, R, K]`` classification logits.
        box_deltas: ``[B, R, 4]`` regression output in the coder's normalised units.
        gt_boxes: B tensors ``[M_b, 4]`` xyxy.
        gt_labels: B tensors ``[M_b]`` of labels in ``0..K-1``.

    Returns:
        ``{"positive_bag_loss": scalar, "negative_bag_loss": scalar}``, already weighted by ``alpha`` and
        ``1 - alpha`` and normalised by the batch's object count (times ``bag_size`` for negatives).
        Gradients reach ``cls_logits`` through both terms and ``box_deltas`` through the positive term only.
    """
    batch, num_anchors, num_classes = cls_logits.shape
    if box_deltas.shape != (batch, num_anchors, 4) or anchors.shape != (num_anchors, 4):
        raise ValueError(
            f"free_anchor_loss: anchors {tuple(anchors.shape)}, cls_logits {tuple(cls_logits.shape)} and "
            f"box_deltas {tuple(box_deltas.shape)} do not match ([R, 4], [B, R, K], [B, R, 4])"
        )
    if len(gt_boxes) != batch or len(gt_labels) != batch:
        raise ValueError(
            f"free_anchor_loss: {batch} images but {len(gt_boxes)} box / {len(gt_labels)} label lists"
        )
    dtype = box_deltas.dtype
    anchors = anchors.to(dtype)
    gt_boxes = [g.to(dtype).reshape(-1, 4) for g in gt_boxes]
    gt_labels = [lab.long().reshape(-1) for lab in gt_labels]
    num_objects = sum(int(g.shape[0]) for g in gt_boxes)
    if num_objects:
        all_labels = torch.cat(gt_labels)
        low, high = int(all_labels.min()), int(all_labels.max())
        if low < 0 or high >= num_classes:
            raise ValueError(f"free_anchor_loss: labels must be in 0..{num_classes - 1}, got {low}..{high}")

    # The same object count on every rank (a collective: every rank calls it, with or without objects).
    mean_objects = mean_across_ranks(box_deltas.new_tensor(float(num_objects))).to(dtype)
    cls_prob = torch.sigmoid(cls_logits)  # [B, R, K]

    # Positive bags: one row of `k` anchors per object, the objects of all images stacked.
    k = min(bag_size, num_anchors)
    if num_objects > 0 and k > 0:
        with torch.no_grad():
            matched = torch.cat(
                [torch.topk(box_iou(boxes, anchors), k, dim=1, sorted=False).indices for boxes in gt_boxes]
            )  # [M, k] anchor indices
            image = torch.cat([torch.full_like(lab, b) for b, lab in enumerate(gt_labels)])  # [M]
            rows = image[:, None] * num_anchors + matched  # [M, k] into the flattened [B * R]
            cls_index = rows * num_classes + torch.cat(gt_labels)[:, None]  # [M, k] into [B * R * K]
        all_boxes = torch.cat(gt_boxes)  # [M, 4]
        matched_cls = cls_prob.reshape(-1)[cls_index]  # [M, k]
        targets = coder.encode(anchors[matched], all_boxes[:, None, :])  # [M, k, 4]
        reg = smooth_l1_sum(box_deltas.reshape(-1, 4)[rows], targets, smoothl1_beta)  # [M, k]
        bag = mean_max(matched_cls * torch.exp(-reg_weight * reg), dim=1).clamp(max=1.0)  # [M]
        positive = F.binary_cross_entropy(bag, torch.ones_like(bag), reduction="sum") / mean_objects
    else:  # keep the regression branch in the graph (mmdetection)
        positive = box_deltas.sum() * 0

    # Negative term: p = P_cls * (1 - box likelihood), box likelihood non-zero only on sparse entries.
    index, box_prob = _sparse_box_likelihood(
        anchors, box_deltas.detach(), gt_boxes, gt_labels, num_classes, bbox_thr, coder
    )
    prob = cls_prob.reshape(-1)
    if index.numel() > 0:
        prob = prob.index_put((index,), prob[index] * (1 - box_prob))
    zero = prob.new_zeros(()).expand_as(prob)  # BCE target without a dense allocation
    negative = (prob.pow(gamma) * F.binary_cross_entropy(prob, zero, reduction="none")).sum()
    negative = negative / (mean_objects * bag_size).clamp(min=1)

    return {"positive_bag_loss": positive * alpha, "negative_bag_loss": negative * (1 - alpha)}
