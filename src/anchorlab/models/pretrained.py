"""torchvision's COCO-trained detectors as anchorlab weights files, with identical detections.

``TORCHVISION_MODELS`` holds, per torchvision builder name, a declarative ``TorchvisionModel``: the
anchorlab config that describes the torchvision model exactly (resize, normalisation, anchors, box
coding, thresholds, detections per image) and the table of ``Rule``s that rename its state-dict keys
(regular expressions over torchvision's current key names) and, for class-specific layers, select
COCO's 80 classes and reorder anchors. Tensors anchorlab has and torchvision lacks are ``Fill``ed (e.g.
FCOS's per-level scales = 1, which torchvision's FCOS does not have). Models anchorlab cannot
reproduce have a ``reason`` instead.

What differs and how the config absorbs it:

* torchvision's label ``i`` is COCO category id ``i`` (91 outputs, 10 of them "N/A" ids no image
  uses); anchorlab has 80 contiguous labels whose ``categories`` carry the COCO ids. Sigmoid heads
  simply drop the N/A channels; Faster R-CNN's softmax keeps them as ``model.roi.void_classes`` so
  that its probabilities stay the same, and its background row moves from first to after the classes.
* torchvision enumerates a location's anchors ratio-major, anchorlab size-major: the RetinaNet
  head's output channels are permuted. torchvision rounds base anchors to integers and truncates
  the octave sizes (32, 40, 50): ``model.anchors.round`` and explicit ``model.anchors.sizes``.
* FCOS points are torchvision's anchor centres, at cell corners: ``model.fcos.point_offset: 0``; its
  tower convs have a bias before GroupNorm: ``model.head.conv_bias: true``.
* Faster R-CNN's P6 is a stride-2 subsampling of P5 (``LastLevelMaxPool``); anchorlab's P6 conv gets
  the identity kernel (centre tap 1), which computes exactly that.
* torchvision spaces each level's anchors by ``canvas // feature size`` per axis (61 instead of 64 on
  P6 of an 800-px canvas): ``model.anchors.canvas_strides``. RetinaNet and FCOS keep boxes that
  clipping made empty: ``model.inference.keep_empty_boxes``. Its resize floors a float32-scaled size
  and interpolates the float image without antialiasing: ``data.resize: torchvision``.

Detections then equal torchvision's on the same image files, as long as torchvision's N/A ids
never score above the threshold (true of its published weights, which never saw them as positives).

The source is torchvision's published file in torch's hub cache (downloaded on first use, see
``models/hub.py``) or a local ``.pth`` state dict; either is first loaded into torchvision's own model
(``weights=None``) so that its key-upgrade logic applies, then converted.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torchvision

from anchorlab.config import Config
from anchorlab.models.hub import hub_state_dict, read_state_dict

__all__ = [
    "COCO_CATEGORIES",
    "TORCHVISION_MODELS",
    "TorchvisionImportError",
    "TorchvisionModel",
    "convert_state_dict",
    "import_torchvision",
]

_TV_CATEGORIES: list[str] = torchvision.models.get_model_weights("retinanet_resnet50_fpn").COCO_V1.meta[
    "categories"
]
#: COCO's 80 classes: torchvision's label index is the COCO category id; "N/A" ids are unused.
COCO_CATEGORIES: list[dict[str, Any]] = [
    {"id": i, "name": name} for i, name in enumerate(_TV_CATEGORIES) if i > 0 and name != "N/A"
]
_COCO_IDS = [c["id"] for c in COCO_CATEGORIES]
_VOID_IDS = [i for i, name in enumerate(_TV_CATEGORIES) if name == "N/A"]


class TorchvisionImportError(ValueError):
    """A torchvision model that cannot be imported, or a file that does not fit it (one line)."""


# -- tensor transforms for class-specific layers -------------------------------------------------------
def _anchor_perm(num_sizes: int, num_ratios: int) -> list[int]:
    """For anchorlab's anchor ``a = s * R + r`` (size-major), torchvision's index ``r * S + s``."""
    return [r * num_sizes + s for s in range(num_sizes) for r in range(num_ratios)]


def _per_anchor(tensor: torch.Tensor, anchors: int, perm: list[int], rows: list[int] | None) -> torch.Tensor:
    """``[A * C, ...]`` -> anchors reordered by ``perm`` and, per anchor, the channels ``rows``."""
    out = tensor.reshape(anchors, -1, *tensor.shape[1:])[perm]
    if rows is not None:
        out = out[:, rows]
    return out.reshape(-1, *tensor.shape[1:])


def retina_classes(num_sizes: int = 3, num_ratios: int = 3) -> Callable[[torch.Tensor], torch.Tensor]:
    """RetinaNet's ``cls_logits``: COCO's 80 class channels of each anchor, anchors size-major."""
    perm = _anchor_perm(num_sizes, num_ratios)
    return lambda t: _per_anchor(t, num_sizes * num_ratios, perm, _COCO_IDS)


def retina_boxes(num_sizes: int = 3, num_ratios: int = 3) -> Callable[[torch.Tensor], torch.Tensor]:
    """RetinaNet's ``bbox_reg``: anchors size-major."""
    perm = _anchor_perm(num_sizes, num_ratios)
    return lambda t: _per_anchor(t, num_sizes * num_ratios, perm, None)


