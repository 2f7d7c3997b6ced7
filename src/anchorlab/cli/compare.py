"""``anchorlab compare``: train and evaluate several detectors on the same data, one table and report."""

from __future__ import annotations

from pathlib import Path

import typer

from anchorlab.cli.app import app
from anchorlab.cli.evaluate import fail
from anchorlab.cli.output import make_console

__all__ = ["compare_command"]

EXAMPLES = """\
Examples:

  anchorlab compare --detectors retinanet,free_anchor --budget quick --out runs/compare

  anchorlab compare --budget quick --jobs 2 --threads 1    # two trainings at once on a 2-core CPU

  anchorlab compare --data train.json --val val.json --budget standard --set train.batch_size=8

  anchorlab compare --data train.json --val val.json --fit-anchors   # anchors fitted to your boxes

Budgets: auto (the default with --data: sized to your data, one line says what and why), quick (built-in
synthetic data, CPU minutes; warns when it shrinks your images), tiny (seconds, for tests), standard (COCO
1x, GPU).
Re-running reuses finished runs whose config did not change; --fresh retrains them.
Writes OUT/results.json, OUT/report.md, OUT/report.html (self-contained) and the plots.
"""


@app.command("compare", epilog=EXAMPLES)
def compare_command(
    detectors: str | None = typer.Option(
        None, "--detectors", help="Comma-separated detector names (default: every detector anchorlab has)."
    ),
    budget: str | None = typer.Option(
        None,
        "--budget",
        help="auto | quick | tiny | standard (data + schedule preset). Default: auto with --data or --config "
        "(image size, anchors, length and augmentation chosen from your data), else quick.",
    ),
    data: Path | None = typer.Option(
        None,
        "--data",
        help="Training data (replaces the budget's): COCO JSON, VOC / YOLO folder, data.yaml, CVAT export.",
    ),
    val: Path | None = typer.Option(
        None,
        "--val",
        help="Val data every detector is evaluated on (any format --data takes; a data.yaml: its val split).",
    ),
    out: Path = typer.Option(
        Path("runs/compare"), "--out", help="Output folder (one sub-folder per detector)."
    ),
    fresh: bool = typer.Option(False, "--fresh", help="Retrain every detector, even finished runs."),
    config: Path | None = typer.Option(
        None, "--config", help="Base config YAML whose data: and train: sections replace the budget's."
    ),
    threads: int | None = typer.Option(
        None, "--threads", help="torch CPU threads for the whole comparison (default: torch's choice)."
    ),
    jobs: int = typer.Option(
        1,
        "--jobs",
        help="Train this many detectors at once, in separate processes (evaluation and timing stay one at "
        "a time). With N jobs each gets cores / N torch threads unless --threads is given.",
    ),
    set_: list[str] = typer.Option(
        None, "--set", help="Override key.path=value for every detector (repeatable)."
    ),
    fit_anchors: bool = typer.Option(
        False,
        "--fit-anchors",
        help="Fit the anchor-based detectors' anchors to the training boxes before training; FCOS and the "
        "grid get a report of their levels' use (model.fit_anchors; OUT/<detector>/fit_anchors.json).",
    ),
) -> None:
    """Train and evaluate detectors side by side on the same data, backbone, schedule and seed."""
    from anchorlab.compare.presets import BUDGETS
    from anchorlab.compare.run import compare
    from anchorlab.config import ConfigError
    from anchorlab.data.core import DataError
    from anchorlab.models.build import DETECTORS

    names = [d.strip() for d in detectors.split(",") if d.strip()] if detectors else list(DETECTORS)
    unknown = [d for d in names if d not in DETECTORS]
    if unknown or not names:
        fail(
            f"unknown detector {', '.join(map(repr, unknown)) or '(none given)'}; "
            f"available detectors: {', '.join(DETECTORS)}"
        )
    if jobs < 1:
        fail(f"--jobs must be >= 1 (detectors trained at once), got {jobs}")
    if budget is not None and budget not in BUDGETS:
        fail(f"unknown budget {budget!r}; available budgets: {', '.join(BUDGETS)}")
    console = make_console(stderr=True)
    try:
        results = compare(
            names,
            budget=budget,
            data=data,
            val=val,
            out=out,
            fresh=fresh,
            base_config=config,
            overrides=[*(set_ or []), *(["model.fit_anchors=true"] if fit_anchors else [])],
            threads=threads,
            jobs=jobs,
            console=console,
        )
    except (ConfigError, DataError, OSError, ValueError) as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    console.print(f"report: {results['files']['report_html']} and {results['files']['report_md']}")
    failed = [d for d, r in results["runs"].items() if r.get("status") != "ok"]
    if failed:
        fail(
            f"{len(failed)} of {len(names)} detectors failed ({', '.join(failed)}); see the table and "
            f"{out}/<detector>/error.txt"
        )
