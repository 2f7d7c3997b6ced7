"""``anchorlab report RUN_DIR``: the pictures and report.html of one training run."""

from __future__ import annotations

from pathlib import Path

import typer

from anchorlab.cli.app import app
from anchorlab.cli.evaluate import fail
from anchorlab.console import make_console

__all__ = ["report_command"]

EXAMPLES = """\
Examples:

  anchorlab report runs/retinanet_r18_fpn_quick

  anchorlab report runs/mine --checkpoint runs/mine/last.pt --out runs/mine/report_last

Writes curves_loss.png, curves_ap.png, pr_curves.png, confusion_matrix.png, val_predictions.png,
report.json and a self-contained report.html (images embedded) into OUT (default: RUN_DIR).
"""


@app.command("report", epilog=EXAMPLES)
def report_command(
    run_dir: Path = typer.Argument(..., help="A run folder written by anchorlab train."),
    checkpoint: Path | None = typer.Option(
        None, "--checkpoint", help="Checkpoint to evaluate (default: best.pt, else the last checkpoint)."
    ),
    out: Path | None = typer.Option(None, "--out", help="Output folder (default: RUN_DIR)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:1, ..."),
    score_thresh: float = typer.Option(
        0.3,
        "--score-thresh",
        help="Detections drawn and counted in the confusion matrix score at least this.",
    ),
) -> None:
    """Loss and AP curves, precision-recall per class, a confusion matrix and val images with predictions
    of one run, as PNGs and one self-contained report.html."""
    from anchorlab.config import ConfigError
    from anchorlab.data.core import DataError
    from anchorlab.engine.checkpoint import CheckpointError
    from anchorlab.report.run import write_run_report

    console = make_console(stderr=True)
    if not 0 <= score_thresh <= 1:
        fail(f"--score-thresh must be in [0, 1], got {score_thresh}")
    try:
        files = write_run_report(
            run_dir, checkpoint=checkpoint, out=out, device=device, score_thresh=score_thresh, console=console
        )
    except (ConfigError, DataError, CheckpointError, OSError, ValueError) as exc:
        fail(str(exc))
    console.print(f"report: {files['report_html']} ({len(files) - 1} other files)")
