"""Backbones (torchvision classification networks) + FPN, returning ``P_min .. P_max`` as a list.

``build_backbone(name, ...)`` builds a torchvision ResNet / ResNeXt / MobileNetV3, takes its stride
``2**l`` stages ``C_l`` for ``l`` in ``min_level .. min(max_level, 5)`` with
``torchvision.models._utils.IntermediateLayerGetter``, runs ``torchvision.ops.FeaturePyramidNetwork``
on them and adds the coarser levels ``P6 .. P_max`` RetinaNet-style: a stride-2 3x3 conv on **P5**
for P6, then ReLU + stride-2 3x3 conv for each further level.

Which input P6 uses differs between implementations. torchvision's ``LastLevelP6P7(in, out)`` takes
P5 when ``in == out`` (``retinanet_resnet50_fpn``, FCOS, the FreeAnchor authors' code) and C5 otherwise
(``retinanet_resnet50_fpn_v2``, the RetinaNet paper, detectron2, mmdetection's
``add_extra_convs='on_input'``). ``p6_from="p5"`` (the default) does not depend on the body's channel
count and is cheaper (256 instead of 2048 input channels); ``p6_from="c5"`` reproduces the others. With
``max_level == 7`` the extra block is exactly ``LastLevelP6P7(C5 or C, C)`` (same layers and
initialisation); ``LastLevelsP6Plus`` generalises it to any number of extra levels.

``resnext101_32x4d`` (no torchvision builder) is torchvision's ``ResNet`` with ``Bottleneck`` blocks
``[3, 4, 23, 3]``, ``groups=32``, ``width_per_group=4``: the state-dict keys of torchvision's ResNeXts.

Weights: ``None`` = random init; a path = a local state dict (read with ``weights_only=True``);
``"imagenet"`` / ``"imagenet_v1"`` = torchvision's published ImageNet weights (its ``DEFAULT`` /
``IMAGENET1K_V1``), opt-in, fetched through torch's hub cache and checksum-verified (``models/hub.py``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.resnet import Bottleneck, ResNet
from torchvision.ops import FeaturePyramidNetwork, FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock

from anchorlab.models.hub import hub_state_dict, read_state_dict

__all__ = [
    "BACKBONES",
    "IMAGENET_WEIGHTS",
    "P6_SOURCES",
    "BackboneFPN",
    "LastLevelsP6Plus",
    "build_backbone",
    "imagenet_weights",
    "load_backbone_weights",
]

_RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnext101_32x4d", "resnext101_32x8d")
BACKBONES = (*_RESNETS, "mobilenet_v3_large")
NORMS = ("bn", "frozen_bn", "gn")
P6_SOURCES = ("p5", "c5")


def _resnext101_32x4d(*, weights: None = None, norm_layer: Callable[..., nn.Module]) -> ResNet:
    """ResNeXt-101 32x4d (the backbone of mmdetection's X-101-32x4d rows), randomly initialised."""
    return ResNet(Bottleneck, [3, 4, 23, 3], groups=32, width_per_group=4, norm_layer=norm_layer)


#: Bodies torchvision has no builder for, built from its public ResNet classes.
_EXTRA_BODIES: dict[str, Callable[..., nn.Module]] = {"resnext101_32x4d": _resnext101_32x4d}

#: mobilenet_v3_large ``features`` index of the last block of each stride ``2**level`` (C2..C5).
_MOBILENET_STAGES = {2: 3, 3: 6, 4: 12, 5: 16}
#: mobilenet_v3_large ``features`` index where each of its 5 stages (strides 2, 4, 8, 16, 32) starts.
_MOBILENET_STAGE_STARTS = (0, 2, 4, 7, 13)


def _group_norm(num_channels: int, groups: int = 32) -> nn.GroupNorm:
    """GroupNorm with ``groups`` groups, or the largest divisor of ``num_channels`` below it."""
    return nn.GroupNorm(math.gcd(groups, num_channels), num_channels)


def _norm_layer(norm: str, mobilenet: bool) -> Callable[..., nn.Module]:
    if norm == "bn":
        # MobileNetV3's eps, but torch's default momentum 0.1, not torchvision's 0.01 (tuned for long
        # ImageNet runs): from scratch on short schedules the running statistics trail the changing
        # weights by ~100 steps and evaluation collapses (docs/architecture.md).
        return partial(nn.BatchNorm2d, eps=0.001) if mobilenet else nn.BatchNorm2d
    if norm == "frozen_bn":
        return partial(FrozenBatchNorm2d, eps=0.001) if mobilenet else FrozenBatchNorm2d
    if norm == "gn":
        return _group_norm
    raise ValueError(f"backbone norm {norm!r} is not one of {', '.join(NORMS)}")


class LastLevelsP6Plus(ExtraFPNBlock):
    """Extra pyramid levels above P5: ``P6 = conv3x3/2(P5)`` (or of C5 with ``in_channels`` its channels
    and ``from_c5``), ``P(l+1) = conv3x3/2(relu(P_l))``.

    For two levels this is torchvision's ``LastLevelP6P7(in_channels, C)`` (kaiming-uniform init).
    """

    def __init__(
        self, channels: int, num_levels: int, *, in_channels: int | None = None, from_c5: bool = False
    ) -> None:
        super().__init__()
        first = in_channels if in_channels is not None else channels
        self.convs = nn.ModuleList(
            nn.Conv2d(first if i == 0 else channels, channels, 3, 2, 1) for i in range(num_levels)
        )
        for conv in self.convs:
            nn.init.kaiming_uniform_(conv.weight, a=1)
            nn.init.constant_(conv.bias, 0)
        self.from_c5 = from_c5

    def forward(
        self, p: list[torch.Tensor], c: list[torch.Tensor], names: list[str]
    ) -> tuple[list[torch.Tensor], list[str]]:
        x = c[-1] if self.from_c5 else p[-1]
        for i, conv in enumerate(self.convs):
            x = conv(x if i == 0 else F.relu(x))
            p.append(x)
            names.append(f"p{6 + i}")
        return p, names


class BackboneFPN(nn.Module):
    """``body`` (an ``IntermediateLayerGetter``) + FPN. ``forward(x [B, 3, H, W])`` -> list of
    ``[B, out_channels, H / 2**l, W / 2**l]`` for ``l = min_level .. max_level``."""

    def __init__(
        self,
        body: nn.Module,
        in_channels: list[int],
        out_channels: int,
        min_level: int,
        max_level: int,
        p6_from: str = "p5",
    ) -> None:
        super().__init__()
        if p6_from not in P6_SOURCES:
            raise ValueError(f"p6_from {p6_from!r} is not one of {', '.join(P6_SOURCES)}")
        num_extra = max(0, max_level - 5)
        from_c5 = p6_from == "c5"
        extra = None
        if num_extra:  # created before the FPN's own layers, as always (same initialisation)
            c5 = in_channels[-1] if from_c5 else None
            extra = LastLevelsP6Plus(out_channels, num_extra, in_channels=c5, from_c5=from_c5)
        self.body = body
        self.fpn = FeaturePyramidNetwork(in_channels, out_channels, extra_blocks=extra)
        self.min_level, self.max_level = min_level, max_level
        self.out_channels = out_channels
        self.strides = [2**level for level in range(min_level, max_level + 1)]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.fpn(self.body(x)).values())


