"""Config -> model, in one place: ``DETECTORS`` maps every ``model.detector`` name to its constructor.

Reading this file tells you every detector there is; there is no registry framework.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from anchorlab.anchors import AnchorGenerator
from anchorlab.boxes import BoxCoder
from anchorlab.config import Config, ModelConfig
from anchorlab.losses.iou import IOU_KINDS
from anchorlab.models.backbone import BackboneFPN, build_backbone
from anchorlab.models.detector import Detector
from anchorlab.models.faster_rcnn import FasterRCNNHead
from anchorlab.models.heads.centernet import CenterNetHead
from anchorlab.models.heads.fcos import FCOSHead
from anchorlab.models.heads.grid import GridHead
from anchorlab.models.heads.hnm import HardNegativeHead
from anchorlab.models.heads.retina import RetinaHead
from anchorlab.models.heads.roi import RoIBoxHead
from anchorlab.models.heads.rpn import RegionProposalNetwork

__all__ = ["DETECTORS", "build_anchor_generator", "build_detector"]


def build_anchor_generator(cfg: ModelConfig) -> AnchorGenerator:
    """``cfg.anchors.sizes`` (one list per FPN level) if given, else RetinaNet's octave anchors; centres at
    ``cfg.anchors.offset`` cells."""
    levels = range(cfg.fpn.min_level, cfg.fpn.max_level + 1)
    ratios = [list(cfg.anchors.aspect_ratios)]
    if cfg.anchors.sizes is not None:
        if len(cfg.anchors.sizes) != len(levels):
            raise ValueError(
                f"model.anchors.sizes has {len(cfg.anchors.sizes)} levels but the FPN has {len(levels)} "
                f"(P{cfg.fpn.min_level}..P{cfg.fpn.max_level})"
            )
        return AnchorGenerator(
            cfg.anchors.sizes,
            ratios,
            [2**level for level in levels],
            offset=cfg.anchors.offset,
            round_base=cfg.anchors.round,
        )
    return AnchorGenerator.retinanet(
        min_level=cfg.fpn.min_level,
        max_level=cfg.fpn.max_level,
        octave_base_scale=cfg.anchors.octave_base_scale,
        scales_per_octave=cfg.anchors.scales_per_octave,
        aspect_ratios=cfg.anchors.aspect_ratios,
        offset=cfg.anchors.offset,
        round_base=cfg.anchors.round,
    )


def _backbone(cfg: ModelConfig) -> BackboneFPN:
    """The backbone + FPN every detector shares (``model.backbone``, ``model.fpn``); with
    ``model.init_from`` the backbone weights come from that file (``models/init_from.py``), never read or
    downloaded here."""
    return build_backbone(
        cfg.backbone.name,
        weights=cfg.backbone.weights if cfg.init_from is None else None,
        norm=cfg.backbone.norm,
        trainable_layers=cfg.backbone.trainable_layers,
        fpn_channels=cfg.fpn.channels,
        min_level=cfg.fpn.min_level,
        max_level=cfg.fpn.max_level,
        p6_from=cfg.fpn.p6_from,
    )


def _detector(
    cfg: ModelConfig,
    backbone: BackboneFPN,
    head: nn.Module,
    anchors: AnchorGenerator | None,
    name: str | None = None,
) -> Detector:
    """The ``Detector`` named ``name`` (default ``cfg.detector``) around ``backbone`` and ``head``."""
    return Detector(
        backbone,
        head,
        anchors,
        num_classes=cfg.num_classes,
        pixel_mean=cfg.pixel_mean,
        pixel_std=cfg.pixel_std,
        channels_last=cfg.channels_last,
        inference=cfg.inference.model_dump(),
        name=name or cfg.detector,
        canvas_strides=cfg.anchors.canvas_strides,
    )


def _retina_family(cfg: ModelConfig, loss_mode: str) -> Detector:
    backbone = _backbone(cfg)
    anchors = build_anchor_generator(cfg)
    per_location = set(anchors.num_anchors_per_location())
    if len(per_location) != 1:
        raise ValueError(
            "the RetinaNet head is shared across levels and needs the same number of anchors on every "
            f"level; model.anchors gives {anchors.num_anchors_per_location()}"
        )
    fa = cfg.free_anchor
    head = RetinaHead(
        backbone.out_channels,
        per_location.pop(),
        cfg.num_classes,
        channels=cfg.head.channels,
        num_convs=cfg.head.num_convs,
        norm=cfg.head.norm,
        conv_bias=cfg.head.conv_bias,
        prior_prob=cfg.head.prior_prob,
        loss_mode=loss_mode,
        coder=BoxCoder(stds=cfg.box_coder_stds),
        pos_iou=cfg.assign.pos_iou,
        neg_iou=cfg.assign.neg_iou,
        low_quality=cfg.assign.low_quality,
        crowd_ioa=cfg.assign.crowd_ioa,
        focal_alpha=cfg.loss.focal_alpha,
        focal_gamma=cfg.loss.focal_gamma,
        box_loss=cfg.loss.box,
        smooth_l1_beta=cfg.loss.smooth_l1_beta,
        cls_weight=cfg.loss.cls_weight,
        box_weight=cfg.loss.box_weight,
        normalizer_momentum=cfg.loss.normalizer_momentum,
        free_anchor={
            "bag_size": fa.bag_size,
            "bbox_thr": fa.bbox_thr,
            "alpha": fa.alpha,
            "gamma": fa.gamma,
            "reg_weight": fa.reg_weight,
        },
    )
    return _detector(cfg, backbone, head, anchors)


def _retinanet(cfg: ModelConfig) -> Detector:
    """RetinaNet: max-IoU assignment, focal loss, box regression (``model.loss``, ``model.assign``);
    with ``model.sampler: hard_negative`` softmax cross-entropy with SSD's 3:1 hard negative mining."""
    if cfg.sampler == "hard_negative":
        return _dense_hnm(cfg, build_anchor_generator(cfg))
    return _retina_family(cfg, "focal")


