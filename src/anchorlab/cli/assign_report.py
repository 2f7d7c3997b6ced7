"""Command: assign-report -- every assignment strategy on a dataset's ground truth, no model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from anchorlab.cli.app import app
from anchorlab.cli.output import make_console

console = make_console()
err_console = make_console(stderr=True)


def _num(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def report_table(report: dict) -> Table:
    """Metrics as rows, strategies as columns."""
    strategies = report["strategies"]
    table = Table(
        title=f"assignment on {report['images']} images, {report['objects']} objects (after the resize)",
        title_justify="left",
    )
    table.add_column("metric")
    for name in strategies:
        table.add_column(name, justify="right")

    def row(label: str, get) -> None:
        table.add_row(label, *(get(s) for s in strategies.values()))

    row("objects with 0 positives", lambda s: str(s["zero_positive"]["count"]))
    row("  share", lambda s: _pct(s["zero_positive"]["share"]))
    for bucket in report["size_buckets"]:
        row(
            f"  {bucket} ({report['size_buckets'][bucket]})",
            lambda s, b=bucket: _pct(s["zero_positive"]["by_size"][b]["share"]),
        )
    for key, label in (("mean", "mean"), ("p10", "p10"), ("median", "median"), ("p90", "p90")):
        row(f"positives per object {label}", lambda s, k=key: _num(s["positives_per_object"][k]))
    row("locations with 2+ objects", lambda s: str(s["collisions"]["locations"]))
    levels = list(dict.fromkeys(lv for s in strategies.values() for lv in s["collisions"]["per_level"]))
    for level in levels:
        row(f"  {level}", lambda s, lv=level: _num(s["collisions"]["per_level"].get(lv)))
    row("ignored priors", lambda s: str(s["ignored"]["count"]))
    row("  share of priors", lambda s: _pct(s["ignored"]["share"]))
    row("priors", lambda s: str(s["priors"]["total"]))
    extras = list(dict.fromkeys(k for s in strategies.values() for k in s.get("extra", {})))
    for key in extras:
        row(key.replace("_", " "), lambda s, k=key: _num(s.get("extra", {}).get(k), 3))
    return table


def _worst_classes(report: dict, top: int = 5) -> Table:
    """Per strategy, the classes with the highest share of objects without positives."""
    table = Table(title="classes most often left without positives", title_justify="left")
    table.add_column("strategy")
    table.add_column("classes (share of objects with 0 positives)")
    for name, s in report["strategies"].items():
        rows = sorted(s["zero_positive"]["by_class"].items(), key=lambda kv: -(kv[1]["share"] or 0))
        text = ", ".join(f"{c} {_pct(v['share'])}" for c, v in rows[:top] if v["zero_positive"])
        table.add_row(name, text or "-")
    return table


@app.command("assign-report")
def assign_report(
    data: Path = typer.Argument(
        ..., help="Boxes to assign: COCO JSON, VOC / YOLO folder, data.yaml or CVAT export."
    ),
    config: Path | None = typer.Option(
        None, "--config", help="YAML config (resize, FPN levels, anchors, thresholds)."
    ),
    set_: list[str] = typer.Option(
        None, "--set", help="Override a config value: key.path=value (repeatable)."
    ),
    strategies: str = typer.Option(
        "max_iou,free_anchor,fcos,centernet,grid",
        "--strategies",
        help="Comma-separated strategies: max_iou, free_anchor, fcos, centernet, grid.",
    ),
    out: Path = typer.Option(Path("runs/assign_report"), "--out", help="Output folder."),
    max_images: int | None = typer.Option(None, "--max-images", min=1, help="Only the first N images."),
    pictures: int = typer.Option(4, "--pictures", min=0, help="Crowded images to draw (0: none)."),
    images: Path | None = typer.Option(None, "--images", help="Image folder (default: next to the JSON)."),
    threads: int = typer.Option(1, "--threads", min=1, help="CPU threads (1 is fastest on shared machines)."),
) -> None:
    """Run every assignment strategy on the ground truth (no model): objects left without positives (per
    size bucket and class), positives per object, locations claimed by 2+ objects, ignored priors.
    Writes OUT/assign_report.json and OUT/assign_*.png (positives of each strategy on crowded images).

    Example: anchorlab assign-report data/synth/val.json --config configs/retinanet_r18_fpn_quick.yaml
    --strategies max_iou,fcos,grid --out runs/assign --pictures 4
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from anchorlab.config import ConfigError, load_config
    from anchorlab.data.core import DataError
    from anchorlab.engine.common import load_split
    from anchorlab.io import write_json
    from anchorlab.report import assignment_report, save_pictures
    from anchorlab.report.assignment import check_strategies

    try:
        chosen = check_strategies([s.strip() for s in strategies.split(",") if s.strip()])
        cfg = load_config(config, set_ or [])
        progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("images"),
            TimeElapsedColumn(), console=err_console, transient=True,
        )  # fmt: skip
        with progress:
            task = progress.add_task("loading annotations", total=None)
            if images is not None:
                cfg.data.images = str(images)
            ds = load_split(cfg, "train", data, check_images="none")
            progress.update(task, description="assigning")
            report = assignment_report(
                ds,
                cfg,
                chosen,
                max_images=max_images,
                threads=threads,
                progress=lambda done, total: progress.update(task, completed=done, total=total),
            )
            progress.update(task, description="drawing", total=None)
            report["data"] = str(data)
            write_json(out / "assign_report.json", report)
            pngs = save_pictures(ds, cfg, report, out, count=pictures, strategies=chosen) if pictures else []
    except (ConfigError, DataError, OSError, ValueError) as exc:
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None

    console.print(
        f"resize min_size={cfg.data.min_size} max_size={cfg.data.max_size}, padded to "
        f"{report['resize']['pad_to']}; {report['dropped_objects']} objects under 1 px dropped; "
        f"{report['crowd_regions']} crowd regions; {report['seconds']:.1f} s"
    )
    console.print(report_table(report))
    console.print(_worst_classes(report))
    written = [out / "assign_report.json", *pngs]
    console.print("wrote " + ", ".join(str(p) for p in written))
