"""Reports: the assignment report (every strategy on a dataset's ground truth) and its pictures."""

from anchorlab.report.assignment import (
    SIZE_BUCKETS,
    STRATEGIES,
    ImageAssignment,
    assignment_report,
    image_assignment,
)
from anchorlab.report.pictures import save_pictures

__all__ = [
    "SIZE_BUCKETS",
    "STRATEGIES",
    "ImageAssignment",
    "assignment_report",
    "image_assignment",
    "save_pictures",
]
