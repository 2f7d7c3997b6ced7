"""The grid's collision policy on crowded data: "last writer wins" against "nearest centre wins", for every
box loss (xywh-L1, IoU, GIoU, DIoU, CIoU).

YOLO-style target builders that loop over the objects and write ``target[cell] = object`` keep the LAST
object of a crowded cell, however far its centre is from the cell's; the claim under test is that the
IoU-family losses then fail to converge and that "the object nearest the cell centre wins" fixes it.
``model.grid.collision: last`` reproduces the loop exactly (``anchorlab.assign.grid_assign``, checked against
a Python loop in tests/assign/test_grid.py), ``nearest`` is the fix.

Every run: ``configs/grid_r18_fpn_quick.yaml`` (ResNet-18 FPN from scratch, AdamW, cosine) on the built-in
crowded synthetic data (2-3 object centres in one stride-16 cell of every image), one seed, with
``--set model.grid.box_loss=<loss> --set model.grid.collision=<policy>``, trained by ``engine.train`` and
evaluated on the val split (COCO AP). Also measured on the training split, without training: how many
objects lose their cell and how many cells get a different owner under ``last`` than under ``nearest``.

    .venv/bin/python bench/grid_collision.py                                  # the full experiment
    .venv/bin/python bench/grid_collision.py --iterations 20 --images 48 --losses giou,l1   # smoke run

Writes ``OUT/results.json`` (per run: AP, AP50, AP75, the loss curve from ``log.jsonl``),
``OUT/loss_curves.png`` and prints the Markdown table with the machine header.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from anchorlab.assign import grid_assign
from anchorlab.config import load_config
from anchorlab.data import load_coco, make_synthetic
from anchorlab.design import resize_boxes
from anchorlab.engine.train import train
from anchorlab.io import make_dir, save_figure, write_json
from anchorlab.models.heads.grid import default_size_ranges
from common import ROOT, load_average, setup, table

LOSSES = ("l1", "iou", "giou", "diou", "ciou")
POLICIES = ("last", "nearest")
CONFIG = ROOT / "configs" / "grid_r18_fpn_quick.yaml"
STRIDES = (8, 16, 32)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--losses", default=",".join(LOSSES), help="comma-separated model.grid.box_loss values")
    p.add_argument(
        "--policies", default=",".join(POLICIES), help="comma-separated model.grid.collision values"
    )
    p.add_argument(
        "--iterations", type=int, default=600, help="training iterations per run (quick budget: 600)"
    )
    p.add_argument("--images", type=int, default=400, help="synthetic images (a quarter form the val split)")
    p.add_argument("--size", type=int, default=128, help="synthetic image side in pixels")
    p.add_argument(
        "--data", type=Path, default=ROOT / "data" / "synth_crowded", help="crowded synthetic data"
    )
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "grid_collision")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def crowded_data(args: argparse.Namespace) -> tuple[Path, Path, dict[str, Any]]:
    """The crowded synthetic split (generated when missing or of another size) and its spec."""
    spec = {"images": args.images, "seed": args.seed, "size": args.size, "classes": 3, "crowded": True}
    stamp = args.data / "spec.json"
    if not stamp.is_file() or json.loads(stamp.read_text()) != spec:
        make_synthetic(args.data, **spec)
        write_json(stamp, spec)
    return args.data / "train.json", args.data / "val.json", spec


def collision_counts(train_json: Path, size: int) -> dict[str, int]:
    """On the training boxes (at the config's resize = the image size here): objects that lose their cell,
    and cells whose owner under ``last`` differs from ``nearest``'s (both policies lose the same count)."""
    boxes = resize_boxes(load_coco(train_json, check_images="none"), min_size=size, max_size=size)
    per_image = [torch.as_tensor(boxes.boxes[boxes.image_index == i]) for i in range(len(boxes.image_sizes))]
    sizes = [(math.ceil(size / s), math.ceil(size / s)) for s in STRIDES]
    ranges = default_size_ranges(STRIDES)  # the config's (size_ranges: null)
    last = grid_assign(per_image, sizes, STRIDES, size_ranges=ranges, collision="last")
    nearest = grid_assign(per_image, sizes, STRIDES, size_ranges=ranges, collision="nearest")
    return {
        "objects": int(sum(len(b) for b in per_image)),
        "losers": int(nearest.collisions.sum()),
        "cells_with_another_owner": int((last.matched != nearest.matched).sum()),
    }


def loss_curve(run_dir: Path) -> list[dict[str, float]]:
    """``[{iteration, loss, loss_box}]`` from a run's log.jsonl (training records only)."""
    curve = []
    for line in (run_dir / "log.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "loss" in record:
            curve.append(
                {"iteration": record["iteration"], "loss": record["loss"], "loss_box": record.get("loss_box")}
            )
    return curve


def run_one(args: argparse.Namespace, loss: str, policy: str, train_json: Path, val_json: Path) -> dict:
    out = args.out / f"{policy}_{loss}"
    overrides = [
        f"model.grid.box_loss={loss}",
        f"model.grid.collision={policy}",
        f"data.train={train_json}",
        f"data.val={val_json}",
        "data.synthetic=null",
        f"data.min_size={args.size}",
        f"data.max_size={args.size}",
        f"train.iterations={args.iterations}",
        f"train.warmup_iters={min(50, max(1, args.iterations // 5))}",
        f"train.ema_tau={min(100, max(1, args.iterations // 6))}",
        f"train.checkpoint_every={args.iterations}",
        f"train.log_every={max(1, args.iterations // 60)}",
        f"train.threads={args.threads}",
        f"train.seed={args.seed}",
        "train.device=cpu",
        f"train.out={out}",
    ]
    cfg = load_config(CONFIG, overrides)
    start = time.perf_counter()
    summary = train(cfg, show_progress=False)
    metrics = summary.get("metrics", {})
    curve = loss_curve(out)
    tail = curve[-5:]
    return {
        "loss": loss,
        "policy": policy,
        "AP": metrics.get("AP"),
        "AP50": metrics.get("AP50"),
        "AP75": metrics.get("AP75"),
        "final_loss": sum(c["loss"] for c in tail) / max(len(tail), 1),
        "first_loss": curve[0]["loss"] if curve else None,
        "skipped_steps": summary["skipped_steps"],
        "seconds": round(time.perf_counter() - start, 1),
        "curve": curve,
    }


def plot(runs: list[dict], policies: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(policies), figsize=(6 * len(policies), 4), sharey=True, squeeze=False)
    for ax, policy in zip(axes[0], policies, strict=True):
        for run in (r for r in runs if r["policy"] == policy):
            it = [c["iteration"] for c in run["curve"]]
            ax.plot(it, [c["loss"] for c in run["curve"]], label=run["loss"])
        ax.set(title=f"collision: {policy}", xlabel="iteration", ylabel="training loss", yscale="log")
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=100)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    losses, policies = args.losses.split(","), args.policies.split(",")
    header = setup(args.threads)
    print(header)
    make_dir(args.out)
    train_json, val_json, spec = crowded_data(args)
    counts = collision_counts(train_json, args.size)
    print(
        f"training split: {counts['objects']} objects, {counts['losers']} lose their cell under either "
        f"policy; {counts['cells_with_another_owner']} cells get another owner under 'last'"
    )
    runs = [run_one(args, loss, policy, train_json, val_json) for policy in policies for loss in losses]
    rows = [
        [
            r["policy"],
            r["loss"],
            *(f"{100 * r[k]:.1f}" if r[k] is not None else "n/a" for k in ("AP", "AP50", "AP75")),
            f"{r['first_loss']:.2f} -> {r['final_loss']:.2f}",
            r["skipped_steps"],
            r["seconds"],
        ]
        for r in runs
    ]
    headers = ("collision", "box loss", "AP", "AP50", "AP75", "loss first -> last 5", "skipped", "s")
    print(table(headers, rows))
    print(f"load average after: {load_average()}")
    result = {"header": header, "data": spec, "iterations": args.iterations, "counts": counts, "runs": runs}
    write_json(args.out / "results.json", result)
    plot(runs, policies, args.out / "loss_curves.png")
    print(f"wrote {args.out / 'results.json'} and {args.out / 'loss_curves.png'}")
    return result


if __name__ == "__main__":
    main()
