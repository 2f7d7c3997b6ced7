"""The report of one training run: loss and AP curves, precision-recall per class, a confusion matrix and
val images with predictions, as PNGs and one self-contained ``report.html`` (the machinery of
``anchorlab compare``'s report: ``compare.report.html_page`` / ``html_table``, ``compare.plots``).

``write_run_report(run_dir)`` reads the run folder: ``config.yaml``, ``log.jsonl`` (losses, lr and the
evaluations), ``results.csv`` when present (one row per evaluation: ``iteration``, ``AP``, ``AP50``, ...;
preferred over the log's eval records), ``auto_budget.json`` when the auto budget sized the run, and a
checkpoint (``best.pt``, else the summary's checkpoint, ``last.pt``, ``checkpoint.pt``) which it runs on
the config's val split. Every picture and table names the classes.
"""

from __future__ import annotations

import csv
import html
import json
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from rich.console import Console
from torchvision.ops import box_iou

from anchorlab.compare.plots import SCORE_THRESH, detections_by_image, pct, plot_image_grid
from anchorlab.compare.report import html_figure, html_page, html_table
from anchorlab.console import make_console
from anchorlab.io import make_dir, save_figure, write_json, write_text

__all__ = [
    "CHECKPOINTS",
    "EVAL_KEYS",
    "confusion_matrix",
    "find_checkpoint",
    "match_detections",
    "read_curves",
    "write_run_report",
]

#: Checkpoints a report looks for, in order (after the one ``summary.json`` names, when it exists).
CHECKPOINTS = ("best.pt", "last.pt", "checkpoint.pt")
#: Evaluation columns drawn as AP curves (results.csv columns or log.jsonl ``eval`` keys).
EVAL_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
#: IoU at which a detection matches a ground-truth box in the confusion matrix.
MATCH_IOU = 0.5
#: Upper bound on detections x objects per IoU block of ``match_detections`` (memory, not results).
_MAX_PAIRS = 4_000_000


# -- reading the run -------------------------------------------------------------------------------