def _free_anchor(cfg: ModelConfig) -> Detector:
    """FreeAnchor: the RetinaNet architecture trained with learning-to-match bags (``model.free_anchor``)."""
    return _retina_family(cfg, "free_anchor")


def _fcos(cfg: ModelConfig) -> Detector:
    """FCOS: points, centre sampling + regress ranges, focal + IoU-family + centerness (``model.fcos``)."""
    backbone = _backbone(cfg)
    box_loss = cfg.loss.box if cfg.loss.box in IOU_KINDS else "giou"
    head = FCOSHead(
        backbone.out_channels,
        cfg.num_classes,
        backbone.strides,
        channels=cfg.head.channels,
        num_convs=cfg.head.num_convs,
        norm=cfg.head.norm,
        conv_bias=cfg.head.conv_bias,
        prior_prob=cfg.head.prior_prob,
        regress_ranges=cfg.fcos.regress_ranges,
        center_sampling_radius=cfg.fcos.center_sampling_radius,
        centerness_on_reg=cfg.fcos.centerness_on_reg,
        norm_on_bbox=cfg.fcos.norm_on_bbox,
        box_loss=box_loss,
        focal_alpha=cfg.loss.focal_alpha,
        focal_gamma=cfg.loss.focal_gamma,
        cls_weight=cfg.loss.cls_weight,
        box_weight=cfg.loss.box_weight,
        point_offset=cfg.fcos.point_offset,
    )
    return _detector(cfg, backbone, head, None)


def _centernet(cfg: ModelConfig) -> Detector:
    """CenterNet: heatmap peaks on the finest level (``fpn.min_level: 2`` = stride 4), ``model.centernet``."""
    backbone = _backbone(cfg)
    c = cfg.centernet
    head = CenterNetHead(
        backbone.out_channels,
        cfg.num_classes,
        channels=cfg.head.channels,
        min_overlap=c.min_overlap,
        heatmap_weight=c.heatmap_weight,
        size_weight=c.size_weight,
        offset_weight=c.offset_weight,
        topk=c.topk,
    )
    return _detector(cfg, backbone, head, None)


