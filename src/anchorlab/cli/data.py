"""Commands: ``anchorlab data synth | check | convert``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from anchorlab.cli.app import app
from anchorlab.cli.output import make_console, plain
from anchorlab.data.convert import FORMATS, detect_format, load_dataset
from anchorlab.data.core import Action, DataError, DetectionSet, ProblemReport
from anchorlab.data.image import DEFAULT_MAX_PIXELS
from anchorlab.data.synthetic import make_synthetic
from anchorlab.data.validate import IMAGE_PROGRESS

data_app = typer.Typer(
    help="Create, check and convert detection datasets (COCO JSON, Pascal VOC XML, YOLO txt, CVAT YOLO 1.1).",
    no_args_is_help=True,
)
app.add_typer(data_app, name="data")


class _Consoles:
    """Created on first use, so the terminal width (COLUMNS) is read when a command runs, not at import;
    not a terminal (a pipe, a file, a CI log): unlimited width, nothing wrapped or cropped."""

    @property
    def out(self) -> Console:
        return make_console()

    @property
    def err(self) -> Console:
        return make_console(stderr=True)


_c = _Consoles()

FORMAT_HELP = f"Input format: {'|'.join(FORMATS)}."
POLICY_HELP = (
    "Override a problem kind's action, KIND=error|clip|drop (repeatable), e.g. image_missing=drop;"
    " image_outside=allow opens image paths that leave the dataset folder."
)
MAX_PIXELS_HELP = "Pixel limit of one image (width x height); larger ones are image_too_large."


def _fail(message: str, code: int = 2) -> typer.Exit:
    _c.err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def _policy(items: list[str] | None) -> dict[str, str]:
    policy = {}
    for item in items or []:
        kind, sep, action = item.partition("=")
        if not sep:
            raise _fail(f"--policy takes KIND=ACTION, got {item!r}")
        policy[kind.strip()] = action.strip()
    return policy


def _load(path: Path, fmt: str, report: ProblemReport, **kwargs) -> DetectionSet | None:
    """Load with every problem collected in ``report`` (a progress bar while images are checked);
    ``None`` if errors remain."""
    columns = (TextColumn("checking images"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    try:
        with Progress(*columns, console=_c.err, transient=True) as bar:
            task = bar.add_task("images", total=None)
            token = IMAGE_PROGRESS.set(lambda done, total: bar.update(task, completed=done, total=total))
            try:
                return load_dataset(path, fmt, report=report, **kwargs)  # type: ignore[arg-type]
            finally:
                IMAGE_PROGRESS.reset(token)
    except DataError:
        return None
    except (OSError, ValueError) as exc:
        raise _fail(str(exc)) from None
    except Exception as exc:  # a loader bug must still end in one line naming the input
        raise _fail(f"{path}: {type(exc).__name__}: {exc}", 1) from None


def _short(file: str) -> str:
    """``file`` relative to the working directory when that is shorter."""
    try:
        rel = os.path.relpath(file)
    except ValueError:
        return file
    return rel if len(rel) < len(file) else file


def _totals(ds: DetectionSet) -> str:
    objects = sum(r.num_objects for r in ds.images)
    crowd = sum(len(r.crowd) for r in ds.images)
    return f"{len(ds)} images, {objects} objects, {crowd} crowd/ignore regions, {ds.num_classes} categories"


@data_app.command()
def synth(
    out_dir: Path = typer.Argument(
        ..., metavar="OUT", help="Folder to write images/, train.json, val.json to."
    ),
    images: int = typer.Option(200, "--images", "-n", help="Number of images (train + val)."),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed gives identical files."),
    size: int = typer.Option(128, "--size", help="Image side in pixels."),
    classes: int = typer.Option(3, "--classes", help="Number of shape classes (1..8)."),
    min_size: int = typer.Option(16, "--min-size", help="Smallest object side in pixels."),
    max_size: int = typer.Option(64, "--max-size", help="Largest object side in pixels."),
    objects_min: int = typer.Option(1, "--objects-min", help="Fewest objects per image."),
    objects_max: int = typer.Option(4, "--objects-max", help="Most objects per image."),
    crowded: bool = typer.Option(False, "--crowded", help="Put 2-3 overlapping object centres in one cell."),
    val_fraction: float = typer.Option(0.25, "--val-fraction", help="Share of images in val.json."),
    val_images: int | None = typer.Option(None, "--val-images", help="Exact number of val images."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace files of an earlier synth in OUT."),
) -> None:
    """Write a synthetic shapes dataset: PNG images + train.json / val.json (COCO, category ids 10, 20, ...).

    Example: anchorlab data synth data/synth --images 200 --seed 0
    """
    columns = (TextColumn("synth"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=_c.err, transient=True) as bar:
        task = bar.add_task("synth", total=images)
        try:
            paths = make_synthetic(
                out_dir, images=images, seed=seed, size=size, classes=classes, min_object=min_size,
                max_object=max_size, objects=(objects_min, objects_max), crowded=crowded,
                val_fraction=val_fraction, val_images=val_images,
                progress=lambda i: bar.update(task, completed=i), overwrite=overwrite,
            )  # fmt: skip
        except FileExistsError as exc:
            raise _fail(f"{exc} (--overwrite)") from None
        except ValueError as exc:
            raise _fail(str(exc)) from None
    _c.out.print(
        plain(f"wrote {images} images to {paths.images}\n  train: {paths.train}\n  val:   {paths.val}")
    )


@data_app.command()
def check(
    path: Path = typer.Argument(..., help="COCO .json, VOC folder, YOLO folder or data.yaml, CVAT export."),
    fmt: str = typer.Option("auto", "--format", "-f", help=FORMAT_HELP),
    images_dir: Path | None = typer.Option(None, "--images-dir", help="Image folder (COCO, VOC)."),
    classes: Path | None = typer.Option(
        None, "--classes", help="Class list file, one name a line (VOC, YOLO)."
    ),
    split: str | None = typer.Option(
        None, "--split", help="VOC ImageSets/Main split, data.yaml or obj.data key."
    ),
    policy: list[str] | None = typer.Option(None, "--policy", help=POLICY_HELP),
    strict: bool = typer.Option(False, "--strict", help="Fail on any problem, also clipped or dropped ones."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON instead of a table."),
    no_images: bool = typer.Option(False, "--no-images", help="Only check that image files exist (fastest)."),
    headers_only: bool = typer.Option(
        False, "--headers-only", help="Read image headers (sizes) but do not decode the pixels (faster)."
    ),
    max_pixels: int = typer.Option(DEFAULT_MAX_PIXELS, "--max-pixels", min=1, help=MAX_PIXELS_HELP),
    limit: int = typer.Option(50, "--limit", help="Rows of the problem table to show (all with --json)."),
) -> None:
    """Validate a dataset: print every problem (file, image, annotation id) and a summary.

    Every image is decoded (as training will: EXIF orientation applied) unless --headers-only or
    --no-images: truncated or malformed files are image_unreadable, oversized ones image_too_large.

    Exits 1 when errors remain (with --strict: when any problem was found).

    Example: anchorlab data check data/synth/train.json --policy image_missing=drop
    """
    report = ProblemReport()
    kwargs = {"images_dir": images_dir, "classes": classes, "split": split, "policy": _policy(policy)}
    kwargs["check_images"] = "exists" if no_images else "header" if headers_only else "decode"
    kwargs["max_pixels"] = max_pixels
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    ds = _load(path, fmt, report, **kwargs)
    fmt_found = fmt if fmt != "auto" else detect_format(path)[0]
    failed = ds is None or (strict and bool(report.problems))
    counts = report.counts()
    if as_json:
        doc = {
            "path": str(path),
            "format": fmt_found,
            "ok": not failed,
            "images": len(ds) if ds else None,
            "objects": sum(r.num_objects for r in ds.images) if ds else None,
            "crowd": sum(len(r.crowd) for r in ds.images) if ds else None,
            "counts": {f"{a}:{k}": n for (a, k), n in sorted(counts.items())},
            "problems": [
                {"kind": p.kind, "action": p.action.value, "file": p.file, "image": p.image,
                 "annotation": p.annotation, "line": p.line, "column": p.column, "message": p.message}
                for p in report.problems
            ],
        }  # fmt: skip
        print(json.dumps(doc, indent=2))
        raise typer.Exit(1 if failed else 0)
    if report.problems:
        table = Table(title=plain(f"{len(report.problems)} problem(s) in {path}"))
        narrow = _c.out.is_terminal  # elsewhere the width is unlimited: no column is folded
        table.add_column("kind", no_wrap=True)
        table.add_column("action", no_wrap=True)
        table.add_column("file", overflow="fold", max_width=40 if narrow else None)
        table.add_column("image", overflow="fold", max_width=24 if narrow else None)
        table.add_column("ann", no_wrap=True)
        table.add_column("message", overflow="fold", ratio=1 if narrow else None, min_width=24)
        colour = {Action.ERROR: "red", Action.CLIP: "yellow", Action.DROP: "magenta", Action.ALLOW: "green"}
        for p in report.problems[:limit]:
            where = _short(p.file) + (f":{p.line}" if p.line is not None else "")
            where += f":{p.column}" if p.column is not None else ""
            image = "" if p.image is None else str(p.image)
            ann = "" if p.annotation is None else str(p.annotation)
            act = f"[{colour[p.action]}]{p.action.value}[/]"
            table.add_row(p.kind, act, plain(where), plain(image), ann, plain(p.message))
        _c.out.print(table)
        if len(report.problems) > limit:
            _c.out.print(f"... {len(report.problems) - limit} more (--limit N or --json shows them)")
    summary = Table(title="summary", show_header=True)
    for col in ("action", "kind", "count"):
        summary.add_column(col)
    for (action, kind), n in sorted(counts.items()):
        summary.add_row(action, kind, str(n))
    if counts:
        _c.out.print(summary)
    loaded = _totals(ds) if ds is not None else "nothing loaded"
    errors = len(report.errors)
    fixed = len(report.problems) - errors
    _c.out.print(plain(f"{fmt_found} {path}: {loaded}; {errors} error(s), {fixed} fixed (clip/drop)"))
    if failed:
        reason = f"{errors} error(s) remain" if ds is None else "problems found (--strict)"
        raise _fail(reason, 1)
    _c.out.print("[green]ok[/]")


@data_app.command()
def convert(
    src: Path = typer.Argument(..., help="COCO .json, VOC folder, YOLO folder or data.yaml, CVAT export."),
    dst: Path = typer.Argument(..., metavar="OUT.json", help="COCO JSON to write."),
    fmt: str = typer.Option("auto", "--format", "-f", help=FORMAT_HELP),
    images_dir: Path | None = typer.Option(None, "--images-dir", help="Image folder (COCO, VOC)."),
    classes: Path | None = typer.Option(
        None, "--classes", help="Class list file, one name a line (VOC, YOLO)."
    ),
    split: str | None = typer.Option(
        None, "--split", help="VOC ImageSets/Main split, data.yaml or obj.data key."
    ),
    policy: list[str] | None = typer.Option(None, "--policy", help=POLICY_HELP),
    images_root: Path | None = typer.Option(
        None, "--images-root", help="file_name relative to (default: OUT's folder)."
    ),
) -> None:
    """Convert VOC or YOLO (or COCO) annotations to one COCO JSON, validating on the way.

    Example: anchorlab data convert VOCdevkit/VOC2012 voc_train.json --split train
    """
    from anchorlab.data.coco import default_images_root, write_coco

    report = ProblemReport()
    kwargs = {"images_dir": images_dir, "classes": classes, "split": split, "policy": _policy(policy)}
    ds = _load(src, fmt, report, **{k: v for k, v in kwargs.items() if v is not None})
    if ds is None:
        for p in report.errors[:20]:
            _c.err.print(f"  - {p}", highlight=False, markup=False)
        raise _fail(f"{src}: {len(report.errors)} error(s) remain; nothing written (see --policy)", 1)
    try:
        write_coco(ds, dst, images_root=images_root)
    except OSError as exc:
        raise _fail(str(exc), 1) from None
    _c.out.print(plain(f"wrote {dst}: {_totals(ds)}"))
    images_root = images_root or default_images_root(ds, dst)
    if Path(os.path.abspath(images_root)) != Path(os.path.abspath(dst)).parent:
        hint = f"file_names are relative to {images_root}: load with --images-dir {images_root} (data.images)"
        _c.out.print(plain(hint))
    if report.problems:
        _c.out.print(plain(f"fixed on the way: {report.summary()}"))
