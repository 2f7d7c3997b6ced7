"""The ``auto`` budget: a training run sized to the user's data, decided in one place.

``resolve_auto(train_set, device)`` looks at the training split (image sizes, box sizes, image count) and
returns the config values to train with and one reason per choice:

* **Image size.** The median image keeps its native resolution up to a cap on its longer side
  (``CAP_PX``: 640 on CPU, 1333 on CUDA). ``data.min_size`` is the median shorter side (scaled down by the
  cap), ``data.max_size`` the longest resized side any image's aspect ratio needs (at most the cap). When
  the cap shrinks the median object below ``MIN_OBJECT_PX`` the choice says so as a warning (the cap is
  kept: it bounds the CPU time; ``--set data.min_size=... data.max_size=...`` overrides it). Images are
  never upscaled.
* **Anchors** fitted to the boxes: ``model.fit_anchors: true`` (``anchorlab.design.fit``).
* **Length** in epochs over the training images: enough epochs to see ``MIN_IMAGES_SEEN`` images, within
  ``EPOCHS``; written as ``train.epochs`` when the config has that key, else converted to
  ``train.iterations`` by ``iterations_for``. A ``train.max_minutes`` the user gives is kept as the wall-clock
  budget.
* **One recipe for every detector** (the from-scratch recipe of the quick configs): AdamW lr 0.002, weight
  decay 0.05, cosine, gradient clipping 10, warm-up ``WARMUP_SHARE`` of the run, an EMA of the weights
  spanning the last third of the run with a ramp of a sixth of it.
* **Small data** (fewer than ``SMALL_DATA_IMAGES`` training images): stronger augmentation — scale jitter
  of the shorter side by +-25 %, photometric jitter, horizontal flips, and mosaic when the median object
  stays at least ``MIN_OBJECT_PX`` after the mosaic's halving (a mosaic is drawn on the sample's own canvas,
  so its objects shrink by about 2x). No detector needs a head setting of its own for it: the design-
  specific parts (anchors, FCOS / grid ranges, CenterNet's level) are the presets' and the fit's.

Keys the user set on the command line (``Config.pinned``) are kept and named in the reasons.
``apply_auto(cfg, train_set)`` writes the choice into a config (``train.preset: auto`` in
``anchorlab train``, ``--budget auto`` in ``anchorlab compare``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from anchorlab.config import Config, ConfigError, TrainConfig, config_from_dict
from anchorlab.data.core import DetectionSet

__all__ = [
    "CAP_PX",
    "MIN_IMAGES_SEEN",
    "MIN_OBJECT_PX",
    "SMALL_DATA_IMAGES",
    "AutoBudget",
    "apply_auto",
    "downscale_warning",
    "iterations_for",
    "resolve_auto",
]

#: Longest image side the median image is trained at, by device type (anything but CUDA: the CPU cap).
CAP_PX: dict[str, int] = {"cpu": 640, "cuda": 1333}
#: The median object is not shrunk below this many pixels without a warning.
MIN_OBJECT_PX = 16.0
#: Fewer training images than this get the small-data recipe.
SMALL_DATA_IMAGES = 200
#: The run shows the model at least this many training images (quick budget: 600 x 8 = 4800) ...
MIN_IMAGES_SEEN = 6000
#: ... in this many epochs at least and at most.
EPOCHS = (12, 300)
#: Images per step by device type.
BATCH = {"cpu": 8, "cuda": 16}
#: Warm-up as a share of the run (quick recipe: 50 of 600), within these iteration bounds.
WARMUP_SHARE = 0.08
WARMUP_BOUNDS = (10, 1000)
#: The from-scratch recipe every detector shares (as the quick configs).
RECIPE: dict[str, Any] = {
    "train.optimizer": "adamw",
    "train.lr": 0.002,
    "train.weight_decay": 0.05,
    "train.schedule": "cosine",
    "train.clip_grad": 10.0,
    "train.amp": "auto",
    "train.ema": True,
    "model.fit_anchors": True,
    "data.hflip": 0.5,
}
#: The small-data augmentation (scale jitter is +-SCALE_JITTER of the shorter side).
SMALL_DATA: dict[str, Any] = {"data.photometric": True, "data.mosaic": 0.5}
SCALE_JITTER = 0.25


@dataclass
class AutoBudget:
    """What ``resolve_auto`` chose: ``values`` maps dotted config keys to values; ``reasons`` says why, one
    short clause per choice; ``warnings`` what the user must know (e.g. objects shrunk below 16 px);
    ``facts`` the measured statistics of the data (JSON-ready)."""

    values: dict[str, Any] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)
    kept: dict[str, Any] = field(default_factory=dict)

    def __iter__(self):  # ``overrides, reasons = resolve_auto(...)``
        return iter((self.values, self.reasons))

    def line(self) -> str:
        """The one console line: what was chosen and why."""
        return "auto budget: " + "; ".join(self.reasons)

    def to_dict(self) -> dict[str, Any]:
        return {
            "values": self.values,
            "reasons": self.reasons,
            "warnings": self.warnings,
            "facts": self.facts,
            "kept": self.kept,
        }


def iterations_for(epochs: int, images: int, batch_size: int) -> int:
    """Optimizer steps of ``epochs`` passes over ``images`` training images at ``batch_size`` (rounded up)."""
    return max(1, math.ceil(epochs * images / batch_size))


def _device_kind(device: Any) -> str:
    kind = getattr(device, "type", str(device)).split(":")[0]
    return "cuda" if kind == "cuda" else "cpu"


def _object_sizes(boxes: np.ndarray) -> np.ndarray:
    """``[N]`` sqrt(area) of ``boxes [N, 4]`` xyxy."""
    wh = np.clip(boxes[:, 2:] - boxes[:, :2], 0, None)
    return np.sqrt(wh.prod(axis=1))


def _image_size(train_set: DetectionSet, cap: int) -> tuple[int, int, dict[str, Any]]:
    """``(min_size, max_size, facts)``: the median image at native resolution, its longer side capped."""
    hw = np.array([(r.height, r.width) for r in train_set.images], np.float64).reshape(-1, 2)
    short, long = hw.min(axis=1), hw.max(axis=1)
    med_short, med_long = float(np.median(short)), float(np.median(long))
    scale = min(1.0, cap / med_long)
    min_size = max(1, round(med_short * scale))
    max_size = int(min(cap, max(min_size, round(float((long * min_size / short).max())))))
    facts = {"median_image": [round(med_short), round(med_long)], "scale": round(scale, 4), "cap": cap}
    return min_size, max_size, facts


def _median_object(
    train_set: DetectionSet, min_size: int, max_size: int
) -> tuple[float | None, float | None]:
    """Median object size (sqrt area, px) at native resolution and after the resize (None: no boxes)."""
    from anchorlab.design.stats import resize_boxes

    boxes = [r.boxes for r in train_set.images if len(r.boxes)]
    if not boxes:
        return None, None
    native = float(np.median(_object_sizes(np.concatenate(boxes).astype(np.float64))))
    resized = resize_boxes(train_set, min_size=min_size, max_size=max_size)
    after = float(np.median(_object_sizes(resized.boxes))) if len(resized.boxes) else 0.0
    return native, after


class _Choice:
    """Collects values, skipping (and reporting) the keys the user pinned."""

    def __init__(self, pinned: Iterable[str], current: dict[str, Any]) -> None:
        self.pinned, self.current = set(pinned), current
        self.budget = AutoBudget()

    def set(self, key: str, value: Any) -> Any:
        """Choose ``value`` for ``key`` unless pinned; returns the value in force."""
        if key in self.pinned:
            self.budget.kept[key] = self.current.get(key)
            return self.current.get(key)
        self.budget.values[key] = value
        return value


def _flat(cfg: Config | None) -> dict[str, Any]:
    if cfg is None:
        return {}
    out: dict[str, Any] = {}
    for section, values in cfg.model_dump(mode="json").items():
        for key, value in values.items():
            out[f"{section}.{key}"] = value
    return out


def resolve_auto(
    train_set: DetectionSet,
    device: Any = "cpu",
    *,
    config: Config | None = None,
    pinned: Iterable[str] | None = None,
) -> AutoBudget:
    """The auto budget of ``train_set`` on ``device`` (a ``torch.device`` or its name): config values by
    dotted key, and the reasons (see the module docstring). ``config`` supplies the values of ``pinned``
    keys (default: ``config.pinned``), which are kept. Unpacks as ``overrides, reasons``."""
    if not train_set.images:
        raise ConfigError(f"auto budget: {train_set.source or 'the training split'} has no images")
    kind = _device_kind(device)
    pinned = set(config.pinned if config is not None and pinned is None else pinned or ())
    current = _flat(config)
    c = _Choice(pinned, current)
    b = c.budget
    n = len(train_set.images)
    cap = CAP_PX[kind]

    # image size: native up to the cap, the median object checked
    min_size, max_size, facts = _image_size(train_set, cap)
    min_size = c.set("data.min_size", min_size)
    max_size = c.set("data.max_size", max_size)
    eval_short = min_size if isinstance(min_size, int) else max(min_size)
    native_obj, obj = _median_object(train_set, eval_short, max_size)
    b.facts.update(facts, images=n, median_object_native=native_obj, median_object=obj, device=kind)
    med_short, med_long = facts["median_image"]
    if "data.min_size" in b.kept or "data.max_size" in b.kept:
        size_reason = f"{eval_short}/{max_size} px (yours)"
    elif facts["scale"] < 1:
        size_reason = (
            f"{eval_short}/{max_size} px (images {med_short}x{med_long} px, median, shrunk "
            f"{1 / facts['scale']:.2f}x to the {kind.upper()} cap {cap})"
        )
    else:
        size_reason = f"{eval_short}/{max_size} px (native: images {med_short}x{med_long} px, median)"
    b.reasons.append(f"{n} training images at {size_reason}")
    if obj is not None:
        b.reasons.append(
            f"median object {native_obj:.0f} px" + (f" -> {obj:.0f} px" if obj < native_obj - 0.5 else "")
        )
        if obj < MIN_OBJECT_PX <= native_obj:
            b.warnings.append(
                f"the median object shrinks from {native_obj:.0f} px to {obj:.1f} px (< {MIN_OBJECT_PX:g}) "
                f"at "
                f"{eval_short}/{max_size} px: small objects will be missed. Train larger with "
                f"--set data.min_size={math.ceil(eval_short * MIN_OBJECT_PX / obj)} "
                f"--set data.max_size={math.ceil(max_size * MIN_OBJECT_PX / obj)} (slower), on a GPU "
                f"(cap {CAP_PX['cuda']}), or tile the images"
            )
        elif obj < MIN_OBJECT_PX:
            b.warnings.append(
                f"the median object is {native_obj:.1f} px at native resolution (< {MIN_OBJECT_PX:g}): "
                "images are not upscaled; --set data.min_size=N to train larger"
            )

    # anchors, recipe
    for key, value in RECIPE.items():
        c.set(key, value)
    if b.values.get("model.fit_anchors"):
        b.reasons.append("anchors fitted to the boxes")

    # length
    batch = c.set("train.batch_size", min(BATCH[kind], n))  # an epoch holds at least one batch
    epochs = int(np.clip(math.ceil(MIN_IMAGES_SEEN / n), *EPOCHS))
    iterations = iterations_for(epochs, n, batch)
    if "epochs" in TrainConfig.model_fields and "train.iterations" not in pinned:
        epochs = c.set("train.epochs", epochs)
        length = f"{epochs} epochs = {iterations_for(epochs, n, batch)} iterations x {batch}"
    else:
        iterations = c.set("train.iterations", iterations)
        length = f"{epochs} epochs = {iterations} iterations x {batch}"
    if {"train.epochs", "train.iterations"} & set(b.kept):
        length = f"{iterations} iterations x {batch} (yours)"
    minutes = current.get("train.max_minutes")
    if minutes:
        length += f", at most {minutes:g} min (train.max_minutes)"
    b.reasons.append(length)
    warmup = c.set("train.warmup_iters", int(np.clip(round(WARMUP_SHARE * iterations), *WARMUP_BOUNDS)))
    decay = c.set("train.ema_decay", round(float(np.clip(1 - 3 / iterations, 0.99, 0.9998)), 5))
    tau = c.set("train.ema_tau", int(np.clip(round(iterations / 6), 10, 2000)))
    b.reasons.append(f"AdamW cosine, warm-up {warmup}, EMA {decay:g}/{tau}")

    # small data
    if n < SMALL_DATA_IMAGES:
        lo, hi = round(eval_short * (1 - SCALE_JITTER)), round(eval_short * (1 + SCALE_JITTER))
        c.set("data.scale_jitter", [lo, hi])
        c.set("data.max_size", round(max_size * (1 + SCALE_JITTER)))  # room for the upscaled draws
        c.set("data.photometric", SMALL_DATA["data.photometric"])
        mosaic = SMALL_DATA["data.mosaic"] if obj is None or obj / 2 >= MIN_OBJECT_PX else 0.0
        mosaic = c.set("data.mosaic", mosaic)
        why = "" if mosaic else f", no mosaic (it halves objects: median {obj:.0f} px)"
        b.reasons.append(
            f"small-data recipe (< {SMALL_DATA_IMAGES} images): scale jitter {lo}-{hi}, photometric, "
            f"flips{', mosaic ' + format(mosaic, 'g') if mosaic else why}"
        )
    else:
        c.set("data.scale_jitter", None)
        c.set("data.photometric", False)
        c.set("data.mosaic", 0.0)
        b.reasons.append(f"{SMALL_DATA_IMAGES}+ images: flips only (the quick recipe's augmentation)")
    if b.kept:
        b.reasons.append("kept yours: " + ", ".join(f"{k}={v}" for k, v in b.kept.items()))
    return b


def apply_auto(cfg: Config, train_set: DetectionSet, *, device: Any = None) -> AutoBudget:
    """Resolve the auto budget for ``cfg`` (its device and pinned keys) and write it into ``cfg`` in place,
    validated; ``train.preset`` becomes null (the values are explicit from then on)."""
    from anchorlab.engine.common import resolve_device

    budget = resolve_auto(train_set, device or resolve_device(cfg.train.device), config=cfg)
    tree = cfg.model_dump(mode="json")
    for key, value in budget.values.items():
        section, name = key.split(".", 1)
        tree[section][name] = value
    tree["train"]["preset"] = None
    resolved = config_from_dict(tree, source="auto budget")
    cfg.model, cfg.data, cfg.train = resolved.model, resolved.data, resolved.train
    return budget


def downscale_warning(train_set: DetectionSet, cfg: Config, budget: str) -> str | None:
    """A warning when ``budget`` (a fixed-size budget such as ``quick``) shrinks the user's images: the
    factor, the median object before and after, and the way out (``--budget auto``); None otherwise."""
    if not train_set.images:
        return None
    hw = np.array([(r.height, r.width) for r in train_set.images], np.float64)
    med_short = float(np.median(hw.min(axis=1)))
    eval_short = cfg.data.min_size if isinstance(cfg.data.min_size, int) else max(cfg.data.min_size)
    native_obj, obj = _median_object(train_set, eval_short, cfg.data.max_size)
    factor = med_short / eval_short
    if factor <= 1.05:
        return None
    objects = "" if obj is None else f"; the median object from {native_obj:.0f} px to {obj:.0f} px"
    return (
        f"the {budget} budget trains at {eval_short}/{cfg.data.max_size} px: your images (median shorter "
        f"side {med_short:.0f} px) are shrunk {factor:.1f}x{objects}. --budget auto keeps their resolution"
    )
