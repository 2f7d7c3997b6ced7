"""``anchorlab eval``: COCO metrics of a results JSON (or, once wired, of a trained model).

Also home of ``print_metrics`` and ``print_nms_recall``, the rich tables other commands reuse.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from anchorlab.cli.app import app

__all__ = ["eval_command", "fail", "print_metrics", "print_nms_recall"]

# anchorlab.evaluation (torch, faster-coco-eval) is imported inside the commands: `anchorlab --help`
# stays fast.

#: What each summary number is, in ``anchorlab.evaluation.METRIC_NAMES`` order.
METRIC_DESCRIPTIONS: dict[str, str] = {
    "AP": "AP  IoU=0.50:0.95  area=all     maxDets=100",
    "AP50": "AP  IoU=0.50       area=all     maxDets=100",
    "AP75": "AP  IoU=0.75       area=all     maxDets=100",
    "APs": "AP  IoU=0.50:0.95  area=small   maxDets=100",
    "APm": "AP  IoU=0.50:0.95  area=medium  maxDets=100",
    "APl": "AP  IoU=0.50:0.95  area=large   maxDets=100",
    "AR1": "AR  IoU=0.50:0.95  area=all     maxDets=1",
    "AR10": "AR  IoU=0.50:0.95  area=all     maxDets=10",
    "AR100": "AR  IoU=0.50:0.95  area=all     maxDets=100",
    "ARs": "AR  IoU=0.50:0.95  area=small   maxDets=100",
    "ARm": "AR  IoU=0.50:0.95  area=medium  maxDets=100",
    "ARl": "AR  IoU=0.50:0.95  area=large   maxDets=100",
}

EXAMPLES = """\
Examples:

  anchorlab eval --gt val.json --detections dets.json

  anchorlab eval --gt val.json --detections dets.json --json > metrics.json

  anchorlab eval configs/retinanet_quick.yaml --checkpoint last.pt --nms-recall

