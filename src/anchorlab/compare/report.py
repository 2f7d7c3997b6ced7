"""The comparison report: OUT/report.md (with PNGs next to it) and a self-contained OUT/report.html
(images as base64 data URIs, inline CSS, no scripts), from the ``results`` dict of ``compare``.

Sections: the results table, precision-recall curves at IoU 0.5, AP by object size, the assignment
report of the training split, and the same val images with each detector's detections side by side.
"""

from __future__ import annotations

import base64
import html
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
from PIL import Image
from rich import box
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

from anchorlab.io import save_figure, write_text

__all__ = ["COLUMNS", "markdown_table", "print_table", "rich_table", "table_rows", "write_report"]

#: Table columns and what they mean (docs/compare.md explains them at length).
COLUMNS: dict[str, str] = {
    "detector": "model.detector",
    "AP": "COCO AP, IoU 0.50:0.95 (%)",
    "AP50": "AP at IoU 0.50 (%)",
    "AP75": "AP at IoU 0.75 (%)",
    "APs": "AP of small objects (< 32^2 px) (%)",
    "APm": "AP of medium objects (%)",
    "APl": "AP of large objects (>= 96^2 px) (%)",
    "NMS rec@0.5": "recall after / before NMS at IoU 0.5 (%)",
    "NMS rec mean": "recall after / before NMS, mean over IoU 0.50:0.95 (%)",
    "train s": "training wall time (s)",
    "train img/s": "training images per second",
    "infer ms": "batch-1 inference, median ms per image",
    "params M": "parameters (millions)",
    "GFLOPs": "forward GFLOPs per image at the eval size",
    "status": "ok, reused (finished run, same config) or the error",
}
SCORE_THRESH = 0.3  # detections drawn in the side-by-side pictures
SAMPLE_IMAGES = 4
_SIZES = (("APs", "small"), ("APm", "medium"), ("APl", "large"))


