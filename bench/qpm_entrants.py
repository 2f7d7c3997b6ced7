"""The in-process entrants of ``quality_per_minute.py``: anchorlab's quick configurations, trained by
anchorlab's engine under ``train.max_minutes``, and torchvision's RetinaNet R18-FPN with its reference recipe.

Both read the same data through anchorlab's loader (shorter side resized to ``size``, longer side capped at
``size``, horizontal flip 0.5) and are scored by ``anchorlab.evaluation.coco_metrics`` on the val JSON.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torchvision
from torchvision.models.detection import RetinaNet
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from anchorlab.config import load_config
from anchorlab.data import load_coco
from anchorlab.data.loader import DetectionDataset, build_loader
from anchorlab.data.transforms import boxes_to_original, build_transforms
from anchorlab.engine.train import train
from anchorlab.evaluation import coco_metrics, detections_to_coco_results

__all__ = ["QUICK_CONFIGS", "BenchData", "run_anchorlab", "run_torchvision"]

ROOT = Path(__file__).resolve().parents[1]
QUICK_CONFIGS: dict[str, str] = {
    "retinanet": "configs/retinanet_r18_fpn_quick.yaml",
    "free_anchor": "configs/free_anchor_r18_fpn_quick.yaml",
    "fcos": "configs/fcos_r18_fpn_quick.yaml",
    "centernet": "configs/centernet_r18_quick.yaml",
    "grid": "configs/grid_r18_fpn_quick.yaml",
    "faster_rcnn": "configs/faster_rcnn_r18_fpn_quick.yaml",
}
#: Post-processing every entrant uses (anchorlab's quick configs have the same).
SCORE_THRESH, NMS_IOU, MAX_DETECTIONS = 0.05, 0.5, 100


@dataclass
class BenchData:
    train: Path
    val: Path
    images: Path | None
    size: int
    batch_size: int
    workers: int
    threads: int
    seed: int = 0


def _rate_from_log(log: Path, batch_size: int, skip: int) -> float:
    """Images/s between the ``skip``-th and the last logged iteration of a probe run."""
    records = [json.loads(line) for line in log.read_text().splitlines()]
    records = [r for r in records if "time" in r]
    first = next(r for r in records if r["iteration"] >= skip)
    last = records[-1]
    if last["iteration"] <= first["iteration"]:
        raise ValueError(f"{log}: too few iterations to measure the rate")
    return (last["iteration"] - first["iteration"]) * batch_size / (last["time"] - first["time"])


def run_anchorlab(
    detector: str, data: BenchData, minutes: float, out: Path, probe_iters: int
) -> dict[str, Any]:
    """Probe the training speed for ``probe_iters`` iterations, set ``train.iterations`` so the schedule
    ends at the budget, then train with ``train.max_minutes = minutes`` as the hard stop and evaluate."""
    path = ROOT / QUICK_CONFIGS[detector]
    overrides = [
        f"data.train={data.train}",
        f"data.val={data.val}",
        f"data.images={data.images or 'null'}",
        "data.synthetic=null",
        f"data.min_size={data.size}",
        f"data.max_size={data.size}",
        f"train.batch_size={data.batch_size}",
        f"train.workers={data.workers}",
        f"train.threads={data.threads}",
        f"train.seed={data.seed}",
        "train.device=cpu",
    ]
    probe = load_config(
        path,
        [*overrides, f"train.iterations={probe_iters}", "train.log_every=1", f"train.out={out / 'probe'}"],
    )
    probe.train.checkpoint_every = probe_iters
    train(probe, evaluate=False, show_progress=False, exist_ok=True)
    rate = _rate_from_log(out / "probe" / "log.jsonl", data.batch_size, skip=max(1, probe_iters // 4))
    base = load_config(path, overrides)
    planned = max(1, int(rate * minutes * 60 / data.batch_size))
    cfg = load_config(
        path,
        [
            *overrides,
            f"train.iterations={planned}",
            f"train.max_minutes={minutes}",
            f"train.warmup_iters={min(base.train.warmup_iters, planned // 5)}",
            f"train.steps={[round(s * planned / base.train.iterations) for s in base.train.steps]}",
            f"train.checkpoint_every={planned}",  # the bench does not resume: one checkpoint at the end
            "train.eval_every=0",  # one evaluation, at the end: the budget is for training
            f"train.out={out / 'train'}",
        ],
    )
    summary = train(cfg, show_progress=False, exist_ok=True)
    threads = json.loads((out / "train" / "environment.json").read_text())["threads"]  # as set by train()
    return {
        "metrics": summary["metrics"],
        "iterations": summary["iterations"],
        "planned_iterations": planned,
        "probe_images_per_s": round(rate, 2),
        "images_per_s": summary["train_images_per_s"],
        "wall_minutes": summary["train_time_s"] / 60,
        "threads": threads,
        "status": "ok" if threads == data.threads else f"ran with {threads} torch threads",
        "notes": f"{cfg.train.optimizer} lr {cfg.train.lr}, {cfg.train.schedule} over {planned} it",
    }


def build_torchvision_retinanet(num_classes: int, size: int) -> RetinaNet:
    """torchvision's RetinaNet on a random-init ResNet-18 FPN (P3-P7, P6 from P5, 256 channels)."""
    body = torchvision.models.resnet18(weights=None)
    backbone = _resnet_fpn_extractor(body, 5, returned_layers=[2, 3, 4], extra_blocks=LastLevelP6P7(256, 256))
    return RetinaNet(
        backbone,
        num_classes=num_classes,
        min_size=size,
        max_size=size,
        score_thresh=SCORE_THRESH,
        nms_thresh=NMS_IOU,
        detections_per_img=MAX_DETECTIONS,
    )


