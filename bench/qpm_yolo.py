"""The Ultralytics side of ``quality_per_minute.py``, as seen from the project venv: write the data in YOLO
format, run ``qpm_yolo_runner.py`` in the separate Ultralytics venv, and turn its predictions into COCO
results with the val file's category ids.

YOLO labels are ``class cx cy w h`` normalised by the image size, one line per object; class ``i`` is
anchorlab's label ``i`` (the order of ``DetectionSet.categories``), so a prediction's class maps back with
``DetectionSet.label_to_category_id``. Crowd regions have no YOLO equivalent and are left out of the labels
(COCO evaluation still ignores detections on them). Images are symlinked as ``images/{split}/{id}{suffix}``
so any COCO layout works and each file name gives back its image id.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from anchorlab.data.core import DetectionSet
from anchorlab.evaluation import detections_to_coco_results

__all__ = ["YOLO_VENV", "predictions_to_coco", "run_yolo", "write_yolo_dataset", "yolo_label_lines"]

BENCH = Path(__file__).resolve().parent
YOLO_VENV = BENCH / ".venv-yolo"


def yolo_label_lines(boxes: np.ndarray, labels: np.ndarray, width: int, height: int) -> list[str]:
    """``class cx cy w h`` lines (normalised to 0..1) of ``boxes [M, 4]`` xyxy pixels, ``labels [M]``."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    labels = np.asarray(labels, np.int64).reshape(-1)
    if len(boxes) != len(labels):
        raise ValueError(f"{len(boxes)} boxes but {len(labels)} labels")
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    size = np.array([width, height, width, height], np.float64)
    clipped = np.clip(boxes, 0, size)
    centre = (clipped[:, :2] + clipped[:, 2:]) / 2
    wh = clipped[:, 2:] - clipped[:, :2]
    norm = np.concatenate([centre, wh], axis=1) / size
    return [f"{c} {x:.6f} {y:.6f} {w:.6f} {h:.6f}" for c, (x, y, w, h) in zip(labels, norm, strict=True)]


def _write_split(ds: DetectionSet, root: Path, split: str) -> list[tuple[int, str]]:
    images, labels = root / "images" / split, root / "labels" / split
    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    written = []
    for record in ds.images:
        link = images / f"{record.id}{Path(record.file).suffix.lower()}"
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(Path(record.file).resolve())
        lines = yolo_label_lines(record.boxes, record.labels, record.width, record.height)
        (labels / f"{record.id}.txt").write_text("".join(line + "\n" for line in lines))
        written.append((int(record.id), str(link)))
    return written


def write_yolo_dataset(train: DetectionSet, val: DetectionSet, root: str | os.PathLike) -> tuple[Path, list]:
    """Write ``root/images/{train,val}`` (symlinks), ``root/labels/{train,val}`` and ``root/data.yaml``.

    Returns ``(data.yaml path, [(image_id, image path), ...] of the val split)``."""
    if train.class_names != val.class_names:
        raise ValueError(f"train and val categories differ: {train.class_names} vs {val.class_names}")
    root = Path(root).resolve()
    for cache in root.glob("labels/*.cache"):
        cache.unlink()  # Ultralytics' label cache would hide changed labels
    _write_split(train, root, "train")
    val_images = _write_split(val, root, "val")
    data = {
        "path": str(root),
        "train": "images/train",
        "val": "images/val",
        "names": dict(enumerate(train.class_names)),
    }
    data_yaml = root / "data.yaml"
    data_yaml.write_text(yaml.safe_dump(data, sort_keys=False))
    return data_yaml, val_images


def predictions_to_coco(predictions: list[dict[str, Any]], val: DetectionSet) -> list[dict[str, Any]]:
    """COCO results (file category ids, xywh) from the runner's ``{image_id, boxes xyxy, scores, labels}``."""
    known = {int(r.id) for r in val.images}
    unknown = sorted({int(p["image_id"]) for p in predictions} - known)
    if unknown:
        raise ValueError(f"YOLO predictions for image ids not in {val.source}: {unknown[:10]}")
    return detections_to_coco_results(
        predictions, [int(p["image_id"]) for p in predictions], val.label_to_category_id
    )


def run_yolo(spec: dict[str, Any], out_dir: Path, python: Path | None = None) -> dict[str, Any]:
    """Run the runner in the Ultralytics venv (``python``, default ``bench/.venv-yolo/bin/python``).

    Raises ``RuntimeError`` with the tail of its log when it fails or the venv is missing."""
    python = python or YOLO_VENV / "bin" / "python"
    if not python.is_file():
        raise RuntimeError(f"{python} not found: run `make bench-venv-yolo` (or pass --yolo-python)")
    out_dir.mkdir(parents=True, exist_ok=True)
    spec_path, report_path, log_path = out_dir / "spec.json", out_dir / "report.json", out_dir / "log.txt"
    spec_path.write_text(json.dumps({**spec, "project": str(out_dir.resolve())}))
    report_path.unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    with log_path.open("w") as log:
        proc = subprocess.run(
            [str(python), str(BENCH / "qpm_yolo_runner.py"), str(spec_path), str(report_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**env, "OMP_NUM_THREADS": str(spec["threads"])},
            check=False,
        )
    if proc.returncode != 0 or not report_path.is_file():
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-15:])
        raise RuntimeError(f"the YOLO runner failed (exit {proc.returncode}); {log_path} ends with:\n{tail}")
    return json.loads(report_path.read_text())


if __name__ == "__main__":
    sys.exit("a helper of quality_per_minute.py; run that")
