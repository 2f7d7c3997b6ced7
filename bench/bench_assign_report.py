"""Benchmark of ``anchorlab.report.assignment_report`` on a COCO-val-sized synthetic set of boxes.

5,000 images of about 640 px (COCO's common sizes), ~36,000 boxes with a COCO-like spread of sizes
(log-uniform side length 4..600 px, log-normal aspect ratio) and a skewed object count per image, a few
crowd regions; no image files (the report reads none). Default config: RetinaNet P3-P7, 9 anchors,
resize 800 / 1333 (~200k anchors per padded image). Run:

    .venv/bin/python bench/bench_assign_report.py [--images 5000] [--threads 1] [--strategies max_iou,fcos]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from anchorlab.config import load_config
from anchorlab.data.core import Category, DetectionSet, ImageRecord
from anchorlab.report import STRATEGIES, assignment_report

SIZES = [(480, 640), (427, 640), (640, 480), (640, 427), (512, 640), (360, 640), (640, 640), (500, 375)]


def synthetic_set(num_images: int, mean_objects: float = 7.2, seed: int = 0) -> DetectionSet:
    """Boxes only: ImageRecords whose files do not exist."""
    rng = np.random.default_rng(seed)
    cats = [Category(i + 1, f"class{i}") for i in range(80)]
    images = []
    for i in range(num_images):
        h, w = SIZES[rng.integers(len(SIZES))]
        m = int(rng.negative_binomial(1.2, 1.2 / (1.2 + mean_objects)))
        side = np.exp(rng.uniform(np.log(4), np.log(600), m))
        aspect = np.exp(rng.normal(0, 0.6, m))
        bw, bh = np.minimum(side / np.sqrt(aspect), w - 1), np.minimum(side * np.sqrt(aspect), h - 1)
        x1, y1 = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
        boxes = np.stack((x1, y1, x1 + bw, y1 + bh), 1).astype(np.float32)
        crowd = np.zeros((0, 4), np.float32)
        if rng.random() < 0.01:
            crowd = np.array([[0, 0, w / 2, h / 2]], np.float32)
        images.append(
            ImageRecord(
                id=i + 1,
                file=Path(f"/nonexistent/{i}.jpg"),
                width=w,
                height=h,
                boxes=boxes,
                labels=rng.integers(0, 80, m).astype(np.int64),
                ann_ids=np.arange(m, dtype=np.int64),
                crowd=crowd,
            )
        )
    return DetectionSet(images, cats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ds = synthetic_set(args.images)
    cfg = load_config(None)
    strategies = args.strategies.split(",")
    t = time.perf_counter()
    report = assignment_report(ds, cfg, strategies, threads=args.threads)
    total = time.perf_counter() - t
    print(
        f"{report['images']} images, {report['objects']} objects, {report['image_sizes']} padded sizes, "
        f"{args.threads} threads: {total:.1f} s for {', '.join(strategies)}"
    )
    for name in strategies:
        t = time.perf_counter()
        assignment_report(ds, cfg, [name], max_images=min(args.images, 1000), threads=args.threads)
        print(f"  {name}: {time.perf_counter() - t:.2f} s per 1000 images")
    for name, s in report["strategies"].items():
        z = s["zero_positive"]
        print(
            f"  {name:12s} zero-positive {z['count']:6d} ({z['share']:.1%})  positives/object "
            f"{s['positives_per_object']['mean']:.1f}  collisions {s['collisions']['locations']}"
        )


if __name__ == "__main__":
    main()
