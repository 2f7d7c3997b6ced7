"""Budgets for ``anchorlab compare``: one data + train block shared by every detector, and per-detector
model sections that differ only where the detector's design needs it (head, anchors, levels).

Kept inside the package (not in ``configs/``) so an installed anchorlab compares detectors without the
repository. ``auto`` takes the quick model sections and sizes data + schedule to the user's data
(``compare.auto``). ``quick`` model sections equal the ``model:`` sections of ``configs/*_quick.yaml`` (a test
pins it); ``tiny`` shrinks them for tests; ``standard`` is the COCO 1x recipe for GPU machines.
"""

from __future__ import annotations

import copy
from typing import Any

__all__ = ["BUDGETS", "budget_tree", "check_budget", "has_preset", "model_tree", "shared_model"]

Tree = dict[str, Any]

#: Budget name -> one-line description (shown by ``anchorlab compare --help`` and in docs/compare.md).
BUDGETS: dict[str, str] = {
    "auto": "your data (--data): size, anchors, length and augmentation chosen from it; quick models",
    "quick": "built-in synthetic data (128 px, 400 images), ResNet-18 FPN, 600 iterations: CPU minutes",
    "tiny": "16 synthetic 96 px images, 6 iterations, 16-channel FPN: seconds, for tests",
    "standard": "COCO-like 1x (90k iterations, 16 per batch, 800/1333 px), ResNet-50 FPN: GPU, needs --data",
}

# -- data + train blocks (shared by every detector of a budget) ------------------------------------------

_QUICK_DATA: Tree = {
    "train": "data/synth/train.json",
    "val": "data/synth/val.json",
    "synthetic": {"images": 400, "seed": 0, "size": 128, "classes": 3},
    "min_size": 128,
    "max_size": 128,
    "hflip": 0.5,
}
_QUICK_TRAIN: Tree = {
    "iterations": 600,
    "batch_size": 8,
    "optimizer": "adamw",
    "lr": 0.002,
    "weight_decay": 0.05,
    "warmup_iters": 50,
    "schedule": "cosine",
    "clip_grad": 10.0,
    # bfloat16 autocast where the CPU runs it natively (faster steps, AP within noise), and an
    # EMA of the weights spanning the last ~third of the run for evaluation (docs/training.md).
    "amp": "auto",
    "ema": True,
    "ema_decay": 0.995,
    "ema_tau": 100,
    "checkpoint_every": 200,
    "log_every": 10,
    "seed": 0,
    "workers": 1,
}
_TINY_DATA: Tree = {
    "train": "data/synth_tiny/train.json",
    "val": "data/synth_tiny/val.json",
    "synthetic": {"images": 16, "seed": 0, "size": 96, "classes": 3, "min_object": 20, "max_object": 48},
    "min_size": 96,
    "max_size": 96,
    "hflip": 0.5,
}
_TINY_TRAIN: Tree = {
    "iterations": 6,
    "batch_size": 2,
    "optimizer": "adamw",
    "lr": 0.001,
    "warmup_iters": 2,
    "schedule": "cosine",
    "clip_grad": 10.0,
    "checkpoint_every": 6,
    "log_every": 1,
    "seed": 0,
    "workers": 0,
}
_STANDARD_DATA: Tree = {"train": None, "val": None, "min_size": 800, "max_size": 1333, "hflip": 0.5}
_STANDARD_TRAIN: Tree = {
    "preset": "1x",
    "batch_size": 16,
    "optimizer": "sgd",
    "lr": 0.01,
    "momentum": 0.9,
    "weight_decay": 0.0001,
    "warmup_iters": 500,
    "warmup_factor": 0.001,
    "schedule": "step",
    "checkpoint_every": 5000,
    "seed": 0,
    "workers": 4,
}
#: The auto budget starts from the quick recipe on the user's data; ``compare.auto`` then sizes it.
_AUTO_DATA: Tree = {k: v for k, v in _QUICK_DATA.items() if k != "synthetic"} | {"train": None, "val": None}
_DATA_TRAIN: dict[str, tuple[Tree, Tree]] = {
    "auto": (_AUTO_DATA, {**_QUICK_TRAIN, "preset": "auto"}),
    "quick": (_QUICK_DATA, _QUICK_TRAIN),
    "tiny": (_TINY_DATA, _TINY_TRAIN),
    "standard": (_STANDARD_DATA, _STANDARD_TRAIN),
}

# -- model sections ------------------------------------------------------------------------------------

