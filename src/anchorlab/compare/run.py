"""``compare``: train and evaluate several detectors on the same data, schedule and seed, then report.

For each detector: resolve its config (the budget's shared data + train blocks, its own model section,
the user's overrides), train it into ``OUT/<detector>/`` with ``engine.train``, evaluate it on the val
split (COCO metrics, NMS recall, the IoU-0.5 precision-recall curve), time batch-1 inference and count
parameters and forward FLOPs; the training's peak memory is measured where it trains. A detector that
fails is recorded with its error and the others go on; a finished run whose resolved config (and data
files) did not change is reused unless ``fresh``. With ``jobs`` > 1 the trainings run that many at a
time in worker processes (``compare.parallel``).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import traceback
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from anchorlab.compare.measure import PeakMemory, measure_speed, pr_curve, predict_and_score
from anchorlab.compare.parallel import prepare_run_dir, train_parallel
from anchorlab.compare.presets import budget_tree, check_budget, has_preset, model_tree
from anchorlab.config import Config, ConfigError, apply_overrides, config_from_dict, override_keys
from anchorlab.console import make_console
from anchorlab.data.categories import align_categories
from anchorlab.engine.common import (
    declares_split,
    ensure_synthetic,
    environment,
    load_split,
    resolve_device,
    write_json,
)
from anchorlab.io import make_dir, write_text

#: What results.json records of the data: enough to load the val split again (the report's pictures).
_DATA_KEYS = ("train", "val", "images", "format", "split", "classes", "policy", "max_pixels")

__all__ = [
    "compare",
    "config_hash",
    "default_budget",
    "json_safe",
    "measure_speed",
    "pr_curve",
    "resolve_config",
]


def default_budget(data: str | Path | None, base_config: str | Path | None = None) -> str:
    """The budget when none is given: ``auto`` for the user's data (``--data`` or ``--config``), else
    ``quick`` (the built-in synthetic data)."""
    return "auto" if data is not None or base_config is not None else "quick"


#: Training splits read by ``resolve_config`` for the auto budget, by data section + file stamp.
_SPLITS: dict[str, Any] = {}


def _train_split(cfg: Config):
    """``load_split(cfg, "train")``, cached for the configs of one comparison (same data section, same
    file size and mtime)."""
    path = Path(cfg.data.train or "")
    stamp = [path.stat().st_size, path.stat().st_mtime_ns] if path.is_file() else None
    key = json.dumps([cfg.data.model_dump(mode="json"), stamp], sort_keys=True, default=str)
    if key not in _SPLITS:
        _SPLITS.clear()
        _SPLITS[key] = load_split(cfg, "train")
    return _SPLITS[key]


def resolve_config(
    detector: str,
    *,
    budget: str = "quick",
    data: str | Path | None = None,
    val: str | Path | None = None,
    base_config: str | Path | None = None,
    overrides: Sequence[str] = (),
    out: str | Path = "runs/compare",
    auto_report: list[Any] | None = None,
) -> Config:
    """The config ``detector`` trains with: the budget's (or ``base_config``'s) data + train sections,
    the detector's preset model section, ``overrides`` (``key=value``), ``train.out = OUT/<detector>``.
    The ``auto`` budget is then sized to the training split (``compare.auto.apply_auto``; the keys in
    ``overrides`` are kept); its ``AutoBudget`` is appended to ``auto_report`` when given."""
    check_budget(budget)
    tree: dict[str, Any] = budget_tree(budget)
    val_from_base = False
    if base_config is not None:
        path = Path(base_config)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping (data:, train:)")
        for section in ("data", "train"):
            if section in loaded:
                tree[section] = copy.deepcopy(loaded[section])
                val_from_base |= section == "data"
    if data is not None:
        tree["data"]["train"] = str(data)
        tree["data"]["synthetic"] = None
        if val is None and not val_from_base:  # the budget's val split belongs to its own data
            tree["data"]["val"] = str(data) if declares_split(data, "val") else None
    if val is not None:
        tree["data"]["val"] = str(val)
    tree["model"] = model_tree(detector, budget)
    if budget == "auto":  # also when --config replaced the train section
        tree["train"]["preset"] = "auto"
    apply_overrides(tree, list(overrides))
    tree["train"]["out"] = str(Path(out) / detector)
    cfg = config_from_dict(tree, source=f"compare {detector} ({budget} budget)")
    if cfg.data.train is None:
        raise ConfigError(
            f"the {budget} budget has no training data: pass --data TRAIN (COCO JSON, VOC / YOLO folder,"
            " data.yaml or CVAT export)"
        )
    if cfg.data.val is None:
        raise ConfigError(
            "compare evaluates every detector on one val split: pass --val VAL (any format --data takes)"
        )
    if cfg.train.preset == "auto":
        from anchorlab.compare.auto import apply_auto

        cfg.pin(override_keys(list(overrides)))
        budget_choice = apply_auto(cfg, _train_split(cfg))
        if auto_report is not None:
            auto_report.append(budget_choice)
    return cfg


def config_hash(cfg: Config) -> str:
    """Hash of the resolved config (without ``train.out`` and ``train.threads``, which do not change what is
    trained) and the size + mtime of the data JSONs."""
    tree = cfg.model_dump(mode="json")
    tree["train"].pop("out", None)
    tree["train"].pop("threads", None)
    files = {}
    for name in (cfg.data.train, cfg.data.val):
        path = Path(name) if name else None
        if path is not None and path.exists():  # a folder's mtime changes when files come or go
            stat = path.stat()
            files[name] = [stat.st_size if path.is_file() else None, stat.st_mtime_ns]
    blob = json.dumps({"config": tree, "files": files}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def json_safe(obj: Any) -> Any:
    """NaN and infinities -> None, numpy scalars -> Python numbers, recursively: strict JSON."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _reusable(detector: str, cfg: Config, out: Path, *, fresh: bool, console: Console) -> dict | None:
    """The finished run of ``detector`` in ``OUT/<detector>`` when its config hash is unchanged (and not
    ``fresh``), else None."""
    run_dir, digest = out / detector, config_hash(cfg)
    result_path = run_dir / "result.json"
    if not fresh and result_path.is_file():
        previous = json.loads(result_path.read_text())
        if previous.get("status") == "ok" and previous.get("config_hash") == digest:
            console.print(f"[dim]{detector}: finished run with the same config in {run_dir}, reused[/]")
            return {**previous, "run_dir": str(run_dir), "reused": True}
    return None


