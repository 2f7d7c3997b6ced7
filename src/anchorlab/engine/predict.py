"""Load a trained detector from a checkpoint and run it on image files."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import track
from torchvision.io import encode_png
from torchvision.utils import draw_bounding_boxes

from anchorlab.boxes import xyxy_to_xywh
from anchorlab.config import Config
from anchorlab.data.core import DataError
from anchorlab.data.loader import read_rgb
from anchorlab.engine.checkpoint import load_checkpoint
from anchorlab.engine.common import resolve_device, write_json
from anchorlab.engine.evaluate import eval_transforms
from anchorlab.io import atomic_write, make_dir

__all__ = ["IMAGE_SUFFIXES", "find_images", "load_trained", "predict_images"]

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}


def load_trained(checkpoint: str | Path, device: str | torch.device = "auto"):
    """``(model in eval mode, config, categories)`` from a checkpoint written by ``anchorlab train``."""
    from anchorlab.models import build_detector

    device = resolve_device(device) if isinstance(device, str) else device
    state = load_checkpoint(checkpoint, map_location=device)
    cfg = Config.model_validate(state["config"])
    cfg.model.backbone.weights = None  # the checkpoint holds every weight: never re-read or download
    model = build_detector(cfg)
    model.load_state_dict(state["model"])
    return model.to(device).eval(), cfg, state["categories"]


def find_images(inputs: list[Path]) -> list[Path]:
    """Image files named directly or found (sorted) in the named folders."""
    files: list[Path] = []
    for path in inputs:
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES))
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such image or folder")
    if not files:
        raise FileNotFoundError(
            f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {', '.join(map(str, inputs))}"
        )
    return files


@torch.no_grad()
def predict_images(
    checkpoint: str | Path,
    inputs: list[Path],
    out: Path,
    *,
    score_thresh: float = 0.3,
    device: str = "auto",
    draw: bool = True,
    console: Console | None = None,
) -> dict[str, Any]:
    """Write ``OUT/detections.json`` (COCO results, the training file's category ids), ``OUT/images.json``
    (image id -> file) and, with ``draw``, one PNG per image with boxes, labels and scores."""
    from anchorlab.data.transforms import boxes_to_original

    model, cfg, categories = load_trained(checkpoint, device)
    model.inference["score_thresh"] = score_thresh
    transform = eval_transforms(cfg)
    names = [c["name"] for c in categories]
    dev = next(model.parameters()).device
    make_dir(out)
    results, images, skipped = [], [], []
    files = find_images(inputs)
    for image_id, path in enumerate(track(files, description="predict", console=console), start=1):
        try:
            image = read_rgb(path)
        except DataError as exc:  # truncated, malformed, too large: skipped like training skips it
            warnings.warn(f"skipping unreadable image {exc}", RuntimeWarning, stacklevel=2)
            skipped.append(str(path))
            continue
        target = {
            "boxes": torch.zeros((0, 4)),
            "labels": torch.zeros((0,), dtype=torch.int64),
            "crowd": torch.zeros((0, 4)),
            "image_id": image_id,
        }
        tensor, target = transform(image, target)
        det = model.predict([tensor.to(dev)])[0]
        boxes = boxes_to_original(det["boxes"].cpu(), target["scale"])
        scores, labels = det["scores"].cpu(), det["labels"].cpu()
        images.append(
            {"id": image_id, "file_name": str(path), "height": image.shape[1], "width": image.shape[2]}
        )
        for box, score, label in zip(
            xyxy_to_xywh(boxes).tolist(), scores.tolist(), labels.tolist(), strict=True
        ):
            results.append(
                {
                    "image_id": image_id,
                    "category_id": categories[label]["id"],
                    "bbox": [round(v, 2) for v in box],
                    "score": round(score, 5),
                }
            )
        if draw:
            text = [f"{names[lab]} {s:.2f}" for lab, s in zip(labels.tolist(), scores.tolist(), strict=True)]
            drawn = draw_bounding_boxes(image, boxes, labels=text, colors="red", width=2)
            png = encode_png(drawn).numpy().tobytes()
            atomic_write(out / f"{path.stem}_pred.png", lambda f, data=png: f.write(data))
    write_json(out / "detections.json", results)
    write_json(out / "images.json", images)
    return {
        "images": len(files) - len(skipped),
        "detections": len(results),
        "out": str(out),
        "skipped": skipped,
    }


def read_detections(path: Path) -> list[dict[str, Any]]:
    return json.loads(Path(path).read_text())
