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
from anchorlab.cli.output import make_console, plain

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

  anchorlab eval configs/retinanet_quick.yaml -c last.pt --nms-recall --nms-recall-protocol anchorlab

  anchorlab eval CONFIG -c last.pt --split test --results dets.json   # data.test: image-info JSON; dets.zip

  anchorlab eval CONFIG -c last.pt --set model.inference.score_thresh=0.3

Tables show percentages, --json fractions; n/a (-1 in JSON) means the subset has no ground truth.
"""


def fail(message: str, code: int = 1) -> NoReturn:
    """Print ``Error: message`` on stderr and exit with ``code`` (no traceback); ``message`` is plain
    text (brackets in paths or ``anchorlab[extra]`` are printed, not read as markup)."""
    make_console(stderr=True).print(f"[bold red]Error:[/] {escape(message)}", highlight=False)
    raise typer.Exit(code)


def _pct(value: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value < 0:
        return "n/a"
    return f"{100 * value:.1f}"


def print_metrics(metrics: Mapping[str, Any], title: str, console: Console | None = None) -> None:
    """Rich tables of ``coco_metrics`` output: the 12 summary numbers, then per-category AP if present."""
    console = console or make_console()
    table = Table(title=plain(title), title_justify="left")
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
            cats.add_row(plain(name), _pct(ap), _pct(ap50.get(name, -1.0)))
        console.print(cats)


def print_nms_recall(result: Mapping[str, Any], title: str, console: Console | None = None) -> None:
    """Rich table of ``nms_recall`` output: recall before and after NMS and their ratio per IoU threshold."""
    console = console or make_console()
    kind = "class-aware" if result.get("class_aware") else "class-agnostic"
    protocol = f"{result['protocol']} protocol, " if result.get("protocol") else ""
    sign = ">" if result.get("strict") else ">="
    table = Table(
        title=plain(f"{title} ({protocol}{kind}, {result.get('num_objects', '?')} objects, IoU {sign} t)"),
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
    if result.get("protocol") == "freeanchor":  # the authors' own summary lines, 3 decimals
        lo, hi = result["iou_thresholds"][0], result["iou_thresholds"][-1]
        console.print(f"NMS Recall (NR) [{lo:g}:{hi:g}] = {_ratio3(result['mean_ratio'])}", highlight=False)
        for t, ratio in result.get("reported", {}).items():
            console.print(f"NMS Recall (NR) [IoU > {t}] = {_ratio3(ratio)}", highlight=False)


def _ratio3(value: float | None) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


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


def _split_overrides(overrides: list[str]) -> tuple[list[str], list[str]]:
    """``(model.inference.* overrides, the rest)``; any other ``model.*`` key is refused: the model (its
    architecture and weights) comes from the checkpoint."""
    inference, rest = [], []
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        if key.startswith("model.inference."):
            inference.append(item)
        elif key == "model" or key.startswith("model."):
            fail(
                f"--set {item}: eval takes the model from the checkpoint; only model.inference.* "
                "(score_thresh, topk_per_level, nms_iou, max_detections) can be changed here",
                2,
            )
        else:
            rest.append(item)
    return inference, rest


def _load_for_eval(config: Path, checkpoint: Path | None, overrides: list[str]):
    """``(cfg, model, categories, checkpoint)``: the config with its non-model overrides, the model and
    model config of the checkpoint with the ``model.inference.*`` overrides applied to both."""
    from anchorlab.config import apply_overrides, config_from_dict, load_config
    from anchorlab.engine.checkpoint import trained_weights
    from anchorlab.engine.predict import load_trained

    inference, rest = _split_overrides(overrides)
    cfg = load_config(config, rest + inference)  # validates every override, inference included
    checkpoint = checkpoint or trained_weights(cfg.train.out)
    model, trained_cfg, categories = load_trained(checkpoint, cfg.train.device)
    tree = apply_overrides({"model": trained_cfg.model.model_dump(mode="json")}, inference)
    cfg.model = config_from_dict(tree, f"{checkpoint} + --set").model
    model.inference.update(cfg.model.inference.model_dump())
    return cfg, model, categories, checkpoint


def _check_split(labelled: bool, split_file: str, options: dict[str, Any]) -> None:
    """A split without annotations (an image-info file) can only be predicted, not scored."""
    if options["nms_recall"] and not labelled:
        raise ValueError(f"{split_file} holds no annotations: NMS recall needs ground truth")
    if not labelled and options["results"] is None:
        raise ValueError(
            f"{split_file} holds no annotations: nothing to score; write the detections with "
            "--results OUT.json (and submit the zip to the evaluation server)"
        )


def _score_split(
    model: Any, cfg: Any, dataset: Any, labelled: bool, options: dict[str, Any], overrides: list[str]
):
    """``(metrics, results, inference settings used)``: one prediction pass (with the benchmark's score
    threshold and cap when writing ``--results``, unless ``--set`` names them), COCO metrics when the
    split is labelled, NMS recall under the chosen protocol when asked."""
    from anchorlab.data.coco import coco_dict
    from anchorlab.engine.evaluate import inference_settings, nms_recall_pass, predict_dataset
    from anchorlab.evaluation import coco_metrics
    from anchorlab.evaluation.submission import SUBMISSION_INFERENCE

    explicit = {o.split("=", 1)[0].strip().removeprefix("model.inference.") for o in overrides}
    settings = {k: v for k, v in SUBMISSION_INFERENCE.items() if k not in explicit}
    with inference_settings(model, settings if options["results"] is not None else {}):
        used = dict(model.inference)
        results, _ = predict_dataset(model, cfg, dataset)
    metrics: dict[str, Any] = coco_metrics(coco_dict(dataset), results) if labelled else {}
    if options["nms_recall"]:
        metrics["nms_recall"] = nms_recall_pass(model, cfg, dataset, options["protocol"])
    metrics["num_detections"] = len(results)
    return metrics, results, used


def _results_targets(config: Path, options: dict[str, Any]) -> tuple[Path, str | None]:
    """``(results JSON, zip member name or None)``; refuses to replace existing files without --force."""
    from anchorlab.evaluation.submission import submission_name

    path: Path = options["results"]
    zip_as = None
    if options["split"] == "test":
        zip_as = submission_name(options["testset"], options["alg"] or config.stem)
    for existing in (path, path.with_suffix(".zip") if zip_as else None):
        if existing is not None and existing.exists() and not options["force"]:
            fail(f"{existing} exists; pass --force to replace it")
    return path, zip_as


def _print_model_report(metrics: dict[str, Any], title: str, num_images: int, labelled: bool) -> None:
    console = Console()
    if labelled:
        print_metrics(metrics, title, console)
    if "nms_recall" in metrics:
        print_nms_recall(metrics["nms_recall"], "NMS recall", console)
    if "results_files" in metrics:
        used = metrics["results_inference"]
        console.print(
            f"wrote {metrics['num_detections']} detections on {metrics['results_images']} of {num_images} "
            f"images (score > {used['score_thresh']}, at most {used['max_detections']} per image) to "
            + " and ".join(metrics["results_files"]),
            highlight=False,
        )
    if "submission_member" in metrics:
        console.print(
            f"upload {metrics['results_files'][-1]} (holding {metrics['submission_member']}) "
            "to the COCO evaluation server",
            highlight=False,
        )


def _eval_model(
    config: Path,
    checkpoint: Path | None,
    overrides: list[str],
    options: dict[str, Any],
    as_json: bool,
    output: Path | None,
) -> None:
    """Evaluate a trained model (the checkpoint's model config) on the config's ``data.<split>``; write
    its detections with ``--results`` (a server-ready zip for the test split)."""
    from anchorlab.config import ConfigError
    from anchorlab.data.categories import align_categories
    from anchorlab.data.core import DataError
    from anchorlab.engine.checkpoint import CheckpointError
    from anchorlab.engine.common import load_split
    from anchorlab.engine.evaluate import has_ground_truth
    from anchorlab.evaluation.submission import write_results
    from anchorlab.io import OutputError

    try:
        targets = _results_targets(config, options) if options["results"] is not None else None
        cfg, model, categories, checkpoint = _load_for_eval(config, checkpoint, overrides)
        split_file = str(getattr(cfg.data, options["split"]))
        dataset = load_split(cfg, options["split"])
        dataset = align_categories(dataset, categories, model=f"checkpoint {checkpoint}")
        labelled = has_ground_truth(dataset)
        _check_split(labelled, split_file, options)
        metrics, results, used = _score_split(model, cfg, dataset, labelled, options, overrides)
        if targets is not None:
            path, zip_as = targets
            metrics["results_files"] = [str(p) for p in write_results(results, path, zip_as=zip_as)]
            metrics["results_inference"] = used
            metrics["results_images"] = len({r["image_id"] for r in results})
            if zip_as:
                metrics["submission_member"] = zip_as
    except (ConfigError, DataError, CheckpointError, OSError, OutputError, ValueError) as err:
        fail(str(err))
    metrics = _json_safe(metrics)
    text = json.dumps(metrics, indent=2)
    if output is not None:
        _write_output(output, text + "\n")
    if as_json:
        typer.echo(text)
        return
    title = f"{cfg.model.detector} on {split_file} ({checkpoint})"
    _print_model_report(metrics, title, len(dataset.images), labelled)


def _ground_truth(gt: Path) -> Path | dict[str, Any]:
    """A COCO JSON as is; any other format ``anchorlab data check`` reads, loaded and as a COCO dict."""
    if gt.suffix.lower() == ".json":
        return gt
    from anchorlab.data import load_dataset
    from anchorlab.data.coco import coco_dict

    return coco_dict(load_dataset(gt))


def _eval_files(gt: Path, detections: Path, as_json: bool, output: Path | None) -> None:
    from anchorlab.evaluation.coco import coco_metrics

    try:
        metrics = coco_metrics(_ground_truth(gt), detections)
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
        None, help="Training config YAML: evaluate a trained model (with --checkpoint) on data.<--split>."
    ),
    gt: Path | None = typer.Option(
        None, "--gt", help="Ground truth (results-file mode): COCO JSON, VOC / YOLO folder, data.yaml, CVAT."
    ),
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
    protocol: str = typer.Option(
        "freeanchor",
        "--nms-recall-protocol",
        help="freeanchor: the FreeAnchor authors' eval_NR (class-agnostic, IoU > 0.5..0.9, every box "
        "scoring > 0.05, no caps); anchorlab: the model's inference settings, class-aware, IoU >= 0.50:0.95.",
    ),
    split: str = typer.Option("val", "--split", help="Split of the config to evaluate: val, test or train."),
    results: Path | None = typer.Option(
        None,
        "--results",
        help="Write the detections as a COCO results JSON (score > 0.05, 100 per image unless --set "
        "model.inference.*); with --split test also OUT.zip for the evaluation server.",
    ),
    alg: str | None = typer.Option(
        None, "--alg", help="Method name in the submission's file name (default: the config's name)."
    ),
    testset: str = typer.Option(
        "test-dev2017",
        "--testset",
        help="Server split of the submission: test-dev2017 or test-challenge2017.",
    ),
    force: bool = typer.Option(False, "--force", help="Replace an existing --results file."),
    as_json: bool = typer.Option(False, "--json", help="Print the metrics as JSON instead of tables."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Also write the metrics JSON here."),
) -> None:
    """COCO AP/AR of detections: from a results JSON (--gt, --detections) or a trained model (CONFIG)."""
    if config is not None:
        if gt is not None or detections is not None:
            fail("give either CONFIG (model mode) or --gt and --detections (results-file mode), not both")
        from anchorlab.evaluation.nms_recall import PROTOCOLS
        from anchorlab.evaluation.submission import TESTSETS

        if protocol not in PROTOCOLS:
            fail(f"--nms-recall-protocol {protocol!r} is not one of {', '.join(PROTOCOLS)}", 2)
        if split not in ("val", "test", "train"):
            fail(f"--split {split!r} is not one of val, test, train", 2)
        if testset not in TESTSETS:
            fail(f"--testset {testset!r} is not one of {', '.join(TESTSETS)}", 2)
        options = {
            "split": split,
            "results": results,
            "nms_recall": nms_recall,
            "protocol": protocol,
            "alg": alg,
            "testset": testset,
            "force": force,
        }
        _eval_model(config, checkpoint, list(overrides or []), options, as_json, output)
        return
    if checkpoint is not None or nms_recall or overrides or results is not None or split != "val":
        fail("--checkpoint, --set, --split, --results and --nms-recall need a CONFIG (model mode)")
    if gt is None or detections is None:
        missing = " and ".join(n for n, v in (("--gt", gt), ("--detections", detections)) if v is None)
        fail(f"missing {missing}: run `anchorlab eval --gt GT.json --detections DETS.json` or see --help")
    _eval_files(gt, detections, as_json, output)
