"""Pictures of the assignment report: for a few crowded images, each strategy's positives coloured by object.

One row per image, one column per strategy. Ground-truth boxes are drawn in their object's colour;
a positive anchor (max_iou, free_anchor) is drawn as a thin box, a positive point (fcos), centre cell
(centernet) or grid cell (grid) as a dot, in the colour of the object it serves. Objects with no
positive get a dashed box and a cross. The image is read with PIL; when its file is missing the
picture is drawn on a grey canvas of the recorded size.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from anchorlab.config import Config
from anchorlab.data.core import DetectionSet
from anchorlab.io import make_dir, save_figure
from anchorlab.report.assignment import STRATEGIES, ImageAssignment, check_strategies, image_assignment

__all__ = ["draw_assignments", "save_pictures"]

_TITLES = {
    "max_iou": "max-IoU anchors",
    "free_anchor": "FreeAnchor bags",
    "fcos": "FCOS points",
    "centernet": "CenterNet centres",
    "grid": "grid cells",
}


def _load_image(ia: ImageAssignment) -> np.ndarray:
    """The resized image as ``[h, w, 3]`` uint8, or a grey canvas when the file cannot be read."""
    from PIL import Image

    from anchorlab.data.image import read_rgb

    h, w = ia.size
    try:
        rgb = read_rgb(ia.record.file).permute(1, 2, 0).numpy()  # upright (EXIF), hostile files refused
    except (OSError, ValueError):  # DataError is a ValueError
        return np.full((h, w, 3), 128, np.uint8)
    return np.asarray(Image.fromarray(rgb).resize((w, h), Image.BILINEAR))


def draw_assignments(items: Sequence[ImageAssignment], strategies: Sequence[str], path: str | Path) -> Path:
    """Draw ``items`` (one row each) x ``strategies`` (one column each) into the PNG ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    strategies = check_strategies(strategies)
    rows, cols = max(len(items), 1), len(strategies)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.0 * rows), squeeze=False)
    cmap = plt.get_cmap("tab10")
    for r, ia in enumerate(items):
        image = _load_image(ia)
        colours = cmap(np.arange(len(ia.boxes)) % 10)
        for c, s in enumerate(strategies):
            ax = axes[r, c]
            ax.imshow(image)
            priors, obj = ia.positives[s]
            served = np.bincount(obj, minlength=len(ia.boxes)) > 0
            if priors.shape[1] == 4:
                for (x1, y1, x2, y2), o in zip(priors, obj, strict=True):
                    ax.add_patch(
                        Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, lw=0.5, ec=colours[o], alpha=0.6)
                    )
            elif len(priors):
                ax.scatter(
                    priors[:, 0], priors[:, 1], s=9, c=colours[obj], edgecolors="white", linewidths=0.3
                )
            for i, (x1, y1, x2, y2) in enumerate(ia.boxes):
                style = "-" if served[i] else "--"
                ax.add_patch(
                    Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, lw=1.4, ls=style, ec=colours[i])
                )
                if not served[i]:
                    ax.plot((x1 + x2) / 2, (y1 + y2) / 2, marker="x", color=colours[i], ms=7, mew=2)
            h, w = ia.size
            ax.set_xlim(0, w)
            ax.set_ylim(h, 0)
            ax.set_xticks([])
            ax.set_yticks([])
            missing = int((~served).sum())
            title = f"{_TITLES[s]}: {len(obj)} pos"
            if missing:
                title += f", {missing} missed"
            ax.set_title(title, fontsize=8)
            if c == 0:
                ax.set_ylabel(f"image {ia.record.id} ({len(ia.boxes)} obj)", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path, dpi=90)


def save_pictures(
    ds: DetectionSet,
    cfg: Config,
    report: dict,
    out_dir: str | Path,
    *,
    count: int = 4,
    strategies: Sequence[str] = STRATEGIES,
) -> list[Path]:
    """PNGs of the ``count`` most crowded images of ``report["crowded_images"]`` (most collisions, then most
    objects): ``OUT/assign_crowded.png`` with all of them and one ``OUT/assign_image_<id>.png`` each."""
    out_dir = make_dir(out_dir)
    picks = [c["index"] for c in report.get("crowded_images", [])[: max(count, 0)]]
    if not picks:
        return []
    items = [image_assignment(ds, i, cfg, strategies) for i in picks]
    paths = [draw_assignments(items, strategies, out_dir / "assign_crowded.png")]
    for ia in items:
        paths.append(draw_assignments([ia], strategies, out_dir / f"assign_image_{ia.record.id}.png"))
    return paths
