"""Command: train."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from anchorlab.cli.app import app
from anchorlab.cli.evaluate import fail

console = Console(stderr=True)


@app.command()
def train(
    config: Path = typer.Argument(..., help="YAML config (see configs/)."),
    set_: list[str] = typer.Option(
        None, "--set", help="Override a config value: key.path=value (repeatable)."
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue from OUT/checkpoint.pt exactly."),
    no_eval: bool = typer.Option(False, "--no-eval", help="Skip the evaluation on the val split at the end."),
    tensorboard: bool = typer.Option(
        False,
        "--tensorboard",
        help="Also log scalars to OUT/tensorboard/ (sets train.tensorboard; needs the tensorboard extra).",
    ),
    fit_anchors: bool = typer.Option(
        False,
        "--fit-anchors",
        help="Fit the anchors (anchor-based detectors) to the training boxes first; FCOS and the grid get a "
        "report of their levels' use (sets model.fit_anchors; result in OUT/fit_anchors.json and "
        "OUT/config.yaml).",
    ),
) -> None:
    """Train a detector; checkpoints, log.jsonl and metrics.json go to train.out.

    Example: anchorlab train configs/retinanet_r18_fpn_quick.yaml --set train.iterations=300 --tensorboard
    (then: tensorboard --logdir runs/)
    """
    from anchorlab.config import ConfigError, load_config
    from anchorlab.data.core import DataError
    from anchorlab.engine.checkpoint import CheckpointError
    from anchorlab.engine.tb import TensorBoardMissing
    from anchorlab.engine.train import TrainingError
    from anchorlab.engine.train import train as run_train

    try:
        flags = ["train.tensorboard=true"] * tensorboard + ["model.fit_anchors=true"] * fit_anchors
        cfg = load_config(config, [*(set_ or []), *flags])
        summary = run_train(cfg, resume=resume, evaluate=not no_eval, console=console)
    except (
        ConfigError,
        DataError,
        CheckpointError,
        TrainingError,
        TensorBoardMissing,
        OSError,
        ValueError,
    ) as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    console.print(
        f"trained {summary['iterations']} iterations in {summary['train_time_s']:.1f}s "
        f"({summary['train_images_per_s']:.1f} images/s); checkpoint {summary['checkpoint']}"
    )
    if "metrics" in summary:
        from anchorlab.cli.evaluate import print_metrics

        print_metrics(summary["metrics"], title=f"val metrics ({cfg.model.detector})")
