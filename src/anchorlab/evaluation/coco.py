"""COCO detection metrics through faster-coco-eval (same numbers as pycocotools, in C++).

``coco_metrics`` returns the 12 standard summary numbers as fractions in ``[0, 1]``; a number whose
subset holds no ground truth at all (e.g. ``APs`` on a data set without small objects) is ``-1``, as in
pycocotools. ``coco_eval_details`` keeps the accumulated precision array for PR-curve plots, and
``detections_to_coco_results`` turns model outputs (contiguous labels, ``xyxy``) into COCO result
dicts (original category ids, ``xywh``).

Shape legend (docs/architecture.md): B images, K classes; COCOeval's own axes are T IoU thresholds, R recall
thresholds (101), A area ranges (all, small, medium, large), M max-detection limits (1, 10, 100).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from faster_coco_eval import COCO, COCOeval_faster

from anchorlab.boxes import xyxy_to_xywh

__all__ = [
    "METRIC_NAMES",
    "coco_eval_details",
    "coco_metrics",
    "detections_to_coco_results",
    "load_json",
]

#: The 12 summary numbers, in the order COCOeval.summarize() prints them.
METRIC_NAMES: tuple[str, ...] = (
    "AP",
    "AP50",
    "AP75",
    "APs",
    "APm",
    "APl",
    "AR1",
    "AR10",
    "AR100",
    "ARs",
    "ARm",
    "ARl",
)
_IOU_TYPES = ("bbox", "segm")

Detections = Sequence[Mapping[str, Any]] | str | Path


def load_json(path: str | Path) -> Any:
    """Read a JSON file; malformed JSON raises ``ValueError`` naming the file, line and column."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        with path.open(encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{path}: malformed JSON at line {err.lineno}, column {err.colno}: {err.msg}"
        ) from err
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not a UTF-8 text file ({err.reason})") from err


def _load_gt(gt: str | Path | Mapping[str, Any]) -> COCO:
    data = dict(gt) if isinstance(gt, Mapping) else load_json(gt)
    where = "ground truth" if isinstance(gt, Mapping) else str(gt)
    if not isinstance(data, dict) or "images" not in data or "categories" not in data:
        raise ValueError(f"{where}: not a COCO annotation file (needs 'images' and 'categories')")
    data.setdefault("annotations", [])
    return COCO(data, print_function=_quiet)


def _quiet(*_args: object, **_kwargs: object) -> None:
    """Swallow faster-coco-eval's progress messages."""


def _ids_preview(ids: Sequence[int], limit: int = 10) -> str:
    try:
        ordered = sorted(ids)
    except TypeError:  # mixed types, e.g. "7" and 7
        ordered = sorted(ids, key=repr)
    shown = ", ".join(repr(i) if isinstance(i, str) else str(i) for i in ordered[:limit])
    return shown + (f", ... ({len(ids)} in all)" if len(ids) > limit else "")


def _check_results(results: list[dict[str, Any]], gt: COCO, iou_type: str, where: str) -> None:
    """Fail early, naming the offenders, on results COCOeval would reject with a bare assert or ignore."""
    key = "bbox" if iou_type == "bbox" else "segmentation"
    for i, r in enumerate(results):
        missing = [k for k in ("image_id", "category_id", key, "score") if k not in r]
        if missing:
            raise ValueError(f"{where}: result {i} lacks {', '.join(missing)}")
        if key == "bbox" and (not isinstance(r["bbox"], list | tuple) or len(r["bbox"]) != 4):
            raise ValueError(f"{where}: result {i} has bbox {r['bbox']!r}; expected [x, y, w, h]")
    unknown_images = {r["image_id"] for r in results} - set(gt.getImgIds())
    if unknown_images:
        raise ValueError(
            f"{where}: detections on image ids not in the ground truth: {_ids_preview(list(unknown_images))}"
        )
    unknown_cats = {r["category_id"] for r in results} - set(gt.getCatIds())
    if unknown_cats:
        raise ValueError(
            f"{where}: detections with category ids not in the ground truth: "
            f"{_ids_preview(list(unknown_cats))} (known: {_ids_preview(gt.getCatIds())}); "
            "results must use the file's category ids, not contiguous labels"
        )


def _load_results(detections: Detections) -> tuple[list[dict[str, Any]], str]:
    where = "detections"
    if isinstance(detections, str | Path):
        where = str(detections)
        detections = load_json(detections)
        if isinstance(detections, dict) and "annotations" in detections:  # a COCO file of results
            detections = detections["annotations"]
        if not isinstance(detections, list):
            raise ValueError(f"{where}: expected a JSON list of COCO results")
    for i, r in enumerate(detections):
        if not isinstance(r, Mapping):
            raise ValueError(f"{where}: result {i} is {type(r).__name__}, not a dict")
    # Copies: COCO.loadRes writes ``id``, ``area`` and ``segmentation`` into the dicts it gets.
    return [dict(r) for r in detections], where


