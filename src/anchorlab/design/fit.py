"""Fit a detector's priors to its training boxes before training (``model.fit_anchors``).

* Anchor-based detectors (``retinanet``, ``free_anchor``, and Faster R-CNN's RPN): the two proposals of
  ``anchorlab anchors`` (data ranges, k-means 1 - IoU) with the config's anchors per location, scored by
  best possible recall on the real anchor grid (then mean best IoU); the best replaces ``model.anchors``
  when it raises the recall by ``MIN_BPR_GAIN`` or more, else the config's anchors stay.
* FCOS (``fcos.regress_ranges``) and the grid (``grid.size_ranges``): the ranges are kept. They are
  stride-relative (an object's level is set by how many strides it spans); ranges fitted to the data's
  scale spread the objects over the levels and cost most of the val AP50 on the quick synthetic data
  (docs/training.md#fitted-priors). The fit reports how many objects
  each level gets under the config's ranges and names the levels none uses.
* CenterNet predicts on one level: nothing to fit.

Shape legend (docs/architecture.md): N objects (all images), L levels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from anchorlab.anchors import AnchorGenerator
from anchorlab.config import Config, ModelConfig
from anchorlab.data.core import DetectionSet
from anchorlab.design.grid_coverage import coverage
from anchorlab.design.proposals import Proposal, propose_from_ranges, propose_kmeans
from anchorlab.design.stats import ResizedBoxes, resize_boxes

__all__ = [
    "MAX_FIT_OBJECTS",
    "MIN_BPR_GAIN",
    "PriorFit",
    "apply_fit",
    "fit_priors",
    "level_counts",
]

#: A proposal replaces the config's anchors only when it raises the best possible recall by this much.
MIN_BPR_GAIN = 0.005
#: Above this many objects the fit uses a seeded sample of whole images (the coverage pass is O(N)).
MAX_FIT_OBJECTS = 100_000


@dataclass
class PriorFit:
    """What ``fit_priors`` chose: ``values`` maps a ``model`` sub-key (``"anchors"``) to its new value
    (empty: keep the config); ``report`` is JSON-ready (scores of every candidate, objects per level)."""

    detector: str
    values: dict[str, Any] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the detector, the chosen values, the report (an open last range as ``null``)."""
        return {"detector": self.detector, "values": self.values, **self.report, "notes": self.notes}

    def summary(self) -> str:
        """One line for the console, then the notes."""
        if self.detector == "centernet":
            line = "fit_anchors: centernet predicts on one level, nothing to fit"
        elif "anchors" in self.report:
            r = self.report["anchors"]
            chosen = r["chosen"]
            line = (
                f"fit_anchors: {chosen} anchors (best possible recall {r['bpr'][chosen]:.3f} at IoU "
                f"{r['pos_iou']:g}; the config's {r['bpr']['config']:.3f})"
            )
        else:
            r = self.report["ranges"]
            line = (
                f"fit_anchors: {r['key']} kept {_fmt_ranges(r['config'])}; objects per level "
                f"{r['objects_per_level']}"
            )
        return "\n".join([line, *(f"  note: {n}" for n in self.notes)])


def _fmt_ranges(ranges: list[list[float | None]]) -> str:
    return "[" + ", ".join(f"({lo:g}, {'inf' if hi is None else f'{hi:g}'})" for lo, hi in ranges) + "]"


def _json_ranges(ranges: list[tuple[float, float]]) -> list[list[float | None]]:
    return [[lo, None if math.isinf(hi) else hi] for lo, hi in ranges]


def _sample(boxes: ResizedBoxes, max_objects: int, seed: int) -> ResizedBoxes:
    """Whole images drawn at random (seeded) until about ``max_objects`` objects; all when fewer."""
    n = len(boxes.boxes)
    if n <= max_objects:
        return boxes
    per_image = np.bincount(boxes.image_index, minlength=len(boxes.image_sizes))
    order = np.random.default_rng(seed).permutation(len(per_image))
    take = order[: int(np.searchsorted(np.cumsum(per_image[order]), max_objects)) + 1]
    keep_img = np.zeros(len(per_image), bool)
    keep_img[take] = True
    new_index = np.cumsum(keep_img) - 1
    keep = keep_img[boxes.image_index]
    return ResizedBoxes(
        boxes.boxes[keep],
        boxes.labels[keep],
        new_index[boxes.image_index[keep]],
        boxes.image_sizes[keep_img],
        boxes.class_names,
        boxes.dropped,
    )


