"""Accuracy per CPU-minute: every entrant trains from scratch for the same wall-clock budget, then all are
scored by the same COCO evaluation (``anchorlab.evaluation.coco_metrics`` on the val JSON, score threshold
0.05, NMS IoU 0.5, at most 100 detections per image).

Entrants:
* ``anchorlab:<detector>``: ``configs/<detector>*_quick.yaml`` trained by anchorlab's engine. A short probe
  run (``--probe-iters``, not counted in the budget) measures images/s; ``train.iterations`` is set so the
  lr schedule (warm-up + cosine) ends when the budget does, and ``train.max_minutes`` stops training after
  the iteration in which the budget ran out (planned and trained iterations are both reported).
* ``torchvision``: ``RetinaNet`` on ``_resnet_fpn_extractor(resnet18(weights=None))`` with torchvision's
  detection reference recipe (SGD momentum 0.9, lr 0.01 per 16 images, wd 1e-4, linear warm-up, x0.1 at
  16/26 and 22/26 of the budget), no gradient clipping; if it diverges it is also run with clipping
  (``--tv-clip``).
* ``ultralytics:yolov8n``: ``YOLO("yolov8n.yaml")`` (random init) with Ultralytics' default recipe and its
  ``time=`` budget, run in the separate venv of ``make bench-venv-yolo``, offline (see
  ``qpm_yolo_runner.py``); ``val=False`` so no per-epoch validation eats into its budget.

Same image size (``--size``; shorter side resized, longer side capped) and batch size for all; torch
threads and data-loader workers set explicitly for every entrant (Ultralytics' own default would be
cores - 1 threads) and reported as verified. The data: the built-in synthetic crowded set (generated into
``--synthetic-dir`` when missing), or ``--train``/``--val`` COCO JSONs.

    .venv/bin/python bench/quality_per_minute.py                     # 12 minutes per entrant
    .venv/bin/python bench/quality_per_minute.py --minutes 0.5 --detectors retinanet,fcos  # smoke run

Writes ``OUT/results.json`` and prints the Markdown table; ``--write-docs`` also replaces the section
between the ``quality-per-minute`` markers of docs/benchmarks.md (appending it when missing).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from anchorlab.data import load_coco, make_synthetic
from anchorlab.evaluation import coco_metrics
from common import ROOT, load_average, setup, table
from qpm_entrants import (
    MAX_DETECTIONS,
    NMS_IOU,
    QUICK_CONFIGS,
    SCORE_THRESH,
    BenchData,
    run_anchorlab,
    run_torchvision,
)
from qpm_yolo import predictions_to_coco, run_yolo, write_yolo_dataset

MARK_START = "<!-- quality-per-minute:start -->"
MARK_END = "<!-- quality-per-minute:end -->"
SYNTHETIC = {"images": 1200, "val_images": 200, "seed": 0, "size": 128, "classes": 3, "objects": (3, 6)}
COLUMNS = ("entrant", "AP", "AP50", "APs", "images/s", "iterations", "wall minutes", "status / notes")


def replace_marked_section(text: str, body: str, title: str = "## Accuracy per CPU-minute") -> str:
    """``text`` with everything between the markers replaced by ``body`` (the markers kept); without
    markers, ``title``, the markers and ``body`` are appended."""
    block = f"{MARK_START}\n{body.strip()}\n{MARK_END}"
    start, end = text.find(MARK_START), text.find(MARK_END)
    if start < 0 and end < 0:
        return f"{text.rstrip()}\n\n{title}\n\n{block}\n"
    if start < 0 or end < start:
        raise ValueError(f"found {MARK_START!r} and {MARK_END!r} out of order or only one of them")
    return text[:start] + block + text[end + len(MARK_END) :]


def _fmt(x: float | None, digits: int = 3) -> str:
    return "-" if x is None or x < 0 else f"{x:.{digits}f}"


def results_table(rows: list[dict[str, Any]]) -> str:
    body = []
    for r in rows:
        m = r.get("metrics") or {}
        body.append(
            [
                r["entrant"],
                _fmt(m.get("AP")),
                _fmt(m.get("AP50")),
                _fmt(m.get("APs")),
                _fmt(r.get("images_per_s"), 1),
                r.get("iterations", "-"),
                _fmt(r.get("wall_minutes"), 2),
                r["status"] if r["status"] != "ok" else r.get("notes", ""),
            ]
        )
    return table(COLUMNS, body)


def _show(path: Path | str) -> str:
    """``path`` relative to the checkout when inside it (tables stay free of machine paths)."""
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def _data(args: argparse.Namespace) -> tuple[Path, Path, Path | None, str]:
    if args.train or args.val:
        if not (args.train and args.val):
            sys.exit("--train and --val go together (COCO JSONs)")
        return Path(args.train), Path(args.val), args.images, f"COCO {args.train} / {args.val}"
    root = Path(args.synthetic_dir)
    spec = json.dumps({**SYNTHETIC, "crowded": True})
    stamp = root / "qpm_synthetic.json"  # what generated the folder: regenerate when it differs
    if not (stamp.is_file() and stamp.read_text() == spec and (root / "val.json").is_file()):
        make_synthetic(root, crowded=True, **SYNTHETIC)
        stamp.write_text(spec)
    desc = ", ".join(f"{k} {v}" for k, v in SYNTHETIC.items())
    return root / "train.json", root / "val.json", None, f"synthetic crowded ({desc}) in {_show(root)}"


def _yolo_entrant(data: BenchData, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    train_set = load_coco(data.train, images_dir=data.images)
    val_set = load_coco(data.val, images_dir=data.images)
    data_yaml, val_images = write_yolo_dataset(train_set, val_set, out / "yolo_data")
    spec = {
        "data_yaml": str(data_yaml),
        "val_images": val_images,
        "imgsz": data.size,
        "batch": data.batch_size,
        "workers": data.workers,
        "threads": data.threads,
        "minutes": args.minutes,
        "seed": data.seed,
        "conf": SCORE_THRESH,
        "iou": NMS_IOU,
        "max_det": MAX_DETECTIONS,
    }
    report = run_yolo(spec, out / "yolo", Path(args.yolo_python) if args.yolo_python else None)
    results = predictions_to_coco(report.pop("predictions"), val_set)
    threads = report["threads_train"]
    status = "ok"
    if threads != [data.threads] or report["workers"] != data.workers or report["network_attempts"]:
        status = (
            f"threads seen {threads}, workers {report['workers']}; "
            f"network attempts {report['network_attempts'] or 'none'}"
        )
    return {
        "metrics": coco_metrics(val_set.source, results, per_category=False),
        "iterations": report["batches"],
        "planned_iterations": None,
        "images_per_s": report["images_per_s"],
        "wall_minutes": report["train_seconds"] / 60,
        "threads": threads,
        "status": status,
        "notes": f"ultralytics {report['ultralytics']} defaults, time={args.minutes / 60:.4f} h, "
        f"{report['epochs']} epochs, val=False; EMA weights; its own val mAP50-95 "
        f"{_fmt(report['own_val'].get('mAP50-95'))}",
        "yolo": report,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=12.0, help="wall-clock training budget per entrant")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads for every entrant")
    p.add_argument("--workers", type=int, default=2, help="data-loader workers for every entrant")
    p.add_argument(
        "--detectors", default=",".join(QUICK_CONFIGS), help="anchorlab detectors, comma-separated"
    )
    p.add_argument("--peers", default="torchvision,yolo", help="peers to run: torchvision, yolo (or none)")
    p.add_argument(
        "--tv-clip",
        choices=("auto", "always", "never"),
        default="auto",
        help="also run torchvision with gradient clipping: if it diverged (auto), always or never",
    )
    p.add_argument(
        "--clip-grad", type=float, default=10.0, help="max grad norm of the clipped torchvision run"
    )
    p.add_argument("--train", help="COCO train JSON (default: the synthetic crowded data)")
    p.add_argument("--val", help="COCO val JSON")
    p.add_argument("--images", type=Path, help="image folder of --train/--val (default: beside the JSON)")
    p.add_argument("--synthetic-dir", default=str(ROOT / "data" / "qpm_synth_crowded"))
    p.add_argument("--size", type=int, default=128, help="image size (shorter side, longer side capped)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--probe-iters", type=int, default=40, help="iterations of anchorlab's speed probe")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--yolo-python", help="python of the Ultralytics venv (default bench/.venv-yolo/bin/python)"
    )
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "quality_per_minute")
    p.add_argument("--write-docs", action="store_true", help="write the table into docs/benchmarks.md")
    p.add_argument("--docs", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = p.parse_args()
    detectors = [d for d in args.detectors.split(",") if d and d != "none"]
    unknown = sorted(set(detectors) - set(QUICK_CONFIGS))
    if unknown:
        sys.exit(f"unknown detectors {unknown}; choose from {', '.join(QUICK_CONFIGS)}")
    peers = [x for x in args.peers.split(",") if x and x != "none"]
    if set(peers) - {"torchvision", "yolo"}:
        sys.exit(f"--peers takes torchvision, yolo or none, got {args.peers!r}")

    header = setup(args.threads)
    train_json, val_json, images, desc = _data(args)
    data = BenchData(
        train_json, val_json, images, args.size, args.batch_size, args.workers, args.threads, args.seed
    )
    settings = (
        f"budget {args.minutes:g} min of training per entrant; torch threads {args.threads} and "
        f"{args.workers} data-loader workers for every entrant; image size {args.size}, batch "
        f"{args.batch_size}; data: {desc}; evaluation: coco_metrics on {_show(val_json)}, "
        f"score >= {SCORE_THRESH}, NMS IoU {NMS_IOU}, <= {MAX_DETECTIONS} detections"
    )
    print(header)
    print(settings, flush=True)
    args.out.mkdir(parents=True, exist_ok=True)

    jobs: list[tuple[str, Any]] = [
        (f"anchorlab:{d}", lambda d=d: run_anchorlab(d, data, args.minutes, args.out / d, args.probe_iters))
        for d in detectors
    ]
    if "torchvision" in peers:
        jobs.append(("torchvision:retinanet_r18", lambda: run_torchvision(data, args.minutes, None)))
    if "yolo" in peers:
        jobs.append(("ultralytics:yolov8n", lambda: _yolo_entrant(data, args, args.out)))
    rows: list[dict[str, Any]] = []
    for name, job in jobs:
        rows.append(_run(name, job))
        if name.startswith("torchvision") and (
            args.tv_clip == "always" or (args.tv_clip == "auto" and rows[-1]["status"].startswith("diverged"))
        ):
            clipped = f"torchvision:retinanet_r18+clip{args.clip_grad:g}"
            rows.append(_run(clipped, lambda: run_torchvision(data, args.minutes, args.clip_grad)))
        _save(args.out / "results.json", header, settings, rows)

    md = results_table(rows)
    _save(args.out / "results.json", header, settings, rows, md)
    print(f"\n{md}\n\nload average after: {load_average()}; results in {args.out / 'results.json'}")
    if args.write_docs:
        body = "\n\n".join(
            [
                f"`{' '.join(['.venv/bin/python', 'bench/quality_per_minute.py', *sys.argv[1:]])}`",
                "```\n" + header + f"\nload average after: {load_average()}\n```",
                settings,
                md,
            ]
        )
        args.docs.write_text(replace_marked_section(args.docs.read_text(), body))
        print(f"wrote the table into {args.docs}")


def _run(name: str, job: Any) -> dict[str, Any]:
    print(f"\n== {name} (load average {load_average()})", flush=True)
    t0 = time.perf_counter()
    try:
        row = job()
    except Exception as exc:  # one failing entrant must not lose the others' results
        row = {"status": f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}", "metrics": None}
        print(f"{name} failed:\n{exc}", file=sys.stderr)
    row = {"entrant": name, **row, "total_seconds": round(time.perf_counter() - t0, 1)}
    m = row.get("metrics") or {}
    print(
        f"{name}: {row['status']}; AP {_fmt(m.get('AP'))} AP50 {_fmt(m.get('AP50'))}, "
        f"{row.get('iterations', '-')} it, {_fmt(row.get('images_per_s'), 1)} images/s, "
        f"{_fmt(row.get('wall_minutes'), 2)} min",
        flush=True,
    )
    return row


def _save(path: Path, header: str, settings: str, rows: list[dict[str, Any]], md: str = "") -> None:
    payload = {"header": header, "settings": settings, "entrants": rows, "table": md}
    path.write_text(json.dumps(payload, indent=1, default=str))


if __name__ == "__main__":
    main()