def _run_eval(
    gt_json_path: str | Path | Mapping[str, Any], detections: Detections, iou_type: str
) -> tuple[COCOeval_faster, list[str]]:
    """Evaluate and summarise; returns the evaluator and the captured summary lines."""
    if iou_type not in _IOU_TYPES:
        raise ValueError(f"iou_type {iou_type!r} is not supported; choose one of {', '.join(_IOU_TYPES)}")
    gt = _load_gt(gt_json_path)
    results, where = _load_results(detections)
    _check_results(results, gt, iou_type, where)
    dt = gt.loadRes(results)
    lines: list[str] = []
    evaluator = COCOeval_faster(
        gt, dt, iou_type, print_function=lambda *a, **_: lines.append(" ".join(map(str, a)))
    )
    evaluator.evaluate()
    evaluator.accumulate()
    lines.clear()  # keep only the summary table
    evaluator.summarize()
    return evaluator, lines


def _category_names(evaluator: COCOeval_faster) -> list[str]:
    """Category names in ``params.catIds`` order; repeated names get their id appended."""
    cats = evaluator.cocoGt.loadCats(evaluator.params.catIds)
    names = [str(c.get("name", c["id"])) for c in cats]
    return [f"{n} ({c['id']})" if names.count(n) > 1 else n for n, c in zip(names, cats, strict=True)]


def _mean_valid(x: np.ndarray) -> float:
    valid = x[x > -1]
    return float(valid.mean()) if valid.size else -1.0


def coco_metrics(
    gt_json_path: str | Path | Mapping[str, Any],
    detections: Detections,
    *,
    per_category: bool = True,
    iou_type: str = "bbox",
) -> dict[str, Any]:
    """The 12 COCO summary numbers of ``detections`` against a COCO ground-truth file.

    Args:
        gt_json_path: COCO annotation file (or its already-loaded dict).
        detections: list of COCO result dicts ``{image_id, category_id, bbox: [x, y, w, h], score}``
            with the file's category ids, or the path of a results JSON. An empty list is valid.
        per_category: also return ``per_category`` and ``per_category_AP50``, ``{category name: AP}``.
        iou_type: ``"bbox"`` or ``"segm"``.

    Returns:
        ``{name: float for name in METRIC_NAMES}`` (fractions; ``-1`` where the subset has no ground
        truth), plus the per-category dicts when asked (``-1`` for categories without ground truth).

    Raises:
        FileNotFoundError, ValueError: missing or malformed files, detections on unknown image or
        category ids (the message lists them).
    """
    evaluator, _ = _run_eval(gt_json_path, detections, iou_type)
    stats = np.asarray(evaluator.stats, dtype=np.float64)[: len(METRIC_NAMES)]
    out: dict[str, Any] = {name: float(v) for name, v in zip(METRIC_NAMES, stats, strict=True)}
    if per_category:
        precision = evaluator.eval["precision"]  # [T, R, K, A, M]
        iou50 = int(np.argmin(np.abs(evaluator.params.iouThrs - 0.5)))
        names = _category_names(evaluator)
        out["per_category"] = {n: _mean_valid(precision[:, :, k, 0, -1]) for k, n in enumerate(names)}
        out["per_category_AP50"] = {
            n: _mean_valid(precision[iou50, :, k, 0, -1]) for k, n in enumerate(names)
        }
    return out


def coco_eval_details(
    gt_json_path: str | Path | Mapping[str, Any], detections: Detections, *, iou_type: str = "bbox"
) -> dict[str, Any]:
    """Accumulated COCOeval arrays for PR curves and deeper analysis.

    Returns a dict with ``precision`` ``[T, R, K, A, M]`` (interpolated precision at each recall
    threshold, ``-1`` where a category has no ground truth), ``recall`` ``[T, K, A, M]``, ``scores``
    ``[T, R, K, A, M]`` (score at which that precision is reached), ``iou_thresholds`` ``[T]``,
    ``recall_thresholds`` ``[R]``, ``category_ids`` / ``category_names`` ``[K]``, ``area_ranges``
    ``[A]`` labels, ``max_dets`` ``[M]``, and ``summary``, the text COCOeval would have printed.
    """
    evaluator, lines = _run_eval(gt_json_path, detections, iou_type)
    p = evaluator.params
    return {
        "precision": np.asarray(evaluator.eval["precision"]),
        "recall": np.asarray(evaluator.eval["recall"]),
        "scores": np.asarray(evaluator.eval["scores"]),
        "iou_thresholds": np.asarray(p.iouThrs),
        "recall_thresholds": np.asarray(p.recThrs),
        "category_ids": [int(c) for c in p.catIds],
        "category_names": _category_names(evaluator),
        "area_ranges": list(p.areaRngLbl),
        "max_dets": [int(m) for m in p.maxDets],
        "summary": "\n".join(lines),
    }