def _grid(cfg: ModelConfig) -> Detector:
    """YOLO-style grid: one cell per object, collision policy ``model.grid.collision``."""
    backbone = _backbone(cfg)
    g = cfg.grid
    head = GridHead(
        backbone.out_channels,
        cfg.num_classes,
        channels=cfg.head.channels,
        num_convs=cfg.head.num_convs,
        norm=cfg.head.norm,
        conv_bias=cfg.head.conv_bias,
        prior_prob=cfg.head.prior_prob,
        size_ranges=g.size_ranges,
        collision=g.collision,
        box_loss=g.box_loss,
        obj_weight=g.obj_weight,
        cls_weight=g.cls_weight,
        box_weight=g.box_weight,
    )
    return _detector(cfg, backbone, head, None)


def _faster_rcnn(cfg: ModelConfig) -> Detector:
    """Faster R-CNN from ``cfg`` (``model.rpn``, ``model.roi``, ``model.fpn`` levels, ``model.anchors``)."""
    levels = list(range(cfg.fpn.min_level, cfg.fpn.max_level + 1))
    if not cfg.fpn.min_level <= cfg.roi.max_level <= cfg.fpn.max_level:
        raise ValueError(
            f"model.roi.max_level {cfg.roi.max_level} is outside the FPN levels "
            f"P{cfg.fpn.min_level}..P{cfg.fpn.max_level}"
        )
    sizes = cfg.anchors.sizes or [[8.0 * 2**level] for level in levels]
    if len(sizes) != len(levels):
        raise ValueError(f"model.anchors.sizes has {len(sizes)} levels but the FPN has {len(levels)}")
    anchors = AnchorGenerator(
        sizes,
        [list(cfg.anchors.aspect_ratios)],
        [2**level for level in levels],
        offset=cfg.anchors.offset,
        round_base=cfg.anchors.round,
    )
    per_location = set(anchors.num_anchors_per_location())
    if len(per_location) != 1:
        raise ValueError(
            f"the RPN head needs the same anchors per location on every level, got {per_location}"
        )
    backbone = _backbone(cfg)
    r, o = cfg.rpn, cfg.roi
    rpn = RegionProposalNetwork(
        backbone.out_channels,
        per_location.pop(),
        pos_iou=r.pos_iou,
        neg_iou=r.neg_iou,
        num_samples=r.batch_size_per_image,
        positive_fraction=r.positive_fraction,
        pre_nms_top_n=r.pre_nms_top_n,
        post_nms_top_n=r.post_nms_top_n,
        nms_iou=r.nms_iou,
        min_size=r.min_size,
        smooth_l1_beta=r.smooth_l1_beta,
        obj_weight=r.obj_weight,
        box_weight=r.box_weight,
    )
    roi = RoIBoxHead(
        backbone.out_channels,
        cfg.num_classes,
        o.max_level - cfg.fpn.min_level + 1,
        pooler_size=o.pooler_size,
        sampling_ratio=o.sampling_ratio,
        fc_channels=o.fc_channels,
        coder=BoxCoder(stds=o.box_coder_stds),
        pos_iou=o.pos_iou,
        num_samples=o.batch_size_per_image,
        positive_fraction=o.positive_fraction,
        smooth_l1_beta=o.smooth_l1_beta,
        cls_weight=o.cls_weight,
        box_weight=o.box_weight,
        void_classes=o.void_classes,
    )
    head = FasterRCNNHead(rpn, roi, backbone.strides[0])
    return _detector(cfg, backbone, head, anchors)