def _run_one(
    detector: str,
    cfg: Config,
    out: Path,
    *,
    console: Console,
    show_progress: bool,
    trained: dict[str, Any] | None = None,
    jobs: int = 1,
) -> dict[str, Any]:
    """Train (unless ``trained``, a ``parallel.train_worker`` result, has it done), evaluate and time one
    detector; never raises on its failure. ``jobs``: trainings that ran at once (recorded)."""
    from anchorlab.engine.predict import load_trained
    from anchorlab.engine.train import train

    run_dir = out / detector
    if trained is None:
        prepare_run_dir(run_dir)
    result: dict[str, Any] = {
        "detector": detector,
        "config_hash": config_hash(cfg),
        "run_dir": str(run_dir),
        "jobs": jobs,
        "train_threads": cfg.train.threads,
    }
    memory: dict[str, Any] = {"peak_memory_mb": None, "peak_memory_source": "not measured"}
    try:
        if trained is None:
            with PeakMemory(
                resolve_device(cfg.train.device), "compare process (in-process training)"
            ) as peak:
                summary = train(
                    cfg, exist_ok=True, evaluate=False, console=console, show_progress=show_progress
                )
            memory = peak.result()
        elif "error" in trained:
            summary = None
            write_text(run_dir / "error.txt", trained["traceback"])
            result.update(status="failed", error=trained["error"])
        else:
            summary = trained["summary"]
            memory = trained.get("memory", memory)
        if summary is not None:
            model, _, categories = load_trained(summary["checkpoint"], cfg.train.device)
            val_set = align_categories(load_split(cfg, "val"), categories, model=f"the {detector} checkpoint")
            metrics, detections = predict_and_score(model, cfg, val_set, console)
            write_json(run_dir / "detections.json", detections)
            write_json(run_dir / "metrics.json", json_safe(metrics))
            result.update(
                status="ok",
                error=None,
                metrics=metrics,
                iterations=summary["iterations"],
                train_time_s=summary["train_time_s"],
                train_images_per_s=summary["train_images_per_s"],
                final_losses=summary["final_losses"],
                **memory,
                **measure_speed(model, cfg, val_set),
            )
    except Exception as exc:  # one detector's failure must not stop the comparison
        write_text(run_dir / "error.txt", traceback.format_exc())
        result.update(status="failed", error=f"{type(exc).__name__}: {exc}")
    if result["status"] == "failed":
        console.print(f"[bold red]{detector} failed[/]: {result['error']} (traceback: {run_dir}/error.txt)")
    result = json_safe(result)
    write_json(run_dir / "result.json", result)
    return {**result, "reused": False}


