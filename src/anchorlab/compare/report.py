"""The comparison report: OUT/report.md (with PNGs next to it) and a self-contained OUT/report.html
(images as base64 data URIs, inline CSS, no scripts), from the ``results`` dict of ``compare``.

Sections: the results table, precision-recall curves at IoU 0.5, AP by object size, the assignment
report of the training split, and the same val images with each detector's detections side by side.
"""

from __future__ import annotations

import base64
import html
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from rich import box
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

from anchorlab.compare.plots import pct, plot_ap_by_size, plot_pr_curves, plot_predictions
from anchorlab.io import write_text

__all__ = [
    "COLUMNS",
    "CSS",
    "data_uri",
    "html_figure",
    "html_page",
    "html_table",
    "markdown_table",
    "md_table",
    "print_table",
    "rich_table",
    "table_rows",
    "write_report",
]

#: Table columns and what they mean (docs/compare.md explains them at length).
COLUMNS: dict[str, str] = {
    "detector": "model.detector",
    "AP": "COCO AP, IoU 0.50:0.95 (%)",
    "AP50": "AP at IoU 0.50 (%)",
    "AP75": "AP at IoU 0.75 (%)",
    "APs": "AP of small objects (< 32^2 px) (%)",
    "APm": "AP of medium objects (%)",
    "APl": "AP of large objects (>= 96^2 px) (%)",
    "NMS rec@0.5": "recall after / before NMS at IoU 0.5 (%), anchorlab protocol (class-aware, model caps)",
    "NMS rec mean": "recall after / before NMS, mean over IoU 0.50:0.95 (%), anchorlab protocol",
    "train s": "training wall time (s)",
    "train img/s": "training images per second",
    "peak mem MB": "training's peak memory (MiB): CUDA max_memory_allocated, else peak RSS of its process",
    "infer ms": "batch-1 inference, median ms per image",
    "params M": "parameters (millions)",
    "GFLOPs": "forward GFLOPs per image at the eval size",
    "status": "ok, reused (finished run, same config) or the error",
}


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
                *(pct(m[k]) for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")),
                f"{pct(nms['recall_after'][i50])} / {pct(nms['recall_before'][i50])}",
                f"{pct(nms['mean_recall_after'])} / {pct(nms['mean_recall_before'])}",
                _num(run["train_time_s"], 1),
                _num(run["train_images_per_s"], 1),
                _num(run.get("peak_memory_mb"), 0),
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
                f"{zero['count']} ({pct(share)} %)",
                *sizes,
                _num(s["positives_per_object"].get("median"), 1),
                str(s["collisions"]["locations"]),
                f"{ignored.get('count', 0)} ({pct(ignored.get('share'))} %)",
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
        + "".join(f" {line}." for line in _budget_lines(results))
    )


def _budget_lines(results: dict[str, Any]) -> list[str]:
    """The auto budget's reasons and any budget warning (e.g. the quick budget shrinking user images)."""
    auto = results.get("auto") or {}
    lines = ["Auto budget: " + "; ".join(auto["reasons"])] if auto.get("reasons") else []
    return lines + [f"Warning: {w}" for w in results.get("warnings") or []]


def md_table(headers: list[str], rows: list[list[str]]) -> str:
    """A markdown table (cells as given)."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def html_table(headers: list[str], rows: list[list[str]]) -> str:
    """An HTML table, every cell escaped."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def data_uri(path: Path) -> str:
    """A PNG file as a base64 data URI (what keeps report.html self-contained)."""
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


CSS = (
    "body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px}"
    "table{border-collapse:collapse;font-size:0.9em;margin:1em 0}"
    "th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}"
    "td:first-child,th:first-child,td:last-child{text-align:left}img{max-width:100%}"
)


def html_figure(path: Path, title: str) -> str:
    """A section heading and the PNG at ``path`` embedded as a data URI."""
    return f"<h2>{html.escape(title)}</h2><img alt='{html.escape(title)}' src='{data_uri(path)}'>"


def html_page(title: str, body: list[str]) -> str:
    """A self-contained HTML document: inline CSS, no scripts, ``body`` parts (already HTML) in order."""
    head = (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{CSS}</style></head><body>"
    )
    return "\n".join([head, f"<h1>{html.escape(title)}</h1>", *body, "</body></html>"])


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
                md_table(a_headers, a_rows),
                "",
            ]
        md += [f"## {title}", "", f"![{title}]({path.name})", ""]
    write_text(out / "report.md", "\n".join(md))

    parts = [
        f"<p>{html.escape(_settings_text(results).replace('**', '').replace('`', ''))}</p>",
        html_table(headers, rows),
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
                html_table(a_headers, a_rows),
            ]
        parts.append(html_figure(path, title))
    write_text(out / "report.html", html_page("anchorlab compare", parts))
    return {
        "report_md": out / "report.md",
        "report_html": out / "report.html",
        **{name: path for name, (path, _) in figures.items()},
    }