def _find_prefix(keys: set[str], body_keys: list[str]) -> str:
    """The prefix ``p`` such that ``p + k`` is in ``keys`` for most body keys ``k``."""
    candidates = {key[: -len(body_keys[0])] for key in keys if key.endswith(body_keys[0])}
    return max(candidates or {""}, key=lambda p: (sum(p + k in keys for k in body_keys), -len(p)))


def load_backbone_weights(body: nn.Module, path: str | Path, ignorable: Collection[str] = ()) -> None:
    """Load a local state dict into ``body`` strictly.

    Accepts a torchvision classification checkpoint (``conv1.weight`` ...; ``features.0.0.weight`` ...
    for MobileNet) or the same keys under any prefix (``backbone.body.``, ``module.``), e.g. an anchorlab
    detector checkpoint. Keys in ``ignorable`` (layers of the full network the body drops, like the
    classifier ``fc.*``) are skipped. Missing or unexpected keys and shape mismatches raise a
    ``ValueError`` listing a few of them.
    """
    path = Path(path)
    state = read_state_dict(path, "backbone weights (model.backbone.weights)")
    body_keys = list(body.state_dict())
    prefix = _find_prefix(set(state), body_keys)
    remapped = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    wanted = set(body_keys)
    # torchvision BatchNorm checkpoints carry num_batches_tracked; FrozenBatchNorm2d has none.
    missing = sorted(k for k in wanted - set(remapped) if not k.endswith("num_batches_tracked"))
    unexpected = sorted(
        k for k in set(remapped) - wanted - set(ignorable) if not k.endswith("num_batches_tracked")
    )
    if missing or unexpected:
        raise ValueError(
            f"backbone weights file {path} does not fit the backbone (key prefix used: {prefix!r}): "
            f"{len(missing)} missing keys (e.g. {missing[:4]}), {len(unexpected)} unexpected keys "
            f"(e.g. {unexpected[:4]}). Check model.backbone.name and model.backbone.norm "
            f"(a BatchNorm checkpoint does not fit norm 'gn')."
        )
    try:
        body.load_state_dict({k: v for k, v in remapped.items() if k in wanted}, strict=False)
    except RuntimeError as exc:
        raise ValueError(
            f"backbone weights file {path}: tensor shapes do not fit the backbone: {exc}"
        ) from None


#: ``model.backbone.weights`` values naming torchvision's published ImageNet weights, and the enum member.
IMAGENET_WEIGHTS = {"imagenet": "DEFAULT", "imagenet_v1": "IMAGENET1K_V1"}


