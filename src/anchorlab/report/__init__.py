"""Reports: the assignment report (every strategy on a dataset's ground truth) and its pictures; the
report of one training run (``write_run_report``, ``anchorlab report RUN_DIR``)."""

from anchorlab.report.assignment import (
    SIZE_BUCKETS,
    STRATEGIES,
    ImageAssignment,
    assignment_report,
    image_assignment,
)
from anchorlab.report.pictures import save_pictures
from anchorlab.report.run import write_run_report

__all__ = [
    "SIZE_BUCKETS",
    "STRATEGIES",
    "ImageAssignment",
    "assignment_report",
    "image_assignment",
    "save_pictures",
    "write_run_report",
]
