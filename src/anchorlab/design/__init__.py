"""Anchor design from data: box statistics after the resize, proposals and coverage (best possible recall).

* ``resize_boxes`` / ``box_stats``: boxes as the detector sees them -- after the evaluation resize
  (detectron2's ``ResizeShortestEdge``: shorter side ``min_size``, the largest if a list, longer side at most
  ``max_size``), clipped to the image, boxes under 1 px dropped, as ``data.transforms`` does. Sizes, aspect
  ratios (``h / w``) and the COCO size buckets (small < 32², medium < 96², large) use the area AFTER resize.
* ``propose_from_ranges``: RetinaNet-style octave anchors whose ratios are quantiles of the data's aspect
  ratios and whose smallest anchor sits at the data's 5th-percentile size.
* ``propose_seed``: sizes evenly spaced from the data's smallest to largest object side, ratios 1:1 and
  2:1, anchors at cell centres (the min / max recipe of
  the tutorial "Anchor boxes in object detection: when, where and how to propose them").
* ``kmeans_anchors`` / ``propose_kmeans``: YOLOv2 k-means with distance ``1 - IoU`` of centre-aligned
  ``(w, h)`` shapes, spread over the FPN levels by area.
* ``coverage``: best possible recall of an ``AnchorGenerator`` on the real anchor grid of each padded image.

Shape legend (docs/architecture.md): N objects (all images), B images, R priors, L levels, A anchors
per location.

Split into ``stats`` (resize + statistics), ``proposals`` (ranges, k-means) and ``grid_coverage``
(coverage); every public name is importable from ``anchorlab.design``.
"""

from anchorlab.design.grid_coverage import Coverage, coverage
from anchorlab.design.proposals import (
    Proposal,
    anchor_generator,
    kmeans_anchors,
    propose_from_ranges,
    propose_kmeans,
    propose_seed,
)
from anchorlab.design.stats import BUCKETS, BoxStats, ResizedBoxes, box_stats, resize_boxes, shape_iou

__all__ = [
    "BUCKETS",
    "BoxStats",
    "Coverage",
    "Proposal",
    "ResizedBoxes",
    "anchor_generator",
    "box_stats",
    "coverage",
    "kmeans_anchors",
    "propose_from_ranges",
    "propose_kmeans",
    "propose_seed",
    "resize_boxes",
    "shape_iou",
]
