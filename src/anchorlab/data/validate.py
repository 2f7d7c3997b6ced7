"""Validation shared by every loader: the problem kinds, their policy, and the vectorised checks.

A format parser (``coco.py``, ``voc.py``, ``yolo.py``) reports what only it can see (malformed files,
unknown categories, duplicate ids) and fills a ``FlatSet``: one row per image and one row per annotation.
``finalize`` then checks the images (missing, unreadable, size) and every box at once with numpy, applies
the policy and groups the annotations into ``ImageRecord``s. N annotations, I images.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from anchorlab.data.core import Action, Category, DataError, DetectionSet, ImageRecord, Problem, ProblemReport
from anchorlab.data.image import ImageError, describe_size_mismatch, image_size, read_rgb

__all__ = [
    "KINDS",
    "Checker",
    "FlatSet",
    "ImageCheck",
    "finalize",
    "read_image_size",
    "resolve_policy",
]

E, C, D, A = Action.ERROR, Action.CLIP, Action.DROP, Action.ALLOW

#: kind -> (default action, allowed actions, what it means). docs/data.md shows this table.
KINDS: dict[str, tuple[Action, frozenset[Action], str]] = {
    "malformed_json": (
        E,
        frozenset({E}),
        "the JSON cannot be parsed, or lacks images/annotations/categories",
    ),
    "malformed_xml": (E, frozenset({E, D}), "a VOC XML file cannot be parsed (drop: skip that image)"),
    "malformed_label": (
        E,
        frozenset({E, D}),
        "a YOLO label line is not `class cx cy w h` (drop: skip the line)",
    ),
    "malformed_annotation": (
        E,
        frozenset({E, D}),
        "an entry lacks a field or has a wrong type (drop: skip it)",
    ),
    "duplicate_category_id": (E, frozenset({E}), "two categories share an id"),
    "duplicate_image_id": (E, frozenset({E, D}), "two images share an id (drop: keep the first)"),
    "duplicate_annotation_id": (E, frozenset({E, D}), "two annotations share an id (drop: keep the first)"),
    "unknown_image": (E, frozenset({E, D}), "an annotation's image_id is not in `images`"),
    "unknown_category": (E, frozenset({E, D}), "an annotation's category_id is not in `categories`"),
    "unknown_label": (E, frozenset({E, D}), "a YOLO class index / VOC name outside the class list"),
    "image_missing": (E, frozenset({E, D}), "the image file does not exist (drop: drop the image)"),
    "image_unreadable": (
        E,
        frozenset({E, D}),
        "the image cannot be read or decoded: truncated, malformed, not an image (drop: drop the image)",
    ),
    "image_too_large": (
        E,
        frozenset({E, D}),
        "the image has more pixels than data.max_pixels / --max-pixels (drop: drop the image)",
    ),
    "image_outside": (
        E,
        frozenset({E, D, A}),
        "an image path leaves the dataset's folder (`../`, absolute path) (allow: open it anyway)",
    ),
    "image_size_invalid": (E, frozenset({E, C, D}), "recorded width/height <= 0 (clip: use the file's size)"),
    "image_size_mismatch": (
        E,
        frozenset({E, C, D}),
        "recorded size differs from the file, after EXIF orientation (clip: use the file's)",
    ),
    "box_not_finite": (D, frozenset({E, D}), "a coordinate is NaN or infinite"),
    "box_degenerate": (D, frozenset({E, D}), "box width or height <= 0"),
    "box_outside_image": (D, frozenset({E, D}), "the box lies wholly outside the image"),
    "box_partly_outside": (C, frozenset({E, C, D}), "the box crosses the image border (clip: clip it)"),
}

#: Coordinates at most this many pixels outside the image are clipped without a report (rounding noise).
CLIP_TOLERANCE = 0.01

#: How much of each image file loading checks: nothing, that it exists, its header, or a full decode.
ImageCheck = Literal["none", "exists", "header", "decode"]

#: Called as ``progress(done, total)`` while image files are checked (a command's progress bar sets it).
IMAGE_PROGRESS: ContextVar[Callable[[int, int], None] | None] = ContextVar("image_progress", default=None)


def resolve_policy(policy: Mapping[str, str | Action] | None = None) -> dict[str, Action]:
    """Defaults from ``KINDS`` with ``policy`` overrides, e.g. ``{"image_missing": "drop"}``.

    Raises ``ValueError`` naming the allowed kinds or actions on a wrong key or value."""
    out = {kind: spec[0] for kind, spec in KINDS.items()}
    for kind, action in (policy or {}).items():
        if kind not in KINDS:
            raise ValueError(f"unknown problem kind {kind!r}; known kinds: {', '.join(sorted(KINDS))}")
        allowed = KINDS[kind][1]
        try:
            act = Action(str(action).lower())
        except ValueError:
            act = None
        if act not in allowed:
            names = "|".join(sorted(a.value for a in allowed))
            raise ValueError(f"policy for {kind!r} must be one of {names}, got {action!r}")
        out[kind] = act
    return out


class Checker:
    """Records problems for one loader call: ``flag`` adds a ``Problem`` and returns the action to take."""

    def __init__(
        self,
        file: Path | str,
        policy: Mapping[str, str | Action] | None = None,
        max_pixels: int | None = None,
    ) -> None:
        self.file = str(file)
        self.policy = resolve_policy(policy)
        self.report = ProblemReport()
        self.max_pixels = max_pixels

    def inside(self, path: Path, root: Path, *, image: str | int | None = None, file=None) -> bool:
        """Whether ``path`` (an image named by the annotation file) stays inside ``root``; flags
        ``image_outside`` when it does not (unless the policy allows it) and returns False when the
        image must not be opened."""
        if is_inside(path, root) or self.policy["image_outside"] is A:
            return True
        msg = f"image path {path} leaves the dataset folder {root} (--policy image_outside=allow to permit)"
        self.flag("image_outside", msg, image=image, file=file)
        return False

    def flag(
        self,
        kind: str,
        message: str,
        *,
        file: Path | str | None = None,
        image: str | int | None = None,
        annotation: int | None = None,
        line: int | None = None,
        column: int | None = None,
    ) -> Action:
        action = self.policy[kind]
        where = self.file if file is None else str(file)
        self.report.add(Problem(kind, message, where, action, image, annotation, line, column))
        return action

    def fatal(self, kind: str, message: str, **where) -> DataError:
        """Flag a problem the loader cannot go past (a file that cannot be parsed) and return the error.

        The problem is an error whatever the policy says for its kind: the load stops here."""
        file = where.pop("file", None)
        problem = Problem(kind, message, self.file if file is None else str(file), Action.ERROR, **where)
        self.report.add(problem)
        return DataError(f"{self.file}: cannot load", self.report.errors)

    def finish(self, report: ProblemReport | None) -> None:
        """Copy the problems into the caller's ``report`` and raise ``DataError`` if errors remain."""
        if report is not None and report is not self.report:
            report.problems.extend(self.report.problems)
        self.report.raise_if_errors(self.file)