def _float(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def read_curves(run_dir: Path) -> tuple[list[dict[str, float]], list[dict[str, float]], str]:
    """``(train records, eval records, eval source)`` of a run: the training records of log.jsonl (those
    with a ``loss``), and one record per evaluation from results.csv (``iteration`` and ``EVAL_KEYS``
    columns; a ``val/`` or ``metrics/`` prefix is ignored) or else from log.jsonl's ``eval`` records."""
    train: list[dict[str, float]] = []
    evals: list[dict[str, float]] = []
    log = run_dir / "log.jsonl"
    if log.is_file():
        for line in log.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a crash
            if "eval" in record and isinstance(record["eval"], dict):
                evals.append({"iteration": record["iteration"], **record["eval"]})
            elif "loss" in record:
                train.append(record)
    results = run_dir / "results.csv"
    if not results.is_file():
        return train, evals, "log.jsonl"
    rows = []
    with results.open(newline="") as f:
        for row in csv.DictReader(f):
            clean = {k.split("/")[-1].strip(): _float(v) for k, v in row.items() if k}
            if clean.get("iteration") is not None:
                rows.append({k: v for k, v in clean.items() if v is not None})
    return train, rows, "results.csv"


def find_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint the report evaluates: ``best.pt``, else the one ``summary.json`` names, else
    ``last.pt`` / ``checkpoint.pt``; None when the run has none."""
    best = run_dir / "best.pt"
    if best.is_file():
        return best
    summary = run_dir / "summary.json"
    if summary.is_file():
        named = json.loads(summary.read_text()).get("checkpoint")
        if named and Path(named).is_file():
            return Path(named)
    return next((run_dir / n for n in CHECKPOINTS if (run_dir / n).is_file()), None)


# -- matching and the confusion matrix ---------------------------------------------------------------


def _blocks(det_counts: np.ndarray, gt_counts: np.ndarray) -> list[tuple[int, int]]:
    """Consecutive image ranges ``[a, b)`` whose detections x objects stay under ``_MAX_PAIRS``."""
    blocks, start, d, g = [], 0, 0, 0
    for i, (di, gi) in enumerate(zip(det_counts.tolist(), gt_counts.tolist(), strict=True)):
        if i > start and (d + di) * (g + gi) > _MAX_PAIRS:
            blocks.append((start, i))
            start, d, g = i, 0, 0
        d, g = d + di, g + gi
    return [*blocks, (start, len(det_counts))]


def match_detections(
    det_boxes: list[np.ndarray], gt_boxes: list[np.ndarray], iou: float = MATCH_IOU
) -> tuple[np.ndarray, np.ndarray]:
    """Class-agnostic one-to-one matching of detections to ground truth within each image.

    ``det_boxes`` / ``gt_boxes``: per image ``[D_i, 4]`` / ``[G_i, 4]`` xyxy. Pairs with IoU >= ``iou`` are
    taken highest IoU first, each detection and each object at most once. Images are processed together:
    their boxes are shifted apart along x so boxes of different images never overlap, and one IoU matrix
    covers a block of images. Returns ``(det_match [D], gt_match [G])``: the matched object's (detection's)
    index into the concatenation, or -1.
    """
    det_counts = np.array([len(b) for b in det_boxes], np.int64)
    gt_counts = np.array([len(b) for b in gt_boxes], np.int64)
    dets = np.concatenate([np.reshape(b, (-1, 4)) for b in det_boxes] or [np.zeros((0, 4))]).astype(float)
    gts = np.concatenate([np.reshape(b, (-1, 4)) for b in gt_boxes] or [np.zeros((0, 4))]).astype(float)
    det_match = np.full(len(dets), -1, np.int64)
    gt_match = np.full(len(gts), -1, np.int64)
    if not len(dets) or not len(gts):
        return det_match, gt_match
    span = max(dets[:, 2].max(), gts[:, 2].max()) - min(dets[:, 0].min(), gts[:, 0].min()) + 1.0
    det_img = np.repeat(np.arange(len(det_boxes)), det_counts)
    gt_img = np.repeat(np.arange(len(gt_boxes)), gt_counts)
    det_start = np.concatenate([[0], np.cumsum(det_counts)])
    gt_start = np.concatenate([[0], np.cumsum(gt_counts)])
    for a, b in _blocks(det_counts, gt_counts):
        d0, d1, g0, g1 = det_start[a], det_start[b], gt_start[a], gt_start[b]
        if d0 == d1 or g0 == g1:
            continue
        shift_d = np.zeros((d1 - d0, 4))
        shift_d[:, [0, 2]] = (det_img[d0:d1] * span)[:, None]
        shift_g = np.zeros((g1 - g0, 4))
        shift_g[:, [0, 2]] = (gt_img[g0:g1] * span)[:, None]
        ious = box_iou(
            torch.from_numpy(dets[d0:d1] + shift_d), torch.from_numpy(gts[g0:g1] + shift_g)
        ).numpy()
        d, g = np.nonzero(ious >= iou)
        order = np.argsort(-ious[d, g], kind="stable")
        d, g = d[order], g[order]
        _, first = np.unique(d, return_index=True)  # each detection's best pair
        d, g = d[np.sort(first)], g[np.sort(first)]
        _, first = np.unique(g, return_index=True)  # then each object's best remaining pair
        d, g = d[first], g[first]
        det_match[d0 + d] = g0 + g
        gt_match[g0 + g] = d0 + d
    return det_match, gt_match


def confusion_matrix(
    det_boxes: list[np.ndarray],
    det_labels: list[np.ndarray],
    gt_boxes: list[np.ndarray],
    gt_labels: list[np.ndarray],
    num_classes: int,
    iou: float = MATCH_IOU,
) -> np.ndarray:
    """``[K + 1, K + 1]`` counts, rows the true class, columns the predicted class, index K the
    background: a matched pair counts at (true, predicted), an unmatched object at (true, background), an
    unmatched detection at (background, predicted). Inputs per image as in ``match_detections``, labels
    contiguous ``0..K-1``; filter the detections by score first."""
    det_match, gt_match = match_detections(det_boxes, gt_boxes, iou)
    dl = np.concatenate([np.reshape(x, -1) for x in det_labels] or [np.zeros(0)]).astype(np.int64)
    gl = np.concatenate([np.reshape(x, -1) for x in gt_labels] or [np.zeros(0)]).astype(np.int64)
    k = num_classes
    matrix = np.zeros((k + 1, k + 1), np.int64)
    matched = det_match >= 0
    np.add.at(matrix, (gl[det_match[matched]], dl[matched]), 1)
    np.add.at(matrix, (gl[gt_match < 0], k), 1)
    np.add.at(matrix, (k, dl[~matched]), 1)
    return matrix


# -- figures -----------------------------------------------------------------------------------------


def plot_loss_curves(train: list[dict[str, float]], path: Path) -> Path:
    """The total loss and every loss term against the iteration; the lr on a second axis."""
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        its = [r["iteration"] for r in train]
        keys = ["loss", *sorted({k for r in train for k in r if k.startswith("loss_")})]
        for key in keys:
            ax.plot(its, [r.get(key, np.nan) for r in train], label=key, lw=2 if key == "loss" else 1)
        ax.set_yscale("log")
        ax.legend(loc="upper right", fontsize=7)
        lr = ax.twinx()
        lr.plot(its, [r.get("lr", np.nan) for r in train], color="grey", ls=":", label="lr")
        lr.set_ylabel("lr (dotted)")
    else:
        ax.text(0.5, 0.5, "log.jsonl has no training records", ha="center", va="center")
    ax.set(xlabel="iteration", ylabel="loss (log scale)", title="training losses")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)


def plot_ap_curves(evals: list[dict[str, float]], source: str, path: Path) -> Path:
    """AP, AP50, ... of every evaluation during training against the iteration."""
    fig, ax = plt.subplots(figsize=(7, 4))
    keys = [k for k in EVAL_KEYS if any(k in r for r in evals)]
    for key in keys:
        points = [(r["iteration"], 100 * r[key]) for r in evals if key in r and r[key] >= 0]
        if points:
            x, y = zip(*points, strict=True)
            ax.plot(x, y, marker="o", ms=3, label=key)
    if keys:
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "no evaluation during training", ha="center", va="center")
    ax.set(xlabel="iteration", ylabel="%", title=f"val AP during training ({source})")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)


def plot_pr_by_class(details: dict[str, Any], path: Path) -> Path:
    """Precision against recall at IoU 0.5 per class (named), and their mean."""
    precision = np.asarray(details["precision"])  # [T, R, K, A, M]
    t = int(np.argmin(np.abs(np.asarray(details["iou_thresholds"]) - 0.5)))
    p = precision[t, :, :, list(details["area_ranges"]).index("all"), -1]  # [R, K]
    recall = np.asarray(details["recall_thresholds"])
    fig, ax = plt.subplots(figsize=(6, 4.5))
    valid = (p > -1).all(axis=0)
    for k, name in enumerate(details["category_names"]):
        if valid[k]:
            ax.plot(recall, p[:, k], lw=1, label=f"{name} (AP50 {pct(p[:, k].mean())})")
    if valid.any():
        mean = p[:, valid].mean(axis=1)
        ax.plot(recall, mean, lw=2.5, color="black", label=f"all classes (AP50 {pct(mean.mean())})")
        ax.legend(loc="lower left", fontsize=7)
    else:
        ax.text(0.5, 0.5, "no ground truth in the val split", ha="center", va="center")
    ax.set(
        xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title="precision-recall, IoU 0.5"
    )
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)


def plot_confusion(matrix: np.ndarray, names: list[str], score_thresh: float, path: Path) -> Path:
    """The confusion matrix, counts in the cells, colour = share of the true class's row."""
    labels = [*names, "background"]
    n = len(labels)
    rows = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, rows, out=np.zeros(matrix.shape), where=rows > 0)
    fig, ax = plt.subplots(figsize=(1.2 + 0.55 * n + 2, 1.2 + 0.55 * n + 1.5))
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for (i, j), v in np.ndenumerate(matrix):
        if v:
            ax.text(
                j,
                i,
                str(v),
                ha="center",
                va="center",
                fontsize=7,
                color="white" if share[i, j] > 0.5 else "black",
            )
    ax.set_xticks(range(n), labels, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n), labels, fontsize=8)
    ax.set(
        xlabel="predicted",
        ylabel="true",
        title=f"confusion matrix (IoU {MATCH_IOU}, score >= {score_thresh})",
    )
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)