def level_counts(values: np.ndarray, ranges: list[tuple[float, float]], first_level: int) -> dict[str, int]:
    """How many of ``values [N]`` fall in each ``[lo, hi)`` range, keyed ``P<level>``."""
    return {
        f"P{first_level + i}": int(((values >= lo) & (values < hi)).sum())
        for i, (lo, hi) in enumerate(ranges)
    }


def _anchor_generator(model: ModelConfig, anchors: dict[str, Any]) -> AnchorGenerator:
    """The generator ``model.detector`` builds from ``model.anchors = anchors``."""
    from anchorlab.config import AnchorConfig
    from anchorlab.models.build import build_anchor_generator

    a = AnchorConfig(**anchors)
    levels = range(model.fpn.min_level, model.fpn.max_level + 1)
    if model.detector == "faster_rcnn":  # the RPN reads sizes only (8 x stride when unset)
        sizes = a.sizes or [[8.0 * 2**level] for level in levels]
        return AnchorGenerator(
            sizes, [list(a.aspect_ratios)], [2**level for level in levels], offset=a.offset
        )
    return build_anchor_generator(model.model_copy(update={"anchors": a}))


def _as_sizes(p: Proposal) -> dict[str, Any]:
    """An octave proposal as explicit per-level sizes (what the RPN reads)."""
    a = p.anchors
    if a.get("sizes") is not None:
        return {"sizes": a["sizes"], "aspect_ratios": a["aspect_ratios"]}
    n, b = a["scales_per_octave"], a["octave_base_scale"]
    sizes = [
        [float(f"{b * 2**level * 2 ** (j / n):.3g}") for j in range(n)]
        for level in range(p.min_level, p.max_level + 1)
    ]
    return {"sizes": sizes, "aspect_ratios": a["aspect_ratios"]}


def _fit_anchors(model: ModelConfig, boxes: ResizedBoxes, seed: int) -> PriorFit:
    a = model.anchors
    levels = (model.fpn.min_level, model.fpn.max_level)
    ratios = len(a.aspect_ratios)
    if a.sizes is not None:
        per_level = len(a.sizes[0])
    else:
        per_level = 1 if model.detector == "faster_rcnn" else a.scales_per_octave
    proposals = [
        propose_from_ranges(boxes, levels=levels, scales_per_octave=per_level, num_ratios=ratios),
        propose_kmeans(
            boxes, levels=levels, anchors_per_level=per_level * ratios, num_ratios=ratios, seed=seed
        ),
    ]
    current = a.model_dump(exclude={"sizes"} if a.sizes is None else set())
    candidates = {"config": current}
    for p in proposals:
        candidates[p.name] = _as_sizes(p) if model.detector == "faster_rcnn" else p.anchors
    pos_iou = model.rpn.pos_iou if model.detector == "faster_rcnn" else model.assign.pos_iou
    scores = {
        name: coverage(boxes, _anchor_generator(model, anchors), pos_iou=pos_iou).summary()
        for name, anchors in candidates.items()
    }
    best = max(scores, key=lambda k: (scores[k]["bpr"], scores[k]["mean_best_iou"]))
    chosen = best if scores[best]["bpr"] >= scores["config"]["bpr"] + MIN_BPR_GAIN else "config"
    fit = PriorFit(model.detector)
    if chosen != "config":
        fit.values["anchors"] = {"sizes": None, **candidates[chosen]}
        proposal = next(p for p in proposals if p.name == chosen)
        fit.notes += [
            f"{chosen}: {n}".replace("anchor_stats.json", "anchorlab anchors") for n in proposal.notes
        ]
    else:
        fit.notes.append(
            f"the config's anchors kept: no proposal raised the best possible recall by {MIN_BPR_GAIN:g}+"
        )
    per_level = {name: info["objects"] for name, info in scores[chosen]["per_level"].items()}
    fit.report["anchors"] = {
        "pos_iou": pos_iou,
        "chosen": chosen,
        "candidates": candidates,
        "bpr": {k: s["bpr"] for k, s in scores.items()},
        "mean_best_iou": {k: s["mean_best_iou"] for k, s in scores.items()},
        "objects_per_best_level": per_level,
    }
    fit.notes += _idle_levels(per_level, "has its best anchor on")
    return fit