@dataclass
class FlatSet:
    """What a parser hands to ``finalize``. Images ``[I]``: ``files``, ``ids``, ``keys`` (how problems name
    the image: its id or file name), ``sources`` (the annotation file that describes it), ``widths``,
    ``heights`` (NaN = unknown: read from the image header). Annotations ``[N]``: ``ann_image`` (row in
    the images), ``ann_ids``, ``boxes [N, 4]`` xyxy float64, ``labels`` in 0..K-1, ``crowd`` bool and
    ``ann_lines`` (line in the source file, -1 if none)."""

    files: list[Path] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)
    keys: list[str | int] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    widths: list[float] = field(default_factory=list)
    heights: list[float] = field(default_factory=list)
    ann_image: list[int] = field(default_factory=list)
    ann_ids: list[int] = field(default_factory=list)
    boxes: list[list[float]] | np.ndarray = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    crowd: list[bool] = field(default_factory=list)
    ann_lines: list[int] = field(default_factory=list)
    #: ``[N]`` annotation areas as the file states them (COCO), or empty (none)
    ann_areas: list[float] = field(default_factory=list)
    #: ids of images left out because their path leaves the dataset folder (``image_outside``)
    outside: set[int] = field(default_factory=set)

    def add_image(self, file: Path, id: int, key: str | int, source: str, width: float, height: float) -> int:
        self.files.append(file)
        self.ids.append(id)
        self.keys.append(key)
        self.sources.append(source)
        self.widths.append(width)
        self.heights.append(height)
        return len(self.files) - 1


def is_inside(path: Path, root: Path) -> bool:
    """Whether ``path`` names a file inside the folder ``root``, lexically (``..`` resolved, symlinks
    not followed, so a dataset folder that is itself a symlink works)."""
    p = os.path.normpath(os.path.abspath(path))
    r = os.path.normpath(os.path.abspath(root))
    try:
        return os.path.commonpath([p, r]) == r
    except ValueError:  # another drive on Windows
        return False


