"""Evaluation: COCO metrics (faster-coco-eval) and FreeAnchor's NMS recall."""

from anchorlab.evaluation.coco import (
    METRIC_NAMES,
    coco_eval_details,
    coco_metrics,
    detections_to_coco_results,
    load_json,
)
from anchorlab.evaluation.nms_recall import (
    DEFAULT_IOU_THRESHOLDS,
    PROTOCOLS,
    NMSRecallProtocol,
    covered_objects,
    nms_recall,
    protocol_nms_recall,
)

__all__ = [
    "DEFAULT_IOU_THRESHOLDS",
    "METRIC_NAMES",
    "PROTOCOLS",
    "NMSRecallProtocol",
    "coco_eval_details",
    "coco_metrics",
    "covered_objects",
    "detections_to_coco_results",
    "load_json",
    "nms_recall",
    "protocol_nms_recall",
]