def _assignment(cfg: Config, out: Path, console: Console) -> dict[str, Any]:
    """``assignment_report`` of the training split under ``cfg`` (cached in OUT/assignment.json)."""
    from anchorlab.report import assignment_report

    path, digest = out / "assignment.json", config_hash(cfg)
    if path.is_file():
        cached = json.loads(path.read_text())
        if cached.get("config_hash") == digest:
            return cached
    try:
        with console.status("assignment report of the training split"):
            train_set = load_split(cfg, "train")
            model = "the budget's retinanet model section"
            if cfg.model.fit_anchors:  # the anchor-based rows then show the anchors the runs trained with
                from anchorlab.design.fit import apply_fit, fit_priors

                apply_fit(cfg, fit_priors(cfg, train_set))
                model += ", anchors fitted to the data (--fit-anchors)"
            report = assignment_report(train_set, cfg)
        report = {"config_hash": digest, "model": model, **report}
    except Exception as exc:  # the report is a summary of the data: the trained runs stay valid
        console.print(f"[bold red]assignment report failed[/]: {type(exc).__name__}: {exc}")
        report = {"config_hash": None, "error": f"{type(exc).__name__}: {exc}"}
    report = json_safe(report)
    write_json(path, report)
    return report


def _budget_notes(budget: str, cfg: Config, auto: Any, console: Console) -> list[str]:
    """Print the auto budget's line, or warn when a fixed-size budget shrinks the user's images; returns
    the warnings (recorded in results.json and the report)."""
    from anchorlab.compare.auto import downscale_warning

    if auto is not None:
        console.print(auto.line(), soft_wrap=True)
        warnings = list(auto.warnings)
    elif cfg.data.synthetic is None and budget != "standard":
        note = downscale_warning(_train_split(cfg), cfg, budget)
        warnings = [note] if note else []
    else:
        warnings = []
    for warning in warnings:
        console.print(f"[yellow]warning:[/] {warning}", soft_wrap=True)
    return warnings


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
    )


