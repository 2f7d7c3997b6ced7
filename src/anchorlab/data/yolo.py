"""YOLO txt data: folders (``images/**`` + ``labels/**``), ``data.yaml`` (Ultralytics, Roboflow) and
CVAT "YOLO 1.1" exports (``obj.data``, ``obj.names``, ``obj_<subset>_data/``).

One line per object: ``class cx cy w h`` (5 columns, normalised to 0..1), or a polygon ``class x1 y1 ...
xk yk`` with k >= 4 points (9, 11, ... columns: segmentation outlines and oriented-box corners), which
becomes its bounding box. Any other column count is ``malformed_label`` -- 7 columns included: it is a
box with two extra columns as often as a 3-point polygon, and a detection set should not guess.
The label file of ``.../images/a/b.jpg`` is ``.../labels/a/b.txt`` (the last ``images`` folder of the
path; CVAT: beside the image); an image without one has no objects. Class names come from ``classes``,
else ``data.yaml`` (``names`` list or dict), else ``classes.txt`` (CVAT: ``obj.names``); category ids are
the class indices ``0..K-1``. Image sizes are read from the image headers (after EXIF orientation).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import yaml

from anchorlab.boxes import cxcywh_to_xyxy
from anchorlab.data.core import Action, Category, DetectionSet, ProblemReport
from anchorlab.data.image import ImageError, image_size
from anchorlab.data.validate import Checker, FlatSet, ImageCheck, finalize
from anchorlab.data.voc import read_class_list

__all__ = ["IMAGE_SUFFIXES", "SPLIT_ALIASES", "load_cvat", "load_yolo"]

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})

#: Keys tried, in order, for a split of a data.yaml / obj.data (Roboflow and CVAT name val "valid").
SPLIT_ALIASES = {"val": ("val", "valid", "validation"), "test": ("test", "testing")}


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


def _label_path(image: Path, beside: bool = False) -> Path:
    """Ultralytics' rule: the last ``images`` folder of the path becomes ``labels``; CVAT: beside."""
    parts = list(image.parts)
    for k in range(len(parts) - 2, -1, -1):
        if parts[k] == "images" and not beside:
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
        except (ValueError, OverflowError):  # int(inf) overflows
            msg = f"expected numbers (`class cx cy w h`), got {line.strip()[:80]!r}"
            checker.flag("malformed_label", msg, file=path, image=key, line=ln)
            continue
        n = len(vals)
        if cls != vals[0] or not (n == 5 or (n >= 9 and n % 2 == 1)):
            why = "the class is not an integer" if cls != vals[0] else f"{n} columns"
            msg = (
                f"{why}: expected `class cx cy w h` (5 columns) or a polygon `class x1 y1 ... xk yk` of"
                f" 4+ points (9, 11, ... columns), got {line.strip()[:80]!r}"
            )
            checker.flag("malformed_label", msg, file=path, image=key, line=ln)
            continue
        if n == 5:
            rows.append((cls, vals[1:], ln))
        else:
            xs, ys = vals[1::2], vals[2::2]
            x1, x2, y1, y2 = min(xs), max(xs), min(ys), max(ys)
            rows.append((cls, [(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], ln))
    return rows


def _under(base: Path, value: str) -> Path:
    """``base / value``; a Roboflow ``../train/images`` that exists inside ``base`` is taken from there
    (Ultralytics' fallback, preferred so an export stays self-contained)."""
    if value.startswith("../") and (base / value[3:]).exists():
        return base / value[3:]
    return base / value


def _list_file(txt: Path, base: Path, checker: Checker) -> list[Path]:
    """Image paths listed one a line in ``txt`` (relative to ``base``, else to the list's folder;
    CVAT writes ``data/obj_train_data/x.jpg``, its ``data/`` being the export folder)."""
    try:
        lines = [ln.strip() for ln in txt.read_text(encoding="utf-8").splitlines() if ln.strip()]
    except (UnicodeDecodeError, OSError) as exc:
        raise checker.fatal("malformed_label", f"cannot read the image list: {exc}", file=txt) from None
    out = []
    for k, line in enumerate(lines, start=1):
        cands = [base / line, txt.parent / line]
        if line.startswith(("data/", "./")):
            cands.insert(0, base / line.split("/", 1)[1])
        path = next((c for c in cands if c.exists()), cands[0])
        if checker.inside(path, base, file=txt, image=line):
            out.append(path)
        del k
    return out


def _split_sources(
    data: dict, split: str | None, base: Path, checker: Checker, yaml_path: Path
) -> list[Path]:
    """The images of ``split`` of a data.yaml: folders (searched recursively) and/or list files; a split
    may be one path or a list of them. ``split=None``: ``base/images``."""
    if split is None:
        declared = [k for k in ("train", "val", "valid", "validation", "test") if data.get(k)]
        if (base / "images").is_dir() or not declared:
            return [base / "images"]
        return list(
            dict.fromkeys(p for k in declared for p in _split_sources(data, k, base, checker, yaml_path))
        )
    key = next((k for k in SPLIT_ALIASES.get(split, (split,)) if data.get(k)), None)
    if key is None:
        if (base / "images" / split).is_dir():  # images/<split>/ without a yaml entry
            return [base / "images" / split]
        raise checker.fatal("malformed_label", f"no images folder for split {split!r} in {yaml_path}")
    values = data[key] if isinstance(data[key], list) else [data[key]]
    if not all(isinstance(v, str) for v in values):
        raise checker.fatal("malformed_label", f"{yaml_path}: {key!r} must be a path or a list of paths")
    return [_under(base, v) for v in values]


def _images_of(sources: list[Path], base: Path, checker: Checker) -> list[Path]:
    """Every image of the folders / list files in ``sources``, in order, without repeats."""
    images: list[Path] = []
    for src in sources:
        if not checker.inside(src, base, file=src):
            continue
        if src.is_dir():
            images.extend(sorted(p for p in src.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES))
        elif src.is_file() and src.suffix == ".txt":
            images.extend(_list_file(src, base, checker))
        else:
            raise checker.fatal("image_missing", f"images folder {src} not found")
    return list(dict.fromkeys(images))


def _collect(
    images: list[Path],
    names: list[str] | None,
    checker: Checker,
    key_root: Path,
    *,
    beside: bool = False,
) -> tuple[FlatSet, list[str]]:
    """Images and their label files into a ``FlatSet`` (boxes in pixels); returns it and the class names."""
    flat, norm, max_cls = FlatSet(), [], -1
    for img in images:
        try:
            key = img.relative_to(key_root).as_posix()
        except ValueError:
            key = img.name
        lbl = _label_path(img, beside)
        try:
            w, h = image_size(img, checker.max_pixels)
        except ImageError as exc:
            checker.flag(exc.kind, str(exc), file=lbl, image=key)
            continue
        i = flat.add_image(img, len(flat.files) + 1, key, str(lbl), w, h)
        if not lbl.is_file():
            continue
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
    arr = np.asarray(norm, np.float64).reshape(-1, 6)
    flat.boxes = cxcywh_to_xyxy(arr[:, :4] * arr[:, [4, 5, 4, 5]])
    flat.ann_lines = [flat.ann_lines[a - 1] for a in flat.ann_ids]
    flat.crowd = [False] * len(flat.ann_ids)
    return flat, names if names is not None else [str(k) for k in range(max_cls + 1)]


def _orphans(sources: list[Path], images: list[Path], checker: Checker) -> None:
    """Label files under the sources' ``labels`` folders that no image uses."""
    used = {_label_path(p) for p in images}
    for src in sources:
        if not src.is_dir():
            continue
        lbl_dir = _label_path(src / "x.png").parent
        for orphan in sorted(set(lbl_dir.rglob("*.txt")) - used) if lbl_dir.is_dir() else []:
            if orphan.name != "classes.txt":
                checker.flag("image_missing", f"label file {orphan.name} has no image", file=orphan)


def _base_of(root: Path, data: dict, yaml_path: Path) -> Path:
    """The dataset folder: the yaml's ``path`` (relative to the yaml's folder) when it exists, else the
    yaml's folder (or ``root``)."""
    base = root.parent if root.suffix in {".yaml", ".yml"} else root
    if data.get("path"):
        declared = Path(str(data["path"]))
        declared = declared if declared.is_absolute() else yaml_path.parent / declared
        base = declared if declared.is_dir() else base
    return base


def load_yolo(
    root: str | os.PathLike,
    classes: Sequence[str] | str | os.PathLike | None = None,
    policy: Mapping[str, str | Action] | None = None,
    *,
    split: str | None = None,
    check_images: ImageCheck | bool = "header",
    report: ProblemReport | None = None,
    max_pixels: int | None = None,
) -> DetectionSet:
    """Load a YOLO folder (``images/`` + ``labels/``), or a ``data.yaml`` / a folder holding one.

    ``split`` picks the yaml's ``train`` / ``val`` (also ``valid``) / ``test`` entry: a folder, a text file
    listing images, or a list of those, relative to the yaml's ``path:`` (else its folder; a Roboflow
    ``../train/images`` is found inside the export); without a yaml, ``images/<split>/``. Without
    ``split`` every image under ``images/`` is loaded, or, when there is no such folder, every split the
    yaml declares. Class indices outside the class list are
    ``unknown_label``; without any class list the names are ``"0".."K-1"``. Image headers are always
    read (the boxes need the sizes); ``check_images="decode"`` also decodes every image. Other arguments
    as in ``load_coco``.
    """
    root = Path(root)
    yaml_path = root if root.suffix in {".yaml", ".yml"} else root / "data.yaml"
    checker = Checker(root, policy, max_pixels)
    try:
        data = _read_yaml(yaml_path, checker) if yaml_path.is_file() else {}
        base = _base_of(root, data, yaml_path)
        sources = _split_sources(data, split, base, checker, yaml_path)
        if split is None and not sources[0].is_dir():
            raise checker.fatal("image_missing", f"images folder {sources[0]} not found")
        if classes is not None:
            names = read_class_list(classes)
        elif (names := _names(data)) is None:
            for cand in (base / "classes.txt", base / "labels" / "classes.txt"):
                if cand.is_file():
                    names = read_class_list(cand)
                    break
        images = _images_of(sources, base, checker)
        key_root = sources[0] if len(sources) == 1 and sources[0].is_dir() else base
        flat, names = _collect(images, names, checker, key_root)
        _orphans(sources, images, checker)
        cats = [Category(k, n) for k, n in enumerate(names)]
        mode = "decode" if check_images == "decode" else "none"
        ds = finalize(flat, cats, checker, check_images=mode, source=root)
    finally:
        checker.finish(report)
    ds.max_pixels = max_pixels
    return ds


def _read_obj_data(path: Path, checker: Checker) -> dict[str, str]:
    """``key = value`` lines of a darknet ``obj.data``."""
    out = {}
    try:
        text = path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError) as exc:
        raise checker.fatal("malformed_label", f"cannot read {path.name}: {exc}", file=path) from None
    for ln, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise checker.fatal(
                "malformed_label", f"expected `key = value`, got {line!r}", file=path, line=ln
            )
        out[key.strip()] = value.strip()
    return out