# -- the report --------------------------------------------------------------------------------------


def _gt(val_set) -> Any:
    """COCO ground truth for the evaluation: the split's JSON file, else the split as a COCO dict."""
    from anchorlab.data.coco import coco_dict

    source = val_set.source
    if source is not None and Path(source).suffix.lower() == ".json" and Path(source).is_file():
        return source
    return coco_dict(val_set)


def _class_rows(names: list[str], matrix: np.ndarray, val_set, metrics: dict[str, Any]) -> list[list[str]]:
    k = len(names)
    objects = np.bincount(
        np.concatenate([r.labels for r in val_set.images] or [np.zeros(0, np.int64)]), minlength=k
    )
    per_ap, per_ap50 = metrics.get("per_category", {}), metrics.get("per_category_AP50", {})
    rows = []
    for i, name in enumerate(names):
        tp, true_total, pred_total = matrix[i, i], matrix[i].sum(), matrix[:, i].sum()
        rows.append(
            [
                name,
                str(int(objects[i])),
                pct(per_ap.get(name)),
                pct(per_ap50.get(name)),
                str(int(tp)),
                str(int(matrix[i, k])),
                str(int(matrix[k, i])),
                str(int(true_total - tp - matrix[i, k])),
                pct(tp / true_total) if true_total else "n/a",
                pct(tp / pred_total) if pred_total else "n/a",
            ]
        )
    return rows


