"""Format detection, ``load_dataset`` for any supported format, and conversion to COCO JSON."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

from anchorlab.data.coco import load_coco, write_coco
from anchorlab.data.core import Action, DetectionSet, ProblemReport
from anchorlab.data.validate import ImageCheck
from anchorlab.data.voc import load_voc
from anchorlab.data.yolo import load_yolo

__all__ = ["FORMATS", "convert", "detect_format", "load_dataset"]

Format = Literal["auto", "coco", "voc", "yolo"]
FORMATS = ("auto", "coco", "voc", "yolo")


def detect_format(path: str | os.PathLike) -> tuple[str, Path]:
    """``(format, path to load)`` for a COCO JSON, a VOC folder, a YOLO folder or ``data.yaml``.

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
        raise ValueError(f"{p}: cannot tell the format from the suffix {suffix!r} (expected .json or .yaml)")
    if (p / "Annotations").is_dir() or any(p.glob("*.xml")):
        return "voc", p
    if (p / "data.yaml").is_file() or ((p / "images").is_dir() and (p / "labels").is_dir()):
        return "yolo", p
    jsons = sorted(p.glob("*.json"))
    if len(jsons) == 1:
        return "coco", jsons[0]
    if jsons:
        raise ValueError(f"{p} holds several COCO files; pass one of: {', '.join(j.name for j in jsons)}")
    raise ValueError(
        f"{p}: no COCO .json, VOC Annotations/ or *.xml, or YOLO data.yaml / images/ + labels/ found"
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
) -> DetectionSet:
    """Load COCO, VOC or YOLO data (``format="auto"`` detects it with ``detect_format``).

    ``images_dir`` applies to COCO and VOC, ``classes`` and ``split`` to VOC and YOLO; the rest as in
    ``load_coco``."""
    if format not in FORMATS:
        raise ValueError(f"format must be one of {'|'.join(FORMATS)}, got {format!r}")
    fmt, p = detect_format(path) if format == "auto" else (format, Path(path))
    if fmt == "coco":
        if classes is not None or split is not None:
            raise ValueError("classes and split apply to VOC and YOLO data; a COCO file names its categories")
        return load_coco(p, images_dir, policy, check_images=check_images, report=report)
    if fmt == "voc":
        return load_voc(p, images_dir, classes, policy, split=split, check_images=check_images, report=report)
    if images_dir is not None:
        raise ValueError("images_dir does not apply to YOLO data (images/ sits beside labels/)")
    return load_yolo(p, classes, policy, split=split, check_images=check_images, report=report)


def convert(
    src: str | os.PathLike,
    out: str | os.PathLike,
    format: Format = "auto",
    *,
    images_root: str | os.PathLike | None = None,
    **load_kwargs,
) -> DetectionSet:
    """Load ``src`` (any format) and write it to ``out`` as COCO JSON; returns the loaded set.

    ``file_name``s are relative to ``images_root`` (default: ``out``'s folder, so ``load_coco(out)``
    finds the images). ``load_kwargs`` go to ``load_dataset``."""
    ds = load_dataset(src, format, **load_kwargs)
    write_coco(ds, out, images_root=images_root)
    return ds
