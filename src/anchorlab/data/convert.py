"""Format detection, ``load_dataset`` for any supported format, and conversion to COCO JSON."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

from anchorlab.data.coco import default_images_root, load_coco, write_coco
from anchorlab.data.core import Action, DetectionSet, ProblemReport
from anchorlab.data.validate import ImageCheck
from anchorlab.data.voc import load_voc
from anchorlab.data.yolo import load_cvat, load_yolo

__all__ = ["FORMATS", "convert", "default_images_root", "detect_format", "load_dataset"]

Format = Literal["auto", "coco", "voc", "yolo", "cvat"]
FORMATS = ("auto", "coco", "voc", "yolo", "cvat")


def detect_format(path: str | os.PathLike) -> tuple[str, Path]:
    """``(format, path to load)`` for a COCO JSON, a VOC folder, a YOLO folder or ``data.yaml``, or a CVAT
    "YOLO 1.1" export (a folder with ``obj.names`` / ``obj.data``, or the ``obj.data`` file).

    A folder holding exactly one ``.json`` file is that COCO file. Raises ``FileNotFoundError`` or
    ``ValueError`` (naming what was looked for) when nothing fits."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p} does not exist")
    if p.is_file():
        suffix = p.suffix.lower()
        if suffix == ".json":
            return "coco", p
        if suffix in {".yaml", ".yml"}:
            return "yolo", p
        if p.name == "obj.data":
            return "cvat", p.parent
        raise ValueError(
            f"{p}: cannot tell the format from the suffix {suffix!r} (expected .json, .yaml or obj.data)"
        )
    if (p / "Annotations").is_dir() or any(p.glob("*.xml")):
        return "voc", p
    if (p / "data.yaml").is_file() or ((p / "images").is_dir() and (p / "labels").is_dir()):
        return "yolo", p
    if (p / "obj.data").is_file() or (p / "obj.names").is_file():
        return "cvat", p
    jsons = sorted(p.glob("*.json"))
    if len(jsons) == 1:
        return "coco", jsons[0]
    if jsons:
        raise ValueError(f"{p} holds several COCO files; pass one of: {', '.join(j.name for j in jsons)}")
    raise ValueError(
        f"{p}: no COCO .json, VOC Annotations/ or *.xml, YOLO data.yaml / images/ + labels/, or CVAT "
        "obj.data / obj.names found (set the format with --format / data.format)"
    )


def load_dataset(
    path: str | os.PathLike,
    format: Format = "auto",
    *,
    images_dir: str | os.PathLike | None = None,
    classes: Sequence[str] | str | os.PathLike | None = None,
    policy: Mapping[str, str | Action] | None = None,
    split: str | None = None,
    check_images: ImageCheck | bool = "exists",
    report: ProblemReport | None = None,
    max_pixels: int | None = None,
) -> DetectionSet:
    """Load COCO, VOC, YOLO (folder or ``data.yaml``) or CVAT YOLO 1.1 data (``format="auto"`` detects it
    with ``detect_format``): the one entry every command's data goes through.

    ``images_dir`` applies to COCO and VOC, ``classes`` and ``split`` to VOC, YOLO and CVAT; the rest as
    in ``load_coco``."""
    if format not in FORMATS:
        raise ValueError(f"format must be one of {'|'.join(FORMATS)}, got {format!r}")
    fmt, p = detect_format(path) if format == "auto" else (format, Path(path))
    if not p.exists():
        raise FileNotFoundError(f"{p} does not exist")
    common = {"policy": policy, "check_images": check_images, "report": report, "max_pixels": max_pixels}
    if fmt == "coco":
        if classes is not None or split is not None:
            raise ValueError(
                f"{p}: classes and split apply to VOC, YOLO and CVAT data; a COCO file names its categories"
            )
        return load_coco(p, images_dir, **common)
    if fmt == "voc":
        return load_voc(p, images_dir, classes, split=split, **common)
    if images_dir is not None:
        raise ValueError(f"{p}: images_dir does not apply to YOLO / CVAT data (images sit beside the labels)")
    if fmt == "cvat":
        return load_cvat(p, classes, split=split, **common)
    return load_yolo(p, classes, split=split, **common)


def convert(
    src: str | os.PathLike,
    out: str | os.PathLike,
    format: Format = "auto",
    *,
    images_root: str | os.PathLike | None = None,
    **load_kwargs,
) -> DetectionSet:
    """Load ``src`` (any format) and write it to ``out`` as COCO JSON; returns the loaded set.

    ``file_name``s are relative to ``images_root`` (default: ``default_images_root``: ``out``'s folder
    when the images are inside it, else their common folder, which ``load_coco`` then needs as
    ``images_dir``). ``load_kwargs`` go to ``load_dataset``."""
    ds = load_dataset(src, format, **load_kwargs)
    write_coco(ds, out, images_root=images_root)
    return ds
