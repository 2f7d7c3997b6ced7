"""The comparison report's figures: precision-recall curves, AP by object size, and the same val images with
each detector's detections side by side (PNG files, also embedded in report.html). ``plot_image_grid``,
``draw_boxes`` and ``detections_by_image`` also draw the run report (``anchorlab.report.run``)."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Rectangle

from anchorlab.data.categories import plot_text
from anchorlab.data.core import DataError
from anchorlab.data.image import read_rgb
from anchorlab.io import save_figure

__all__ = [
    "SAMPLE_IMAGES",
    "SCORE_THRESH",
    "detections_by_image",
    "draw_boxes",
    "pct",
    "plot_ap_by_size",
    "plot_image_grid",
    "plot_pr_curves",
    "plot_predictions",
    "sample_images",
]

SCORE_THRESH = 0.3  # detections drawn in the side-by-side pictures
SAMPLE_IMAGES = 4
_SIZES = (("APs", "small"), ("APm", "medium"), ("APl", "large"))


def pct(value: Any) -> str:
    """A fraction as a percentage with one decimal; None, NaN and negative (COCO's "no objects") as n/a."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value < 0:
        return "n/a"
    return f"{100 * value:.1f}"


def _ok_runs(results: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(d, results["runs"][d]) for d in results["detectors"] if results["runs"][d].get("status") == "ok"]


def plot_pr_curves(results: dict[str, Any], path: Path) -> Path:
    """Precision against recall at IoU 0.5 (categories averaged), one line per detector."""
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for det, run in _ok_runs(results):
        curve = run["metrics"]["pr_curve"]
        precision = [np.nan if p is None else p for p in curve["precision"]]
        ax.plot(curve["recall"], precision, label=f"{det} (AP50 {pct(run['metrics']['AP50'])})")
    ax.set(
        xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title="precision-recall, IoU 0.5"
    )
    ax.grid(alpha=0.3)
    if _ok_runs(results):
        ax.legend(loc="lower left")
    else:
        ax.text(0.5, 0.5, "no detector finished", ha="center", va="center")
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)


def plot_ap_by_size(results: dict[str, Any], path: Path) -> Path:
    """Grouped bars: AP of small / medium / large objects per detector (n/a buckets left empty)."""
    runs = _ok_runs(results)
    fig, ax = plt.subplots(figsize=(6, 4))
    x = np.arange(len(_SIZES))
    width = 0.8 / max(1, len(runs))
    top = 0.0
    for i, (det, run) in enumerate(runs):
        values = [run["metrics"][k] for k, _ in _SIZES]
        heights = [100 * v if v is not None and v >= 0 else 0.0 for v in values]
        top = max([top, *heights])
        bars = ax.bar(x + (i - (len(runs) - 1) / 2) * width, heights, width, label=det)
        for bar, v in zip(bars, values, strict=True):
            ax.annotate(
                pct(v),
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center",
                va="bottom",
                fontsize=7,
            )
    ax.set_xticks(x, [name for _, name in _SIZES])
    ax.set_ylim(0, max(1.0, 1.15 * top))
    ax.set(ylabel="AP (%)", title="AP by object size (COCO buckets)")
    ax.grid(axis="y", alpha=0.3)
    if runs:
        ax.legend()
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)


def sample_images(val_set, count: int) -> list[int]:
    """Indices of the ``count`` val images with the most objects (ties: file order)."""
    objects = np.array([len(r.boxes) for r in val_set.images])
    return sorted(np.argsort(-objects, kind="stable")[:count].tolist())


def _detections_by_image(run: dict[str, Any]) -> dict[int, list[dict[str, Any]]]:
    path = Path(run["run_dir"]) / "detections.json"
    return detections_by_image(json.loads(path.read_text())) if path.is_file() else {}


def detections_by_image(
    detections: list[dict[str, Any]], score_thresh: float = SCORE_THRESH
) -> dict[int, list[dict[str, Any]]]:
    """COCO results (file category ids) scoring at least ``score_thresh``, grouped by image id."""
    by_image: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for det in detections:
        if det["score"] >= score_thresh:
            by_image[det["image_id"]].append(det)
    return by_image


def draw_boxes(ax, boxes_xywh, labels: list[str], colors: list, dashed: bool = False) -> None:
    """Boxes ``[x, y, w, h]`` with a filled label above each, on a matplotlib axis."""
    for (x, y, w, h), text, color in zip(boxes_xywh, labels, colors, strict=True):
        ax.add_patch(Rectangle((x, y), w, h, fill=False, lw=1.5, ec=color, ls="--" if dashed else "-"))
        ax.text(
            x,
            y,
            plot_text(text),
            fontsize=6,
            color="white",
            va="bottom",
            bbox={"fc": color, "ec": "none", "pad": 0.5},
        )


def plot_image_grid(
    val_set,
    columns: dict[str, dict[int, list[dict[str, Any]]] | None],
    path: Path,
    *,
    title: str,
    images: int = SAMPLE_IMAGES,
) -> Path:
    """Rows: the ``images`` val images with the most objects; columns: the ground truth, then one per entry
    of ``columns`` (COCO results by image id, labelled ``class score``; None: drawn as failed). Every box
    carries its class name."""
    names = {c.id: c.name for c in val_set.categories}
    palette = plt.get_cmap("tab10")
    color = {c.id: palette(i % 10) for i, c in enumerate(val_set.categories)}
    indices = sample_images(val_set, images)
    heads = ["ground truth", *columns]
    fig, axes = plt.subplots(
        len(indices), len(heads), figsize=(2.4 * len(heads), 2.4 * len(indices)), squeeze=False
    )
    for row, index in enumerate(indices):
        record = val_set.images[index]
        try:
            image = read_rgb(record.file, val_set.max_pixels).permute(1, 2, 0).numpy()
        except DataError:
            image = np.full((max(record.height, 1), max(record.width, 1), 3), 128, np.uint8)
        for col, name in enumerate(heads):
            ax = axes[row, col]
            ax.imshow(image)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(plot_text(name), fontsize=9)
            if col == 0:
                ids = val_set.label_to_category_id(record.labels)
                xywh = [[b[0], b[1], b[2] - b[0], b[3] - b[1]] for b in record.boxes.tolist()]
                draw_boxes(ax, xywh, [names[int(i)] for i in ids], [color[int(i)] for i in ids])
            elif columns[name] is not None:
                dets = columns[name].get(record.id, [])
                labels = [f"{names[d['category_id']]} {d['score']:.2f}" for d in dets]
                draw_boxes(ax, [d["bbox"] for d in dets], labels, [color[d["category_id"]] for d in dets])
            else:
                ax.text(0.5, 0.5, "failed", transform=ax.transAxes, ha="center", va="center", color="red")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)


def plot_predictions(results: dict[str, Any], path: Path) -> Path:
    """Rows: the same val images; columns: ground truth, then each detector's detections (score >= 0.3)."""
    from anchorlab.config import Config
    from anchorlab.engine.common import load_split

    cfg = Config.model_validate({"data": results["data"]})
    val_set = load_split(cfg, "val")
    preds = {d: _detections_by_image(r) for d, r in _ok_runs(results)}
    columns = {d: preds.get(d) for d in results["detectors"]}
    title = f"val images: ground truth and detections with score >= {SCORE_THRESH}"
    return plot_image_grid(val_set, columns, path, title=title)
