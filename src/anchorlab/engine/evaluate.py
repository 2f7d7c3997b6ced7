"""Run a detector over a dataset split and score it with COCO metrics (and, if asked, NMS recall)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from rich.console import Console
from rich.progress import Progress

from anchorlab import distributed as dist_utils
from anchorlab.config import Config
from anchorlab.data.batch import size_divisor
from anchorlab.data.core import DetectionSet, ImageRecord
from anchorlab.data.loader import DetectionDataset, build_loader
from anchorlab.data.transforms import boxes_to_original, build_transforms
from anchorlab.engine.common import move_targets
from anchorlab.evaluation import coco_metrics, detections_to_coco_results
from anchorlab.evaluation.nms_recall import (
    NMSRecallProtocol,
    best_overlap,
    get_protocol,
    protocol_nms_recall,
    protocol_result,
)

__all__ = [
    "eval_transforms",
    "evaluate_model",
    "has_ground_truth",
    "inference_settings",
    "nms_recall_pass",
    "predict_dataset",
]


def eval_transforms(cfg: Config):
    min_size = cfg.data.min_size if isinstance(cfg.data.min_size, int) else max(cfg.data.min_size)
    return build_transforms(False, min_size=min_size, max_size=cfg.data.max_size, resize=cfg.data.resize)


@torch.no_grad()
def predict_dataset(
    model: torch.nn.Module,
    cfg: Config,
    dataset: DetectionSet,
    *,
    return_pre_nms: bool = False,
    console: Console | None = None,
    batch_size: int | None = None,
    reduce: Callable[[dict[str, torch.Tensor], ImageRecord], Any] | None = None,
) -> tuple[list[dict[str, Any]], list[Any]]:
    """Detections of every image, in the ORIGINAL image coordinates.

    Returns ``(results, raw)``: COCO result dicts with the file's category ids, and per image (in the
    dataset's order) the raw ``{"boxes", "scores", "labels"}`` (plus ``pre_nms_*`` when asked) on the CPU,
    or what ``reduce(raw, record)`` makes of it (to keep only a summary of large candidate sets).
    Under torchrun every rank predicts its share and every rank gets the gathered whole.
    """
    records = {record.id: record for record in dataset.images}
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    loader = build_loader(
        DetectionDataset(dataset, eval_transforms(cfg)),
        batch_size=batch_size or max(1, min(8, cfg.train.batch_size)),
        train=False,
        workers=min(cfg.train.workers, 2),
        seed=cfg.train.seed,
        size_divisible=size_divisor(2**cfg.model.fpn.max_level),
        device=device,
        rank=dist_utils.rank(),
        world_size=dist_utils.world_size(),
    )
    per_image: dict[int, tuple[list[dict[str, Any]], Any]] = {}
    with Progress(console=console or Console(stderr=True), transient=True) as progress:
        task = progress.add_task("evaluate", total=len(dataset))
        for batch, targets in loader:
            batch = batch.to(device, non_blocking=True)
            targets = move_targets(targets, device)
            outputs = model.detect(batch, return_pre_nms=return_pre_nms)
            for out, target in zip(outputs, targets, strict=True):
                mapped = {}
                for key, value in out.items():
                    value = value.detach().cpu()
                    if key.endswith("boxes"):
                        value = boxes_to_original(value, target["scale"])
                    mapped[key] = value
                image_id = target["image_id"]
                coco = detections_to_coco_results([mapped], [image_id], dataset.label_to_category_id)
                per_image[image_id] = (coco, mapped if reduce is None else reduce(mapped, records[image_id]))
            progress.advance(task, len(batch))
    model.train(was_training)
    loader.close()
    if dist_utils.is_distributed():  # the split repeats a few images to even out shares: keyed by id
        per_image = {k: v for part in dist_utils.gather_objects(per_image) for k, v in part.items()}
    ordered = [per_image[record.id] for record in dataset.images]
    return [r for coco, _ in ordered for r in coco], [mapped for _, mapped in ordered]


@contextmanager
def inference_settings(model: torch.nn.Module, overrides: Mapping[str, Any]) -> Iterator[None]:
    """Temporarily update ``model.inference`` (the post-processing keywords) with ``overrides``."""
    target = getattr(model, "module", model)  # DDP / compiled wrappers keep the Detector in .module
    saved = dict(target.inference)
    target.inference.update(overrides)
    try:
        yield
    finally:
        target.inference.clear()
        target.inference.update(saved)


def has_ground_truth(dataset: DetectionSet) -> bool:
    """Whether any image of ``dataset`` holds an object or a crowd region (an image-info file holds none)."""
    return any(len(r.boxes) or len(r.crowd) for r in dataset.images)


def nms_recall_pass(
    model: torch.nn.Module,
    cfg: Config,
    dataset: DetectionSet,
    protocol: str | NMSRecallProtocol = "freeanchor",
    *,
    console: Console | None = None,
) -> dict[str, Any]:
    """NMS recall of ``model`` on ``dataset`` under ``protocol`` (``evaluation.PROTOCOLS``): one
    prediction pass with the protocol's inference overrides, keeping only each object's best IoU before
    and after NMS per image (the candidate sets of an uncapped protocol are large)."""
    protocol = get_protocol(protocol)

    def overlaps(raw: dict[str, torch.Tensor], record: ImageRecord) -> tuple[torch.Tensor, torch.Tensor]:
        gt = torch.as_tensor(record.boxes)
        if not protocol.class_aware:
            return best_overlap(gt, raw["pre_nms_boxes"]), best_overlap(gt, raw["boxes"])
        labels = torch.as_tensor(record.labels)
        return (
            best_overlap(gt, raw["pre_nms_boxes"], labels, raw["pre_nms_labels"]),
            best_overlap(gt, raw["boxes"], labels, raw["labels"]),
        )

    with inference_settings(model, protocol.inference):
        _, pairs = predict_dataset(model, cfg, dataset, return_pre_nms=True, console=console, reduce=overlaps)
    return protocol_result(protocol, [p[0] for p in pairs], [p[1] for p in pairs])


def evaluate_model(
    model: torch.nn.Module,
    cfg: Config,
    dataset: DetectionSet,
    *,
    with_nms_recall: bool = False,
    nms_recall_protocol: str | NMSRecallProtocol = "freeanchor",
    console: Console | None = None,
) -> dict[str, Any]:
    """COCO metrics of ``model`` on ``dataset`` (as loaded and validated, in any format, its labels in the
    model's label order: see ``anchorlab.data.align_categories``), plus NMS recall if asked, under
    ``nms_recall_protocol``: ``"anchorlab"`` reuses the evaluation pass, a protocol with its own
    inference settings (``"freeanchor"``) costs a second pass."""
    from anchorlab.data.coco import coco_dict

    protocol = get_protocol(nms_recall_protocol)
    same_pass = with_nms_recall and not protocol.inference
    results, raw = predict_dataset(model, cfg, dataset, return_pre_nms=same_pass, console=console)
    if not dist_utils.is_main():
        if with_nms_recall and not same_pass:  # every rank takes part in the second pass
            nms_recall_pass(model, cfg, dataset, protocol, console=console)
        return {}
    metrics = coco_metrics(coco_dict(dataset), results)  # the loaded set: any format, ids as matched
    if same_pass:
        gts = [torch.as_tensor(r.boxes) for r in dataset.images]
        gt_labels = [torch.as_tensor(r.labels) for r in dataset.images]
        metrics["nms_recall"] = protocol_nms_recall(
            protocol,
            gts,
            [r["pre_nms_boxes"] for r in raw],
            [r["boxes"] for r in raw],
            gt_labels=gt_labels,
            pre_labels=[r["pre_nms_labels"] for r in raw],
            post_labels=[r["labels"] for r in raw],
        )
    elif with_nms_recall:
        metrics["nms_recall"] = nms_recall_pass(model, cfg, dataset, protocol, console=console)
    metrics["num_detections"] = len(results)
    return metrics