Tables show percentages, --json fractions; n/a (-1 in JSON) means the subset has no ground truth.
"""


def fail(message: str, code: int = 1) -> NoReturn:
    """Print ``Error: message`` on stderr and exit with ``code`` (no traceback); ``message`` is plain
    text (brackets in paths or ``anchorlab[extra]`` are printed, not read as markup)."""
    Console(stderr=True, soft_wrap=True).print(f"[bold red]Error:[/] {escape(message)}", highlight=False)
    raise typer.Exit(code)


def _pct(value: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value < 0:
        return "n/a"
    return f"{100 * value:.1f}"


def print_metrics(metrics: Mapping[str, Any], title: str, console: Console | None = None) -> None:
    """Rich tables of ``coco_metrics`` output: the 12 summary numbers, then per-category AP if present."""
    console = console or Console()
    table = Table(title=title, title_justify="left")
    table.add_column("metric", style="bold")
    table.add_column("value (%)", justify="right")
    table.add_column("definition", style="dim")
    for name in METRIC_DESCRIPTIONS:
        if name in metrics:
            table.add_row(name, _pct(metrics[name]), METRIC_DESCRIPTIONS[name])
    console.print(table)
    per_category = metrics.get("per_category")
    if per_category:
        ap50 = metrics.get("per_category_AP50", {})
        cats = Table(title="AP per category", title_justify="left")
        cats.add_column("category", style="bold")
        cats.add_column("AP (%)", justify="right")
        cats.add_column("AP50 (%)", justify="right")
        for name, ap in per_category.items():
            cats.add_row(str(name), _pct(ap), _pct(ap50.get(name, -1.0)))
        console.print(cats)


def print_nms_recall(result: Mapping[str, Any], title: str, console: Console | None = None) -> None:
    """Rich table of ``nms_recall`` output: recall before and after NMS and their ratio per IoU threshold."""
    console = console or Console()
    kind = "class-aware" if result.get("class_aware") else "class-agnostic"
    table = Table(
        title=f"{title} ({kind}, {result.get('num_objects', '?')} objects)",
        title_justify="left",
    )
    for col in ("IoU", "recall before NMS (%)", "recall after NMS (%)", "after / before (%)"):
        table.add_column(col, justify="right")
    rows = zip(
        result["iou_thresholds"],
        result["recall_before"],
        result["recall_after"],
        result["ratio"],
        strict=True,
    )
    for t, before, after, ratio in rows:
        table.add_row(f"{t:.2f}", _pct(before), _pct(after), _pct(ratio))
    table.add_row(
        "mean",
        _pct(result["mean_recall_before"]),
        _pct(result["mean_recall_after"]),
        _pct(result["mean_ratio"]),
        style="bold",
    )
    console.print(table)


def _json_safe(obj: Any) -> Any:
    """NaN -> null so the JSON output is strict."""
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    return obj


def _write_output(path: Path, text: str) -> None:
    """Atomically write ``--output``; a failure is one ``Error:`` line naming the file."""
    from anchorlab.io import write_text

    try:
        write_text(path, text)
    except OSError as err:
        fail(str(err))


def _eval_model(
    config: Path,
    checkpoint: Path | None,
    overrides: list[str],
    nms_recall: bool,
    as_json: bool,
    output: Path | None,
) -> None:
    """Evaluate a trained model (the checkpoint's model config) on the config's ``data.val``."""
    from anchorlab.config import ConfigError, load_config
    from anchorlab.data.core import DataError
    from anchorlab.engine.checkpoint import CheckpointError, trained_weights
    from anchorlab.engine.common import load_split
    from anchorlab.engine.evaluate import evaluate_model
    from anchorlab.engine.predict import load_trained

    try:
        cfg = load_config(config, overrides)
        checkpoint = checkpoint or trained_weights(cfg.train.out)
        model, trained_cfg, _ = load_trained(checkpoint, cfg.train.device)
        cfg.model = trained_cfg.model
        metrics = evaluate_model(model, cfg, load_split(cfg, "val"), with_nms_recall=nms_recall)
    except (ConfigError, DataError, CheckpointError, OSError, ValueError) as err:
        fail(str(err))
    metrics = _json_safe(metrics)
    text = json.dumps(metrics, indent=2)
    if output is not None:
        _write_output(output, text + "\n")
    if as_json:
        typer.echo(text)
        return
    print_metrics(metrics, f"{cfg.model.detector} on {cfg.data.val} ({checkpoint})")
    if nms_recall:
        print_nms_recall(metrics["nms_recall"], "NMS recall")


def _eval_files(gt: Path, detections: Path, as_json: bool, output: Path | None) -> None:
    from anchorlab.evaluation.coco import coco_metrics

    try:
        metrics = coco_metrics(gt, detections)
    except (OSError, ValueError) as err:
        fail(str(err))
    text = json.dumps(metrics, indent=2)
    if output is not None:
        _write_output(output, text + "\n")
    if as_json:
        typer.echo(text)
    else:
        print_metrics(metrics, f"COCO {gt.name} vs {detections.name}")


@app.command("eval", epilog=EXAMPLES)
def eval_command(
    config: Path | None = typer.Argument(
        None, help="Training config YAML: evaluate a trained model (with --checkpoint) on data.val."
    ),
    gt: Path | None = typer.Option(None, "--gt", help="COCO ground-truth JSON (results-file mode)."),
    detections: Path | None = typer.Option(
        None, "--detections", "-d", help="COCO results JSON: [{image_id, category_id, bbox, score}, ...]."
    ),
    checkpoint: Path | None = typer.Option(None, "--checkpoint", "-c", help="Model checkpoint (model mode)."),
    overrides: list[str] | None = typer.Option(
        None, "--set", help="Config override KEY=VALUE (model mode); repeatable."
    ),
    nms_recall: bool = typer.Option(
        False, "--nms-recall", help="Also report recall before/after NMS (model mode)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the metrics as JSON instead of tables."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Also write the metrics JSON here."),
) -> None:
    """COCO AP/AR of detections: from a results JSON (--gt, --detections) or a trained model (CONFIG)."""
    if config is not None:
        if gt is not None or detections is not None:
            fail("give either CONFIG (model mode) or --gt and --detections (results-file mode), not both")
        _eval_model(config, checkpoint, list(overrides or []), nms_recall, as_json, output)
        return
    if checkpoint is not None or nms_recall or overrides:
        fail("--checkpoint, --set and --nms-recall need a CONFIG (model mode)")
    if gt is None or detections is None:
        missing = " and ".join(n for n, v in (("--gt", gt), ("--detections", detections)) if v is None)
        fail(f"missing {missing}: run `anchorlab eval --gt GT.json --detections DETS.json` or see --help")
    _eval_files(gt, detections, as_json, output)
