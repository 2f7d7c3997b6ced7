"""NMS recall: how many objects still have a good detection after non-maximum suppression.

FreeAnchor (Zhang et al., NeurIPS 2019, section 4) motivates learning-to-match by this measure: a
detector whose boxes are well localised but badly scored loses objects in NMS, because a worse box of
higher score suppresses the good one. For an IoU threshold ``t``:

    recall(t)  = #{GT objects with at least one detection of IoU >= t} / #{GT objects}
    NR(t)      = recall_after(t) / recall_before(t)        (the paper's "NMS recall")

computed once on the detections entering NMS and once on those leaving it. Crowd regions are not
objects: the caller leaves them out of ``gt_boxes``. With labels the match is class-aware (a detection
covers an object only if its label is the object's); without, any detection counts.

Two protocols (``PROTOCOLS``) fix every choice the number depends on:

* ``freeanchor`` -- the FreeAnchor authors' ``tools/eval_NR.py``: class-agnostic match, thresholds
  0.50, 0.55, ..., 0.90 with a strict ``IoU > t``, the detections entering NMS are every (anchor,
  class) score ``> 0.05`` (no per-level cap) and NMS keeps all it does not suppress (no cap after NMS);
  per threshold ``NR(t) = hits_after / max(hits_before, 1)`` (0 when nothing was covered), reported as
  the mean over the nine thresholds ("NR [0.5:0.9]") and at 0.5, 0.6, 0.7, 0.8, 0.9.
* ``anchorlab`` -- the model's own inference settings (top ``topk_per_level`` per level, at most
  ``max_detections`` after NMS), class-aware match, COCO's 0.50:0.95 with ``IoU >= t``, the ratio NaN
  where nothing was covered and left out of the mean.

Shape legend (docs/architecture.md): B images, M ground-truth objects, N detections, T IoU thresholds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from anchorlab.boxes import pairwise_iou

__all__ = [
    "DEFAULT_IOU_THRESHOLDS",
    "NO_CAP",
    "PROTOCOLS",
    "NMSRecallProtocol",
    "best_overlap",
    "covered_objects",
    "get_protocol",
    "nms_recall",
    "protocol_nms_recall",
    "protocol_result",
    "recall_from_overlaps",
]

#: COCO's thresholds 0.50, 0.55, ..., 0.95.
DEFAULT_IOU_THRESHOLDS = np.round(np.arange(0.5, 0.951, 0.05), 2)

ArrayLike = torch.Tensor | np.ndarray | Sequence[Any]

#: No cap: a count larger than any number of candidates (``model.inference`` keys must be positive ints).
NO_CAP = 2**62


@dataclass(frozen=True)
class NMSRecallProtocol:
    """Everything an NMS-recall number depends on (see the module docstring).

    ``inference``: overrides of the model's inference settings for the prediction pass (empty: the
    model's own); ``uncovered_ratio``: the ratio at a threshold where no object was covered before NMS
    (0.0 counts it as a total loss, NaN leaves it out of the mean); ``reported``: the thresholds a
    summary shows besides the mean.
    """

    name: str
    iou_thresholds: tuple[float, ...]
    strict: bool
    class_aware: bool
    uncovered_ratio: float
    reported: tuple[float, ...]
    inference: Mapping[str, Any] = field(default_factory=dict)


PROTOCOLS: dict[str, NMSRecallProtocol] = {
    "freeanchor": NMSRecallProtocol(
        name="freeanchor",
        iou_thresholds=tuple(round(0.5 + 0.05 * i, 2) for i in range(9)),
        strict=True,
        class_aware=False,
        uncovered_ratio=0.0,
        reported=(0.5, 0.6, 0.7, 0.8, 0.9),
        inference={"score_thresh": 0.05, "topk_per_level": NO_CAP, "max_detections": NO_CAP},
    ),
    "anchorlab": NMSRecallProtocol(
        name="anchorlab",
        iou_thresholds=tuple(float(t) for t in DEFAULT_IOU_THRESHOLDS),
        strict=False,
        class_aware=True,
        uncovered_ratio=float("nan"),
        reported=(0.5, 0.75),
    ),
}


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


def best_overlap(
    gt_boxes: ArrayLike,
    det_boxes: ArrayLike,
    gt_labels: ArrayLike | None = None,
    det_labels: ArrayLike | None = None,
) -> torch.Tensor:
    """Each object's best IoU with any detection of one image (of its own label when both label arrays
    are given): ``[M]``, -1 where no detection qualifies. ``gt_boxes [M, 4]``, ``det_boxes [N, 4]`` xyxy."""
    gt = _boxes(gt_boxes)
    det = _boxes(det_boxes, like=gt).to(gt.dtype)
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
    return iou.amax(dim=1) if iou.shape[1] else iou.new_full((iou.shape[0],), -1.0)


def covered_objects(
    gt_boxes: ArrayLike,
    det_boxes: ArrayLike,
    iou_thresholds: ArrayLike = DEFAULT_IOU_THRESHOLDS,
    gt_labels: ArrayLike | None = None,
    det_labels: ArrayLike | None = None,
    *,
    strict: bool = False,
) -> torch.Tensor:
    """Which objects of one image have a detection of IoU >= t (``strict``: IoU > t), for every t.

    Args:
        gt_boxes: ``[M, 4]`` xyxy. det_boxes: ``[N, 4]`` xyxy. iou_thresholds: ``[T]``.
        gt_labels, det_labels: ``[M]`` and ``[N]``; when both are given, a detection only covers
            objects of its own label.
        strict: compare with ``>`` instead of ``>=``.

    Returns:
        Bool ``[M, T]``.
    """
    best = best_overlap(gt_boxes, det_boxes, gt_labels, det_labels)
    return _covered(best, _as_tensor(iou_thresholds, like=best, dtype=best.dtype).reshape(-1), strict)


def _covered(best: torch.Tensor, thresholds: torch.Tensor, strict: bool) -> torch.Tensor:
    """``best [M]`` against ``thresholds [T]`` -> bool ``[M, T]``."""
    return best[:, None] > thresholds[None, :] if strict else best[:, None] >= thresholds[None, :]


def _check_lengths(name: str, items: Sequence[Any] | None, b: int) -> None:
    if items is not None and len(items) != b:
        raise ValueError(f"{name} has {len(items)} images, gt_boxes has {b}")


def _ratio(after: np.ndarray, before: np.ndarray, uncovered: float = float("nan")) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(before > 0, after / np.maximum(before, 1e-300), uncovered)


def _thresholds(iou_thresholds: ArrayLike) -> np.ndarray:
    thresholds = np.asarray(iou_thresholds, dtype=np.float64).reshape(-1)
    if thresholds.size == 0 or (thresholds <= 0).any() or (thresholds > 1).any():
        raise ValueError(f"IoU thresholds must lie in (0, 1], got {thresholds.tolist()}")
    return thresholds


def recall_from_overlaps(
    before: Sequence[torch.Tensor],
    after: Sequence[torch.Tensor],
    iou_thresholds: ArrayLike = DEFAULT_IOU_THRESHOLDS,
    *,
    strict: bool = False,
    uncovered_ratio: float = float("nan"),
) -> dict[str, Any]:
    """Recall before / after NMS from each image's ``best_overlap`` before and after (B tensors ``[M_i]``).

    Returns ``iou_thresholds``, ``recall_before``, ``recall_after``, ``ratio`` (T floats each),
    ``mean_recall_before``, ``mean_recall_after``, ``mean_ratio`` and ``num_objects``; see ``nms_recall``.
    """
    thresholds = _thresholds(iou_thresholds)
    if len(before) != len(after):
        raise ValueError(f"{len(before)} images before NMS but {len(after)} after")
    hits_before = np.zeros(thresholds.size, dtype=np.int64)
    hits_after = np.zeros(thresholds.size, dtype=np.int64)
    num_objects = 0
    for b, a in zip(before, after, strict=True):
        t = torch.as_tensor(thresholds, dtype=b.dtype, device=b.device)
        hits_before += _covered(b, t, strict).sum(dim=0).cpu().numpy()
        hits_after += _covered(a.to(b.dtype), t, strict).sum(dim=0).cpu().numpy()
        num_objects += int(b.shape[0])
    denom = float(num_objects) if num_objects else np.nan
    recall_before = hits_before / denom
    recall_after = hits_after / denom
    ratio = _ratio(hits_after.astype(np.float64), hits_before.astype(np.float64), uncovered_ratio)
    return {
        "iou_thresholds": [round(float(t), 6) for t in thresholds],
        "recall_before": recall_before.tolist(),
        "recall_after": recall_after.tolist(),
        "ratio": ratio.tolist(),
        "mean_recall_before": float(np.mean(recall_before)),
        "mean_recall_after": float(np.mean(recall_after)),
        "mean_ratio": float(np.nanmean(ratio)) if np.isfinite(ratio).any() else float("nan"),
        "num_objects": num_objects,
        "strict": strict,
    }


def nms_recall(
    gt_boxes: Sequence[ArrayLike],
    pre_nms: Sequence[ArrayLike],
    post_nms: Sequence[ArrayLike],
    iou_thresholds: ArrayLike = DEFAULT_IOU_THRESHOLDS,
    *,
    gt_labels: Sequence[ArrayLike] | None = None,
    pre_labels: Sequence[ArrayLike] | None = None,
    post_labels: Sequence[ArrayLike] | None = None,
    strict: bool = False,
    uncovered_ratio: float = float("nan"),
) -> dict[str, Any]:
    """Recall before and after NMS over a set of images, at several IoU thresholds.

    Args:
        gt_boxes: B arrays ``[M_i, 4]`` xyxy of the objects (crowd regions excluded).
        pre_nms: B arrays ``[N_i, 4]`` xyxy, the detections entering NMS.
        post_nms: B arrays ``[N'_i, 4]`` xyxy, the detections NMS kept.
        iou_thresholds: ``[T]`` thresholds in ``(0, 1]``; COCO's ten by default.
        gt_labels, pre_labels, post_labels: B label arrays each; all three make the match
            class-aware, none class-agnostic.
        strict: an object is covered at ``t`` by IoU ``> t`` instead of ``>= t``.
        uncovered_ratio: the ratio where no object was covered before NMS (NaN: left out of the mean).

    Returns:
        ``iou_thresholds``, ``recall_before``, ``recall_after`` and ``ratio`` (after / before), lists of
        T floats; ``mean_recall_before``, ``mean_recall_after``, ``mean_ratio`` (means over thresholds);
        ``num_objects``, ``num_pre_nms``, ``num_post_nms`` (totals); ``class_aware``, ``strict``. Recalls
        are NaN when there are no objects.
    """
    thresholds = _thresholds(iou_thresholds)
    b = len(gt_boxes)
    for name, items in (("pre_nms", pre_nms), ("post_nms", post_nms)):
        _check_lengths(name, items, b)
    given = [x is not None for x in (gt_labels, pre_labels, post_labels)]
    if any(given) and not all(given):
        raise ValueError("class-aware NMS recall needs gt_labels, pre_labels and post_labels together")
    class_aware = all(given)
    for name, items in (("gt_labels", gt_labels), ("pre_labels", pre_labels), ("post_labels", post_labels)):
        _check_lengths(name, items, b)

    before, after = [], []
    for i in range(b):  # one IoU matrix per image and per stage
        gl = gt_labels[i] if gt_labels is not None else None
        pre_l = pre_labels[i] if pre_labels is not None else None
        post_l = post_labels[i] if post_labels is not None else None
        before.append(best_overlap(gt_boxes[i], pre_nms[i], gl, pre_l))
        after.append(best_overlap(gt_boxes[i], post_nms[i], gl, post_l))
    result = recall_from_overlaps(before, after, thresholds, strict=strict, uncovered_ratio=uncovered_ratio)
    result["num_pre_nms"] = sum(int(_boxes(x).shape[0]) for x in pre_nms)
    result["num_post_nms"] = sum(int(_boxes(x).shape[0]) for x in post_nms)
    result["class_aware"] = class_aware
    return result


def get_protocol(protocol: str | NMSRecallProtocol) -> NMSRecallProtocol:
    """A protocol by name (``PROTOCOLS``); a ``ValueError`` names the choices."""
    if isinstance(protocol, NMSRecallProtocol):
        return protocol
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown NMS-recall protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    return PROTOCOLS[protocol]


def protocol_result(
    protocol: str | NMSRecallProtocol, before: Sequence[torch.Tensor], after: Sequence[torch.Tensor]
) -> dict[str, Any]:
    """``recall_from_overlaps`` with the protocol's thresholds and conventions, plus ``protocol`` (its
    name), ``class_aware`` and ``reported`` (``{"0.50": ratio, ...}`` at its summary thresholds). The
    overlaps must be ``best_overlap``s, class-aware exactly when the protocol is."""
    protocol = get_protocol(protocol)
    result = recall_from_overlaps(
        before,
        after,
        protocol.iou_thresholds,
        strict=protocol.strict,
        uncovered_ratio=protocol.uncovered_ratio,
    )
    by_threshold = dict(zip(result["iou_thresholds"], result["ratio"], strict=True))
    result.update(
        protocol=protocol.name,
        class_aware=protocol.class_aware,
        reported={f"{t:.2f}": by_threshold.get(round(t, 6)) for t in protocol.reported},
    )
    return result


def protocol_nms_recall(
    protocol: str | NMSRecallProtocol,
    gt_boxes: Sequence[ArrayLike],
    pre_nms: Sequence[ArrayLike],
    post_nms: Sequence[ArrayLike],
    *,
    gt_labels: Sequence[ArrayLike] | None = None,
    pre_labels: Sequence[ArrayLike] | None = None,
    post_labels: Sequence[ArrayLike] | None = None,
) -> dict[str, Any]:
    """NMS recall of boxes under a named protocol (``PROTOCOLS``); labels are used only by a class-aware
    one. The detections must come from a prediction pass with the protocol's ``inference`` overrides.
    ``mean_ratio`` is the headline number (the FreeAnchor authors' "NR [0.5:0.9]")."""
    protocol = get_protocol(protocol)
    b = len(gt_boxes)
    for name, items in (("pre_nms", pre_nms), ("post_nms", post_nms)):
        _check_lengths(name, items, b)
    use = protocol.class_aware
    if use and (gt_labels is None or pre_labels is None or post_labels is None):
        raise ValueError(f"the {protocol.name} protocol is class-aware: give gt, pre and post labels")
    before = [
        best_overlap(gt_boxes[i], pre_nms[i], *((gt_labels[i], pre_labels[i]) if use else ()))  # type: ignore[index]
        for i in range(b)
    ]
    after = [
        best_overlap(gt_boxes[i], post_nms[i], *((gt_labels[i], post_labels[i]) if use else ()))  # type: ignore[index]
        for i in range(b)
    ]
    return protocol_result(protocol, before, after)
