"""COCO detection JSON: the canonical format, read (``load_coco``) and written (``write_coco``).

Category ids map to contiguous labels ``0..K-1`` in sorted-id order; ``DetectionSet.categories`` keeps the
file's ids. ``iscrowd=1`` annotations become ``ImageRecord.crowd`` ignore regions. Boxes are converted
``xywh -> xyxy`` with ``anchorlab.boxes``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from anchorlab.boxes import xywh_to_xyxy, xyxy_to_xywh
from anchorlab.data.core import Action, Category, DetectionSet, ProblemReport
from anchorlab.data.validate import Checker, FlatSet, ImageCheck, finalize, is_inside

__all__ = ["coco_dict", "default_images_root", "load_coco", "write_coco"]

_NAN = float("nan")
_ID_MAX = np.iinfo(np.int64).max


def _as_id(value: Any) -> int:
    """An integer id as stored in int64: ints, integral floats (``3.0``) and integer strings (``"3"``).

    Raises ``TypeError``/``ValueError`` for anything else -- booleans, ``3.5`` (``int()`` would silently
    make it ``3`` and collide with a real id 3) and ids outside int64 (numpy could not hold them)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise TypeError(f"not an integer id: {value!r}")
    if isinstance(value, float) and not value.is_integer():
        raise ValueError(f"not an integer id: {value!r}")
    out = int(value)
    if not -_ID_MAX <= out <= _ID_MAX:
        raise ValueError(f"id {value!r} is outside the int64 range")
    return out


def _images_base(json_dir: Path, images_dir: Path | None, names: list[str]) -> Path:
    """Where ``file_name``s are relative to: ``images_dir`` if given, else the JSON's folder, or its
    ``images/`` sub-folder when the first of ``names`` found anywhere is found there."""
    if images_dir is not None:
        return Path(images_dir)
    for name in names:
        if (json_dir / name).exists():
            return json_dir
        if (json_dir / "images" / name).exists():
            return json_dir / "images"
    return json_dir


def _parse_categories(data: dict, checker: Checker) -> list[Category]:
    cats: dict[int, Category] = {}
    for k, c in enumerate(data["categories"]):
        try:
            cat = Category(_as_id(c["id"]), str(c.get("name", c["id"])), str(c.get("supercategory", "")))
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError):
            raise checker.fatal("malformed_annotation", f"category #{k} needs an integer id: {c!r}") from None
        if cat.id in cats:
            raise checker.fatal("duplicate_category_id", f"category id {cat.id} is used more than once")
        cats[cat.id] = cat
    return [cats[i] for i in sorted(cats)]


def _parse_images(
    data: dict, checker: Checker, json_dir: Path, images_dir: Path | None
) -> tuple[FlatSet, dict]:
    """Images into a ``FlatSet``; returns it and ``{image id: row}`` (first occurrence of each id)."""
    flat = FlatSet()
    images = data["images"]
    probe = [im.get("file_name") for im in images[:20] if isinstance(im, dict)]
    base = _images_base(json_dir, images_dir, [n for n in probe if isinstance(n, str)])
    row_of: dict[int, int] = {}
    src = checker.file
    for k, im in enumerate(images):
        try:
            iid, name = _as_id(im["id"]), im["file_name"]
            if not isinstance(name, str):
                raise TypeError
            w, h = float(im.get("width", _NAN)), float(im.get("height", _NAN))
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError):
            checker.flag(
                "malformed_annotation", f"image entry #{k} needs an integer id and a file_name: {im!r}"
            )
            continue
        if iid in row_of:
            checker.flag("duplicate_image_id", f"image id {iid} ({name}) is used more than once", image=iid)
            continue
        if not checker.inside(base / name, base, image=iid):
            flat.outside.add(iid)  # its annotations go with it, without an unknown_image each
            continue
        row_of[iid] = flat.add_image(base / name, iid, iid, src, w, h)
    return flat, row_of


