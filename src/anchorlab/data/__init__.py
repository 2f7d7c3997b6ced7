"""Datasets: COCO (canonical), Pascal VOC, YOLO (folders, data.yaml) and CVAT YOLO 1.1 loaders with
validation, a COCO writer and converter, image decoding (``read_rgb``, ``image_size``) and a synthetic
shapes dataset. See docs/data.md."""

from anchorlab.data.categories import align_categories, check_printable, plot_text
from anchorlab.data.coco import load_coco, write_coco
from anchorlab.data.convert import convert, detect_format, load_dataset
from anchorlab.data.core import Action, Category, DataError, DetectionSet, ImageRecord, Problem, ProblemReport
from anchorlab.data.image import ImageError, ImageTooLarge, image_size, read_rgb
from anchorlab.data.synthetic import SyntheticPaths, make_synthetic
from anchorlab.data.validate import KINDS, resolve_policy
from anchorlab.data.voc import load_voc
from anchorlab.data.yolo import load_cvat, load_yolo

__all__ = [
    "KINDS",
    "Action",
    "Category",
    "DataError",
    "DetectionSet",
    "ImageError",
    "ImageRecord",
    "ImageTooLarge",
    "Problem",
    "ProblemReport",
    "SyntheticPaths",
    "align_categories",
    "check_printable",
    "convert",
    "detect_format",
    "image_size",
    "load_coco",
    "load_cvat",
    "load_dataset",
    "load_voc",
    "load_yolo",
    "make_synthetic",
    "plot_text",
    "read_rgb",
    "resolve_policy",
    "write_coco",
]
