"""What ``compare`` measures of a trained detector: COCO metrics, NMS recall and the PR curve from one pass
over the val split, batch-1 inference time, parameters and forward FLOPs; and the peak memory of its
training (``PeakMemory``)."""

from __future__ import annotations

import resource
import statistics
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import torch
from rich.console import Console
from torch.utils.flop_counter import FlopCounterMode

from anchorlab.config import Config
from anchorlab.data.core import DetectionSet
from anchorlab.data.loader import read_rgb

__all__ = ["SPEED_IMAGES", "SPEED_WARMUP", "PeakMemory", "measure_speed", "pr_curve", "predict_and_score"]

#: Inference timing: images timed (batch 1) after this many warm-up passes.
SPEED_IMAGES = 10
SPEED_WARMUP = 3


def _reset_peak_rss() -> bool:
    """Reset this process's peak resident set size to its current size (Linux >= 4.0: writing 5 to
    /proc/self/clear_refs resets VmHWM); False where that is impossible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _peak_rss_mb() -> float:
    """This process's peak RSS in MiB: ``VmHWM`` of /proc/self/status (its own address space), else
    ``getrusage(RUSAGE_SELF).ru_maxrss`` (kilobytes on Linux, bytes on macOS), which Linux would also
    fill with the RSS a spawned worker's parent had when it forked."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**10
    except (OSError, ValueError, IndexError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


class PeakMemory:
    """Peak memory of the work inside ``with PeakMemory(device, where):``.

    CUDA: ``torch.cuda.max_memory_allocated`` (tensors only, after ``reset_peak_memory_stats``). CPU: the
    peak resident set size (RSS) of this process, reset on entry where the OS allows (Linux), so it is
    the peak during the work -- including what the process already held (interpreter, torch, data; in a
    ``compare --jobs`` worker little else, in the compare process itself also what earlier detectors
    left). Without the reset it is the peak since the process started, and ``source`` says so.
    ``result()`` -> ``{"peak_memory_mb", "peak_memory_source"}``.
    """

    def __init__(self, device: torch.device | str, where: str) -> None:
        self.device = torch.device(device)
        self.where = where
        self.peak_mb: float | None = None
        self.source = ""

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.source = f"CUDA max_memory_allocated during training ({self.where})"
        elif _reset_peak_rss():
            self.source = f"peak RSS during training of the {self.where}"
        else:
            self.source = f"peak RSS of the {self.where} since it started (no reset on this OS)"
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.device.type == "cuda":
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            self.peak_mb = _peak_rss_mb()

    def result(self) -> dict[str, Any]:
        peak = None if self.peak_mb is None else round(self.peak_mb, 1)
        return {"peak_memory_mb": peak, "peak_memory_source": self.source}


def pr_curve(details: dict[str, Any], iou: float = 0.5) -> dict[str, Any]:
    """Precision over COCO's 101 recall points at ``iou`` (area all, 100 detections), averaged over the
    categories that have ground truth; from ``coco_eval_details``."""
    precision = np.asarray(details["precision"])  # [T, R, K, A, M]
    t = int(np.argmin(np.abs(np.asarray(details["iou_thresholds"]) - iou)))
    area = list(details["area_ranges"]).index("all")
    p = precision[t, :, :, area, -1]  # [R, K]
    valid = (p > -1).all(axis=0)  # categories with ground truth
    mean = p[:, valid].mean(axis=1) if valid.any() else np.full(p.shape[0], np.nan)
    return {
        "iou": float(details["iou_thresholds"][t]),
        "recall": [round(float(r), 4) for r in details["recall_thresholds"]],
        "precision": [None if np.isnan(v) else round(float(v), 5) for v in mean],
    }


def predict_and_score(model: torch.nn.Module, cfg: Config, val_set: DetectionSet, console: Console):
    """COCO metrics + NMS recall (the ``anchorlab`` protocol, as ``engine.evaluate.evaluate_model(
    with_nms_recall=True, nms_recall_protocol="anchorlab")``) and the PR curve from ONE pass over the val
    split; returns ``(metrics, coco_results)``."""
    from anchorlab.data.coco import coco_dict
    from anchorlab.engine.evaluate import predict_dataset
    from anchorlab.evaluation import coco_eval_details, coco_metrics, protocol_nms_recall

    results, raw = predict_dataset(model, cfg, val_set, return_pre_nms=True, console=console)
    gt = coco_dict(val_set)  # the loaded set: any format, ids matched to the model's
    metrics = coco_metrics(gt, results)
    metrics["nms_recall"] = protocol_nms_recall(  # the model's own caps: one pass serves both
        "anchorlab",
        [torch.as_tensor(r.boxes) for r in val_set.images],
        [r["pre_nms_boxes"] for r in raw],
        [r["boxes"] for r in raw],
        gt_labels=[torch.as_tensor(r.labels) for r in val_set.images],
        pre_labels=[r["pre_nms_labels"] for r in raw],
        post_labels=[r["labels"] for r in raw],
    )
    metrics["num_detections"] = len(results)
    metrics["pr_curve"] = pr_curve(coco_eval_details(gt, results))
    return metrics, results


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def measure_speed(
    model: torch.nn.Module,
    cfg: Config,
    val_set: DetectionSet,
    *,
    images: int = SPEED_IMAGES,
    warmup: int = SPEED_WARMUP,
) -> dict[str, Any]:
    """Batch-1 inference time (median ms/image over the first ``images`` val images after ``warmup``
    passes; eval mode, resized tensors on the device, pre- and post-processing included), parameters and
    forward GFLOPs of one image at the eval size (``torch.utils.flop_counter``; a multiply-add = 2)."""
    from anchorlab.engine.evaluate import eval_transforms

    model.eval()
    device = next(model.parameters()).device
    transform = eval_transforms(cfg)
    tensors = []
    for record in val_set.images[: max(1, images)]:
        target = {
            "boxes": torch.zeros((0, 4)),
            "labels": torch.zeros((0,), dtype=torch.int64),
            "crowd": torch.zeros((0, 4)),
            "image_id": record.id,
        }
        tensor, _ = transform(read_rgb(record.file), target)
        tensors.append(tensor.to(device))
    for _ in range(warmup):
        model.detect([tensors[0]])
    times = []
    for tensor in tensors:
        _sync(device)
        start = time.perf_counter()
        model.detect([tensor])
        _sync(device)
        times.append(time.perf_counter() - start)
    with FlopCounterMode(display=False) as counter:
        model([tensors[0]])
    div = getattr(model, "size_divisible", 1)
    h, w = (int(s) for s in tensors[0].shape[-2:])
    return {
        "inference_ms": round(1000 * statistics.median(times), 3),
        "timed_images": len(times),
        "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 4),
        "gflops": round(counter.get_total_flops() / 1e9, 4),
        "eval_size": [-(-h // div) * div, -(-w // div) * div],
    }