_INFERENCE: Tree = {"score_thresh": 0.05, "topk_per_level": 1000, "nms_iou": 0.5, "max_detections": 100}
_R18: Tree = {"name": "resnet18", "norm": "bn"}
_P3_P5_64: Tree = {"channels": 64, "min_level": 3, "max_level": 5}
_HEAD_64: Tree = {"channels": 64, "num_convs": 2, "norm": "gn"}
_QUICK_ANCHORS: Tree = {"octave_base_scale": 2, "scales_per_octave": 3, "aspect_ratios": [0.5, 1.0, 2.0]}
_FREE_ANCHOR: Tree = {"bag_size": 50, "bbox_thr": 0.6, "alpha": 0.5, "gamma": 2.0, "reg_weight": 0.75}
_FCOS: Tree = {
    "center_sampling_radius": 1.5,
    "regress_ranges": None,
    "centerness_on_reg": True,
    "norm_on_bbox": True,
}

_QUICK_MODELS: dict[str, Tree] = {
    "retinanet": {
        "detector": "retinanet",
        "backbone": _R18,
        "fpn": _P3_P5_64,
        "head": _HEAD_64,
        "anchors": _QUICK_ANCHORS,
        "loss": {"box": "giou", "box_weight": 2.0},
        "inference": _INFERENCE,
    },
    "free_anchor": {
        "detector": "free_anchor",
        "backbone": _R18,
        "fpn": _P3_P5_64,
        "head": _HEAD_64,
        "anchors": _QUICK_ANCHORS,
        "free_anchor": _FREE_ANCHOR,
        "inference": _INFERENCE,
    },
    "fcos": {
        "detector": "fcos",
        "backbone": _R18,
        "fpn": _P3_P5_64,
        "head": _HEAD_64,
        "fcos": _FCOS,
        "loss": {"box": "giou", "box_weight": 1.0},
        "inference": _INFERENCE,
    },
    "centernet": {
        "detector": "centernet",
        "backbone": _R18,
        # CenterNet reads P2 (stride 4, its output stride); the FPN's top-down path brings C3-C5 there.
        "fpn": {"channels": 64, "min_level": 2, "max_level": 5},
        "head": {"channels": 64},
        "centernet": {
            "min_overlap": 0.7,
            "heatmap_weight": 1.0,
            "size_weight": 0.1,
            "offset_weight": 1.0,
            "topk": 100,
        },
        "inference": {"score_thresh": 0.05, "max_detections": 100},
    },
    "grid": {
        "detector": "grid",
        "backbone": _R18,
        "fpn": _P3_P5_64,
        "head": _HEAD_64,
        "grid": {
            "size_ranges": None,
            "collision": "nearest",
            "box_loss": "giou",
            "obj_weight": 1.0,
            "cls_weight": 2.0,
            "box_weight": 5.0,
        },
        "inference": _INFERENCE,
    },
    "faster_rcnn": {
        "detector": "faster_rcnn",
        "backbone": _R18,
        "fpn": {"channels": 64, "min_level": 2, "max_level": 6},
        "anchors": {"sizes": [[16], [32], [64], [128], [256]], "aspect_ratios": [0.5, 1.0, 2.0]},
        "rpn": {
            "pos_iou": 0.7,
            "neg_iou": 0.3,
            "batch_size_per_image": 256,
            "positive_fraction": 0.5,
            "pre_nms_top_n": [300, 300],
            "post_nms_top_n": [100, 100],
            "nms_iou": 0.7,
        },
        "roi": {
            "max_level": 5,
            "pooler_size": 7,
            "sampling_ratio": 1,  # RoIAlign's CPU backward dominated the step at 2 (docs/architecture.md)
            "fc_channels": 256,
            "pos_iou": 0.5,
            "batch_size_per_image": 64,
            "positive_fraction": 0.25,
        },
        "inference": {"score_thresh": 0.05, "nms_iou": 0.5, "max_detections": 100},
    },
}

_R50: Tree = {"name": "resnet50", "norm": "frozen_bn", "weights": "imagenet", "trainable_layers": 3}
_P3_P7_256: Tree = {"channels": 256, "min_level": 3, "max_level": 7}
#: One head for every detector: GroupNorm as in FCOS (RetinaNet's paper head has none:
#: ``--set model.head.norm=none``).
_HEAD_256: Tree = {"channels": 256, "num_convs": 4, "norm": "gn", "prior_prob": 0.01}
_STD_ANCHORS: Tree = {"octave_base_scale": 4, "scales_per_octave": 3, "aspect_ratios": [0.5, 1.0, 2.0]}