def load_cvat(
    root: str | os.PathLike,
    classes: Sequence[str] | str | os.PathLike | None = None,
    policy: Mapping[str, str | Action] | None = None,
    *,
    split: str | None = None,
    check_images: ImageCheck | bool = "header",
    report: ProblemReport | None = None,
    max_pixels: int | None = None,
) -> DetectionSet:
    """Load a CVAT "YOLO 1.1" export: a folder (or its ``obj.data``) with ``obj.names``, ``train.txt``
    (etc.) listing ``data/obj_train_data/<image>``, and each image's ``.txt`` label file beside it.

    ``split`` picks an ``obj.data`` key (``train``, ``val`` -> ``valid``); without it every listed
    subset is loaded, or, with no list at all, every image under ``obj_*_data/``. Class ids are the
    line numbers of ``obj.names``. Other arguments as in ``load_yolo``."""
    root = Path(root)
    base = root.parent if root.is_file() else root
    checker = Checker(root, policy, max_pixels)
    try:
        obj = base / "obj.data"
        data = _read_obj_data(obj, checker) if obj.is_file() else {}
        names_file = _under(base, data.get("names", "obj.names").removeprefix("data/"))
        if classes is not None:
            names: list[str] | None = read_class_list(classes)
        elif names_file.is_file():
            names = read_class_list(names_file)
        else:
            raise checker.fatal("malformed_label", f"class list {names_file} not found (obj.names)")
        keys = [k for k in SPLIT_ALIASES.get(split, (split,)) if data.get(k)] if split else []
        keys = keys[:1] if split else [k for k in ("train", "valid", "val", "test") if data.get(k)]
        if split and not keys:
            raise checker.fatal("malformed_label", f"no image list for split {split!r} in {obj}")
        lists = [base / data[k].removeprefix("data/") for k in keys]
        if lists:
            for lst in lists:
                if not lst.is_file():
                    raise checker.fatal("image_missing", f"image list {lst} not found", file=obj)
            images = list(dict.fromkeys(p for lst in lists for p in _list_file(lst, base, checker)))
        else:
            folders = sorted(p for p in base.glob("obj_*_data") if p.is_dir())
            if not folders:
                raise checker.fatal("image_missing", f"{base}: no train.txt and no obj_*_data/ folder")
            images = _images_of(folders, base, checker)
        flat, names = _collect(images, names, checker, base, beside=True)
        cats = [Category(k, n) for k, n in enumerate(names)]
        mode = "decode" if check_images == "decode" else "none"
        ds = finalize(flat, cats, checker, check_images=mode, source=root)
    finally:
        checker.finish(report)
    ds.max_pixels = max_pixels
    return ds