def _dense_hnm(cfg: ModelConfig, anchors: AnchorGenerator) -> Detector:
    """RetinaNet anchors + towers with SSD hard negative mining (``model.sampler: hard_negative``,
    ``model.hnm``); ``anchors`` is the RetinaNet anchor generator (``build.build_anchor_generator(cfg)``)."""
    per_location = set(anchors.num_anchors_per_location())
    if len(per_location) != 1:
        raise ValueError(
            f"the dense head needs the same anchors per location on every level, got {per_location}"
        )
    backbone = _backbone(cfg)
    head = HardNegativeHead(
        backbone.out_channels,
        per_location.pop(),
        cfg.num_classes,
        neg_pos_ratio=cfg.hnm.neg_pos_ratio,
        min_negatives=cfg.hnm.min_negatives,
        channels=cfg.head.channels,
        num_convs=cfg.head.num_convs,
        norm=cfg.head.norm,
        prior_prob=cfg.head.prior_prob,
        coder=BoxCoder(stds=cfg.box_coder_stds),
        pos_iou=cfg.assign.pos_iou,
        neg_iou=cfg.assign.neg_iou,
        low_quality=cfg.assign.low_quality,
        crowd_ioa=cfg.assign.crowd_ioa,
        box_loss=cfg.loss.box,
        smooth_l1_beta=cfg.loss.smooth_l1_beta,
        cls_weight=cfg.loss.cls_weight,
        box_weight=cfg.loss.box_weight,
    )
    return _detector(cfg, backbone, head, anchors, name=f"{cfg.detector}_hnm")


#: Every detector name ``model.detector`` accepts today, and its constructor.
DETECTORS: dict[str, Callable[[ModelConfig], Detector]] = {
    "retinanet": _retinanet,
    "free_anchor": _free_anchor,
    "fcos": _fcos,
    "centernet": _centernet,
    "grid": _grid,
    "faster_rcnn": _faster_rcnn,
}


#: Detectors whose priors can follow torchvision's canvas-derived strides (``model.anchors.canvas_strides``).
_CANVAS_STRIDES = ("retinanet", "free_anchor", "fcos", "faster_rcnn")


def build_detector(cfg: Config | ModelConfig, *, pretrained: bool = True) -> Detector:
    """The detector described by ``cfg.model`` (a full ``Config``) or by a ``ModelConfig``.

    ``pretrained=False`` builds the architecture only: ``model.backbone.weights`` is neither read nor
    downloaded (for weights about to be loaded from a checkpoint)."""
    model_cfg = cfg.model if isinstance(cfg, Config) else cfg
    if not isinstance(model_cfg, ModelConfig):
        raise TypeError(f"build_detector needs a Config or ModelConfig, got {type(cfg).__name__}")
    if not pretrained:  # model_copy does not validate: a frozen backbone without weights is fine here
        backbone = model_cfg.backbone.model_copy(update={"weights": None})
        model_cfg = model_cfg.model_copy(update={"backbone": backbone, "init_from": None})
    if model_cfg.detector not in DETECTORS:
        raise ValueError(
            f"model.detector {model_cfg.detector!r} is not available; "
            f"available detectors: {', '.join(DETECTORS)}"
        )
    if model_cfg.sampler != "none" and model_cfg.detector != "retinanet":
        raise ValueError(
            f"model.sampler {model_cfg.sampler!r} applies to the retinanet detector only, "
            f"not {model_cfg.detector!r}; use model.sampler=none"
        )
    if model_cfg.anchors.canvas_strides and model_cfg.detector not in _CANVAS_STRIDES:
        raise ValueError(
            f"model.anchors.canvas_strides applies to {', '.join(_CANVAS_STRIDES)}, "
            f"not {model_cfg.detector!r}"
        )
    if model_cfg.num_classes is None:
        raise ValueError(
            "model.num_classes is not set: set it in the config (model.num_classes=K) or let the training "
            "engine fill it from the dataset's categories"
        )
    return DETECTORS[model_cfg.detector](model_cfg)
