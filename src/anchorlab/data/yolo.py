"""YOLO txt folders: ``images/**`` + ``labels/**`` with one ``class cx cy w h`` line per object (normalised).

The label file of ``.../images/a/b.jpg`` is ``.../labels/a/b.txt``; an image without one has no objects.
Polygon lines (``class x1 y1 x2 y2 ...``, YOLO segmentation) become their bounding box. Class names come
from ``classes``, else ``data.yaml`` (``names`` list or dict), else ``classes.txt``; category ids are the
class indices ``0..K-1``. Image sizes are read from the image headers (no pixels decoded).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import yaml
from PIL import UnidentifiedImageError

from anchorlab.boxes import cxcywh_to_xyxy
from anchorlab.data.core import Action, Category, DetectionSet, ProblemReport
from anchorlab.data.validate import Checker, FlatSet, ImageCheck, finalize, read_image_size
from anchorlab.data.voc import read_class_list

__all__ = ["IMAGE_SUFFIXES", "load_yolo"]

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})


def _read_yaml(path: Path, checker: Checker) -> dict:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = {"line": mark.line + 1, "column": mark.column + 1} if mark else {}
        raise checker.fatal(
            "malformed_label", f"cannot parse {path.name}: {exc}", file=path, **where
        ) from None
    if not isinstance(data, dict):
        raise checker.fatal("malformed_label", f"{path.name} must hold a mapping", file=path)
    return data


def _names(data: dict) -> list[str] | None:
    names = data.get("names")
    if isinstance(names, dict):
        return [str(names[k]) for k in sorted(names, key=int)]
    if isinstance(names, list):
        return [str(n) for n in names]
    return None


def _label_path(image: Path) -> Path:
    parts = list(image.parts)
    for k in range(len(parts) - 2, -1, -1):
        if parts[k] == "images":
            parts[k] = "labels"
            return Path(*parts).with_suffix(".txt")
    return image.with_suffix(".txt")


def _parse_labels(path: Path, key: str, checker: Checker) -> list[tuple[int, list[float], int]]:
    """``[(class, [cx, cy, w, h] normalised, line)]`` from one label file."""
    rows = []
    try:
        text = path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError) as exc:
        checker.flag("malformed_label", f"cannot read the label file: {exc}", file=path, image=key)
        return rows
    for ln, line in enumerate(text.splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        try:
            vals = [float(v) for v in parts]
            cls = int(vals[0])
            if cls != vals[0] or not (len(vals) == 5 or (len(vals) >= 7 and len(vals) % 2 == 1)):
                raise ValueError
        except (ValueError, OverflowError):  # int(inf) overflows
            msg = f"expected `class cx cy w h` or `class x1 y1 x2 y2 ...`, got {line.strip()[:80]!r}"
            checker.flag("malformed_label", msg, file=path, image=key, line=ln)
            continue
        if len(vals) == 5:
            rows.append((cls, vals[1:], ln))
        else:
            xs, ys = vals[1::2], vals[2::2]
            x1, x2, y1, y2 = min(xs), max(xs), min(ys), max(ys)
            rows.append((cls, [(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], ln))
    return rows


def load_yolo(
    root: str | os.PathLike,
    classes: Sequence[str] | str | os.PathLike | None = None,
    policy: Mapping[str, str | Action] | None = None,
    *,
    split: str | None = None,
    check_images: ImageCheck | bool = "header",
    report: ProblemReport | None = None,
) -> DetectionSet:
    """Load a YOLO folder (``images/`` + ``labels/``), or a ``data.yaml`` / a folder holding one.

    ``split`` picks the yaml's ``train``/``val``/``test`` images folder; without it every image under
    ``images/`` is loaded. Class indices outside the class list are ``unknown_label``; without any class
    list the names are ``"0".."K-1"`` with K = 1 + the largest index. Image headers are always read (the
    boxes need the sizes), so ``check_images`` has no further effect. Other arguments as in ``load_coco``.
    """
    root = Path(root)
    yaml_path = root if root.suffix in {".yaml", ".yml"} else root / "data.yaml"
    base = root.parent if root.suffix in {".yaml", ".yml"} else root
    checker = Checker(root, policy)
    del check_images
    try:
        data = _read_yaml(yaml_path, checker) if yaml_path.is_file() else {}
        if data.get("path"):
            base = (
                (yaml_path.parent / str(data["path"]))
                if not Path(data["path"]).is_absolute()
                else Path(data["path"])
            )
            base = base if base.is_dir() else yaml_path.parent
        if split is not None:
            if split not in data or not isinstance(data[split], str):
                raise checker.fatal("malformed_label", f"no images folder for split {split!r} in {yaml_path}")
            img_dir = base / data[split]
        else:
            img_dir = base / "images"
        if not img_dir.is_dir():
            raise checker.fatal("image_missing", f"images folder {img_dir} not found")
        if classes is not None:
            names = read_class_list(classes)
        elif (names := _names(data)) is None:
            for cand in (base / "classes.txt", base / "labels" / "classes.txt"):
                if cand.is_file():
                    names = read_class_list(cand)
                    break
        images = sorted(p for p in img_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        flat, norm, used_labels, max_cls = FlatSet(), [], set(), -1
        for img in images:
            key, lbl = img.relative_to(img_dir).as_posix(), _label_path(img)
            try:
                w, h = read_image_size(img)
            except (UnidentifiedImageError, OSError) as exc:
                checker.flag("image_unreadable", f"cannot read image {img}: {exc}", file=lbl, image=key)
                used_labels.add(lbl)
                continue
            i = flat.add_image(img, len(flat.files) + 1, key, str(lbl), w, h)
            if not lbl.is_file():
                continue
            used_labels.add(lbl)
            for cls, box, ln in _parse_labels(lbl, key, checker):
                ann_id = len(flat.ann_lines) + 1
                flat.ann_lines.append(ln)
                if cls < 0 or (names is not None and cls >= len(names)):
                    known = f"0..{len(names) - 1}" if names else "none"
                    msg = f"class {cls} is outside the class list ({known})"
                    checker.flag("unknown_label", msg, file=lbl, image=key, annotation=ann_id, line=ln)
                    continue
                max_cls = max(max_cls, cls)
                flat.ann_image.append(i)
                flat.ann_ids.append(ann_id)
                flat.labels.append(cls)
                norm.append([*box, w, h])
        lbl_dir = _label_path(img_dir / "x.png").parent
        for orphan in sorted(set(lbl_dir.rglob("*.txt")) - used_labels) if lbl_dir.is_dir() else []:
            if orphan.name != "classes.txt":
                checker.flag("image_missing", f"label file {orphan.name} has no image", file=orphan)
        arr = np.asarray(norm, np.float64).reshape(-1, 6)
        wh = arr[:, [4, 5, 4, 5]]
        flat.boxes = cxcywh_to_xyxy(arr[:, :4] * wh)
        flat.ann_lines = [flat.ann_lines[a - 1] for a in flat.ann_ids]
        flat.crowd = [False] * len(flat.ann_ids)
        if names is None:
            names = [str(k) for k in range(max_cls + 1)]
        cats = [Category(k, n) for k, n in enumerate(names)]
        ds = finalize(flat, cats, checker, check_images="none", source=root)
    finally:
        checker.finish(report)
    return ds
