"""Run a detector over a dataset split and score it with COCO metrics (and, if asked, NMS recall)."""

from __future__ import annotations

from typing import Any

import torch
from rich.console import Console
from rich.progress import Progress

from anchorlab import distributed as dist_utils
from anchorlab.config import Config
from anchorlab.data.batch import size_divisor
from anchorlab.data.core import DetectionSet
from anchorlab.data.loader import DetectionDataset, build_loader
from anchorlab.data.transforms import boxes_to_original, build_transforms
from anchorlab.engine.common import move_targets
from anchorlab.evaluation import coco_metrics, detections_to_coco_results, nms_recall

__all__ = ["eval_transforms", "evaluate_model", "predict_dataset"]


def eval_transforms(cfg: Config):
    min_size = cfg.data.min_size if isinstance(cfg.data.min_size, int) else max(cfg.data.min_size)
    return build_transforms(False, min_size=min_size, max_size=cfg.data.max_size)


@torch.no_grad()
def predict_dataset(
    model: torch.nn.Module,
    cfg: Config,
    dataset: DetectionSet,
    *,
    return_pre_nms: bool = False,
    console: Console | None = None,
    batch_size: int | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, torch.Tensor]]]:
    """Detections of every image, in the ORIGINAL image coordinates.

    Returns ``(results, raw)``: COCO result dicts with the file's category ids, and per image (in the
    dataset's order) the raw ``{"boxes", "scores", "labels"}`` (plus ``pre_nms_*`` when asked) on the CPU.
    Under torchrun every rank predicts its share and every rank gets the gathered whole.
    """
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
    per_image: dict[int, tuple[list[dict[str, Any]], dict[str, torch.Tensor]]] = {}
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
                per_image[image_id] = (coco, mapped)
            progress.advance(task, len(batch))
    model.train(was_training)
    loader.close()
    if dist_utils.is_distributed():  # the split repeats a few images to even out shares: keyed by id
        per_image = {k: v for part in dist_utils.gather_objects(per_image) for k, v in part.items()}
    ordered = [per_image[record.id] for record in dataset.images]
    return [r for coco, _ in ordered for r in coco], [mapped for _, mapped in ordered]


def evaluate_model(
    model: torch.nn.Module,
    cfg: Config,
    dataset: DetectionSet,
    *,
    with_nms_recall: bool = False,
    console: Console | None = None,
) -> dict[str, Any]:
    """COCO metrics of ``model`` on ``dataset`` (whose JSON is ``cfg.data.val``), plus NMS recall if asked."""
    if dataset.source is None:
        raise ValueError("evaluation needs the dataset's COCO JSON (DetectionSet.source is not set)")
    results, raw = predict_dataset(model, cfg, dataset, return_pre_nms=with_nms_recall, console=console)
    if not dist_utils.is_main():
        return {}
    metrics = coco_metrics(dataset.source, results)
    if with_nms_recall:
        gts = [torch.as_tensor(r.boxes) for r in dataset.images]
        gt_labels = [torch.as_tensor(r.labels) for r in dataset.images]
        metrics["nms_recall"] = nms_recall(
            gts,
            [r["pre_nms_boxes"] for r in raw],
            [r["boxes"] for r in raw],
            gt_labels=gt_labels,
            pre_labels=[r["pre_nms_labels"] for r in raw],
            post_labels=[r["labels"] for r in raw],
        )
    metrics["num_detections"] = len(results)
    return metrics