def _as_numpy(x: Any, dtype: type) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def _category_table(
    label_to_category_id: Sequence[int] | Mapping[int, int] | Callable[[np.ndarray], Any],
) -> Callable[[np.ndarray], np.ndarray]:
    """A function mapping a label array ``[K]`` to category ids ``[K]``; unknown labels raise."""
    if callable(label_to_category_id) and not isinstance(label_to_category_id, Mapping):
        return lambda labels: np.asarray(label_to_category_id(labels), dtype=np.int64)
    if isinstance(label_to_category_id, Mapping):
        mapping = {int(k): int(v) for k, v in label_to_category_id.items()}
        table = np.full(max(mapping, default=-1) + 1, -1, dtype=np.int64)
        table[list(mapping)] = list(mapping.values())
    else:
        table = np.asarray(list(label_to_category_id), dtype=np.int64)

    def lookup(labels: np.ndarray) -> np.ndarray:
        inside = (labels >= 0) & (labels < len(table))
        ids = np.full(labels.shape, -1, dtype=np.int64)
        ids[inside] = table[labels[inside]]
        if (ids < 0).any():
            raise ValueError(f"labels {sorted(set(labels[ids < 0].tolist()))} have no category id")
        return ids

    return lookup


def detections_to_coco_results(
    detections: Sequence[Mapping[str, Any]],
    image_ids: Sequence[int],
    label_to_category_id: Sequence[int] | Mapping[int, int] | Callable[[np.ndarray], Any],
    scale: Sequence[float] | Sequence[tuple[float, float]] | None = None,
) -> list[dict[str, Any]]:
    """COCO result dicts from model outputs.

    Args:
        detections: B dicts ``{"boxes": [K, 4] xyxy, "scores": [K], "labels": [K]}`` (tensors or
            arrays) with contiguous labels ``0..C-1``.
        image_ids: B COCO image ids, in the same order.
        label_to_category_id: label -> the file's category id, as a sequence indexed by label, a
            mapping, or a function of a label array (e.g. ``DetectionSet.label_to_category_id``).
        scale: optional B resize factors (one float, or ``(sx, sy)``) applied to the images before
            the model; boxes are divided by them to return to original image coordinates.

    Returns:
        One ``{image_id, category_id, bbox: [x, y, w, h], score}`` per detection, plain Python numbers.
    """
    if len(detections) != len(image_ids):
        raise ValueError(f"{len(detections)} detection dicts but {len(image_ids)} image ids")
    if scale is not None and len(scale) != len(detections):
        raise ValueError(f"{len(detections)} detection dicts but {len(scale)} scales")
    lookup = _category_table(label_to_category_id)
    results: list[dict[str, Any]] = []
    for b, (det, image_id) in enumerate(zip(detections, image_ids, strict=True)):
        boxes = _as_numpy(det["boxes"], np.float64).reshape(-1, 4)
        scores = _as_numpy(det["scores"], np.float64).reshape(-1)
        labels = _as_numpy(det["labels"], np.int64).reshape(-1)
        if not len(boxes) == len(scores) == len(labels):
            raise ValueError(
                f"image {image_id}: {len(boxes)} boxes, {len(scores)} scores, {len(labels)} labels"
            )
        if scale is not None:
            s = np.asarray(scale[b], dtype=np.float64).reshape(-1)
            sx, sy = (s[0], s[0]) if s.size == 1 else (s[0], s[1])
            if not (math.isfinite(sx) and math.isfinite(sy) and sx > 0 and sy > 0):
                raise ValueError(f"image {image_id}: scale must be positive, got {scale[b]!r}")
            boxes = boxes / np.array([sx, sy, sx, sy])
        xywh = xyxy_to_xywh(boxes)
        cats = lookup(labels)
        results.extend(
            {"image_id": int(image_id), "category_id": int(c), "bbox": box, "score": float(s)}
            for c, box, s in zip(cats.tolist(), xywh.tolist(), scores.tolist(), strict=True)
        )
    return results