def _idle_levels(per_level: dict[str, int], what: str) -> list[str]:
    """A note per end of the pyramid whose levels no object uses (dropping them saves their compute)."""
    names = list(per_level)
    used = [i for i, name in enumerate(names) if per_level[name] > 0]
    if not used:
        return []
    notes = []
    if used[-1] < len(names) - 1:
        top = ", ".join(names[used[-1] + 1 :])
        notes.append(
            f"no object {what} {top}: model.fpn.max_level={names[used[-1]][1:]} would skip its compute"
        )
    if used[0] > 0:
        notes.append(f"no object {what} {', '.join(names[: used[0]])}")
    return notes


def _level_use(model: ModelConfig, boxes: ResizedBoxes) -> PriorFit:
    """FCOS / grid: the config's ranges kept; objects per level under them and the idle levels named."""
    from anchorlab.models.heads.fcos import default_regress_ranges

    levels = (model.fpn.min_level, model.fpn.max_level)
    side = boxes.wh.max(1)
    if model.detector == "fcos":  # max(l, t, r, b) at the centre is half the longer side
        key, current, value = "fcos.regress_ranges", model.fcos.regress_ranges, side / 2
    else:
        key, current, value = "grid.size_ranges", model.grid.size_ranges, side
    strides = [2**level for level in range(levels[0], levels[1] + 1)]
    ranges = [tuple(r) for r in current] if current is not None else default_regress_ranges(strides)
    per_level = level_counts(value, ranges, levels[0])
    kept = f"{key} kept: stride-relative; ranges fitted to the data's scale cost AP (docs/anchors.md)"
    fit = PriorFit(model.detector, notes=[kept])
    fit.notes += _idle_levels(per_level, "falls in the range of")
    fit.report["ranges"] = {"key": key, "config": _json_ranges(ranges), "objects_per_level": per_level}
    return fit


def fit_priors(cfg: Config, dataset: DetectionSet, *, seed: int | None = None) -> PriorFit:
    """Fit ``cfg.model``'s anchors (anchor-based) to ``dataset``'s boxes after ``cfg.data``'s resize; for
    FCOS and the grid, report the levels' use under the config's ranges. Deterministic for a ``seed``
    (default ``train.seed``)."""
    model = cfg.model
    seed = cfg.train.seed if seed is None else seed
    if model.detector == "centernet":
        return PriorFit("centernet")
    boxes = resize_boxes(dataset, min_size=cfg.data.min_size, max_size=cfg.data.max_size)
    where = f" in {dataset.source}" if dataset.source else ""
    if len(boxes.boxes) == 0:
        raise ValueError(f"model.fit_anchors: no boxes{where} to fit the priors to")
    n = len(boxes.boxes)
    boxes = _sample(boxes, MAX_FIT_OBJECTS, seed)
    if model.detector in ("fcos", "grid"):
        fit = _level_use(model, boxes)
    else:
        fit = _fit_anchors(model, boxes, seed)
    fit.report["objects"] = {"total": n, "used": len(boxes.boxes)}
    if len(boxes.boxes) < n:
        fit.notes.append(f"fitted on {len(boxes.boxes)} of the {n} objects (whole images, seed {seed})")
    return fit


def apply_fit(cfg: Config, fit: PriorFit) -> None:
    """Write ``fit.values`` into ``cfg.model`` in place (validated as any config value)."""
    from anchorlab.config import AnchorConfig

    for key, value in fit.values.items():
        if key != "anchors":
            raise ValueError(f"apply_fit: unknown fitted value {key!r}")
        cfg.model.anchors = AnchorConfig(**value)