def _parse_annotations(
    data: dict, checker: Checker, flat: FlatSet, row_of: dict, cats: list[Category]
) -> None:
    """Annotations into ``flat``: one Python pass to read the fields, then numpy for the id look-ups."""
    ids, img_ids, cat_ids, crowd, boxes, areas = [], [], [], [], [], []
    for k, a in enumerate(data["annotations"]):
        try:
            b = a["bbox"]
            if len(b) != 4:
                raise ValueError
            bx = [float(v) for v in b]
            row = (
                _as_id(a["id"]),
                _as_id(a["image_id"]),
                _as_id(a["category_id"]),
                bool(a.get("iscrowd", 0)),
            )
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError):
            ann = a.get("id") if isinstance(a, dict) and isinstance(a.get("id"), int) else None
            msg = f"annotation #{k} needs id, image_id, category_id and a 4-number bbox: {a!r}"
            checker.flag("malformed_annotation", msg[:300], annotation=ann)
            continue
        ids.append(row[0])
        img_ids.append(row[1])
        cat_ids.append(row[2])
        crowd.append(row[3])
        boxes.append(bx)
        try:
            areas.append(float(a.get("area", _NAN)))
        except (TypeError, ValueError):
            areas.append(_NAN)
    ids_a, img_a, cat_a = (np.asarray(x, np.int64) for x in (ids, img_ids, cat_ids))
    known_img = np.fromiter(row_of, np.int64, len(row_of))
    img_rows = np.fromiter(row_of.values(), np.int64, len(row_of))
    order = np.argsort(known_img)
    known_img, img_rows = known_img[order], img_rows[order]
    pos = np.searchsorted(known_img, img_a).clip(max=max(len(known_img) - 1, 0))
    img_ok = (known_img[pos] == img_a) if len(known_img) else np.zeros(len(img_a), bool)
    cat_table = np.array([c.id for c in cats], np.int64)
    lab = np.searchsorted(cat_table, cat_a).clip(max=max(len(cat_table) - 1, 0))
    cat_ok = (cat_table[lab] == cat_a) if len(cat_table) else np.zeros(len(cat_a), bool)
    for j in np.flatnonzero(~img_ok & ~np.isin(img_a, list(flat.outside))):
        checker.flag("unknown_image", f"image_id {img_a[j]} is not in images", annotation=int(ids_a[j]))
    for j in np.flatnonzero(img_ok & ~cat_ok):
        msg = f"category_id {cat_a[j]} is not in categories (known: {cat_table.tolist()[:20]})"
        checker.flag("unknown_category", msg, image=int(img_a[j]), annotation=int(ids_a[j]))
    ok = img_ok & cat_ok
    flat.ann_image = img_rows[pos[ok]].tolist()
    flat.ann_ids = ids_a[ok].tolist()
    flat.labels = lab[ok].tolist()
    flat.crowd = np.asarray(crowd, bool)[ok].tolist()
    flat.ann_areas = np.asarray(areas, np.float64)[ok].tolist()
    flat.boxes = xywh_to_xyxy(np.asarray(boxes, np.float64).reshape(-1, 4)[ok])


def load_coco(
    path: str | os.PathLike,
    images_dir: str | os.PathLike | None = None,
    policy: Mapping[str, str | Action] | None = None,
    *,
    check_images: ImageCheck | bool = "exists",
    report: ProblemReport | None = None,
    max_pixels: int | None = None,
) -> DetectionSet:
    """Load a COCO detection JSON into a ``DetectionSet``.

    A file without an ``annotations`` key (an image-info file such as ``image_info_test-dev2017.json``:
    images and categories only) loads as images without objects.

    Images are ``images_dir/file_name``, else ``<json dir>/file_name`` or ``<json dir>/images/file_name``.
    ``check_images``: ``"none"`` (trust the JSON), ``"exists"`` (stat every file; default), ``"header"``
    (also read each header's size, after EXIF orientation: ``True``) or ``"decode"`` (also decode every
    image). A ``file_name`` that leaves the images folder (``../``, absolute) is ``image_outside``.
    ``max_pixels`` is the pixel limit of one image (``image_too_large``). ``policy`` overrides the action
    per problem kind (see ``validate.KINDS``). Every problem is added to ``report`` when given;
    ``DataError`` is raised, listing them, if any problem's action is ``error``.
    """
    path = Path(path)
    checker = Checker(path, policy, max_pixels)
    mode: ImageCheck = {True: "header", False: "none"}.get(check_images, check_images)  # type: ignore[arg-type]
    try:
        try:
            data = json.loads(path.read_bytes())
        except json.JSONDecodeError as exc:
            raise checker.fatal("malformed_json", exc.msg, line=exc.lineno, column=exc.colno) from None
        except UnicodeDecodeError as exc:
            raise checker.fatal("malformed_json", f"not UTF-8 text: {exc}") from None
        except OSError as exc:
            raise checker.fatal("malformed_json", f"cannot read the file: {exc.strerror or exc}") from None
        if not isinstance(data, dict):
            raise checker.fatal("malformed_json", f"top level is a {type(data).__name__}, not an object")
        data.setdefault("annotations", [])  # an image-info file (e.g. COCO test-dev): images only
        for key in ("images", "annotations", "categories"):
            if not isinstance(data.get(key), list):
                raise checker.fatal("malformed_json", f"needs a list under {key!r}")
        cats = _parse_categories(data, checker)
        flat, row_of = _parse_images(data, checker, path.parent, Path(images_dir) if images_dir else None)
        _parse_annotations(data, checker, flat, row_of, cats)
        ds = finalize(flat, cats, checker, check_images=mode, source=path)
    finally:
        checker.finish(report)
    ds.max_pixels = max_pixels
    return ds


