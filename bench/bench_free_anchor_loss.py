"""Benchmark: FreeAnchor loss vs "max-IoU assignment + focal loss + smooth L1" (RetinaNet), fwd + bwd.

Setting: 512x512 image, P3-P7 RetinaNet anchors (9 per location, 49,104 anchors), batch 2, 80 classes,
20 and 100 objects per image, ``torch.set_num_threads(2)``. The two losses run interleaved (A, B, A, B, ...)
in one process after warm-up; the table reports medians and the ratio FreeAnchor / baseline.

Run: ``.venv/bin/python bench/bench_free_anchor_loss.py [--reps 9]``
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time

import torch
from torchvision.ops import box_iou, sigmoid_focal_loss

from anchorlab.boxes import BoxCoder
from anchorlab.losses.free_anchor import free_anchor_loss

CODER = BoxCoder(stds=(0.1, 0.1, 0.2, 0.2))


def retina_anchors(image_size: int = 512, strides: tuple[int, ...] = (8, 16, 32, 64, 128)) -> torch.Tensor:
    """``[R, 4]`` xyxy anchors, level-major then (y, x) then 9 shapes (3 octave scales x 3 ratios)."""
    levels = []
    for stride in strides:
        n = math.ceil(image_size / stride)
        base = 4 * stride
        shapes = []
        for scale in (2**0, 2 ** (1 / 3), 2 ** (2 / 3)):
            for ratio in (0.5, 1.0, 2.0):
                w = base * scale / math.sqrt(ratio)
                h = base * scale * math.sqrt(ratio)
                shapes.append((-w / 2, -h / 2, w / 2, h / 2))
        shapes_t = torch.tensor(shapes)  # [9, 4]
        c = (torch.arange(n, dtype=torch.float32) + 0.5) * stride
        cy, cx = torch.meshgrid(c, c, indexing="ij")
        centres = torch.stack((cx, cy, cx, cy), dim=-1).reshape(-1, 1, 4)
        levels.append((centres + shapes_t).reshape(-1, 4))
    return torch.cat(levels)


def retina_baseline(anchors, cls_logits, box_deltas, gt_boxes, gt_labels, fg=0.5, bg=0.4, beta=0.11):
    """Max-IoU assignment (0.5 / 0.4, ignore band, low-quality matches) + sigmoid focal + smooth L1."""
    batch, num_anchors, _ = cls_logits.shape
    cls_targets = torch.zeros_like(cls_logits)
    valid = torch.zeros(batch, num_anchors, dtype=torch.bool, device=cls_logits.device)
    pos = torch.zeros_like(valid)
    box_targets = torch.zeros_like(box_deltas)
    with torch.no_grad():
        for b, (boxes, labels) in enumerate(zip(gt_boxes, gt_labels, strict=True)):
            if boxes.shape[0] == 0:
                valid[b] = True
                continue
            iou = box_iou(boxes, anchors)  # [M, R]
            best_iou, best_obj = iou.max(dim=0)
            pos_b = best_iou >= fg
            # low-quality matches: each object keeps the anchors of its highest IoU
            obj, anc = (iou == iou.amax(dim=1, keepdim=True)).nonzero(as_tuple=True)
            pos_b[anc] = True
            best_obj[anc] = obj
            pos[b] = pos_b
            valid[b] = pos_b | (best_iou < bg)
            cls_targets[b, pos_b, labels[best_obj[pos_b]]] = 1.0
            box_targets[b, pos_b] = CODER.encode(anchors[pos_b], boxes[best_obj[pos_b]])
    num_pos = max(1, int(pos.sum()))
    cls_loss = sigmoid_focal_loss(cls_logits[valid], cls_targets[valid], reduction="sum") / num_pos
    diff = (box_deltas[pos] - box_targets[pos]).abs()
    reg = torch.where(diff < beta, 0.5 * diff * diff / beta, diff - 0.5 * beta).sum() / num_pos
    return {"classification": cls_loss, "bbox_regression": reg}


def random_case(anchors, objects, batch=2, num_classes=80, image_size=512, seed=0):
    g = torch.Generator().manual_seed(seed)
    gt_boxes, gt_labels = [], []
    for _ in range(batch):
        wh = 8 + torch.rand(objects, 2, generator=g) ** 2 * (image_size / 2)
        xy = torch.rand(objects, 2, generator=g) * (image_size - wh)
        gt_boxes.append(torch.cat((xy, xy + wh), dim=1))
        gt_labels.append(torch.randint(num_classes, (objects,), generator=g))
    logits = (torch.randn(batch, anchors.shape[0], num_classes, generator=g) - 4.6).requires_grad_()
    deltas = (0.5 * torch.randn(batch, anchors.shape[0], 4, generator=g)).requires_grad_()
    return logits, deltas, gt_boxes, gt_labels


def step(fn, anchors, logits, deltas, gt_boxes, gt_labels) -> float:
    logits.grad = deltas.grad = None
    t0 = time.perf_counter()
    losses = fn(anchors, logits, deltas, gt_boxes, gt_labels)
    sum(losses.values()).backward()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=9)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(2)
    anchors = retina_anchors()
    threads = torch.get_num_threads()
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"torch {torch.__version__}, threads {threads}, anchors {anchors.shape[0]}, batch 2, K 80")
    print(f"load average before: {load} (other processes on the machine skew absolute times, not ratios)")
    print("\n| objects / image | FreeAnchor loss (ms) | max-IoU + focal + smooth L1 (ms) | ratio |")
    print("|---:|---:|---:|---:|")
    for objects in (20, 100):
        case = random_case(anchors, objects)
        methods = {"free": free_anchor_loss, "base": retina_baseline}
        times: dict[str, list[float]] = {name: [] for name in methods}
        for i in range(args.warmup + args.reps):
            for name, fn in methods.items():
                t = step(fn, anchors, *case)
                if i >= args.warmup:
                    times[name].append(t)
        free, base = (statistics.median(times[n]) * 1e3 for n in ("free", "base"))
        print(f"| {objects} | {free:.1f} | {base:.1f} | {free / base:.2f} |")


if __name__ == "__main__":
    main()