CLASS_HEADERS = [
    "class",
    "val objects",
    "AP",
    "AP50",
    "found (IoU 0.5, right class)",
    "missed",
    "false positives",
    "found as another class",
    "recall",
    "precision",
]


def _evaluate(ckpt: Path, device: str, score_thresh: float, out: Path, console: Console) -> dict[str, Any]:
    """Run the checkpoint on its config's val split: metrics, PR details, confusion matrix, pictures."""
    from anchorlab.data.categories import align_categories
    from anchorlab.engine.common import load_split
    from anchorlab.engine.evaluate import predict_dataset
    from anchorlab.engine.predict import load_trained
    from anchorlab.evaluation import coco_eval_details, coco_metrics

    model, cfg, categories = load_trained(ckpt, device)
    val_set = align_categories(load_split(cfg, "val"), categories, model=f"checkpoint {ckpt}")
    results, raw = predict_dataset(model, cfg, val_set, console=console)
    gt = _gt(val_set)
    metrics = coco_metrics(gt, results)
    details = coco_eval_details(gt, results)
    keep = [r["scores"].numpy() >= score_thresh for r in raw]
    matrix = confusion_matrix(
        [r["boxes"].numpy()[m] for r, m in zip(raw, keep, strict=True)],
        [r["labels"].numpy()[m] for r, m in zip(raw, keep, strict=True)],
        [r.boxes for r in val_set.images],
        [r.labels for r in val_set.images],
        val_set.num_classes,
    )
    names = val_set.class_names
    figures = {
        "pr_curves": (plot_pr_by_class(details, out / "pr_curves.png"), "Precision-recall per class"),
        "confusion_matrix": (
            plot_confusion(matrix, names, score_thresh, out / "confusion_matrix.png"),
            "Confusion matrix",
        ),
        "val_predictions": (
            plot_image_grid(
                val_set,
                {"predictions": detections_by_image(results, score_thresh)},
                out / "val_predictions.png",
                title=f"val images: ground truth and detections with score >= {score_thresh}",
            ),
            "Val images with predictions",
        ),
    }
    return {
        "metrics": metrics,
        "matrix": matrix,
        "names": names,
        "class_rows": _class_rows(names, matrix, val_set, metrics),
        "figures": figures,
        "val": cfg.data.val,
        "detector": cfg.model.detector,
        "detections": len(results),
    }


