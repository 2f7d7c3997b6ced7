"""Command: export (a trained checkpoint -> ONNX, optionally checked against PyTorch with onnxruntime)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import typer

from anchorlab.cli.app import app
from anchorlab.cli.evaluate import fail
from anchorlab.cli.output import make_console

console = make_console(stderr=True)


@app.command()
def export(
    checkpoint: Path = typer.Argument(..., help="best.pt or last.pt written by anchorlab train."),
    out: Path = typer.Option(Path("model.onnx"), "--out", help="The .onnx file to write."),
    mode: str = typer.Option(
        "full", "--mode", help="full: detections (NMS in the graph); raw: per-prior boxes and scores."
    ),
    opset: int = typer.Option(18, "--opset", help="ONNX opset version."),
    size: int = typer.Option(
        0, "--size", help="Side of the square example input (a multiple of the model's stride); 0: auto."
    ),
    static: bool = typer.Option(
        False, "--static", help="Fix the input to one image of --size x --size (no dynamic axes)."
    ),
    check: bool = typer.Option(
        False, "--check", help="Run onnxruntime on a random image and compare with the PyTorch model."
    ),
    device: str = typer.Option("auto", "--device", help="Where to trace the model: auto, cpu, cuda, ..."),
) -> None:
    """Export a trained detector to ONNX (input: float images [B, 3, H, W] in 0..1; see docs/export.md).

    Example: anchorlab export runs/retinanet_r18_fpn_quick/best.pt --out retinanet.onnx --check
    """
    from anchorlab.engine.checkpoint import CheckpointError
    from anchorlab.engine.predict import load_trained
    from anchorlab.export import EXPORT_MODES, ExportError, export_onnx

    if mode not in EXPORT_MODES:
        fail(f"--mode {mode!r} is not one of {', '.join(EXPORT_MODES)}")
    if check and importlib.util.find_spec("onnxruntime") is None:
        fail('--check needs onnxruntime: pip install "anchorlab[export]"')
    try:
        model, cfg, categories = load_trained(checkpoint, device)
        div = model.size_divisible
        side = size or max(2 * div, -(-_config_side(cfg) // div) * div)
        path = export_onnx(
            model,
            out,
            mode=mode,
            opset=opset,
            image_size=(side, side),
            batch_size=1 if static else 2,  # a --static graph takes one image of side x side
            dynamic=not static,
            categories=categories,
        )
    except (CheckpointError, ExportError, OSError, ValueError) as exc:
        fail(str(exc))
    console.print(
        f"exported {model.name} ({mode}) to {path}: input images [B, 3, H, W] in 0..1, "
        f"H and W multiples of {div}" + ("" if static else " (dynamic batch and size)")
    )
    if check:
        from anchorlab.export import check_onnx

        report = check_onnx(model, path, image_size=(side, side))
        console.print(
            f"onnxruntime vs PyTorch on a random {side}x{side} image: {report['detections']} detections, "
            f"same count/labels: {report['same']}, max box diff {report['max_box_diff']:.2e} px, "
            f"max score diff {report['max_score_diff']:.2e}"
        )
        if not report["same"]:
            fail("onnxruntime and PyTorch disagree (see above)")


def _config_side(cfg) -> int:
    """The training/eval image side from ``data.min_size`` (the smallest useful example size)."""
    min_size = cfg.data.min_size
    return int(min_size if isinstance(min_size, int) else max(min_size))