_STANDARD_MODELS: dict[str, Tree] = {
    "retinanet": {
        "detector": "retinanet",
        "backbone": _R50,
        "fpn": _P3_P7_256,
        "head": _HEAD_256,
        "anchors": _STD_ANCHORS,
        "assign": {"pos_iou": 0.5, "neg_iou": 0.4, "low_quality": True},
        "loss": {"focal_alpha": 0.25, "focal_gamma": 2.0, "box": "smooth_l1", "smooth_l1_beta": 0.11},
        "inference": _INFERENCE,
    },
    "free_anchor": {
        "detector": "free_anchor",
        "backbone": _R50,
        "fpn": _P3_P7_256,
        "head": _HEAD_256,
        "anchors": _STD_ANCHORS,
        "free_anchor": _FREE_ANCHOR,
        "inference": _INFERENCE,
    },
    "fcos": {
        "detector": "fcos",
        "backbone": _R50,
        "fpn": _P3_P7_256,
        "head": _HEAD_256,
        "fcos": _FCOS,
        "loss": {"box": "giou"},
        "inference": _INFERENCE,
    },
    "centernet": {
        "detector": "centernet",
        "backbone": _R50,
        "fpn": {"channels": 256, "min_level": 2, "max_level": 5},
        "head": {"channels": 256},
        "inference": {"score_thresh": 0.05, "max_detections": 100},
    },
    "grid": {
        "detector": "grid",
        "backbone": _R50,
        "fpn": {"channels": 256, "min_level": 3, "max_level": 5},
        "head": _HEAD_256,
        "inference": _INFERENCE,
    },
    "faster_rcnn": {  # as configs/faster_rcnn_r50_fpn_1x.yaml (RPN on P2-P6, RoIAlign 7x7, 2-FC 1024 head)
        "detector": "faster_rcnn",
        "backbone": _R50,
        "fpn": {"channels": 256, "min_level": 2, "max_level": 6},
        "anchors": {"sizes": [[32], [64], [128], [256], [512]], "aspect_ratios": [0.5, 1.0, 2.0]},
        "rpn": {
            "pos_iou": 0.7,
            "neg_iou": 0.3,
            "batch_size_per_image": 256,
            "positive_fraction": 0.5,
            "pre_nms_top_n": [2000, 1000],
            "post_nms_top_n": [1000, 1000],
            "nms_iou": 0.7,
        },
        "roi": {
            "max_level": 5,
            "pooler_size": 7,
            "sampling_ratio": 2,
            "fc_channels": 1024,
            "pos_iou": 0.5,
            "batch_size_per_image": 512,
            "positive_fraction": 0.25,
        },
        "inference": {"score_thresh": 0.05, "nms_iou": 0.5, "max_detections": 100},
    },
}


def _tiny(model: Tree) -> Tree:
    """A quick model section at tiny widths (16-channel FPN and head, one tower conv)."""
    out = copy.deepcopy(model)
    out["fpn"] = {**out["fpn"], "channels": 16}
    if "head" in out:
        out["head"] = {**out["head"], "channels": 16, "num_convs": 1}
    if "roi" in out:
        out["roi"] = {**out["roi"], "fc_channels": 64}
    return out


def shared_model(budget: str) -> Tree:
    """The part of the model section every detector of ``budget`` shares (backbone, FPN width, head, NMS);
    what a detector without a preset of its own gets."""
    check_budget(budget)
    quick = {
        "backbone": _R18,
        "fpn": _P3_P5_64,
        "head": _HEAD_64,
        "inference": _INFERENCE,
    }
    if budget == "standard":
        shared = {"backbone": _R50, "fpn": _P3_P7_256, "head": _HEAD_256, "inference": _INFERENCE}
    else:
        shared = _tiny(quick) if budget == "tiny" else quick
    return copy.deepcopy(shared)


def check_budget(budget: str) -> None:
    if budget not in BUDGETS:
        raise ValueError(f"unknown budget {budget!r}; available budgets: {', '.join(BUDGETS)}")


def has_preset(detector: str) -> bool:
    """Whether ``detector`` has its own model section (else it gets ``shared_model``)."""
    return detector in _QUICK_MODELS


def model_tree(detector: str, budget: str) -> Tree:
    """The ``model:`` section of ``detector`` for ``budget`` (a fresh copy); a detector without a preset
    of its own gets the budget's shared section with ``detector`` set."""
    check_budget(budget)
    if not has_preset(detector):
        return {"detector": detector, **shared_model(budget)}
    if budget == "standard":
        return copy.deepcopy(_STANDARD_MODELS[detector])
    quick = _QUICK_MODELS[detector]
    return _tiny(quick) if budget == "tiny" else copy.deepcopy(quick)


def budget_tree(budget: str) -> Tree:
    """``{"data": ..., "train": ...}`` of ``budget`` (a fresh copy), the same for every detector."""
    check_budget(budget)
    data, train = _DATA_TRAIN[budget]
    return {"data": copy.deepcopy(data), "train": copy.deepcopy(train)}
