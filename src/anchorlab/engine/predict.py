"""Load a trained detector and run it on images: the path behind ``anchorlab.load``, ``Detector.predict`` and
``anchorlab predict``.

Preprocessing is the evaluation transform of the training config (shorter side ``data.min_size``, longer
side at most ``data.max_size``, float 0..1; the model normalises), and boxes go back to the original
pixels with ``boxes_to_original`` (clipped to the image).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

from anchorlab.config import Config
from anchorlab.data.transforms import boxes_to_original
from anchorlab.engine.checkpoint import CheckpointError, load_checkpoint
from anchorlab.engine.common import resolve_device
from anchorlab.engine.evaluate import eval_transforms
from anchorlab.engine.sources import SourceError, SourceItem, iter_source
from anchorlab.io import write_json, write_text
from anchorlab.results import Detections

__all__ = [
    "CHECKPOINT_NAMES",
    "ImageIds",
    "load_detector",
    "load_trained",
    "output_name",
    "predict_stream",
    "predict_to_folder",
    "resolve_checkpoint",
]

#: The files of a run folder ``load`` looks for, in order of preference.
CHECKPOINT_NAMES = ("best.pt", "last.pt", "checkpoint.pt")


def resolve_checkpoint(path: str | Path) -> Path:
    """``path`` for a file; for a run folder its ``best.pt``, else ``last.pt``, else ``checkpoint.pt``."""
    path = Path(path)
    if path.is_dir():
        for name in CHECKPOINT_NAMES:
            if (path / name).is_file():
                return path / name
        raise CheckpointError(f"run folder {path} holds none of {', '.join(CHECKPOINT_NAMES)}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    return path


def load_detector(path: str | Path, device: str | torch.device = "auto", verbose: bool = False):
    """A ``Detector`` in eval mode on ``device`` with its training config and categories attached
    (``model.config``, ``model.categories``, ``model.names``) and ``model.checkpoint_path`` = the file read
    (see :func:`resolve_checkpoint`); ``verbose`` prints that file to stderr."""
    from anchorlab.models import build_detector

    file = resolve_checkpoint(path)
    device = resolve_device(device) if isinstance(device, str) else device
    state = load_checkpoint(file, map_location=device)
    try:
        cfg = Config.model_validate(state["config"])
    except Exception as exc:
        raise CheckpointError(f"{file}: the stored config is not valid: {str(exc).splitlines()[0]}") from None
    model = build_detector(cfg, pretrained=False)  # the checkpoint holds every weight: never re-read them
    try:
        model.load_state_dict(state["model"])
        model.attach(cfg, state.get("categories"))
    except (RuntimeError, ValueError) as exc:
        raise CheckpointError(f"{file}: weights do not fit the stored config: {str(exc)[:300]}") from None
    model.checkpoint_path = file
    if verbose:
        print(f"anchorlab: loaded {file} (iteration {state.get('iteration', '?')})", file=sys.stderr)
    return model.to(device).eval()


def load_trained(checkpoint: str | Path, device: str | torch.device = "auto"):
    """``(model in eval mode, config, categories)`` from a checkpoint file or run folder."""
    model = load_detector(checkpoint, device)
    return model, model.config, model.categories


def _readable(
    items: Iterable[SourceItem], on_error: Callable[[SourceItem, SourceError], None] | None
) -> Iterator[tuple[SourceItem, torch.Tensor]]:
    """``(item, decoded image)``; unreadable items go to ``on_error`` (or raise without it)."""
    for item in items:
        try:
            yield item, item.load()
        except SourceError as exc:
            if on_error is None:
                raise
            on_error(item, exc)


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def inference_settings(
    model: Any, conf: float | None, iou: float | None, max_det: int | None
) -> dict[str, Any]:
    """``model.inference`` with the given overrides (``None`` keeps the model's value)."""
    for name, value, lo, hi in (("conf", conf, 0, 1), ("iou", iou, 0, 1)):
        if value is not None and not lo <= value <= hi:
            raise ValueError(f"{name} must be in {lo}..{hi}, got {value}")
    if max_det is not None and max_det < 1:
        raise ValueError(f"max_det must be at least 1, got {max_det}")
    overrides = {"score_thresh": conf, "nms_iou": iou, "max_detections": max_det}
    return {**model.inference, **{k: v for k, v in overrides.items() if v is not None}}


@torch.no_grad()
def predict_stream(
    model: Any,
    source: Any,
    *,
    conf: float | None = 0.25,
    iou: float | None = None,
    max_det: int | None = None,
    batch: int = 8,
    on_error: Callable[[SourceItem, SourceError], None] | None = None,
) -> Iterator[Detections]:
    """One :class:`Detections` per image of ``source`` (see ``anchorlab.engine.sources``), in order,
    ``batch`` images per forward pass; boxes in the original images' pixels. An unreadable file raises a
    :class:`SourceError` naming it, or with ``on_error`` is reported to it and skipped."""
    if model.config is None:
        raise ValueError(
            "this Detector has no preprocessing: load it with anchorlab.load(...) or call "
            "model.attach(config, categories) first"
        )
    if batch < 1:
        raise ValueError(f"batch must be at least 1, got {batch}")
    settings = inference_settings(model, conf, iou, max_det)
    transform = eval_transforms(model.config)
    device = next(model.parameters()).device
    names = model.names
    category_ids = [c["id"] for c in model.categories] if model.categories else None
    empty = {"boxes": torch.zeros((0, 4)), "labels": torch.zeros((0,), dtype=torch.int64)}
    for chunk in _chunks(_readable(iter_source(source), on_error), batch):
        originals = [image for _, image in chunk]
        chunk = [item for item, _ in chunk]
        resized = [transform(image, dict(empty)) for image in originals]
        outputs = model.detect([im.to(device) for im, _ in resized], inference=settings)
        for item, image, (_, target), out in zip(chunk, originals, resized, outputs, strict=True):
            shape = (int(image.shape[-2]), int(image.shape[-1]))
            yield Detections(
                xyxy=boxes_to_original(out["boxes"].float().cpu(), target["scale"], shape),
                scores=out["scores"].float().cpu(),
                labels=out["labels"].cpu(),
                names=names,
                image_shape=shape,
                path=item.path,
                category_ids=category_ids,
                frame=item.frame,
                relative=item.relative,
                image=image if item.in_memory else None,
            )


# -- anchorlab predict: a folder of outputs -------------------------------------------------------------
def output_name(det: Detections) -> Path:
    """Where ``det`` goes inside ``OUT/images`` (annotated) and ``OUT/labels`` (``.txt``): the input's path
    relative to the common folder of the inputs; a video's frames go to ``<video name>.frames/``."""
    rel = det.relative if det.relative is not None else Path(f"image_{id(det)}.png")
    if det.frame is not None:
        return rel.parent / f"{rel.name}.frames" / f"frame_{det.frame:06d}.png"
    return rel


class ImageIds:
    """Image ids of a COCO ground-truth file (read with ``anchorlab.data.coco.load_coco``), looked up by file:
    the same absolute path, else the one GT file whose path ends with the input's relative path, else with
    its file name."""

    def __init__(self, gt: str | Path) -> None:
        from anchorlab.data.coco import load_coco

        ds = load_coco(gt, check_images="none")
        self.exact = {str(Path(r.file).absolute()): r.id for r in ds.images}
        self.by_name: dict[str, list[tuple[tuple[str, ...], int]]] = {}
        for r in ds.images:
            self.by_name.setdefault(Path(r.file).name, []).append((Path(r.file).parts, r.id))
        self.categories = [{"id": c.id, "name": c.name} for c in ds.categories]

    def __call__(self, det: Detections) -> int | None:
        if det.path is None or det.frame is not None:
            return None
        exact = self.exact.get(str(det.path.absolute()))
        if exact is not None:
            return exact
        candidates = self.by_name.get(det.path.name, [])
        if len(candidates) == 1:
            return candidates[0][1]
        tail = det.relative.parts if det.relative is not None else ()
        hits = [i for parts, i in candidates if tail and parts[-len(tail) :] == tail]
        return hits[0] if len(hits) == 1 else None


def predict_to_folder(
    model: Any,
    inputs: list[Any],
    out: Path,
    *,
    conf: float | None = 0.25,
    iou: float | None = None,
    max_det: int | None = None,
    batch: int = 8,
    draw: bool = True,
    save_txt: bool = False,
    save_json: bool = False,
    gt: Path | None = None,
    on_error: Callable[[SourceItem, SourceError], None] | None = None,
    on_image: Callable[[Detections], None] | None = None,
) -> dict[str, Any]:
    """Run ``model.predict`` over ``inputs`` and write, keeping the inputs' relative layout (see
    :func:`output_name`): ``OUT/images/<rel>`` annotated (``draw``), ``OUT/labels/<rel>.txt`` YOLO lines and
    ``OUT/classes.txt`` (``save_txt``; ``anchorlab.data.yolo.load_yolo(OUT)`` reads them back),
    ``OUT/detections.json`` COCO results with the checkpoint's category ids and ``OUT/images.json``
    (``save_json``). Image ids: ``gt``'s (a COCO file; images not in it are left out of detections.json
    and counted in ``unmatched``), else 1, 2, ... in input order (``images.json`` maps them to files)."""
    ids = ImageIds(gt) if gt is not None else None
    results: list[dict[str, Any]] = []
    images: list[dict[str, Any]] = []
    unmatched: list[str] = []
    count = 0
    for det in predict_stream(
        model, inputs, conf=conf, iou=iou, max_det=max_det, batch=batch, on_error=on_error
    ):
        count += 1
        name = output_name(det)
        if draw:
            det.save(out / "images" / name)
        if save_txt:
            write_text(out / "labels" / name.with_suffix(".txt"), det.to_yolo())
        if save_json:
            image_id = ids(det) if ids is not None else count
            if image_id is None:
                unmatched.append(str(det.path))
            else:
                results.extend(det.to_coco(image_id))
                h, w = det.image_shape
                images.append(
                    {"id": image_id, "file_name": name.as_posix(), "path": str(det.path), "frame": det.frame,
                     "height": h, "width": w}
                )  # fmt: skip
        if on_image is not None:
            on_image(det)
    if save_txt:
        write_text(out / "classes.txt", "".join(f"{n}\n" for n in model.names))
    if save_json:
        write_json(out / "detections.json", results)
        write_json(out / "images.json", images)
    return {"images": count, "detections": len(results), "unmatched": unmatched, "out": str(out)}
