"""The in-memory dataset every annotation format loads into, and the problem report of validation.

One ``DetectionSet`` holds ``ImageRecord``s with absolute-pixel ``xyxy`` float32 boxes and contiguous
labels ``0..K-1``; ``categories`` keeps the file's category ids (label ``i`` is ``categories[i]``) so
every output can go back to them. Crowd annotations are ignore regions, never objects.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import numpy as np

__all__ = ["Action", "Category", "DataError", "DetectionSet", "ImageRecord", "Problem", "ProblemReport"]


class Action(StrEnum):
    """What a loader does with a problem of a kind: stop with an error, fix it by clipping, drop it, or
    (for ``image_outside`` only) allow it."""

    ERROR = "error"
    CLIP = "clip"
    DROP = "drop"
    ALLOW = "allow"


@dataclass(frozen=True)
class Category:
    id: int
    name: str
    supercategory: str = ""


@dataclass
class ImageRecord:
    """One image and its annotations. ``boxes [M, 4]`` xyxy float32, ``labels [M]`` int64 in 0..K-1,
    ``ann_ids [M]`` int64 (the file's annotation ids, or generated ones for VOC/YOLO),
    ``crowd [C, 4]`` xyxy ignore regions and ``crowd_labels [C]`` their labels (COCO evaluation ignores
    detections in a crowd region of the same category)."""

    id: int
    file: Path
    width: int
    height: int
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))
    ann_ids: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))
    crowd: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    crowd_labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))
    #: ``[M]`` / ``[C]`` the file's annotation areas (COCO ``area``; NaN: none, the box's area is used)
    areas: np.ndarray | None = None
    crowd_areas: np.ndarray | None = None

    @property
    def num_objects(self) -> int:
        return int(self.boxes.shape[0])


@dataclass
class DetectionSet:
    """Images, categories and where they came from. ``label`` i <-> ``categories[i].id``.
    ``max_pixels``: the pixel limit decoding the images applies (None: ``image.DEFAULT_MAX_PIXELS``)."""

    images: list[ImageRecord]
    categories: list[Category]
    source: Path | None = None
    max_pixels: int | None = None

    @property
    def num_classes(self) -> int:
        return len(self.categories)

    @property
    def class_names(self) -> list[str]:
        return [c.name for c in self.categories]

    def label_to_category_id(self, labels):
        """Map contiguous labels (int or array) to the file's category ids."""
        table = np.array([c.id for c in self.categories], dtype=np.int64)
        return table[np.asarray(labels, dtype=np.int64)]

    @property
    def category_id_to_label(self) -> dict[int, int]:
        return {c.id: i for i, c in enumerate(self.categories)}

    def __len__(self) -> int:
        return len(self.images)


@dataclass(frozen=True)
class Problem:
    """One thing wrong in the input, located by file, image and annotation id (where they apply)."""

    kind: str
    message: str
    file: str
    action: Action
    image: str | int | None = None
    annotation: int | None = None
    line: int | None = None
    column: int | None = None

    def __str__(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}" + (f":{self.column}" if self.column is not None else "")
        parts = [where]
        if self.image is not None:
            parts.append(f"image {self.image}")
        if self.annotation is not None:
            parts.append(f"annotation {self.annotation}")
        return f"{', '.join(parts)}: {self.kind}: {self.message} [{self.action.value}]"


class DataError(ValueError):
    """Bad input that a loader could not fix under its policy. ``problems`` lists every error found."""

    def __init__(self, message: str, problems: list[Problem] | None = None) -> None:
        self.problems = list(problems or [])
        if self.problems:
            shown = "\n".join(f"  - {p}" for p in self.problems[:20])
            more = f"\n  ... and {len(self.problems) - 20} more" if len(self.problems) > 20 else ""
            message = f"{message}\n{shown}{more}"
        super().__init__(message)


@dataclass
class ProblemReport:
    """Every problem a loader met; ``summary()`` says how many annotations were clipped or dropped and why."""

    problems: list[Problem] = field(default_factory=list)

    def add(self, problem: Problem) -> None:
        self.problems.append(problem)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.action is Action.ERROR]

    def counts(self) -> Counter[tuple[str, str]]:
        """``{(action, kind): count}``."""
        return Counter((p.action.value, p.kind) for p in self.problems)

    def summary(self) -> str:
        if not self.problems:
            return "no problems found"
        lines = [f"{n} {action}: {kind}" for (action, kind), n in sorted(self.counts().items())]
        return "; ".join(lines)

    def raise_if_errors(self, what: str) -> None:
        if self.errors:
            raise DataError(f"{what}: {len(self.errors)} error(s) remain", self.errors)