def read_image_size(path: Path, max_pixels: int | None = None) -> tuple[int, int]:
    """``(width, height)`` after EXIF orientation, from the header (``anchorlab.data.image.image_size``)."""
    return image_size(path, max_pixels)  # type: ignore[return-value]


def _check_images(flat: FlatSet, checker: Checker, mode: ImageCheck) -> tuple[np.ndarray, ...]:
    """Check image files and sizes; returns ``sizes [I, 2]`` (w, h), ``keep [I]`` and ``checkable [I]``."""
    w = np.asarray(flat.widths, np.float64)
    h = np.asarray(flat.heights, np.float64)
    n_img = len(flat.files)
    keep = np.ones(n_img, bool)
    errored = np.zeros(n_img, bool)
    known = np.isfinite(w) & np.isfinite(h)
    with np.errstate(invalid="ignore"):
        invalid = (w <= 0) | (h <= 0)  # NaN (unknown) compares False
    n_anns = np.bincount(np.asarray(flat.ann_image, np.int64), minlength=n_img)

    def flag(kind: str, i: int, message: str) -> Action:
        extra = f" (with its {n_anns[i]} annotation(s))" if n_anns[i] else ""
        act = checker.flag(kind, message + extra, file=flat.sources[i], image=flat.keys[i])
        if act is not Action.CLIP:
            keep[i] = False
            errored[i] |= act is Action.ERROR
        return act

    fix_size = np.zeros(n_img, bool)
    for i in np.flatnonzero(invalid):
        if flag("image_size_invalid", i, f"recorded size {w[i]:g}x{h[i]:g} of {flat.files[i].name}") is C:
            fix_size[i] = True
    need = (~known & ~invalid) | fix_size
    if mode in ("header", "decode"):
        need |= keep
    todo = np.flatnonzero(need | (keep & (mode == "exists")))
    progress = IMAGE_PROGRESS.get()
    for done, i in enumerate(todo):
        if progress is not None and done % 16 == 0:
            progress(done, len(todo))
        path = flat.files[i]
        if not need[i]:
            if not os.path.isfile(path):
                flag("image_missing", i, f"image file {path} not found")
            continue
        try:
            fw, fh, orientation = image_size(path, checker.max_pixels, with_orientation=True)
            if mode == "decode":
                read_rgb(path, checker.max_pixels)
        except ImageError as exc:
            flag(exc.kind, i, f"image file {path} not found" if exc.kind == "image_missing" else str(exc))
            continue
        if known[i] and not fix_size[i] and (fw != w[i] or fh != h[i]):
            msg = describe_size_mismatch(path, (w[i], h[i]), orientation, (fw, fh))
            if flag("image_size_mismatch", i, msg) is not C:
                continue
        w[i], h[i] = fw, fh
    # boxes of an image in error are still checked (one run lists every problem) when its size is known
    checkable = keep | (errored & np.isfinite(w) & np.isfinite(h) & (w > 0) & (h > 0))
    return np.stack([w, h], axis=1), keep, checkable


def _check_boxes(
    boxes: np.ndarray, sizes: np.ndarray, flat: FlatSet, rows: np.ndarray, checker: Checker
) -> tuple[np.ndarray, np.ndarray]:
    """All box checks at once. ``boxes [N, 4]`` xyxy, ``sizes [N, 2]`` (w, h) of each box's image,
    ``rows [N]`` index into the flat annotation lists. Returns clipped ``boxes [N, 4]`` and ``keep [N]``."""
    x1, y1, x2, y2 = boxes.T
    w, h = sizes.T
    finite = np.isfinite(boxes).all(axis=1)
    with np.errstate(invalid="ignore"):
        degenerate = finite & ((x2 <= x1) | (y2 <= y1))
        ok = finite & ~degenerate
        outside = ok & ((x2 <= 0) | (y2 <= 0) | (x1 >= w) | (y1 >= h))
        ok &= ~outside
        tol = CLIP_TOLERANCE
        partly = ok & ((x1 < -tol) | (y1 < -tol) | (x2 > w + tol) | (y2 > h + tol))
    keep = ok.copy()
    clipped = boxes.copy()
    lim = np.stack([w, h, w, h], axis=1)
    fixable = ok & ~partly
    clipped[fixable] = np.clip(boxes[fixable], 0, lim[fixable])  # within the tolerance: silent
    ann_image = np.asarray(flat.ann_image)
    for kind, mask in (
        ("box_not_finite", ~finite),
        ("box_degenerate", degenerate),
        ("box_outside_image", outside),
        ("box_partly_outside", partly),
    ):
        for j in np.flatnonzero(mask):
            r = rows[j]
            i = ann_image[r]
            b = ", ".join(f"{v:g}" for v in boxes[j])
            msg = f"box xyxy [{b}] in image {flat.files[i].name} of size {w[j]:g}x{h[j]:g}"
            line = flat.ann_lines[r] if flat.ann_lines and flat.ann_lines[r] >= 0 else None
            act = checker.flag(
                kind,
                msg,
                file=flat.sources[i],
                image=flat.keys[i],
                annotation=int(flat.ann_ids[r]),
                line=line,
            )
            if kind == "box_partly_outside" and act is C:
                clipped[j] = np.clip(boxes[j], 0, lim[j])
            elif kind == "box_partly_outside":
                keep[j] = False
    return clipped, keep


