"""NMS recall: how many objects still have a good detection after non-maximum suppression.

FreeAnchor (Zhang et al., NeurIPS 2019, section 4) motivates learning-to-match by this measure: a
detector whose boxes are well localised but badly scored loses objects in NMS, because a worse box of
higher score suppresses the good one. For an IoU threshold ``t``:

    recall(t)  = #{GT objects with at least one detection of IoU >= t} / #{GT objects}
    NR(t)      = recall_after(t) / recall_before(t)        (the paper's "NMS recall")

computed once on the detections entering NMS and once on those leaving it. Crowd regions are not
objects: the caller leaves them out of ``gt_boxes``. With labels the match is class-aware (a detection
covers an object only if its label is the object's); without, any detection counts.

Shape legend (docs/architecture.md): B images, M ground-truth objects, N detections, T IoU thresholds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from anchorlab.boxes import pairwise_iou

__all__ = ["DEFAULT_IOU_THRESHOLDS", "covered_objects", "nms_recall"]

#: COCO's thresholds 0.50, 0.55, ..., 0.95.
DEFAULT_IOU_THRESHOLDS = np.round(np.arange(0.5, 0.951, 0.05), 2)

ArrayLike = torch.Tensor | np.ndarray | Sequence[Any]


def _as_tensor(
    x: ArrayLike, like: torch.Tensor | None = None, dtype: torch.dtype | None = None
) -> torch.Tensor:
    device = like.device if like is not None else None
    if isinstance(x, torch.Tensor):
        return x.detach().to(device=device if device is not None else x.device, dtype=dtype or x.dtype)
    return torch.as_tensor(np.asarray(x), device=device, dtype=dtype)


def _boxes(x: ArrayLike, like: torch.Tensor | None = None) -> torch.Tensor:
    t = _as_tensor(x, like)
    if not t.is_floating_point():
        t = t.to(torch.float64 if t.device.type == "cpu" else torch.float32)
    return t.reshape(-1, 4)


def covered_objects(
    gt_boxes: ArrayLike,
    det_boxes: ArrayLike,
    iou_thresholds: ArrayLike = DEFAULT_IOU_THRESHOLDS,
    gt_labels: ArrayLike | None = None,
    det_labels: ArrayLike | None = None,
) -> torch.Tensor:
    """Which objects of one image have a detection of IoU >= t, for every threshold t.

    Args:
        gt_boxes: ``[M, 4]`` xyxy. det_boxes: ``[N, 4]`` xyxy. iou_thresholds: ``[T]``.
        gt_labels, det_labels: ``[M]`` and ``[N]``; when both are given, a detection only covers
            objects of its own label.

    Returns:
        Bool ``[M, T]``.
    """
    gt = _boxes(gt_boxes)
    det = _boxes(det_boxes, like=gt).to(gt.dtype)
    thresholds = _as_tensor(iou_thresholds, like=gt, dtype=gt.dtype).reshape(-1)
    if (gt_labels is None) != (det_labels is None):
        raise ValueError("give both gt_labels and det_labels for a class-aware match, or neither")
    iou = pairwise_iou(gt, det)  # [M, N]
    if gt_labels is not None and det_labels is not None:
        gl = _as_tensor(gt_labels, like=gt).reshape(-1)
        dl = _as_tensor(det_labels, like=gt).reshape(-1)
        if gl.numel() != gt.shape[0] or dl.numel() != det.shape[0]:
            raise ValueError(
                f"{gt.shape[0]} objects with {gl.numel()} labels, "
                f"{det.shape[0]} detections with {dl.numel()} labels"
            )
        iou = iou.masked_fill(gl[:, None] != dl[None, :], -1.0)
    best = iou.amax(dim=1) if iou.shape[1] else iou.new_full((iou.shape[0],), -1.0)  # [M]
    return best[:, None] >= thresholds[None, :]


def _check_lengths(name: str, items: Sequence[Any] | None, b: int) -> None:
    if items is not None and len(items) != b:
        raise ValueError(f"{name} has {len(items)} images, gt_boxes has {b}")


def _ratio(after: np.ndarray, before: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(before > 0, after / np.maximum(before, 1e-300), np.nan)


def nms_recall(
    gt_boxes: Sequence[ArrayLike],
    pre_nms: Sequence[ArrayLike],
    post_nms: Sequence[ArrayLike],
    iou_thresholds: ArrayLike = DEFAULT_IOU_THRESHOLDS,
    *,
    gt_labels: Sequence[ArrayLike] | None = None,
    pre_labels: Sequence[ArrayLike] | None = None,
    post_labels: Sequence[ArrayLike] | None = None,
) -> dict[str, Any]:
    """Recall before and after NMS over a set of images, at several IoU thresholds.

    Args:
        gt_boxes: B arrays ``[M_i, 4]`` xyxy of the objects (crowd regions excluded).
        pre_nms: B arrays ``[N_i, 4]`` xyxy, the detections entering NMS.
        post_nms: B arrays ``[N'_i, 4]`` xyxy, the detections NMS kept.
        iou_thresholds: ``[T]`` thresholds in ``(0, 1]``; COCO's ten by default.
        gt_labels, pre_labels, post_labels: B label arrays each; all three make the match
            class-aware, none class-agnostic.

    Returns:
        ``iou_thresholds``, ``recall_before``, ``recall_after`` and ``ratio`` (after / before), lists of
        T floats; ``mean_recall_before``, ``mean_recall_after``, ``mean_ratio`` (means over thresholds);
        ``num_objects``, ``num_pre_nms``, ``num_post_nms`` (totals); ``class_aware``. Recalls are NaN
        when there are no objects, a ratio is NaN when nothing was covered before NMS.
    """
    thresholds = np.asarray(iou_thresholds, dtype=np.float64).reshape(-1)
    if thresholds.size == 0 or (thresholds <= 0).any() or (thresholds > 1).any():
        raise ValueError(f"IoU thresholds must lie in (0, 1], got {thresholds.tolist()}")
    b = len(gt_boxes)
    for name, items in (("pre_nms", pre_nms), ("post_nms", post_nms)):
        _check_lengths(name, items, b)
    given = [x is not None for x in (gt_labels, pre_labels, post_labels)]
    if any(given) and not all(given):
        raise ValueError("class-aware NMS recall needs gt_labels, pre_labels and post_labels together")
    class_aware = all(given)
    for name, items in (("gt_labels", gt_labels), ("pre_labels", pre_labels), ("post_labels", post_labels)):
        _check_lengths(name, items, b)

    hits_before = np.zeros(thresholds.size, dtype=np.int64)
    hits_after = np.zeros(thresholds.size, dtype=np.int64)
    num_objects = num_pre = num_post = 0
    for i in range(b):  # one IoU matrix per image and per stage
        gl = gt_labels[i] if gt_labels is not None else None
        pre_l = pre_labels[i] if pre_labels is not None else None
        post_l = post_labels[i] if post_labels is not None else None
        before = covered_objects(gt_boxes[i], pre_nms[i], thresholds, gl, pre_l)  # [M, T]
        after = covered_objects(gt_boxes[i], post_nms[i], thresholds, gl, post_l)
        hits_before += before.sum(dim=0).cpu().numpy()
        hits_after += after.sum(dim=0).cpu().numpy()
        num_objects += before.shape[0]
        num_pre += _boxes(pre_nms[i]).shape[0]
        num_post += _boxes(post_nms[i]).shape[0]

    denom = float(num_objects) if num_objects else np.nan
    recall_before = hits_before / denom
    recall_after = hits_after / denom
    ratio = _ratio(hits_after.astype(np.float64), hits_before.astype(np.float64))
    return {
        "iou_thresholds": [round(float(t), 6) for t in thresholds],
        "recall_before": recall_before.tolist(),
        "recall_after": recall_after.tolist(),
        "ratio": ratio.tolist(),
        "mean_recall_before": float(np.mean(recall_before)),
        "mean_recall_after": float(np.mean(recall_after)),
        "mean_ratio": float(np.nanmean(ratio)) if np.isfinite(ratio).any() else float("nan"),
        "num_objects": num_objects,
        "num_pre_nms": num_pre,
        "num_post_nms": num_post,
        "class_aware": class_aware,
    }