def coco_rows(t: torch.Tensor) -> torch.Tensor:
    """One output per class (FCOS ``cls_logits``): COCO's 80 rows."""
    return t[_COCO_IDS]


def roi_classes(t: torch.Tensor) -> torch.Tensor:
    """Fast R-CNN ``cls_score``: the 80 classes, background (torchvision's row 0), then the void ids."""
    return t[[*_COCO_IDS, 0, *_VOID_IDS]]


def roi_boxes(t: torch.Tensor) -> torch.Tensor:
    """Fast R-CNN ``bbox_pred`` ``[91 * 4, ...]``: the 80 classes' deltas."""
    return t.reshape(len(_TV_CATEGORIES), 4, *t.shape[1:])[_COCO_IDS].reshape(-1, *t.shape[1:])


def identity_kernel(t: torch.Tensor) -> torch.Tensor:
    """A 3x3 conv kernel ``[C, C, 3, 3]`` passing each channel's centre tap: with stride 2 and padding 1
    it computes ``max_pool2d(x, 1, 2)`` (torchvision's ``LastLevelMaxPool``)."""
    out = torch.zeros_like(t)
    channels = torch.arange(t.shape[0])
    out[channels, channels, t.shape[2] // 2, t.shape[3] // 2] = 1.0
    return out


# -- the declarative tables ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Rule:
    """torchvision keys matching ``source`` (a regex, fully matched) become ``target`` (``re`` template),
    optionally through ``transform`` (class selection, anchor order)."""

    source: str
    target: str
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None


@dataclass(frozen=True)
class Fill:
    """anchorlab tensors (``key`` regex) that torchvision lacks: ``value(like) -> tensor``."""

    key: str
    value: Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class TorchvisionModel:
    """One torchvision detector: the anchorlab config describing it and its key table, or why not."""

    name: str
    config: dict[str, Any] = field(default_factory=dict)
    rules: tuple[Rule, ...] = ()
    fills: tuple[Fill, ...] = ()
    reason: str | None = None


_BACKBONE_RULES = (
    Rule(r"backbone\.body\.(.+)", r"backbone.body.\1"),
    Rule(r"backbone\.fpn\.(inner|layer)_blocks\.(\d+)\.0\.(weight|bias)", r"backbone.fpn.\1_blocks.\2.0.\3"),
)
_P6P7_RULES = (
    Rule(r"backbone\.fpn\.extra_blocks\.p6\.(weight|bias)", r"backbone.fpn.extra_blocks.convs.0.\1"),
    Rule(r"backbone\.fpn\.extra_blocks\.p7\.(weight|bias)", r"backbone.fpn.extra_blocks.convs.1.\1"),
)
_R50_FROZEN = {"name": "resnet50", "norm": "frozen_bn", "weights": "imagenet_v1", "trainable_layers": 3}
_P3_P7 = {"channels": 256, "min_level": 3, "max_level": 7}
#: torchvision's RetinaNet anchors: (x, int(x 2^(1/3)), int(x 2^(2/3))) for x = 32 .. 512.
_RETINA_SIZES = [[x, int(x * 2 ** (1 / 3)), int(x * 2 ** (2 / 3))] for x in (32, 64, 128, 256, 512)]
_DATA = {"min_size": 800, "max_size": 1333, "resize": "torchvision"}

TORCHVISION_MODELS: dict[str, TorchvisionModel] = {
    "retinanet_resnet50_fpn": TorchvisionModel(
        name="retinanet_resnet50_fpn",
        config={
            "detector": "retinanet",
            "backbone": _R50_FROZEN,
            "fpn": _P3_P7,
            "head": {"channels": 256, "num_convs": 4, "norm": "none", "prior_prob": 0.01},
            "anchors": {
                "sizes": _RETINA_SIZES,
                "aspect_ratios": [0.5, 1.0, 2.0],
                "round": True,
                "canvas_strides": True,
            },
            "assign": {"pos_iou": 0.5, "neg_iou": 0.4, "low_quality": True},
            "loss": {"focal_alpha": 0.25, "focal_gamma": 2.0, "box": "l1"},
            "box_coder_stds": [1.0, 1.0, 1.0, 1.0],
            "inference": {
                "score_thresh": 0.05,
                "topk_per_level": 1000,
                "nms_iou": 0.5,
                "max_detections": 300,
                "keep_empty_boxes": True,
            },
        },
        rules=(
            *_BACKBONE_RULES,
            *_P6P7_RULES,
            Rule(r"head\.classification_head\.conv\.(\d)\.0\.(weight|bias)", r"head.cls_tower.{2*\1}.\2"),
            Rule(r"head\.regression_head\.conv\.(\d)\.0\.(weight|bias)", r"head.box_tower.{2*\1}.\2"),
            Rule(
                r"head\.classification_head\.cls_logits\.(weight|bias)",
                r"head.cls_logits.\1",
                retina_classes(),
            ),
            Rule(r"head\.regression_head\.bbox_reg\.(weight|bias)", r"head.bbox_pred.\1", retina_boxes()),
        ),
        fills=(Fill(r"head\.loss_normalizer", lambda t: t),),  # anchorlab's training state, kept
    ),
    "fcos_resnet50_fpn": TorchvisionModel(
        name="fcos_resnet50_fpn",
        config={
            "detector": "fcos",
            "backbone": _R50_FROZEN,
            "fpn": _P3_P7,
            "head": {"channels": 256, "num_convs": 4, "norm": "gn", "prior_prob": 0.01, "conv_bias": True},
            "anchors": {"canvas_strides": True},
            "fcos": {"point_offset": 0.0, "center_sampling_radius": 1.5, "norm_on_bbox": True},
            "loss": {"focal_alpha": 0.25, "focal_gamma": 2.0, "box": "giou"},
            "inference": {
                "score_thresh": 0.2,
                "topk_per_level": 1000,
                "nms_iou": 0.6,
                "max_detections": 100,
                "keep_empty_boxes": True,
            },
        },
        rules=(
            *_BACKBONE_RULES,
            *_P6P7_RULES,
            Rule(r"head\.classification_head\.conv\.(\d+)\.(weight|bias)", r"head.cls_tower.\1.\2"),
            Rule(r"head\.regression_head\.conv\.(\d+)\.(weight|bias)", r"head.box_tower.\1.\2"),
            Rule(r"head\.classification_head\.cls_logits\.(weight|bias)", r"head.cls_logits.\1", coco_rows),
            Rule(r"head\.regression_head\.bbox_reg\.(weight|bias)", r"head.bbox_pred.\1"),
            Rule(r"head\.regression_head\.bbox_ctrness\.(weight|bias)", r"head.centerness.\1"),
        ),
        fills=(Fill(r"head\.scales", torch.ones_like),),  # torchvision's FCOS has no per-level scale
    ),
    "fasterrcnn_resnet50_fpn": TorchvisionModel(
        name="fasterrcnn_resnet50_fpn",
        config={
            "detector": "faster_rcnn",
            "backbone": _R50_FROZEN,
            "fpn": {"channels": 256, "min_level": 2, "max_level": 6},
            "anchors": {
                "sizes": [[32], [64], [128], [256], [512]],
                "aspect_ratios": [0.5, 1.0, 2.0],
                "round": True,
                "canvas_strides": True,
            },
            "rpn": {
                "pos_iou": 0.7,
                "neg_iou": 0.3,
                "batch_size_per_image": 256,
                "positive_fraction": 0.5,
                "pre_nms_top_n": [2000, 1000],
                "post_nms_top_n": [2000, 1000],
                "nms_iou": 0.7,
                "min_size": 1e-3,
            },
            "roi": {
                "max_level": 5,
                "pooler_size": 7,
                "sampling_ratio": 2,
                "fc_channels": 1024,
                "pos_iou": 0.5,
                "batch_size_per_image": 512,
                "positive_fraction": 0.25,
                "box_coder_stds": [0.1, 0.1, 0.2, 0.2],
                "void_classes": len(_VOID_IDS),
            },
            "inference": {"score_thresh": 0.05, "nms_iou": 0.5, "max_detections": 100},
        },
        rules=(
            *_BACKBONE_RULES,
            Rule(r"rpn\.head\.conv\.0\.0\.(weight|bias)", r"head.rpn.head.conv.\1"),
            Rule(r"rpn\.head\.cls_logits\.(weight|bias)", r"head.rpn.head.objectness.\1"),
            Rule(r"rpn\.head\.bbox_pred\.(weight|bias)", r"head.rpn.head.bbox_pred.\1"),
            Rule(r"roi_heads\.box_head\.fc6\.(weight|bias)", r"head.roi.fc1.\1"),
            Rule(r"roi_heads\.box_head\.fc7\.(weight|bias)", r"head.roi.fc2.\1"),
            Rule(
                r"roi_heads\.box_predictor\.cls_score\.(weight|bias)", r"head.roi.cls_score.\1", roi_classes
            ),
            Rule(r"roi_heads\.box_predictor\.bbox_pred\.(weight|bias)", r"head.roi.bbox_pred.\1", roi_boxes),
        ),
        fills=(
            Fill(r"backbone\.fpn\.extra_blocks\.convs\.0\.weight", identity_kernel),
            Fill(r"backbone\.fpn\.extra_blocks\.convs\.0\.bias", torch.zeros_like),
        ),
    ),
    "retinanet_resnet50_fpn_v2": TorchvisionModel(
        name="retinanet_resnet50_fpn_v2",
        reason=(
            "its P6 is a 3x3 conv on C5 (LastLevelP6P7(2048, 256)) while anchorlab computes P6 from P5, "
            "so its P6/P7 weights have no place in anchorlab's pyramid"
        ),
    ),
    "fasterrcnn_resnet50_fpn_v2": TorchvisionModel(
        name="fasterrcnn_resnet50_fpn_v2",
        reason=(
            "its FPN and RPN use BatchNorm and its box head is 4 convs + 1 FC "
            "(FastRCNNConvFCHead); anchorlab's Faster R-CNN has a norm-free FPN and the 2-FC box head"
        ),
    ),
}


# -- conversion ----------------------------------------------------------------------------------------
def _render(template: str, match: re.Match[str]) -> str:
    """``re`` template with ``{2*\\1}`` arithmetic on a group (tower index -> Sequential index)."""
    text = re.sub(
        r"\{(\d+)\*\\(\d)\}", lambda m: str(int(m.group(1)) * int(match.group(int(m.group(2))))), template
    )
    return match.expand(text)


def convert_state_dict(
    spec: TorchvisionModel, tv_state: dict[str, torch.Tensor], target: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """torchvision's state dict -> anchorlab's, complete and shape-checked against ``target`` (the
    anchorlab model's own state dict). Raises ``TorchvisionImportError`` listing unmapped keys on either
    side or mismatched shapes (never silently skipped)."""
    out: dict[str, torch.Tensor] = {}
    unmapped = []
    for key, tensor in tv_state.items():
        if key.endswith("num_batches_tracked"):
            continue  # BatchNorm's counter; FrozenBatchNorm2d has none
        for rule in spec.rules:
            match = re.fullmatch(rule.source, key)
            if match:
                out[_render(rule.target, match)] = rule.transform(tensor) if rule.transform else tensor
                break
        else:
            unmapped.append(key)
    for fill in spec.fills:
        for key, like in target.items():
            if re.fullmatch(fill.key, key) and key not in out:
                out[key] = fill.value(like)
    missing = sorted(k for k in target if k not in out and not k.endswith("num_batches_tracked"))
    unexpected = sorted(k for k in out if k not in target) + unmapped
    wrong = [
        f"{k} {tuple(out[k].shape)} vs {tuple(target[k].shape)}"
        for k in out
        if k in target and out[k].shape != target[k].shape
    ]
    if missing or unexpected or wrong:
        raise TorchvisionImportError(
            f"{spec.name}: the key table does not fit: {len(missing)} anchorlab keys not filled "
            f"(e.g. {missing[:3]}), {len(unexpected)} torchvision keys not mapped (e.g. {unexpected[:3]}), "
            f"{len(wrong)} shapes differ (e.g. {wrong[:3]})"
        )
    return {k: v.to(target[k].dtype).contiguous() for k, v in out.items()}


def _spec(name: str) -> TorchvisionModel:
    spec = TORCHVISION_MODELS.get(name)
    if spec is None:
        raise TorchvisionImportError(
            f"torchvision:{name} is not a known torchvision detector; importable: "
            f"{', '.join(n for n, s in TORCHVISION_MODELS.items() if s.reason is None)}"
        )
    if spec.reason is not None:
        raise TorchvisionImportError(f"torchvision:{name} cannot be imported exactly: {spec.reason}")
    return spec


def _torchvision_state(name: str, weights_file: str | Path | None) -> dict[str, torch.Tensor]:
    """The published (hub cache) or local state dict, passed through torchvision's own model so that its
    key upgrades apply; a file that does not fit that model is an ``TorchvisionImportError``."""
    if weights_file is None:
        weights = torchvision.models.get_model_weights(name).DEFAULT
        state = hub_state_dict(weights.url, f"COCO ({weights}) {name}")
        source = str(weights.url)
    else:
        state = read_state_dict(weights_file, f"torchvision {name} weights")
        source = str(weights_file)
    model = torchvision.models.get_model(name, weights=None, weights_backbone=None, num_classes=91)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        first = " ".join(str(exc).split())[:300]
        raise TorchvisionImportError(f"{source} does not fit torchvision's {name}: {first}") from None
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise TorchvisionImportError(
            f"{source} does not fit torchvision's {name}: {len(missing)} missing keys (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected (e.g. {list(unexpected)[:3]})"
        )
    return model.state_dict()


def import_torchvision(name: str, weights_file: str | Path | None = None) -> dict[str, Any]:
    """An anchorlab weights file's content (``format``, ``model``, ``config``, ``categories``,
    ``iteration`` 0, ``metrics`` {}) for torchvision's ``name`` with its published COCO weights (hub
    cache, downloaded on first use) or the state dict in ``weights_file``."""
    from anchorlab.models.build import build_detector

    spec = _spec(name)
    cfg = Config.model_validate(
        {
            "model": {**spec.config, "num_classes": len(COCO_CATEGORIES)},
            "data": _DATA,
            "train": {"out": f"runs/{name}"},
        }
    )
    tv_state = _torchvision_state(name, weights_file)
    model = build_detector(cfg, pretrained=False)
    state = convert_state_dict(spec, tv_state, model.state_dict())
    model.load_state_dict(state)
    return {
        "format": "anchorlab/1",
        "model": model.state_dict(),
        "config": cfg.model_dump(mode="json"),
        "categories": [dict(c) for c in COCO_CATEGORIES],
        "iteration": 0,
        "metrics": {},
    }
