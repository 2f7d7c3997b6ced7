"""Assigners: which prior learns which object. Pure functions of tensors, batched over images.

Every assigner returns, per prior, the matched object index ``0..M_i-1`` or one of the two constants
below -- defined here once, used everywhere (heads, losses, reports, tests).
"""

#: The prior is a negative: it learns "no object".
BACKGROUND = -1
#: The prior contributes to no loss (between thresholds, or covered by a crowd region).
IGNORE = -2

# The submodules import the constants above, so they are imported after them.
from anchorlab.assign.common import batched_ioa, batched_iou, gather_matched, pad_boxes  # noqa: E402
from anchorlab.assign.max_iou import Assignment, max_iou_assign  # noqa: E402

__all__ = [
    "BACKGROUND",
    "IGNORE",
    "Assignment",
    "batched_ioa",
    "batched_iou",
    "gather_matched",
    "max_iou_assign",
    "pad_boxes",
]
