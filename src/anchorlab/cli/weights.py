"""Command group: weights (import torchvision's COCO-trained detectors as anchorlab weights files)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from anchorlab.cli.app import app
from anchorlab.cli.evaluate import fail
from anchorlab.console import make_console

console = make_console(stderr=True)
weights_app = typer.Typer(
    help="Pretrained weights: import torchvision's COCO-trained detectors.", no_args_is_help=True
)
app.add_typer(weights_app, name="weights")


@weights_app.command("import")
def import_(
    source: str = typer.Argument(
        ..., help="torchvision:<builder name>, e.g. torchvision:retinanet_resnet50_fpn."
    ),
    out: Path = typer.Option(..., "--out", help="The anchorlab weights file to write (.pt)."),
    weights: Path | None = typer.Option(
        None, "--weights", help="A local torchvision state dict (.pth) instead of the published file."
    ),
    force: bool = typer.Option(False, "--force", help="Overwrite --out if it exists."),
) -> None:
    """Convert a torchvision detector into an anchorlab weights file (config, COCO class names and ids).

    Without --weights the published COCO weights come from torch's hub cache ($TORCH_HOME/hub/checkpoints),
    downloaded and checksum-verified on first use. The file works with predict, eval, export and as
    model.init_from for fine-tuning (docs/finetune.md).

    Example: anchorlab weights import torchvision:retinanet_resnet50_fpn --out retinanet_r50_coco.pt
    """
    from anchorlab.engine.checkpoint import CheckpointError, save_checkpoint
    from anchorlab.models.hub import WeightsDownloadError
    from anchorlab.models.pretrained import TorchvisionImportError, import_torchvision

    kind, _, name = source.partition(":")
    if kind != "torchvision" or not name:
        fail(f"source {source!r} must look like torchvision:<name> (e.g. torchvision:retinanet_resnet50_fpn)")
    if out.exists() and not force:
        fail(f"{out} exists; pass --force to overwrite it")
    try:
        state = import_torchvision(name, weights)
        save_checkpoint(out, state)
    except (TorchvisionImportError, WeightsDownloadError, CheckpointError, OSError, ValueError) as exc:
        fail(str(exc))
    cfg = state["config"]["model"]
    console.print(
        f"wrote {out}: {cfg['detector']} {cfg['backbone']['name']} from torchvision:{name}, "
        f"{len(state['categories'])} COCO classes, resize {state['config']['data']['min_size']}/"
        f"{state['config']['data']['max_size']}; use it with anchorlab predict / eval / export, or "
        f"fine-tune with model.init_from: {out}"
    )


@weights_app.command("list")
def list_() -> None:
    """The torchvision detectors `weights import` knows, and why some cannot be imported."""
    from anchorlab.models.pretrained import TORCHVISION_MODELS

    table = Table("source", "anchorlab detector", "status")
    for name, spec in TORCHVISION_MODELS.items():
        status = "importable (exact parity)" if spec.reason is None else f"not importable: {spec.reason}"
        table.add_row(f"torchvision:{name}", spec.config.get("detector", "-"), status)
    make_console().print(table)