def _pct(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value < 0:
        return "n/a"
    return f"{100 * value:.1f}"


def _num(value: Any, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def table_rows(results: dict[str, Any]) -> list[list[str]]:
    """One row of ``COLUMNS`` per detector, formatted."""
    rows = []
    for det in results["detectors"]:
        run = results["runs"][det]
        if run.get("status") != "ok":
            error = str(run.get("error", "failed")).replace("\n", " ").replace("|", "/")
            rows.append([det, *["-"] * (len(COLUMNS) - 2), f"failed: {error[:200]}"])
            continue
        m, nms = run["metrics"], run["metrics"]["nms_recall"]
        i50 = int(np.argmin(np.abs(np.asarray(nms["iou_thresholds"]) - 0.5)))
        rows.append(
            [
                det,
                *(_pct(m[k]) for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")),
                f"{_pct(nms['recall_after'][i50])} / {_pct(nms['recall_before'][i50])}",
                f"{_pct(nms['mean_recall_after'])} / {_pct(nms['mean_recall_before'])}",
                _num(run["train_time_s"], 1),
                _num(run["train_images_per_s"], 1),
                _num(run["inference_ms"], 1),
                _num(run["params_m"], 2),
                _num(run["gflops"], 2),
                "reused" if run.get("reused") else "ok",
            ]
        )
    return rows


def markdown_table(results: dict[str, Any]) -> str:
    lines = [
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(COLUMNS) - 2) + ["---"]) + "|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(results)]
    return "\n".join(lines)


def _jobs_note(results: dict[str, Any]) -> str:
    """The note under the table when trainings ran in parallel (``compare --jobs``), else ""."""
    groups: dict[tuple[int, Any], list[str]] = defaultdict(list)
    for det in results["detectors"]:
        run = results["runs"][det]
        if run.get("status") == "ok" and (run.get("jobs") or 1) > 1:
            groups[(run["jobs"], run.get("train_threads"))].append(det)
    if not groups:
        return ""
    parts = [
        f"{jobs} at a time with {threads or 'the default'} torch thread{'' if threads == 1 else 's'} each "
        f"({', '.join(dets)})"
        for (jobs, threads), dets in groups.items()
    ]
    return (
        f"Trainings ran {'; '.join(parts)} (--jobs): train s and train img/s are per training while sharing "
        "the CPU; infer ms was measured afterwards, one detector at a time with nothing else running."
    )


def rich_table(results: dict[str, Any]) -> Table:
    """The results table for the console; print it with ``print_table`` so narrow terminals do not crop."""
    table = Table(
        title=f"anchorlab compare ({results['budget']} budget, val {results['data']['val']})",
        box=box.SIMPLE_HEAD,
        title_justify="left",
    )
    for name in COLUMNS:
        table.add_column(name, justify="left" if name in ("detector", "status") else "right", no_wrap=True)
    for row in table_rows(results):
        style = None if not row[-1].startswith("failed") else "red"
        table.add_row(*row, style=style)
    return table


def print_table(results: dict[str, Any], console: Console) -> None:
    """Print ``rich_table`` at its natural width (wider than the console rather than cropped to it)."""
    table = rich_table(results)
    width = Measurement.get(console, console.options.update_width(400), table).maximum
    if width <= console.width:
        console.print(table)
    else:
        wide = Console(  # Console.print(width=) cannot exceed the console's own width
            file=console.file,
            width=width,
            force_terminal=console.is_terminal,
            color_system=console.color_system,  # type: ignore[arg-type]
            no_color=console.no_color,
        )
        wide.print(table)
    if note := _jobs_note(results):
        console.print(note)


# -- plots --------------------------------------------------------------------------------------------


def _ok_runs(results: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(d, results["runs"][d]) for d in results["detectors"] if results["runs"][d].get("status") == "ok"]


def plot_pr_curves(results: dict[str, Any], path: Path) -> Path:
    """Precision against recall at IoU 0.5 (categories averaged), one line per detector."""
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for det, run in _ok_runs(results):
        curve = run["metrics"]["pr_curve"]
        precision = [np.nan if p is None else p for p in curve["precision"]]
        ax.plot(curve["recall"], precision, label=f"{det} (AP50 {_pct(run['metrics']['AP50'])})")
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
    for i, (det, run) in enumerate(runs):
        values = [run["metrics"][k] for k, _ in _SIZES]
        heights = [100 * v if v is not None and v >= 0 else 0.0 for v in values]
        bars = ax.bar(x + (i - (len(runs) - 1) / 2) * width, heights, width, label=det)
        for bar, v in zip(bars, values, strict=True):
            text = "n/a" if v is None or v < 0 else f"{100 * v:.1f}"
            ax.annotate(
                text,
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center",
                va="bottom",
                fontsize=7,
            )
    ax.set_xticks(x, [name for _, name in _SIZES])
    top = max([100 * run["metrics"][k] for _, run in runs for k, _ in _SIZES], default=0.0)
    ax.set_ylim(0, max(1.0, 1.15 * top))
    ax.set(ylabel="AP (%)", title="AP by object size (COCO buckets)")
    ax.grid(axis="y", alpha=0.3)
    if runs:
        ax.legend()
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)


def _sample_images(val_set, count: int) -> list[int]:
    """Indices of the ``count`` val images with the most objects (ties: file order)."""
    objects = np.array([len(r.boxes) for r in val_set.images])
    return sorted(np.argsort(-objects, kind="stable")[:count].tolist())


def _detections_by_image(run: dict[str, Any]) -> dict[int, list[dict[str, Any]]]:
    path = Path(run["run_dir"]) / "detections.json"
    by_image: dict[int, list[dict[str, Any]]] = defaultdict(list)
    if path.is_file():
        for det in json.loads(path.read_text()):
            if det["score"] >= SCORE_THRESH:
                by_image[det["image_id"]].append(det)
    return by_image


def _draw_boxes(ax, boxes_xywh, labels: list[str], colors: list, dashed: bool = False) -> None:
    for (x, y, w, h), text, color in zip(boxes_xywh, labels, colors, strict=True):
        ax.add_patch(Rectangle((x, y), w, h, fill=False, lw=1.5, ec=color, ls="--" if dashed else "-"))
        ax.text(
            x, y, text, fontsize=6, color="white", va="bottom", bbox={"fc": color, "ec": "none", "pad": 0.5}
        )


def plot_predictions(results: dict[str, Any], path: Path) -> Path:
    """Rows: the same val images; columns: ground truth, then each detector's detections (score >= 0.3)."""
    from anchorlab.data import load_coco

    val_set = load_coco(results["data"]["val"], images_dir=results["data"]["images"])
    names = {c.id: c.name for c in val_set.categories}
    palette = plt.get_cmap("tab10")
    color = {c.id: palette(i % 10) for i, c in enumerate(val_set.categories)}
    indices = _sample_images(val_set, SAMPLE_IMAGES)
    columns = ["ground truth", *results["detectors"]]
    preds = {d: _detections_by_image(r) for d, r in _ok_runs(results)}
    fig, axes = plt.subplots(
        len(indices), len(columns), figsize=(2.4 * len(columns), 2.4 * len(indices)), squeeze=False
    )
    for row, index in enumerate(indices):
        record = val_set.images[index]
        image = np.asarray(Image.open(record.file).convert("RGB"))
        for col, name in enumerate(columns):
            ax = axes[row, col]
            ax.imshow(image)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(name, fontsize=9)
            if col == 0:
                ids = val_set.label_to_category_id(record.labels)
                xywh = [[b[0], b[1], b[2] - b[0], b[3] - b[1]] for b in record.boxes.tolist()]
                _draw_boxes(ax, xywh, [names[int(i)] for i in ids], [color[int(i)] for i in ids])
            elif name in preds:
                dets = preds[name].get(record.id, [])
                labels = [f"{names[d['category_id']]} {d['score']:.2f}" for d in dets]
                _draw_boxes(ax, [d["bbox"] for d in dets], labels, [color[d["category_id"]] for d in dets])
            else:
                ax.text(0.5, 0.5, "failed", transform=ax.transAxes, ha="center", va="center", color="red")
    fig.suptitle(f"val images: ground truth and detections with score >= {SCORE_THRESH}", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)


# -- assignment summary ------------------------------------------------------------------------------


def assignment_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Per strategy: objects with zero positives (all / by size), positives per object, collisions."""
    headers = [
        "strategy",
        "zero-positive objects",
        "small",
        "medium",
        "large",
        "positives / object (median)",
        "collision locations",
        "ignored priors",
    ]
    rows = []
    for name, s in report.get("strategies", {}).items():
        zero = s["zero_positive"]
        sizes = []
        for bucket in ("small", "medium", "large"):
            b = zero["by_size"].get(bucket, {})
            sizes.append(f"{b.get('zero_positive', 0)} / {b.get('objects', 0)}")
        share = zero.get("share")
        ignored = s.get("ignored", {})
        rows.append(
            [
                name,
                f"{zero['count']} ({_pct(share)} %)",
                *sizes,
                _num(s["positives_per_object"].get("median"), 1),
                str(s["collisions"]["locations"]),
                f"{ignored.get('count', 0)} ({_pct(ignored.get('share'))} %)",
            ]
        )
    return headers, rows


# -- documents -----------------------------------------------------------------------------------------


def _settings_text(results: dict[str, Any]) -> str:
    d, t = results["shared"]["data"], results["shared"]["train"]
    env = results.get("environment", {})
    return (
        f"Budget **{results['budget']}**: train `{d['train']}`, val `{d['val']}`, images resized to "
        f"{d['min_size']}/{d['max_size']} px, {t['iterations']} iterations x {t['batch_size']} images, "
        f"{t['optimizer']} lr {t['lr']} ({t['schedule']}), seed {t['seed']} — the same for every detector. "
        f"torch {env.get('torch')}, torch threads: {env.get('threads')}, {env.get('platform')}."
    )


def _md_table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def _html_table(headers: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


_CSS = (
    "body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px}"
    "table{border-collapse:collapse;font-size:0.9em;margin:1em 0}"
    "th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}"
    "td:first-child,th:first-child,td:last-child{text-align:left}img{max-width:100%}"
)


def write_report(results: dict[str, Any], out: Path) -> dict[str, Path]:
    """Write the plots, OUT/report.md and OUT/report.html; returns their paths by name."""
    out = Path(out)
    figures = {
        "pr_curves": (plot_pr_curves(results, out / "pr_curves.png"), "Precision-recall at IoU 0.5"),
        "ap_by_size": (plot_ap_by_size(results, out / "ap_by_size.png"), "AP by object size"),
        "predictions": (plot_predictions(results, out / "predictions.png"), "Detections side by side"),
    }
    headers, rows = list(COLUMNS), table_rows(results)
    assignment = results.get("assignment") or {}
    a_headers, a_rows = assignment_rows(assignment)
    if "error" in assignment:
        a_text = f"The assignment report failed: {assignment['error']}"
    else:
        levels = ", ".join(assignment.get("settings", {}).get("levels", []))
        a_text = (
            f"Every assignment strategy run on the ground truth of the training split "
            f"({assignment.get('images')} images, {assignment.get('objects')} objects) with the budget's "
            f"RetinaNet model section (levels {levels}): objects that get no positive prior (all, and "
            f"zero / objects per COCO size bucket), positives per object, locations claimed by two or more "
            f"objects, ignored priors."
        )
    legend = "; ".join(f"**{k}**: {v}" for k, v in COLUMNS.items())
    note = _jobs_note(results)
    md = [
        "# anchorlab compare",
        "",
        _settings_text(results),
        "",
        markdown_table(results),
        "",
        *([note, ""] if note else []),
        legend,
        "",
    ]
    for name, (path, title) in figures.items():
        if name == "predictions":
            md += [
                "## Assignment report of the training data",
                "",
                a_text,
                "",
                _md_table(a_headers, a_rows),
                "",
            ]
        md += [f"## {title}", "", f"![{title}]({path.name})", ""]
    write_text(out / "report.md", "\n".join(md))

    parts = [
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>anchorlab compare</title>"
        f"<style>{_CSS}</style></head><body>",
        "<h1>anchorlab compare</h1>",
        f"<p>{html.escape(_settings_text(results).replace('**', '').replace('`', ''))}</p>",
        _html_table(headers, rows),
        f"<p>{html.escape(note)}</p>" if note else "",
        "<p>"
        + "<br>".join(f"<b>{html.escape(k)}</b>: {html.escape(v)}" for k, v in COLUMNS.items())
        + "</p>",
    ]
    for name, (path, title) in figures.items():
        if name == "predictions":
            parts += [
                "<h2>Assignment report of the training data</h2>",
                f"<p>{html.escape(a_text)}</p>",
                _html_table(a_headers, a_rows),
            ]
        parts += [
            f"<h2>{html.escape(title)}</h2>",
            f"<img alt='{html.escape(title)}' src='{_data_uri(path)}'>",
        ]
    parts.append("</body></html>")
    write_text(out / "report.html", "\n".join(parts))
    return {
        "report_md": out / "report.md",
        "report_html": out / "report.html",
        **{name: path for name, (path, _) in figures.items()},
    }
