"""Assigners: which prior learns which object. Pure functions of tensors, batched over images.

Every assigner returns, per prior, the matched object index ``0..M_i-1`` or one of the two constants
below -- defined here once, used everywhere (heads, losses, reports, tests).
"""

#: The prior is a negative: it learns "no object".
BACKGROUND = -1
#: The prior contributes to no loss (between thresholds, or covered by a crowd region).
IGNORE = -2

# The submodules import the constants above, so they are imported after them.
from anchorlab.assign.centernet import CenterNetTargets, centernet_targets, gaussian_radius  # noqa: E402
from anchorlab.assign.common import batched_ioa, batched_iou, gather_matched, pad_boxes  # noqa: E402
from anchorlab.assign.fcos import (  # noqa: E402
    FCOS_REGRESS_RANGES,
    FcosAssignment,
    fcos_assign,
    level_index_from_strides,
)
from anchorlab.assign.grid import COLLISION_POLICIES, YOLO_SIZE_RANGES, GridAssignment, grid_assign  # noqa: E402
from anchorlab.assign.max_iou import Assignment, max_iou_assign  # noqa: E402

__all__ = [
    "BACKGROUND",
    "COLLISION_POLICIES",
    "FCOS_REGRESS_RANGES",
    "IGNORE",
    "YOLO_SIZE_RANGES",
    "Assignment",
    "CenterNetTargets",
    "FcosAssignment",
    "GridAssignment",
    "batched_ioa",
    "batched_iou",
    "centernet_targets",
    "fcos_assign",
    "gather_matched",
    "gaussian_radius",
    "grid_assign",
    "level_index_from_strides",
    "max_iou_assign",
    "pad_boxes",
]