def _check_duplicate_ann_ids(flat: FlatSet, ann_ids: np.ndarray, alive: np.ndarray, checker: Checker) -> None:
    """Flag every later annotation whose id an earlier one already has; clears ``alive`` for them."""
    uniq, first, counts = np.unique(ann_ids, return_index=True, return_counts=True)
    if (counts == 1).all():
        return
    is_first = np.zeros(len(ann_ids), bool)
    is_first[first] = True
    dup = np.isin(ann_ids, uniq[counts > 1]) & ~is_first
    for r in np.flatnonzero(dup):
        i = flat.ann_image[r]
        checker.flag(
            "duplicate_annotation_id",
            f"annotation id {ann_ids[r]} is used more than once",
            file=flat.sources[i],
            image=flat.keys[i],
            annotation=int(ann_ids[r]),
        )
        alive[r] = False


def finalize(
    flat: FlatSet,
    categories: list[Category],
    checker: Checker,
    *,
    check_images: ImageCheck = "exists",
    source: Path | None = None,
    unique_ann_ids: bool = True,
) -> DetectionSet:
    """Check images and boxes under ``checker``'s policy, then group annotations into ``ImageRecord``s."""
    sizes, img_keep, checkable = _check_images(flat, checker, check_images)
    ann_image = np.asarray(flat.ann_image, np.int64)
    ann_ids = np.asarray(flat.ann_ids, np.int64)
    boxes = np.asarray(flat.boxes, np.float64).reshape(-1, 4)
    labels = np.asarray(flat.labels, np.int64)
    crowd = np.asarray(flat.crowd, bool)
    alive = checkable[ann_image] if len(ann_image) else np.zeros(0, bool)
    if unique_ann_ids and len(ann_ids):
        _check_duplicate_ann_ids(flat, ann_ids, alive, checker)
    rows = np.flatnonzero(alive)
    clipped, ok = _check_boxes(boxes[rows], sizes[ann_image[rows]], flat, rows, checker)
    ok &= img_keep[ann_image[rows]]
    rows, clipped = rows[ok], clipped[ok].astype(np.float32)

    has_areas = len(flat.ann_areas) == len(ann_ids) and len(ann_ids) > 0
    areas = np.asarray(flat.ann_areas, np.float64) if has_areas else None
    order = np.argsort(ann_image[rows], kind="stable")
    rows, clipped = rows[order], clipped[order]
    starts = np.searchsorted(ann_image[rows], np.arange(len(flat.files) + 1))
    records = []
    for i in np.flatnonzero(img_keep):
        sl = slice(starts[i], starts[i + 1])
        r, b = rows[sl], clipped[sl]
        obj = ~crowd[r]
        rec = ImageRecord(
            id=int(flat.ids[i]),
            file=flat.files[i],
            width=int(sizes[i, 0]),
            height=int(sizes[i, 1]),
            boxes=b[obj].reshape(-1, 4),
            labels=labels[r[obj]],
            ann_ids=ann_ids[r[obj]],
            crowd=b[~obj].reshape(-1, 4),
        )
        rec.crowd_labels = labels[r[~obj]]  # [C] class of each crowd region; write_coco keeps it
        if has_areas:
            rec.areas, rec.crowd_areas = areas[r[obj]], areas[r[~obj]]
        records.append(rec)
    return DetectionSet(records, categories, source)
