"""Benchmark: COCO bbox evaluation, anchorlab (faster-coco-eval) vs pycocotools, identical numbers asserted.

Synthetic set: 500 images (640 x 480), 80 categories, 1..15 objects per image (sides log-uniform 4..400
px, so small / medium / large are all populated), and 100 detections per image (50,000): jittered copies
of the ground truth with some wrong labels, plus random boxes, random scores. Both evaluators read the
same ground-truth JSON file and the same list of result dicts; the time includes loading the ground
truth, loading the results, evaluate, accumulate and summarize (what a user pays per evaluation).

Run: ``.venv/bin/python bench/bench_coco_eval.py [--reps 3]``
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import tempfile
from pathlib import Path

import numpy as np

from anchorlab.evaluation import coco_metrics
from anchorlab.evaluation.coco import METRIC_NAMES
from common import interleaved, load_average, median_ms, setup, spread, table


def synthetic_coco(num_images: int = 500, dets_per_image: int = 100, seed: int = 0) -> tuple[dict, list]:
    """A COCO ground-truth dict and a list of ``num_images * dets_per_image`` result dicts."""
    rng = np.random.default_rng(seed)
    w, h = 640, 480
    images, annotations, results = [], [], []
    for i in range(1, num_images + 1):
        images.append({"id": i, "width": w, "height": h, "file_name": f"{i}.jpg"})
        m = int(rng.integers(1, 16))
        side = np.exp(rng.uniform(np.log(4), np.log(400), m))
        aspect = np.exp(rng.normal(0, 0.5, m))
        bw, bh = np.minimum(side / np.sqrt(aspect), w - 1), np.minimum(side * np.sqrt(aspect), h - 1)
        x, y = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
        cats = rng.integers(1, 81, m)
        for j in range(m):
            annotations.append(
                {"id": len(annotations) + 1, "image_id": i, "category_id": int(cats[j]), "iscrowd": 0,
                 "bbox": [float(x[j]), float(y[j]), float(bw[j]), float(bh[j])], "area": float(bw[j] * bh[j])}
            )  # fmt: skip
        # detections: 3 jittered copies per object (10 % with a wrong class), the rest random boxes
        k = min(3 * m, dets_per_image)
        src = rng.integers(0, m, k)
        jitter = rng.normal(0, 0.1, (k, 4))
        dx, dy = x[src] + jitter[:, 0] * bw[src], y[src] + jitter[:, 1] * bh[src]
        dw, dh = bw[src] * np.exp(jitter[:, 2]), bh[src] * np.exp(jitter[:, 3])
        dcat = np.where(rng.random(k) < 0.1, rng.integers(1, 81, k), cats[src])
        r = dets_per_image - k
        rw, rh = rng.uniform(4, 300, r), rng.uniform(4, 300, r)
        boxes = np.concatenate([np.stack([dx, dy, dw, dh], 1), np.stack([rng.uniform(0, w - rw),
                                rng.uniform(0, h - rh), rw, rh], 1)])  # fmt: skip
        labels = np.concatenate([dcat, rng.integers(1, 81, r)])
        scores = np.concatenate([rng.uniform(0.3, 1.0, k), rng.uniform(0.0, 0.6, r)])
        for b, c, s in zip(boxes.round(2).tolist(), labels.tolist(), scores.round(4).tolist(), strict=True):
            results.append({"image_id": i, "category_id": c, "bbox": b, "score": s})
    categories = [{"id": c, "name": f"class{c}"} for c in range(1, 81)]
    return {"images": images, "annotations": annotations, "categories": categories}, results


def pycocotools_stats(gt_path: str, results: list[dict]) -> np.ndarray:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(gt_path)
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return np.asarray(ev.stats[:12])


def anchorlab_stats(gt_path: str, results: list[dict]) -> np.ndarray:
    out = coco_metrics(gt_path, results, per_category=False)
    return np.asarray([out[n] for n in METRIC_NAMES])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    print(setup(args.threads))
    gt, results = synthetic_coco(args.images)
    with tempfile.TemporaryDirectory() as tmp:
        gt_path = str(Path(tmp) / "gt.json")
        Path(gt_path).write_text(json.dumps(gt))
        ref, ours = pycocotools_stats(gt_path, results), anchorlab_stats(gt_path, results)
        np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-12)
        fns = {
            "pycocotools": lambda: pycocotools_stats(gt_path, results),
            "anchorlab (faster-coco-eval)": lambda: anchorlab_stats(gt_path, results),
        }
        t = interleaved(fns, reps=args.reps, warmup=1)
    py = median_ms(t["pycocotools"])
    print(f"\nload average after: {load_average()}")
    print(f"{len(gt['images'])} images, {len(gt['annotations'])} objects, {len(results)} detections; "
          f"the 12 stats identical (max |diff| {np.abs(ours - ref).max():.1e}); "
          f"AP {ref[0]:.4f}\n")  # fmt: skip
    print(table(["evaluator", "median s", "ratio to pycocotools", "spread ms"],
                [[n, f"{median_ms(v) / 1e3:.2f}", f"{median_ms(v) / py:.2f}", spread(v)]
                 for n, v in t.items()]))  # fmt: skip


if __name__ == "__main__":
    main()