def compare(
    detectors: Sequence[str],
    *,
    budget: str | None = None,
    data: str | Path | None = None,
    val: str | Path | None = None,
    out: str | Path = "runs/compare",
    fresh: bool = False,
    base_config: str | Path | None = None,
    overrides: Sequence[str] = (),
    threads: int | None = None,
    jobs: int = 1,
    console: Console | None = None,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Train + evaluate ``detectors`` side by side; writes OUT/results.json, OUT/report.md, OUT/report.html
    and the plots, prints the table, and returns the results dict (``runs[detector]`` per detector).

    ``threads`` sets ``torch.set_num_threads`` for the whole comparison, training included (it overrides
    every detector's ``train.threads``; restored after; None: each config's ``train.threads``); the count
    is recorded in ``results["environment"]["threads"]``.
    ``jobs`` > 1 trains that many detectors at once in spawned processes (``compare.parallel``), each with
    ``threads`` torch threads (default: the cores / jobs); evaluation and timing follow in this process,
    one detector at a time. Recorded as ``results["jobs"]`` and per run (train times then share the CPU).
    ``budget`` None: ``auto`` with ``data`` or ``base_config`` (sized to the data, one line printed),
    else ``quick``; a fixed-size budget that shrinks the user's images prints a warning with the factor.
    Raises ``ValueError`` for unknown detector names and ``ConfigError`` when no detector's config
    resolves (a bad ``--set`` or missing data); a single detector's failure is recorded, not raised.
    """
    from anchorlab.compare.report import print_table, write_report
    from anchorlab.models.build import DETECTORS

    console = console or make_console(stderr=True)
    detectors = list(dict.fromkeys(detectors))
    unknown = [d for d in detectors if d not in DETECTORS]
    if unknown or not detectors:
        raise ValueError(
            f"unknown detector {', '.join(map(repr, unknown)) or '(none given)'}; "
            f"available detectors: {', '.join(DETECTORS)}"
        )
    budget = budget or default_budget(data, base_config)
    check_budget(budget)
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    out = Path(out)
    kwargs = {"budget": budget, "data": data, "val": val, "base_config": base_config, "overrides": overrides}
    configs: dict[str, Config | ConfigError] = {}
    auto: list[Any] = []
    for det in detectors:
        try:
            configs[det] = resolve_config(det, out=out, auto_report=auto, **kwargs)
        except ConfigError as exc:
            configs[det] = exc
        else:
            if threads is not None:
                configs[det].train.threads = threads
    resolved = [c for c in configs.values() if isinstance(c, Config)]
    if not resolved:
        raise next(iter(configs.values()))  # type: ignore[misc]
    make_dir(out)
    ensure_synthetic(resolved[0])  # before hashing: the data files' mtimes are part of the hash
    warnings = _budget_notes(budget, resolved[0], auto[0] if auto else None, console)

    runs: dict[str, dict[str, Any]] = {}
    progress = _progress(console) if show_progress else None
    threads_before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    if progress:
        progress.start()
        task = progress.add_task("compare", total=len(detectors))
    try:
        reused = {
            det: r
            for det, cfg in configs.items()
            if isinstance(cfg, Config) and (r := _reusable(det, cfg, out, fresh=fresh, console=console))
        }
        to_train = [d for d, c in configs.items() if isinstance(c, Config) and d not in reused]
        workers = min(jobs, len(to_train))
        trained: dict[str, dict[str, Any]] = {}
        if workers > 1:
            chosen = {d: c for d, c in configs.items() if isinstance(c, Config) and d in to_train}
            trained = train_parallel(chosen, workers, threads=threads, console=console, progress=progress)
        for i, det in enumerate(detectors):
            if progress:
                progress.update(task, description=f"compare [{i + 1}/{len(detectors)}] {det}")
            cfg = configs[det]
            if isinstance(cfg, ConfigError):
                runs[det] = {"detector": det, "status": "failed", "error": f"ConfigError: {cfg}"}
            elif det in reused:
                runs[det] = reused[det]
            else:
                runs[det] = _run_one(
                    det,
                    cfg,
                    out,
                    console=console,
                    show_progress=show_progress,
                    trained=trained.get(det),
                    jobs=workers if det in trained else 1,
                )
            runs[det]["preset"] = "own" if has_preset(det) else "shared (no preset of its own)"
            if progress:
                progress.advance(task)
        if progress:
            progress.update(task, description="compare: report")
        shared = resolved[0]
        try:
            retina = resolve_config("retinanet", out=out, **kwargs)
            assignment = _assignment(retina, out, console)
        except ConfigError as exc:
            assignment = {"error": f"ConfigError: {exc}"}
        results: dict[str, Any] = {
            "budget": budget,
            "detectors": detectors,
            "jobs": jobs,
            "out": str(out),
            "data": {k: v for k, v in shared.data.model_dump(mode="json").items() if k in _DATA_KEYS},
            "shared": {
                "data": shared.data.model_dump(mode="json"),
                "train": {k: v for k, v in shared.train.model_dump(mode="json").items() if k != "out"},
            },
            "runs": runs,
            "auto": auto[0].to_dict() if auto else None,
            "warnings": warnings,
            "assignment": assignment,
            "environment": environment(),
            "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        results["files"] = {k: str(v) for k, v in write_report(results, out).items()}
        results = json_safe(results)
        write_json(out / "results.json", results)
    finally:
        torch.set_num_threads(threads_before)
        if progress:
            progress.stop()
    print_table(results, console)
    return results
