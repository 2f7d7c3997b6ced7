"""Command: train."""

from __future__ import annotations

from pathlib import Path

import typer

from anchorlab.cli.app import app
from anchorlab.cli.evaluate import fail
from anchorlab.console import make_console

console = make_console(stderr=True)


@app.command()
def train(
    config: Path = typer.Argument(..., help="YAML config (see configs/)."),
    set_: list[str] = typer.Option(
        None, "--set", help="Override a config value: key.path=value (repeatable)."
    ),
    out: Path | None = typer.Option(
        None,
        "--out",
        help="Run folder (sets train.out; default: the config's train.out, else runs/<config name>).",
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in OUT from OUT/last.pt exactly."),
    exist_ok: bool = typer.Option(
        False,
        "--exist-ok",
        help="Replace the run already in OUT (its files go once this run writes its first checkpoint).",
    ),
    no_eval: bool = typer.Option(
        False, "--no-eval", help="No evaluation on the val split (neither per epoch nor at the end)."
    ),
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
    budget: str | None = typer.Option(
        None,
        "--budget",
        help="auto: size the run to the training data (image size, fitted anchors, length, augmentation; "
        "one line says what and why; --set keys win). Same as train.preset: auto.",
    ),
) -> None:
    """Train a detector into a run folder: last.pt, best.pt, results.csv, log.jsonl, metrics.json, ...

    Example: anchorlab train configs/retinanet_r18_fpn_quick.yaml --out runs/r18 --set train.epochs=20
    (then: anchorlab train ... --resume to continue it; --exist-ok to replace it)
    """
    from anchorlab.config import ConfigError, load_config
    from anchorlab.data.core import DataError
    from anchorlab.engine.checkpoint import CheckpointError
    from anchorlab.engine.run_folder import RunFolderBusy, RunFolderExists
    from anchorlab.engine.tb import TensorBoardMissing
    from anchorlab.engine.train import TrainingError
    from anchorlab.engine.train import train as run_train

    if budget not in (None, "auto"):
        fail(f"--budget {budget!r}: train takes only auto (the fixed recipes are the configs/*.yaml)")
    if resume and exist_ok:
        fail("--resume continues the run in the folder, --exist-ok replaces it: give one of them", code=2)
    try:
        flags = ["train.tensorboard=true"] * tensorboard + ["model.fit_anchors=true"] * fit_anchors
        cfg = load_config(config, [*(set_ or []), *flags])
        if budget == "auto":
            cfg.train.preset = "auto"
        cfg.train.out = str(out) if out is not None else default_out(cfg, config)
        summary = run_train(cfg, resume=resume, exist_ok=exist_ok, evaluate=not no_eval, console=console)
    except (RunFolderExists, RunFolderBusy) as exc:
        fail(str(exc), code=2)
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
    _report(summary, cfg.model.detector)


def default_out(cfg, config: Path) -> str:
    """``train.out`` when the config (or a ``--set``) gives it, else ``runs/<config file stem>``."""
    return cfg.train.out if "out" in cfg.train.model_fields_set else str(Path("runs") / config.stem)


def _report(summary: dict, detector: str) -> None:
    stopped = {"time": " (train.max_minutes ran out)", "patience": " (train.patience: no better AP)"}
    console.print(
        f"trained {summary['iterations']} iterations in {summary['train_time_s']:.1f}s "
        f"({summary['train_images_per_s']:.1f} images/s){stopped.get(summary['stopped_early'], '')}; "
        f"checkpoint {summary['checkpoint']}",
        soft_wrap=True,
        highlight=False,
    )
    if "best" in summary:
        best = summary["best"]
        console.print(
            f"best AP {best['AP']:.4f} at iteration {best['iteration']}: {summary['best_checkpoint']}",
            soft_wrap=True,
            highlight=False,
        )
    if summary.get("metrics"):
        from anchorlab.cli.evaluate import print_metrics

        print_metrics(summary["metrics"], title=f"val metrics ({detector})")
