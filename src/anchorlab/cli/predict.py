"""Command: predict (the same path as ``anchorlab.load(...).predict(...)``)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from anchorlab.cli.app import app
from anchorlab.cli.evaluate import fail
from anchorlab.console import make_console

console = make_console(stderr=True)

EXAMPLES = """Examples:

  anchorlab predict runs/quick data/synth/images --out runs/predict --save-json --save-txt

  anchorlab predict runs/quick/best.pt 'photos/**/*.jpg' clip.mp4 --conf 0.4 --no-draw --save-txt

  anchorlab predict runs/quick val_images --save-json --gt val.json --out runs/pred
  && anchorlab eval --gt val.json --detections runs/pred/detections.json
"""


def _collisions(inputs: list[str], save_txt: bool) -> None:
    """Fail before any work when two inputs would write one ``labels/*.txt`` (``a.jpg`` and ``a.png``)."""
    from anchorlab.engine.sources import VIDEO_SUFFIXES, expand_files

    if not save_txt:
        return
    seen: dict[Path, Path] = {}
    for part in expand_files(inputs):
        for path, rel in part:
            if path.suffix.lower() in VIDEO_SUFFIXES:
                continue
            txt = rel.with_suffix(".txt")
            if txt in seen:
                fail(f"{seen[txt]} and {path} would both write labels/{txt.as_posix()}; predict them apart")
            seen[txt] = path


def _count(inputs: list[str]) -> int | None:
    """Number of images to predict on (``None`` with a video: its frame count is not known up front)."""
    from anchorlab.engine.sources import VIDEO_SUFFIXES, expand_files

    files = [path for part in expand_files(inputs) for path, _ in part]
    return None if any(p.suffix.lower() in VIDEO_SUFFIXES for p in files) else len(files)


@app.command(epilog=EXAMPLES)
def predict(
    checkpoint: Path = typer.Argument(..., help="best.pt, last.pt, checkpoint.pt or a run folder."),
    inputs: list[str] = typer.Argument(..., help="Image files, folders (recursive), glob patterns, videos."),
    out: Path = typer.Option(Path("runs/predict"), "--out", help="Output folder."),
    conf: float = typer.Option(
        0.25, "--conf", "--score-thresh", help="Keep detections scoring at least this."
    ),
    iou: float | None = typer.Option(None, "--iou", help="NMS IoU (default: the checkpoint's config)."),
    max_det: int | None = typer.Option(None, "--max-det", help="Detections per image (default: config's)."),
    batch: int = typer.Option(8, "--batch", min=1, help="Images per forward pass."),
    no_draw: bool = typer.Option(False, "--no-draw", help="Do not write annotated images to OUT/images/."),
    save_txt: bool = typer.Option(
        False, "--save-txt", help="YOLO txt per image in OUT/labels/ and OUT/classes.txt (label cx cy w h)."
    ),
    save_json: bool = typer.Option(
        False, "--save-json", help="OUT/detections.json (COCO results) and OUT/images.json (id -> file)."
    ),
    gt: Path | None = typer.Option(
        None, "--gt", help="COCO file whose image ids --save-json uses (matched by path, then file name)."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Write into an OUT that is not empty."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:1, ..."),
) -> None:
    """Detect objects in images and videos: annotated copies in OUT/images/ (same relative layout as the
    inputs), and with --save-txt / --save-json YOLO labels and COCO results.

    Without --gt, --save-json numbers the images 1, 2, ... in input order (folders sorted); OUT/images.json
    maps each id to its file. A video's frames go to OUT/images/<video>.frames/frame_000000.png, ...
    Unreadable files are reported and skipped (exit status 1 at the end).
    """
    from anchorlab.data.core import DataError
    from anchorlab.engine.checkpoint import CheckpointError
    from anchorlab.engine.predict import load_detector, predict_to_folder
    from anchorlab.engine.sources import SourceError

    if gt is not None and not save_json:
        fail("--gt gives the image ids of --save-json: add --save-json")
    if out.exists() and any(out.iterdir()) and not overwrite:
        fail(f"{out} exists and is not empty; choose another --out or pass --overwrite")
    skipped: list[str] = []

    def report(item, exc) -> None:
        skipped.append(str(item.path))
        console.print(f"[yellow]warning:[/] skipped {exc}", highlight=False, soft_wrap=True)

    try:
        _collisions(inputs, save_txt)
        total = _count(inputs)
        model = load_detector(checkpoint, device)
        console.print(
            f"model {model.checkpoint_path} ({model.config.model.detector}, {len(model.names)} classes)"
        )
        columns = [TextColumn("predict"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
        with Progress(*columns, console=console, transient=True) as progress:
            task = progress.add_task("predict", total=total)
            summary = predict_to_folder(
                model, inputs, out, conf=conf, iou=iou, max_det=max_det, batch=batch, draw=not no_draw,
                save_txt=save_txt, save_json=save_json, gt=gt, on_error=report,
                on_image=lambda det: progress.advance(task),
            )  # fmt: skip
    except (CheckpointError, SourceError, DataError, OSError, ValueError) as exc:
        fail(str(exc))
    if summary["unmatched"]:
        first = ", ".join(summary["unmatched"][:3])
        console.print(
            f"[yellow]warning:[/] {len(summary['unmatched'])} image(s) are not in {gt} and were left out of "
            f"detections.json: {first}{', ...' if len(summary['unmatched']) > 3 else ''}",
            soft_wrap=True,
        )
    console.print(f"{summary['images']} images -> {summary['out']}")
    if skipped:
        fail(f"{len(skipped)} file(s) could not be read and were skipped (see the warnings above)")