def reference_lr_factor(it: int, elapsed: float, budget: float, warmup_iters: int) -> float:
    """torchvision's detection reference schedule mapped onto a wall budget: linear warm-up from 1/1000
    over the first ``warmup_iters`` iterations, then x0.1 at 16/26 and 22/26 of the budget (its 26-epoch
    RetinaNet schedule with steps at epochs 16 and 22)."""
    factor = 0.1 ** sum(elapsed >= budget * f for f in (16 / 26, 22 / 26))
    if it < warmup_iters:
        alpha = it / warmup_iters
        factor *= 1e-3 * (1 - alpha) + alpha
    return factor


@torch.no_grad()
def _predict_torchvision(model: RetinaNet, val_set, data: BenchData) -> list[dict[str, Any]]:
    model.eval()
    transforms = build_transforms(False, min_size=data.size, max_size=data.size)
    loader = build_loader(
        DetectionDataset(val_set, transforms), batch_size=data.batch_size, train=False, workers=0
    )
    results: list[dict[str, Any]] = []
    for batch, targets in loader:
        images = [batch.tensor[i, :, :h, :w] for i, (h, w) in enumerate(batch.sizes)]
        for out, target in zip(model(images), targets, strict=True):
            out = {k: v.detach() for k, v in out.items()}
            out["boxes"] = boxes_to_original(out["boxes"], target["scale"])
            results += detections_to_coco_results([out], [target["image_id"]], val_set.label_to_category_id)
    return results


def run_torchvision(data: BenchData, minutes: float, clip_grad: float | None) -> dict[str, Any]:
    """Train torchvision's RetinaNet R18-FPN for ``minutes`` with the reference recipe (SGD momentum 0.9,
    lr 0.01 per 16 images scaled to the batch, weight decay 1e-4, warm-up, steps) and evaluate it. A
    non-finite loss stops training, as the reference script does (reported as diverged, AP 0)."""
    torch.manual_seed(data.seed)
    threads_before = torch.get_num_threads()
    torch.set_num_threads(data.threads)
    try:
        return _run_torchvision(data, minutes, clip_grad)
    finally:
        torch.set_num_threads(threads_before)


def _run_torchvision(data: BenchData, minutes: float, clip_grad: float | None) -> dict[str, Any]:
    train_set = load_coco(data.train, images_dir=data.images)
    val_set = load_coco(data.val, images_dir=data.images)
    model = build_torchvision_retinanet(train_set.num_classes, data.size)
    lr = 0.01 * data.batch_size / 16
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=1e-4)
    loader = build_loader(
        train_set,
        transforms=build_transforms(True, min_size=data.size, max_size=data.size, hflip=0.5),
        batch_size=data.batch_size,
        train=True,
        infinite=True,
        workers=data.workers,
        seed=data.seed,
    )
    warmup = min(1000, len(train_set) // data.batch_size - 1)  # the reference warms up over epoch 0
    budget = minutes * 60
    model.train()
    it, status, t0 = 0, "ok", time.perf_counter()
    try:
        while (elapsed := time.perf_counter() - t0) < budget:
            for group in optimizer.param_groups:
                group["lr"] = lr * reference_lr_factor(it, elapsed, budget, warmup)
            batch, targets = next(loader)
            images = [batch.tensor[i, :, :h, :w] for i, (h, w) in enumerate(batch.sizes)]
            losses = model(images, [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets])
            loss = sum(losses.values())
            if not math.isfinite(float(loss.detach())):
                status = f"diverged at iteration {it} (loss {float(loss.detach())})"
                break
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if clip_grad:
                torch.nn.utils.clip_grad_norm_(params, clip_grad)
            optimizer.step()
            it += 1
    finally:
        loader.close()
    train_s = time.perf_counter() - t0
    threads = torch.get_num_threads()
    if status == "ok":
        metrics = coco_metrics(val_set.source, _predict_torchvision(model, val_set, data), per_category=False)
    else:
        metrics = {"AP": 0.0, "AP50": 0.0, "APs": 0.0}
    return {
        "metrics": metrics,
        "iterations": it,
        "planned_iterations": None,
        "images_per_s": it * data.batch_size / max(train_s, 1e-9),
        "wall_minutes": train_s / 60,
        "threads": threads,
        "status": status,
        "notes": f"SGD lr {lr:g} wd 1e-4, warm-up {warmup} it, steps at 16/26, 22/26 of the budget"
        + (f", clip grad norm {clip_grad:g}" if clip_grad else ", no clipping"),
    }
