"""Datasets: COCO (canonical), Pascal VOC and YOLO loaders with validation, a COCO writer and converter,
and a synthetic shapes dataset. See docs/data.md."""

from anchorlab.data.coco import load_coco, write_coco
from anchorlab.data.convert import convert, detect_format, load_dataset
from anchorlab.data.core import Action, Category, DataError, DetectionSet, ImageRecord, Problem, ProblemReport
from anchorlab.data.synthetic import SyntheticPaths, make_synthetic
from anchorlab.data.validate import KINDS, resolve_policy
from anchorlab.data.voc import load_voc
from anchorlab.data.yolo import load_yolo

__all__ = [
    "KINDS",
    "Action",
    "Category",
    "DataError",
    "DetectionSet",
    "ImageRecord",
    "Problem",
    "ProblemReport",
    "SyntheticPaths",
    "convert",
    "detect_format",
    "load_coco",
    "load_dataset",
    "load_voc",
    "load_yolo",
    "make_synthetic",
    "resolve_policy",
    "write_coco",
]
