"""Pascal VOC XML folders: ``Annotations/*.xml`` + ``JPEGImages/``.

VOC pixel coordinates are 1-based and inclusive; inside anchorlab boxes are 0-based continuous ``xyxy``, so
``(xmin, ymin, xmax, ymax) -> (xmin - 1, ymin - 1, xmax, ymax)`` (a one-pixel box ``1 1 1 1`` becomes
``0 0 1 1``). ``difficult=1`` objects become crowd/ignore regions. Category ids are ``1..K`` in class-list
order; image and annotation ids are numbered ``1..`` in sorted XML file order.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from pathlib import Path

from anchorlab.data.core import Action, Category, DetectionSet, ProblemReport
from anchorlab.data.validate import Checker, FlatSet, ImageCheck, finalize

__all__ = ["load_voc", "read_class_list"]

_NAN = float("nan")


def read_class_list(classes: Sequence[str] | str | os.PathLike) -> list[str]:
    """Class names from a list, or from a text file with one name per line (blank lines skipped)."""
    if isinstance(classes, str | os.PathLike):
        return [ln.strip() for ln in Path(classes).read_text(encoding="utf-8").splitlines() if ln.strip()]
    return [str(c) for c in classes]


def _layout(root: Path, images_dir: Path | None) -> tuple[Path, Path]:
    """``(annotations dir, images dir)`` for a VOC root or an annotations folder."""
    ann_dir = root / "Annotations" if (root / "Annotations").is_dir() else root
    if images_dir is None:
        for cand in (ann_dir.parent / "JPEGImages", ann_dir.parent / "images", ann_dir):
            if cand.is_dir():
                images_dir = cand
                break
    return ann_dir, Path(images_dir) if images_dir is not None else ann_dir


def _num(obj: ET.Element, tag: str) -> float:
    text = obj.findtext(tag)
    if text is None:
        raise KeyError(tag)
    return float(text)


def _parse_file(xml: Path, checker: Checker) -> tuple[str, float, float, list[tuple]] | None:
    """``(filename, width, height, [(name, difficult, x1, y1, x2, y2, line)])`` or ``None`` if unusable."""
    try:
        root = ET.parse(xml).getroot()
    except ET.ParseError as exc:
        line, col = exc.position
        checker.flag(
            "malformed_xml", str(exc).split(":")[0], file=xml, image=xml.name, line=line, column=col + 1
        )
        return None
    except OSError as exc:
        checker.flag(
            "malformed_xml", f"cannot read the file: {exc.strerror or exc}", file=xml, image=xml.name
        )
        return None
    name = (root.findtext("filename") or "").strip() or xml.stem + ".jpg"
    try:
        w, h = _num(root, "size/width"), _num(root, "size/height")
    except (KeyError, ValueError):
        w = h = _NAN  # read from the image header
    objects = []
    for k, obj in enumerate(root.iter("object")):
        try:
            cls = (obj.findtext("name") or "").strip()
            if not cls:
                raise KeyError("name")
            difficult = int(float(obj.findtext("difficult") or 0)) == 1
            x1, y1, x2, y2 = (_num(obj, f"bndbox/{t}") for t in ("xmin", "ymin", "xmax", "ymax"))
        except (KeyError, ValueError, OverflowError) as exc:  # int(inf) overflows
            checker.flag(
                "malformed_annotation",
                f"object #{k} needs a name and bndbox/xmin..ymax numbers ({exc})",
                file=xml,
                image=name,
            )
            continue
        objects.append((cls, difficult, x1 - 1.0, y1 - 1.0, x2, y2))
    return name, w, h, objects


def load_voc(
    root: str | os.PathLike,
    images_dir: str | os.PathLike | None = None,
    classes: Sequence[str] | str | os.PathLike | None = None,
    policy: Mapping[str, str | Action] | None = None,
    *,
    split: str | None = None,
    check_images: ImageCheck | bool = "exists",
    report: ProblemReport | None = None,
    max_pixels: int | None = None,
) -> DetectionSet:
    """Load a VOC folder (a root with ``Annotations/`` or the annotations folder itself).

    Images default to ``JPEGImages/`` beside ``Annotations/``. ``classes`` (names or a text file) fixes the
    class list; names outside it are ``unknown_label``; without it the sorted set of names found is used.
    ``split`` reads ``ImageSets/Main/<split>.txt``. A ``<filename>`` that leaves the images folder is
    ``image_outside``. Other arguments as in ``load_coco``.
    """
    root = Path(root)
    ann_dir, img_dir = _layout(root, Path(images_dir) if images_dir is not None else None)
    checker = Checker(ann_dir, policy, max_pixels)
    mode: ImageCheck = {True: "header", False: "none"}.get(check_images, check_images)  # type: ignore[arg-type]
    try:
        if not ann_dir.is_dir():
            raise checker.fatal("malformed_xml", f"{ann_dir} is not a folder of VOC XML files")
        if split is not None:
            split_file = ann_dir.parent / "ImageSets" / "Main" / f"{split}.txt"
            if not split_file.is_file():
                raise checker.fatal("malformed_xml", f"split file {split_file} not found")
            stems = [ln.split()[0] for ln in split_file.read_text().splitlines() if ln.strip()]
            xmls = [ann_dir / f"{s}.xml" for s in stems]
        else:
            xmls = sorted(ann_dir.glob("*.xml"))
        parsed = []
        for xml in xmls:
            if not xml.is_file():
                checker.flag(
                    "malformed_xml", f"annotation file {xml.name} listed in the split is missing", file=xml
                )
                continue
            if (p := _parse_file(xml, checker)) is not None:
                parsed.append((xml, p))
        names = (
            read_class_list(classes)
            if classes is not None
            else sorted({o[0] for _, p in parsed for o in p[3]})
        )
        label_of = {n: i for i, n in enumerate(names)}
        flat, ann_id = FlatSet(), 0
        for xml, (fname, w, h, objects) in parsed:
            if not checker.inside(img_dir / fname, img_dir, image=fname, file=xml):
                continue
            i = flat.add_image(img_dir / fname, len(flat.files) + 1, fname, str(xml), w, h)
            for cls, difficult, *box in objects:
                ann_id += 1
                if cls not in label_of:
                    msg = f"class {cls!r} is not in the class list ({', '.join(names[:20])})"
                    checker.flag("unknown_label", msg, file=xml, image=fname, annotation=ann_id)
                    continue
                flat.ann_image.append(i)
                flat.ann_ids.append(ann_id)
                flat.labels.append(label_of[cls])
                flat.crowd.append(difficult)
                flat.boxes.append(box)
        cats = [Category(i + 1, n) for i, n in enumerate(names)]
        ds = finalize(flat, cats, checker, check_images=mode, source=ann_dir)
    finally:
        checker.finish(report)
    ds.max_pixels = max_pixels
    return ds