def write_run_report(
    run_dir: str | Path,
    *,
    checkpoint: str | Path | None = None,
    out: str | Path | None = None,
    device: str = "auto",
    score_thresh: float = SCORE_THRESH,
    console: Console | None = None,
) -> dict[str, Path]:
    """Write the report of the run in ``run_dir`` into ``out`` (default: ``run_dir``): ``curves_loss.png``,
    ``curves_ap.png`` and, when the run has a checkpoint and its config a val split, ``pr_curves.png``,
    ``confusion_matrix.png``, ``val_predictions.png`` and ``report.json`` (metrics, per-class rows,
    the confusion matrix); then ``report.html`` with every picture embedded. ``checkpoint`` defaults to
    ``find_checkpoint(run_dir)``. Returns the written paths by name. Raises ``FileNotFoundError`` when
    ``run_dir`` is not a run folder (no config.yaml)."""
    from anchorlab.config import load_config

    run_dir = Path(run_dir)
    out = make_dir(Path(out) if out is not None else run_dir)
    console = console or make_console(stderr=True)
    if not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"{run_dir} is not an anchorlab run folder (no config.yaml)")
    cfg = load_config(run_dir / "config.yaml")
    train, evals, source = read_curves(run_dir)
    figures: dict[str, tuple[Path, str]] = {
        "curves_loss": (plot_loss_curves(train, out / "curves_loss.png"), "Training losses"),
        "curves_ap": (plot_ap_curves(evals, source, out / "curves_ap.png"), "Val AP during training"),
    }
    ckpt = Path(checkpoint) if checkpoint is not None else find_checkpoint(run_dir)
    if checkpoint is not None and not ckpt.is_file():
        raise FileNotFoundError(f"checkpoint {ckpt} does not exist")
    body = [f"<p>{html.escape(_settings(run_dir, cfg, ckpt, len(train), len(evals)))}</p>"]
    evaluation = None
    if ckpt is not None and cfg.data.val:
        evaluation = _evaluate(ckpt, device, score_thresh, out, console)
        figures.update(evaluation["figures"])
        m = evaluation["metrics"]
        body += [
            f"<h2>Val metrics of {html.escape(ckpt.name)} ({html.escape(str(evaluation['val']))})</h2>",
            html_table(list(EVAL_KEYS), [[pct(m.get(k)) for k in EVAL_KEYS]]),
            "<h2>Per class</h2>",
            html_table(CLASS_HEADERS, evaluation["class_rows"]),
            f"<p>AP in %, COCO evaluation; the counts are at IoU {MATCH_IOU} and score >= {score_thresh}, "
            "matched regardless of class (a detection on the right box with the wrong class counts as "
            "'found as another class').</p>",
        ]
        report = {
            "checkpoint": str(ckpt),
            "val": evaluation["val"],
            "score_thresh": score_thresh,
            "match_iou": MATCH_IOU,
            "metrics": {k: m.get(k) for k in EVAL_KEYS},
            "per_class": dict(zip(evaluation["names"], evaluation["class_rows"], strict=True)),
            "class_headers": CLASS_HEADERS,
            "confusion_matrix": {
                "labels": [*evaluation["names"], "background"],
                "counts": evaluation["matrix"].tolist(),
            },
        }
        write_json(out / "report.json", report)
    else:
        why = "no checkpoint" if ckpt is None else "no data.val in its config"
        body.append(f"<p>No val pictures: the run has {why}.</p>")
    body += [html_figure(path, title) for path, title in figures.values()]
    write_text(out / "report.html", html_page(f"anchorlab run {run_dir.name}", body))
    paths = {name: path for name, (path, _) in figures.items()}
    if evaluation is not None:
        paths["report_json"] = out / "report.json"
    return {**paths, "report_html": out / "report.html"}


def _settings(run_dir: Path, cfg, ckpt: Path | None, train_records: int, evals: int) -> str:
    d, t = cfg.data, cfg.train
    text = (
        f"{cfg.model.detector}, backbone {cfg.model.backbone.name}; train {d.train}, val {d.val}; images "
        f"{d.min_size}/{d.max_size} px; {t.iterations} iterations x {t.batch_size}, {t.optimizer} lr {t.lr}; "
        f"checkpoint {ckpt if ckpt is not None else 'none'}; {train_records} logged steps, "
        f"{evals} evaluations."
    )
    auto = run_dir / "auto_budget.json"
    if auto.is_file():
        reasons = json.loads(auto.read_text()).get("reasons", [])
        text += " Auto budget: " + "; ".join(reasons) + "."
    return text