def imagenet_weights(name: str, choice: str = "imagenet") -> torchvision.models.WeightsEnum:
    """torchvision's weights enum member for backbone ``name``: ``"imagenet"`` = its ``DEFAULT`` (the best
    published, e.g. ``IMAGENET1K_V2`` for resnet50), ``"imagenet_v1"`` = ``IMAGENET1K_V1``."""
    try:
        enum = torchvision.models.get_model_weights(name)
    except ValueError:
        enum = None
    member = getattr(enum, IMAGENET_WEIGHTS[choice], None) if enum is not None else None
    if member is None:
        raise ValueError(
            f"torchvision publishes no {choice} weights for backbone {name}; "
            f"set model.backbone.weights to a local state dict file"
        )
    return member


def _imagenet_state_dict(name: str, choice: str) -> dict[str, torch.Tensor]:
    """torchvision's ImageNet weights of ``name`` from the hub cache (downloaded on first use)."""
    weights = imagenet_weights(name, choice)
    return hub_state_dict(weights.url, f"ImageNet ({weights}) {name}")


def _freeze(stages: list[list[nn.Module]], trainable_layers: int) -> None:
    """Freeze all but the last ``trainable_layers`` of the five ``stages`` (torchvision's convention)."""
    if not 0 <= trainable_layers <= 5:
        raise ValueError(f"trainable_layers must be in 0..5, got {trainable_layers}")
    for stage in stages[: 5 - trainable_layers]:
        for module in stage:
            module.requires_grad_(False)


def build_backbone(
    name: str,
    *,
    weights: str | Path | None = None,
    norm: str = "bn",
    trainable_layers: int = 5,
    fpn_channels: int = 256,
    min_level: int = 3,
    max_level: int = 7,
    p6_from: str = "p5",
) -> BackboneFPN:
    """A torchvision backbone + FPN producing ``P_min_level .. P_max_level`` (strides ``2**level``).

    Args:
        name: one of ``BACKBONES``.
        weights: ``None`` (random init), a path to a local state dict, ``"imagenet"`` (torchvision's
            default ImageNet weights) or ``"imagenet_v1"`` (its ``IMAGENET1K_V1``), downloaded on first
            use into torch's hub cache (``anchorlab.models.hub``).
        norm: ``"bn"``, ``"frozen_bn"`` (``torchvision.ops.FrozenBatchNorm2d``) or ``"gn"`` (GroupNorm 32).
        trainable_layers: how many of the five stages (stem, then the stride 4/8/16/32 stages) train.
        fpn_channels: channels of every pyramid level.
        min_level, max_level: pyramid levels, ``2 <= min_level <= 5``, ``max_level >= min_level``.
        p6_from: ``"p5"`` or ``"c5"``, the input of P6 (see the module docstring).
    """
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; available: {', '.join(BACKBONES)}")
    if not 2 <= min_level <= 5 or max_level < min_level:
        raise ValueError(f"need 2 <= min_level <= 5 and max_level >= min_level, got {min_level}, {max_level}")
    mobilenet = name == "mobilenet_v3_large"
    if name in _EXTRA_BODIES:
        if weights is not None and str(weights) in IMAGENET_WEIGHTS:
            raise ValueError(
                f"torchvision has no ImageNet weights of {name}: point model.backbone.weights at a local "
                "state dict with torchvision ResNeXt keys (conv1.weight, layer1.0.conv2.weight, ...)"
            )
        net = _EXTRA_BODIES[name](norm_layer=_norm_layer(norm, mobilenet))
    else:
        net = torchvision.models.get_model(name, weights=None, norm_layer=_norm_layer(norm, mobilenet))
    if weights is not None and str(weights) in IMAGENET_WEIGHTS:
        state = _imagenet_state_dict(name, str(weights))
        missing, unexpected = net.load_state_dict(state, strict=False)
        bad = [k for k in (*missing, *unexpected) if not k.endswith("num_batches_tracked")]
        if bad:
            raise ValueError(f"ImageNet weights of {name} do not fit norm {norm!r}: e.g. {bad[:4]}")

    body_levels = list(range(min_level, min(max_level, 5) + 1))
    if mobilenet:
        features = net.features
        starts = (*_MOBILENET_STAGE_STARTS, len(features))
        stages = [list(features[starts[i] : starts[i + 1]]) for i in range(5)]
        return_layers = {str(_MOBILENET_STAGES[lv]): str(lv) for lv in body_levels}
        in_channels = [features[_MOBILENET_STAGES[lv]].out_channels for lv in body_levels]
        source: nn.Module = features
    else:
        stages = [[net.conv1, net.bn1], [net.layer1], [net.layer2], [net.layer3], [net.layer4]]
        return_layers = {f"layer{lv - 1}": str(lv) for lv in body_levels}
        in_channels = [net.inplanes // 8 * 2 ** (lv - 2) for lv in body_levels]
        source = net
    _freeze(stages, trainable_layers)
    body = IntermediateLayerGetter(source, return_layers=return_layers)
    if weights is not None and str(weights) not in IMAGENET_WEIGHTS:
        load_backbone_weights(body, weights, ignorable=set(source.state_dict()) - set(body.state_dict()))
    return BackboneFPN(body, in_channels, fpn_channels, min_level, max_level, p6_from=p6_from)
