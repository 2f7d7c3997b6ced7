"""Command: anchors -- box statistics, anchor proposals and their coverage (best possible recall)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import typer
from rich.markup import escape
from rich.table import Table

from anchorlab.cli.app import app
from anchorlab.cli.output import make_console
from anchorlab.io import save_figure, write_json, write_text

console = make_console()
err_console = make_console(stderr=True)

#: Anchor proposals of ``--method`` (``anchorlab.design``: propose_seed, propose_from_ranges, propose_kmeans).
METHODS = ("seed", "ranges", "kmeans")


def _fail(exc: Exception) -> NoReturn:
    """One ``error: ...`` line on stderr (no markup, no wrapping), exit code 1."""
    err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
    raise typer.Exit(1) from None


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _stats_table(title: str, rows: dict[str, dict], first: str) -> Table:
    """One row per group: object count, size (sqrt area) mean/p5/p50/p95, aspect p5/p50/p95."""
    table = Table(title=title, title_justify="left")
    for col in (first, "objects", "size mean", "size p5", "size p50", "size p95", "w p50", "h p50"):
        table.add_column(col, justify="left" if col == first else "right")
    for col in ("h/w p5", "h/w p50", "h/w p95"):
        table.add_column(col, justify="right")
    for name, q in rows.items():
        s, a = q["size"], q["aspect"]
        table.add_row(
            name,
            str(s["count"]),
            *(_fmt(s[k]) for k in ("mean", "p5", "p50", "p95")),
            _fmt(q["width"]["p50"]),
            _fmt(q["height"]["p50"]),
            *(_fmt(a[k], 2) for k in ("p5", "p50", "p95")),
        )
    return table


def _coverage_table(
    results: dict[str, dict], gens: dict[str, Any], pos_iou: float, shape_bpr: dict[str, float]
) -> Table:
    """Anchor sets side by side: BPR overall, per level, per size bucket, mean best IoU, anchors/object,
    and the shape-only BPR (anchor centred on every object: the bound a denser grid could reach)."""
    table = Table(
        title=f"coverage at IoU >= {pos_iou:g} (real anchor grid, padded images)", title_justify="left"
    )
    table.add_column("")
    for name in results:
        table.add_column(name, justify="right")
    first = next(iter(results.values()))

    def row(label: str, get) -> None:
        table.add_row(label, *(get(name, s) for name, s in results.items()))

    row(
        "anchors per location",
        lambda n, s: "/".join(map(str, sorted(set(gens[n].num_anchors_per_location())))),
    )
    row("best possible recall", lambda n, s: _pct(s["bpr"]))
    row("BPR, shapes only (no grid)", lambda n, s: _pct(shape_bpr[n]))
    row("mean best IoU", lambda n, s: _fmt(s["mean_best_iou"], 3))
    row("anchors >= IoU per object (mean)", lambda n, s: _fmt(s["anchors_per_object"]))
    row("anchors >= IoU per object (median)", lambda n, s: _fmt(s["anchors_per_object_median"]))
    row("objects with no anchor >= IoU", lambda n, s: str(s["zero_positive"]))
    for bucket in first["per_bucket"]:
        row(
            f"BPR {bucket}",
            lambda n, s, b=bucket: f"{_pct(s['per_bucket'][b]['bpr'])} ({s['per_bucket'][b]['objects']})",
        )
    for level in first["per_level"]:
        row(
            f"BPR best on {level} (objects)",
            lambda n, s, lv=level: f"{_pct(s['per_level'][lv]['bpr'])} ({s['per_level'][lv]['objects']})",
        )
    return table


def _anchor_shapes(gen: Any) -> np.ndarray:
    """``[S, 2]`` (w, h) of every anchor shape of every level."""
    shapes = []
    for level in range(gen.num_levels):
        base = gen.base_anchors(level).cpu().numpy()
        shapes.append(base[:, 2:] - base[:, :2])
    return np.concatenate(shapes)


def _plots(
    out: Path, wh: np.ndarray, shapes: dict[str, np.ndarray], best: dict[str, np.ndarray], t: float
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(0)
    pts = wh[rng.choice(len(wh), 20000, replace=False)] if len(wh) > 20000 else wh
    fig, ax = plt.subplots(figsize=(7, 6))
    ax.scatter(
        pts[:, 0], pts[:, 1], s=3, alpha=0.25, color="0.4", label=f"objects ({len(wh)})", rasterized=True
    )
    for (name, sh), marker in zip(shapes.items(), "oxs^v", strict=False):
        ax.scatter(sh[:, 0], sh[:, 1], s=40, marker=marker, label=f"{name} ({len(sh)} shapes)", alpha=0.9)
    ax.set(xscale="log", yscale="log", xlabel="width (px, after resize)", ylabel="height (px, after resize)")
    ax.set_title("object sizes and anchor shapes")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, out / "wh_scatter.png", dpi=110)
    fig, axes = plt.subplots(len(best), 1, figsize=(7, 2.2 * len(best)), sharex=True, squeeze=False)
    for ax, (name, values) in zip(axes[:, 0], best.items(), strict=True):
        ax.hist(values, bins=50, range=(0, 1), color="tab:blue")
        ax.axvline(t, color="tab:red", linestyle="--", label=f"IoU {t:g}")
        ax.set_ylabel("objects")
        ax.set_title(f"{name}: best IoU per object (BPR {np.mean(values >= t):.1%})", fontsize=9)
        ax.legend(fontsize=8)
    axes[-1, 0].set_xlabel("best anchor IoU")
    fig.tight_layout()
    save_figure(fig, out / "best_iou.png", dpi=110)


def _snippet(data: Path, chosen: Any, others: list[Any], cov: dict[str, dict], cfg: Any) -> str:
    import yaml

    def block(p: Any) -> str:
        return yaml.safe_dump({"anchors": p.anchors}, sort_keys=False, default_flow_style=None)

    s = cov[chosen.name]
    lines = [
        f"# anchorlab anchors {data.name}: proposal {chosen.name!r} "
        f"for FPN P{chosen.min_level}..P{chosen.max_level},",
        f"# resize min_size={cfg.data.min_size} max_size={cfg.data.max_size}; best possible recall "
        f"{s['bpr']:.3f} at IoU {s['pos_iou']:g} (config's anchors: {cov['config']['bpr']:.3f}).",
        "# Paste under `model:` in a config (or pass the values with --set model.anchors...).",
        block(chosen).rstrip(),
    ]
    for p in others:
        lines.append(f"# alternative {p.name!r}: best possible recall {cov[p.name]['bpr']:.3f}")
        lines += ["# " + line for line in block(p).rstrip().splitlines()]
    return "\n".join(lines) + "\n"


@app.command()
def anchors(
    data: Path = typer.Argument(
        ...,
        help="Training boxes the anchors should fit: COCO JSON, VOC / YOLO folder, data.yaml or CVAT export.",
    ),
    config: Path | None = typer.Option(
        None, "--config", help="YAML config (resize, FPN levels, anchors, IoU)."
    ),
    set_: list[str] = typer.Option(
        None, "--set", help="Override a config value: key.path=value (repeatable)."
    ),
    anchors_per_level: int = typer.Option(
        9, "--anchors-per-level", help="Anchors per location of a proposal."
    ),
    ratios: int = typer.Option(
        3, "--ratios", help="Aspect ratios per proposal (divides --anchors-per-level)."
    ),
    images: Path | None = typer.Option(
        None, "--images", help="Image folder (only read for unrecorded sizes)."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the k-means initialisation."),
    method: str | None = typer.Option(
        None,
        "--method",
        help="Proposal written to anchors.yaml: seed (3 sizes evenly spaced from the smallest to the largest "
        "object side, ratios 1:1 and 2:1, centred anchors), ranges (octaves from percentiles) or kmeans "
        "(1 - IoU); default: the one with the best possible recall. The table compares all three.",
    ),
    out: Path = typer.Option(Path("runs/anchors"), "--out", help="Output folder."),
) -> None:
    """Box statistics after the resize, anchor proposals (seed: min / max sides; data ranges; k-means
    1 - IoU) and their best possible recall on the real anchor grid next to the config's anchors.
    Writes OUT/anchors.yaml (paste under `model:`), OUT/anchor_stats.json, OUT/wh_scatter.png and
    OUT/best_iou.png.

    Example: anchorlab anchors data/train.json --config configs/retinanet_r18_fpn_quick.yaml --out runs/a
    """
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from anchorlab import design
    from anchorlab.config import ConfigError, load_config
    from anchorlab.data.core import DataError
    from anchorlab.engine.common import load_split
    from anchorlab.models.build import build_anchor_generator

    try:
        if method is not None and method not in METHODS:
            raise ValueError(f"--method {method!r} is not one of {', '.join(METHODS)}")
        cfg = load_config(config, set_ or [])
        if anchors_per_level < 1 or ratios < 1 or anchors_per_level % ratios:
            raise ValueError(
                f"--anchors-per-level ({anchors_per_level}) must be a multiple of --ratios ({ratios})"
            )
        levels = (cfg.model.fpn.min_level, cfg.model.fpn.max_level)
        pos_iou = cfg.model.assign.pos_iou
        progress = Progress(
            TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
            TimeElapsedColumn(), console=err_console, transient=True,
        )  # fmt: skip
        with progress:
            task = progress.add_task("loading annotations", total=None)
            if images is not None:
                cfg.data.images = str(images)
            ds = load_split(cfg, "train", data, check_images="none")
            progress.update(task, description="box statistics")
            stats = design.box_stats(ds, min_size=cfg.data.min_size, max_size=cfg.data.max_size)
            if stats.num_objects == 0:
                raise ValueError(f"{data} has no boxes (after the resize) to design anchors from")
            progress.update(task, description="k-means (1 - IoU)")
            proposals = [
                design.propose_seed(stats, levels=levels),
                design.propose_from_ranges(
                    stats, levels=levels, scales_per_octave=anchors_per_level // ratios, num_ratios=ratios
                ),
                design.propose_kmeans(
                    stats, levels=levels, anchors_per_level=anchors_per_level, num_ratios=ratios, seed=seed
                ),
            ]
            progress.remove_task(task)
            gens = {"config": build_anchor_generator(cfg.model)} | {p.name: p.generator() for p in proposals}
            cov = {}
            for name, gen in gens.items():
                task = progress.add_task(f"coverage: {name}", total=stats.num_objects * gen.num_levels)
                cov[name] = design.coverage(
                    stats.boxes, gen, pos_iou=pos_iou, progress=lambda n, t=task: progress.advance(t, n)
                )
                progress.remove_task(task)
    except (ConfigError, DataError, OSError, ValueError) as exc:
        _fail(exc)

    ranges_fit = None
    if cfg.model.detector in ("fcos", "centernet", "grid"):
        err_console.print(
            f"note: the {cfg.model.detector} detector uses no anchors; numbers are for reference"
        )
    if cfg.model.detector in ("fcos", "grid"):
        from anchorlab.design.fit import fit_priors

        ranges_fit = fit_priors(cfg, ds, seed=seed)
    console.print(
        f"{stats.num_objects} objects in {stats.num_images} images, sizes after resize "
        f"(min_size={cfg.data.min_size}, max_size={cfg.data.max_size}); "
        f"{stats.boxes.dropped} under 1 px dropped"
    )
    console.print(
        _stats_table("box statistics (pixels after resize; h/w = aspect)", {"all": stats.overall}, "")
    )
    console.print(_stats_table("per size bucket (area after resize)", stats.per_bucket, "bucket"))
    console.print(_stats_table("per class", stats.per_class, "class"))
    summaries = {name: c.summary() for name, c in cov.items()}
    wh = stats.boxes.wh
    shapes = {name: _anchor_shapes(gen) for name, gen in gens.items()}
    exact = next(p.shapes for p in proposals if p.shapes is not None)
    if len(exact):
        shapes["kmeans (exact shapes)"] = exact
    shape_bpr = {
        name: float((design.shape_iou(wh, sh).max(1) >= pos_iou).mean()) for name, sh in shapes.items()
    }
    console.print(_coverage_table(summaries, gens, pos_iou, shape_bpr))
    for p in proposals:
        for note in p.notes:
            console.print(f"[dim]{p.name}: {note}[/]")
    if len(exact):
        console.print(
            f"[dim]kmeans: the {len(exact)} exact k-means shapes (not expressible in model.anchors) reach "
            f"a shape-only BPR of {_pct(shape_bpr['kmeans (exact shapes)'])}[/]"
        )

    best = max(proposals, key=lambda p: (summaries[p.name]["bpr"], summaries[p.name]["mean_best_iou"]))
    chosen = next(p for p in proposals if p.name == method) if method else best
    report = {
        "data": str(data),
        "resize": {"min_size": cfg.data.min_size, "max_size": cfg.data.max_size},
        "fpn_levels": list(levels),
        "pos_iou": pos_iou,
        "stats": stats.to_dict(),
        "config_anchors": cfg.model.anchors.model_dump(),
        "proposals": {p.name: p.to_dict() for p in proposals},
        "coverage": summaries,
        "shape_only_bpr": shape_bpr,
        "recommended": best.name,
        "chosen": chosen.name,
    }
    if ranges_fit is not None:
        report["level_use"] = ranges_fit.to_dict()
        console.print(ranges_fit.summary().replace("fit_anchors: ", "levels: ", 1))
    others = [p for p in proposals if p is not chosen]
    try:
        write_json(out / "anchor_stats.json", report)
        write_text(out / "anchors.yaml", _snippet(data, chosen, others, summaries, cfg))
        _plots(out, wh, shapes, {name: c.best_iou for name, c in cov.items()}, pos_iou)
    except OSError as exc:
        _fail(exc)
    picked = (
        f"--method {chosen.name!r}; recommended: {best.name!r}" if method else f"recommended: {best.name!r}"
    )
    console.print(
        f"{picked} (best possible recall {summaries[chosen.name]['bpr']:.3f} vs "
        f"{summaries['config']['bpr']:.3f} for the config's anchors); wrote {out / 'anchors.yaml'}, "
        f"{out / 'anchor_stats.json'}, {out / 'wh_scatter.png'}, {out / 'best_iou.png'}"
    )
