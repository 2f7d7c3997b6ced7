"""Run configuration: pydantic models loaded from YAML, with ``a.b=value`` overrides.

YAML files hold values only. Every section forbids unknown keys, so a typo gets an error naming the
key and the keys allowed there; a wrong value gets an error naming the allowed values.
Translating a config into constructor arguments happens in one place: ``anchorlab.models.build``.
"""

from __future__ import annotations

import difflib
import warnings
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

__all__ = [
    "Config",
    "ConfigError",
    "DataConfig",
    "ModelConfig",
    "TrainConfig",
    "apply_overrides",
    "load_config",
    "override_keys",
]

DetectorName = Literal["retinanet", "free_anchor", "fcos", "centernet", "grid", "faster_rcnn"]
BackboneName = Literal[
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnext101_32x4d",
    "resnext101_32x8d",
    "mobilenet_v3_large",
]


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message names the key and the allowed values."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class BackboneConfig(_Section):
    name: BackboneName = "resnet18"
    #: None: random init; a path: a local state dict (read with weights_only=True); "imagenet" /
    #: "imagenet_v1": torchvision's published ImageNet weights (its DEFAULT / IMAGENET1K_V1), opt-in,
    #: downloaded once into torch's hub cache ($TORCH_HOME/hub/checkpoints) and checksum-verified.
    weights: str | None = None
    norm: Literal["bn", "frozen_bn", "gn"] = "bn"
    #: How many of the backbone's stages train (5 = all); fewer needs pretrained weights.
    trainable_layers: int = Field(5, ge=0, le=5)

    @field_validator("weights")
    @classmethod
    def _weights(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if value.strip().lower() in ("imagenet", "imagenet_v1"):
            return value.strip().lower()
        if not value.strip() or not any(c in value for c in "/\\."):
            raise ValueError(
                f"model.backbone.weights {value!r} is neither imagenet, imagenet_v1, null nor a file path "
                f"(e.g. ./resnet50.pth)"
            )
        return value


class FPNConfig(_Section):
    channels: int = Field(256, gt=0)
    min_level: int = Field(3, ge=2, le=5)
    max_level: int = Field(7, ge=3, le=8)
    #: Input of the first level above P5 (P6): "p5", the FPN's P5 output (torchvision's
    #: ``LastLevelP6P7(C, C)``, the FreeAnchor authors' code), or "c5", the backbone's last stage
    #: (the RetinaNet paper, detectron2, mmdetection's ``add_extra_convs='on_input'``).
    p6_from: Literal["p5", "c5"] = "p5"

    @model_validator(mode="after")
    def _levels(self) -> FPNConfig:
        if self.max_level < self.min_level:
            raise ValueError(f"fpn.max_level ({self.max_level}) < fpn.min_level ({self.min_level})")
        return self


class HeadConfig(_Section):
    channels: int = Field(256, gt=0)
    num_convs: int = Field(4, ge=0)
    norm: Literal["none", "gn", "bn"] = "none"
    prior_prob: float = Field(0.01, gt=0, lt=1)
    #: Bias in the towers' convs; None: only without a norm (torchvision's FCOS has both bias and GN).
    conv_bias: bool | None = None


class AnchorConfig(_Section):
    octave_base_scale: float = Field(4.0, gt=0)
    scales_per_octave: int = Field(3, ge=1)
    aspect_ratios: list[float] = Field(default_factory=lambda: [0.5, 1.0, 2.0])
    #: Explicit anchor sizes per level (overrides octave_base_scale/scales_per_octave),
    #: e.g. proposed by `anchorlab anchors`.
    sizes: list[list[float]] | None = None
    #: Anchor centre of cell (y, x) in cells: 0 = the cell's top-left corner (torchvision, detectron2),
    #: 0.5 = the cell centre.
    offset: float = Field(0.0, ge=0, lt=1)
    #: Round the base anchors' corners to integers, as torchvision's AnchorGenerator does (imports of
    #: torchvision detectors set it for exact parity).
    round: bool = False
    #: Space each level's priors by (padded canvas // feature size) per axis, as torchvision's
    #: AnchorGenerator does (61 instead of 64 on P6 of an 800-px canvas); imports set it for parity.
    #: RetinaNet, FreeAnchor, FCOS and Faster R-CNN; not exportable to ONNX.
    canvas_strides: bool = False


class AssignConfig(_Section):
    pos_iou: float = Field(0.5, ge=0, le=1)
    neg_iou: float = Field(0.4, ge=0, le=1)
    low_quality: bool = True
    crowd_ioa: float = Field(0.5, ge=0, le=1)


class LossConfig(_Section):
    focal_alpha: float = Field(0.25, ge=0, le=1)
    focal_gamma: float = Field(2.0, ge=0)
    box: Literal["smooth_l1", "l1", "giou", "diou", "ciou", "iou"] = "smooth_l1"
    smooth_l1_beta: float = Field(0.11, ge=0)
    cls_weight: float = Field(1.0, ge=0)
    box_weight: float = Field(1.0, ge=0)
    #: Running average of the number of positives used as the loss normaliser (0 = this batch's count).
    normalizer_momentum: float = Field(0.9, ge=0, lt=1)


class FreeAnchorConfig(_Section):
    bag_size: int = Field(50, gt=0)
    bbox_thr: float = Field(0.6, gt=0, lt=1)
    alpha: float = Field(0.5, ge=0, le=1)
    gamma: float = Field(2.0, ge=0)
    reg_weight: float = Field(0.75, ge=0)


class FCOSConfig(_Section):
    """FCOS (``model.detector: fcos``); the box loss is ``model.loss.box`` when an IoU kind, else GIoU."""

    #: Centre sampling radius in strides (None: every point inside the box is a candidate).
    center_sampling_radius: float | None = Field(1.5, gt=0)
    #: Per-level ranges of max(l, t, r, b) in pixels; None: (4 s, 8 s) per stride s, the first from 0 and
    #: the last to inf (FCOS's (0, 64, 128, 256, 512, inf) for P3-P7).
    regress_ranges: list[tuple[float, float]] | None = None
    #: Centerness branch on the regression tower (FCOS v2 / mmdetection); False: on the class tower.
    centerness_on_reg: bool = True
    #: Distances are relu(scale_l * x) * stride_l ("norm_on_bbox"); False: exp(scale_l * x) * stride_l.
    norm_on_bbox: bool = True
    #: Points at ((x + offset) * stride, (y + offset) * stride): 0.5 = cell centres (FCOS), 0 = cell
    #: corners (torchvision's fcos_resnet50_fpn, whose points are its anchors' centres).
    point_offset: float = Field(0.5, ge=0, le=1)


class CenterNetConfig(_Section):
    """CenterNet (``model.detector: centernet``): head on the finest FPN level (use fpn.min_level 2)."""

    min_overlap: float = Field(0.7, gt=0, lt=1)
    heatmap_weight: float = Field(1.0, ge=0)
    size_weight: float = Field(0.1, ge=0)
    offset_weight: float = Field(1.0, ge=0)
    #: Peaks kept per image before the score threshold.
    topk: int = Field(100, gt=0)


class GridConfig(_Section):
    """YOLO-style grid (``model.detector: grid``): one cell per object, nearest-centre collision policy."""

    #: Per-level ranges of max(w, h) in pixels; None: [4 s, 8 s) per stride s, the first from 0 and the
    #: last to inf ((0, 64), (64, 128), (128, inf) for P3-P5).
    size_ranges: list[tuple[float, float]] | None = None
    #: Several objects claiming one cell: "nearest" (the object whose centre is nearest the cell centre
    #: wins), "last" (the object written last wins, the naive target writer's bug) or "move" (nearest,
    #: then the losers try the next coarser, then the next finer level).
    collision: Literal["last", "nearest", "move"] = "nearest"
    #: Deprecated: ``move_losers: true`` is ``collision: move`` (``false`` leaves ``collision`` alone).
    move_losers: bool | None = None
    box_loss: Literal["l1", "iou", "giou", "diou", "ciou"] = "giou"
    obj_weight: float = Field(1.0, ge=0)
    cls_weight: float = Field(1.0, ge=0)
    box_weight: float = Field(5.0, ge=0)

    @model_validator(mode="after")
    def _fold_move_losers(self) -> GridConfig:
        if self.move_losers is True:
            if self.collision == "last":
                raise ValueError(
                    "model.grid.move_losers: true contradicts collision: last; use collision only"
                )
            warnings.warn(
                "model.grid.move_losers is deprecated: use model.grid.collision: move",
                DeprecationWarning,
                stacklevel=2,
            )
            object.__setattr__(self, "collision", "move")
        object.__setattr__(self, "move_losers", None)
        return self


class RPNConfig(_Section):
    """Faster R-CNN's region proposal network (``model.detector: faster_rcnn``); anchors: one size per level
    from ``model.anchors.sizes``, else 8 x stride (32 at P2 .. 512 at P6), ratios ``model.anchors``."""

    pos_iou: float = Field(0.7, ge=0, le=1)
    neg_iou: float = Field(0.3, ge=0, le=1)
    #: Anchors sampled per image for the loss, and the largest positive share of them.
    batch_size_per_image: int = Field(256, gt=0)
    positive_fraction: float = Field(0.5, ge=0, le=1)
    #: Candidates per level before NMS, and proposals per image after it: training, then inference.
    pre_nms_top_n: tuple[int, int] = (2000, 1000)
    post_nms_top_n: tuple[int, int] = (1000, 1000)
    nms_iou: float = Field(0.7, gt=0, le=1)
    min_size: float = Field(1e-3, ge=0)
    smooth_l1_beta: float = Field(1.0 / 9.0, ge=0)
    obj_weight: float = Field(1.0, ge=0)
    box_weight: float = Field(1.0, ge=0)


class RoIConfig(_Section):
    """Faster R-CNN's box head: RoIAlign over P(fpn.min_level)..P(max_level), 2 FC layers."""

    max_level: int = Field(5, ge=2, le=8)
    pooler_size: int = Field(7, gt=0)
    sampling_ratio: int = Field(2, ge=0)
    fc_channels: int = Field(1024, gt=0)
    pos_iou: float = Field(0.5, ge=0, le=1)
    batch_size_per_image: int = Field(512, gt=0)
    positive_fraction: float = Field(0.25, ge=0, le=1)
    box_coder_stds: tuple[float, float, float, float] = (0.1, 0.1, 0.2, 0.2)
    smooth_l1_beta: float = Field(1.0 / 9.0, ge=0)
    cls_weight: float = Field(1.0, ge=0)
    box_weight: float = Field(1.0, ge=0)
    #: Classifier outputs after background that are never detected nor trained as targets, kept in the
    #: softmax (torchvision's COCO models have 10 for the unused COCO ids; imports set it for parity).
    void_classes: int = Field(0, ge=0)


class HardNegativeConfig(_Section):
    """SSD hard negative mining (``model.sampler: hard_negative``): softmax over K + 1 classes."""

    #: Hard negatives kept per positive, and at least this many per image (also without positives).
    neg_pos_ratio: float = Field(3.0, ge=0)
    min_negatives: int = Field(0, ge=0)


class InferenceConfig(_Section):
    score_thresh: float = Field(0.05, ge=0, le=1)
    topk_per_level: int = Field(1000, gt=0)
    nms_iou: float = Field(0.5, gt=0, le=1)
    max_detections: int = Field(100, gt=0)
    #: Keep detections that clipping to the image made empty (zero width or height), as torchvision's
    #: RetinaNet and FCOS do; imports of those set it for exact parity.
    keep_empty_boxes: bool = False


class ModelConfig(_Section):
    detector: DetectorName = "retinanet"
    #: Foreground classes; None takes the count from the training data.
    num_classes: int | None = Field(None, gt=0)
    backbone: BackboneConfig = Field(default_factory=BackboneConfig)
    fpn: FPNConfig = Field(default_factory=FPNConfig)
    head: HeadConfig = Field(default_factory=HeadConfig)
    anchors: AnchorConfig = Field(default_factory=AnchorConfig)
    assign: AssignConfig = Field(default_factory=AssignConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    free_anchor: FreeAnchorConfig = Field(default_factory=FreeAnchorConfig)
    inference: InferenceConfig = Field(default_factory=InferenceConfig)
    fcos: FCOSConfig = Field(default_factory=FCOSConfig)
    centernet: CenterNetConfig = Field(default_factory=CenterNetConfig)
    grid: GridConfig = Field(default_factory=GridConfig)
    rpn: RPNConfig = Field(default_factory=RPNConfig)
    roi: RoIConfig = Field(default_factory=RoIConfig)
    #: Dense heads' negatives: "none" (every anchor, focal loss) or "hard_negative" (SSD 3:1, softmax CE).
    sampler: Literal["none", "hard_negative"] = "none"
    hnm: HardNegativeConfig = Field(default_factory=HardNegativeConfig)
    box_coder_stds: tuple[float, float, float, float] = (0.1, 0.1, 0.2, 0.2)
    pixel_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    #: Per-channel std the input is divided by: every value must be > 0.
    pixel_std: tuple[PositiveFloat, PositiveFloat, PositiveFloat] = (0.229, 0.224, 0.225)
    #: Use channels_last memory format for the model and inputs (faster CPU convs: docs/architecture.md).
    channels_last: bool = True
    #: Before training, fit the anchors (anchor-based detectors) to the training boxes; FCOS and the grid
    #: keep their ranges and get a report of the levels' use (``anchorlab.design.fit``). The run's
    #: config.yaml records the result.
    fit_anchors: bool = False
    #: Start training from this weights file or anchorlab checkpoint (e.g. from `anchorlab weights
    #: import`): every tensor whose name and shape fit is loaded, class-specific layers of another class
    #: count are re-initialised; the run folder's init_from.json lists loaded / re-initialised / unused.
    init_from: str | None = None

    @model_validator(mode="after")
    def _frozen_needs_weights(self) -> ModelConfig:
        b = self.backbone
        if b.weights is None and self.init_from is None and (b.norm == "frozen_bn" or b.trainable_layers < 5):
            frozen = [
                *(["norm: frozen_bn"] if b.norm == "frozen_bn" else []),
                *([f"trainable_layers: {b.trainable_layers}"] if b.trainable_layers < 5 else []),
            ]
            raise ValueError(
                f"model.backbone has random weights (weights: null) but {' and '.join(frozen)} would keep "
                f"random layers frozen forever: set model.backbone.norm: bn and "
                f"model.backbone.trainable_layers: 5, or give weights (model.backbone.weights: imagenet, "
                f"imagenet_v1 or a file; or model.init_from)"
            )
        return self


class DataConfig(_Section):
    #: Training / validation data: a COCO JSON, a VOC folder, a YOLO folder or data.yaml, or a CVAT
    #: "YOLO 1.1" export (see docs/data.md); `images`: the image folder of COCO / VOC data when elsewhere.
    train: str | None = None
    val: str | None = None
    #: COCO JSON of the test split, e.g. an image-info file (images and categories, no annotations) such
    #: as COCO's image_info_test-dev2017.json: `anchorlab eval CONFIG --split test --results OUT.json`.
    test: str | None = None
    images: str | None = None
    #: auto (detected as `anchorlab data check` does) | coco | voc | yolo | cvat.
    format: Literal["auto", "coco", "voc", "yolo", "cvat"] = "auto"
    #: Which split of a data.yaml / obj.data / VOC ImageSets each of train, val, test reads, e.g.
    #: {val: test}; default: the split's own name when the file declares splits (val: also `valid`).
    split: dict[Literal["train", "val", "test"], str] | None = None
    #: Class names (VOC, YOLO, CVAT), or a text file with one name a line; fixes the label order.
    classes: list[str] | str | None = None
    #: Action per problem kind, as `data check --policy`: e.g. {image_missing: drop, image_outside: allow}.
    policy: dict[str, str] = Field(default_factory=dict)
    #: Pixel limit (width x height) of one image: larger files are `image_too_large` (decompression bombs).
    max_pixels: int = Field(178_956_970, gt=0)
    min_size: int | list[int] = 800
    max_size: int = Field(1333, gt=0)
    #: Evaluation / prediction resize: "antialias" (rounded size, antialiased when shrinking) or
    #: "torchvision" (its detection transform: floored float32-scaled size, plain bilinear; imports of
    #: torchvision detectors set it for exact parity). Training always resizes with "antialias".
    resize: Literal["antialias", "torchvision"] = "antialias"
    #: Multi-scale training (overrides min_size in training): two values [lo, hi] draw the shorter side
    #: uniformly from the integers lo..hi; three or more values draw it from that list (e.g. [640, 672,
    #: 704, 736, 768, 800]). Evaluation keeps min_size.
    scale_jitter: list[int] | None = None
    hflip: float = Field(0.5, ge=0, le=1)
    photometric: bool = False
    #: Probability that a training sample is a 2x2 mosaic of itself and 3 other training images
    #: (data/mosaic.py), on the sample's own canvas size.
    mosaic: float = Field(0.0, ge=0, le=1)

    @field_validator("scale_jitter")
    @classmethod
    def _jitter(cls, value: list[int] | None) -> list[int] | None:
        if value is None:
            return None
        if not value or min(value) < 1:
            raise ValueError(f"scale_jitter needs positive sizes, got {value}")
        if len(value) == 2 and value[0] > value[1]:
            raise ValueError(f"scale_jitter [lo, hi] needs lo <= hi, got {value}")
        return value

    #: Arguments of `make_synthetic`: generate the synthetic dataset when missing, into the folder of
    #: `train` (which must then be FOLDER/train.json, and `val` FOLDER/val.json) and only when that folder
    #: is empty or absent: never over existing files.
    synthetic: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _policy(self) -> DataConfig:
        from anchorlab.data.validate import resolve_policy

        resolve_policy(self.policy)  # ValueError naming the kinds / actions allowed
        return self


class TrainConfig(_Section):
    #: ``auto``: size the run to the training data before training (``anchorlab.compare.auto``: image size,
    #: fitted anchors, length, warm-up, EMA, the small-data recipe); keys given with ``--set`` win. The
    #: COCO schedules (``1x``, ``2x``, ...) expand to ``iterations`` / ``steps`` when the config is read.
    preset: Literal["auto"] | None = None
    iterations: int = Field(90000, gt=0)
    #: Length in epochs (passes over the training set) instead of `iterations`: iterations = epochs x
    #: batches per epoch (set when training starts; config.yaml records both).
    epochs: int | None = Field(None, gt=0)
    #: Wall-clock budget of the training loop in minutes: training stops after the iteration in which it
    #: ran out (checkpoint written, evaluation still run), and the lr schedule runs on elapsed time
    #: (warm-up in iterations, then the decay reaches its end when the budget, or `iterations`, does).
    max_minutes: float | None = Field(None, gt=0)
    batch_size: int = Field(16, gt=0)
    lr: float = Field(0.01, gt=0)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(1e-4, ge=0)
    warmup_iters: int = Field(500, ge=0)
    warmup_factor: float = Field(0.001, gt=0, le=1)
    schedule: Literal["step", "cosine", "constant"] = "step"
    #: Iterations at which the step schedule multiplies the lr by `gamma`.
    steps: list[int] = Field(default_factory=lambda: [60000, 80000])
    gamma: float = Field(0.1, gt=0, le=1)
    clip_grad: float | None = Field(None, gt=0)
    #: A non-finite loss stops training (keeping the last good checkpoint) or skips that step (counted).
    on_nonfinite: Literal["stop", "skip"] = "stop"
    #: Mixed precision (torch.autocast: float16 + GradScaler on CUDA, bfloat16 on CPU); losses stay float32.
    #: "auto": on CUDA, and on CPUs with native bfloat16 (AVX512-BF16 / AMX), off elsewhere.
    amp: bool | Literal["auto"] = False
    #: torch.compile the model (opt-in; the first iterations are slow while it compiles).
    compile: bool = False
    #: Keep an exponential moving average of the weights (engine/ema.py); eval and the checkpoint's
    #: inference weights use it. Decay per step: ema_decay * (1 - exp(-step / ema_tau)); the average
    #: spans about 1 / (1 - ema_decay) steps (5000 by default: for runs of 50k+ steps; short runs want
    #: e.g. 0.995 / 100).
    ema: bool = False
    ema_decay: float = Field(0.9998, ge=0, lt=1)
    ema_tau: int = Field(2000, ge=0)
    checkpoint_every: int = Field(5000, gt=0)
    #: Evaluate on the val split every this many iterations (best.pt, results.csv, patience); None: every
    #: epoch; 0: only at the end.
    eval_every: int | None = Field(None, ge=0)
    #: Stop after this many evaluations in a row without a better AP (None: never stop early).
    patience: int | None = Field(None, gt=0)
    log_every: int = Field(20, gt=0)
    #: Also write TensorBoard scalars to OUT/tensorboard/ (needs `pip install 'anchorlab[tensorboard]'`).
    tensorboard: bool = False
    seed: int = 0
    workers: int = Field(2, ge=0)
    #: torch intra-op threads on CPU; None: the machine's cores divided among torchrun's local processes.
    #: On a CPU shared with other jobs, 1 can be several times faster (threads wait for each other).
    threads: int | None = Field(None, gt=0)
    device: str = "auto"
    #: The run folder (`anchorlab train --out`; the CLI's default without one: runs/<config file name>).
    out: str = "runs/default"


class Config(_Section):
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    #: Dotted keys the user gave on the command line (``--set``): ``train.preset: auto`` keeps them.
    _pinned: frozenset[str] = PrivateAttr(default_factory=frozenset)

    def __eq__(self, other: object) -> bool:  # the values, not where they came from
        if not isinstance(other, Config):
            return NotImplemented
        return (self.model, self.data, self.train) == (other.model, other.data, other.train)

    __hash__ = None  # type: ignore[assignment]

    @property
    def pinned(self) -> frozenset[str]:
        """Dotted keys set by ``--set`` overrides (what ``train.preset: auto`` must not change)."""
        return self._pinned

    def pin(self, keys: list[str] | frozenset[str] | set[str]) -> Config:
        """Record ``keys`` as user-set (see ``pinned``); returns self."""
        self._pinned = frozenset(self._pinned | set(keys))
        return self


#: The standard COCO schedules for 16 images per batch (iterations, lr steps).
SCHEDULES: dict[str, tuple[int, list[int]]] = {
    "1x": (90000, [60000, 80000]),
    "1.5x": (135000, [90000, 120000]),
    "2x": (180000, [120000, 160000]),
    "3x": (270000, [210000, 250000]),
}


def _set(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {dotted!r}: {key!r} is a value, not a section")
        node = child
    node[keys[-1]] = value


def apply_overrides(tree: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """Apply ``key.path=value`` strings (values parsed as YAML: numbers, lists, null) to a config dict."""
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.path=value (e.g. train.iterations=100)")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: value is not valid YAML: {exc}") from exc
        _set(tree, key.strip(), value)
    return tree


def _describe(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            section: type[BaseModel] = Config
            for part in err["loc"][:-1]:
                field = section.model_fields.get(str(part))
                ann = field.annotation if field else None
                if isinstance(ann, type) and issubclass(ann, BaseModel):
                    section = ann
            allowed = sorted(section.model_fields)
            close = difflib.get_close_matches(str(err["loc"][-1]), allowed, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            lines.append(f"unknown key {loc!r}{hint}; allowed keys here: {', '.join(allowed)}")
        elif isinstance(err.get("input"), dict):  # a section's validator: its message names the keys
            lines.append(f"{loc}: {err['msg'].removeprefix('Value error, ')}")
        else:
            lines.append(f"{loc}: {err['msg']} (got {err.get('input')!r})")
    return "\n  ".join(lines)


def _expand_schedule(tree: dict[str, Any]) -> None:
    """``train.preset: 1x`` expands to the standard COCO iterations and steps; ``auto`` and null stay (the
    auto budget is resolved against the training data, ``anchorlab.compare.auto.apply_auto``)."""
    train = tree.get("train")
    if isinstance(train, dict) and train.get("preset") not in (None, "auto"):
        preset = train.pop("preset")
        if preset not in SCHEDULES:
            raise ConfigError(
                f"train.preset {preset!r} is not one of {', '.join(SCHEDULES)}, auto (sized to the data)"
            )
        iterations, steps = SCHEDULES[preset]
        train.setdefault("iterations", iterations)
        train.setdefault("steps", steps)


def config_from_dict(tree: dict[str, Any], source: str = "config") -> Config:
    tree = dict(tree)
    _expand_schedule(tree)
    try:
        return Config.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(f"{source}: invalid config\n  {_describe(exc)}") from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config (or the defaults when ``path`` is None) and apply ``key=value`` overrides."""
    tree: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping (model:, data:, train:)")
        tree = loaded or {}
    apply_overrides(tree, overrides)
    cfg = config_from_dict(tree, source)
    return cfg.pin(override_keys(overrides))


def override_keys(overrides: list[str] | None) -> list[str]:
    """The dotted keys of ``key.path=value`` overrides (malformed items are skipped)."""
    return [item.split("=", 1)[0].strip() for item in overrides or [] if "=" in item]


def dump_config(cfg: Config) -> str:
    """The config as YAML (what a run folder records)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