def _rel(file: Path, root: Path | None) -> str:
    if root is None:
        return file.name
    try:
        return Path(os.path.relpath(file, root)).as_posix()
    except ValueError:  # another drive on Windows
        return str(file)


def _r(x: np.ndarray) -> list:
    return np.round(x.astype(np.float64), 4).tolist()


def coco_dict(ds: DetectionSet, images_root: str | os.PathLike | None = None) -> dict[str, Any]:
    """The COCO JSON object of ``ds``: original category ids, crowd regions as ``iscrowd=1`` annotations
    (with new ids after the largest object id), ``file_name`` relative to ``images_root``."""
    root = Path(images_root) if images_root is not None else None
    next_id = 1 + max((int(r.ann_ids.max()) for r in ds.images if len(r.ann_ids)), default=0)
    images, anns = [], []
    crowd_cat = ds.categories[0].id if ds.categories else 0  # for crowd regions of unknown class
    for r in ds.images:
        images.append({"id": r.id, "file_name": _rel(r.file, root), "width": r.width, "height": r.height})
        cat_ids = ds.label_to_category_id(r.labels).tolist() if len(r.labels) else []
        groups = [(r.boxes, r.ann_ids.tolist(), cat_ids, 0, r.areas)]
        if len(r.crowd):
            ids = list(range(next_id, next_id + len(r.crowd)))
            next_id += len(r.crowd)
            if len(r.crowd_labels) == len(ids):
                crowd_cats = ds.label_to_category_id(r.crowd_labels).tolist()
            else:
                crowd_cats = [crowd_cat] * len(ids)
            groups.append((r.crowd, ids, crowd_cats, 1, r.crowd_areas))
        for boxes, ids, cats, crowd, given in groups:
            xywh = xyxy_to_xywh(np.asarray(boxes, np.float64).reshape(-1, 4))
            box_area = xywh[:, 2] * xywh[:, 3]
            if given is not None and len(given) == len(box_area):  # the file's own areas (COCO size buckets)
                box_area = np.where(np.isfinite(given), given, box_area)
            x1, y1, x2, y2 = np.round(np.asarray(boxes, np.float64).reshape(-1, 4), 4).T.tolist()
            for k, (box, area) in enumerate(zip(_r(xywh), _r(box_area), strict=True)):
                poly = [[x1[k], y1[k], x2[k], y1[k], x2[k], y2[k], x1[k], y2[k]]]
                anns.append(
                    {
                        "id": ids[k],
                        "image_id": r.id,
                        "category_id": cats[k],
                        "bbox": box,
                        "area": area,
                        "iscrowd": crowd,
                        "segmentation": poly,
                    }
                )
    categories = [{"id": c.id, "name": c.name, "supercategory": c.supercategory} for c in ds.categories]
    return {"info": {"description": "written by anchorlab"}, "images": images, "annotations": anns,
            "categories": categories}  # fmt: skip


def default_images_root(ds: DetectionSet, out: str | os.PathLike) -> Path:
    """Where ``write_coco`` makes ``file_name``s relative to: ``out``'s folder when every image is inside it
    (``load_coco(out)`` then finds them), else the images' common folder -- never ``../`` names, which
    loading refuses as ``image_outside`` (load with ``images_dir`` = this folder)."""
    folder = Path(out).parent
    files = [r.file for r in ds.images]
    if not files or all(is_inside(f, folder) for f in files):
        return folder
    return Path(os.path.commonpath([os.path.abspath(f.parent) for f in files]))


def write_coco(
    ds: DetectionSet, path: str | os.PathLike, *, images_root: str | os.PathLike | None = None
) -> Path:
    """Write ``ds`` as COCO JSON at ``path``; ``file_name``s are relative to ``images_root`` (default:
    ``default_images_root``: the JSON's folder when the images are inside it, so ``load_coco(path)`` finds
    them again, else their common folder -- never ``../``). Returns the path."""
    from anchorlab.io import make_dir, write_text

    path = Path(path)
    make_dir(path.parent)
    root = Path(images_root) if images_root is not None else default_images_root(ds, path)
    text = json.dumps(coco_dict(ds, root), separators=(",", ":"))
    return write_text(path, text + "\n")
