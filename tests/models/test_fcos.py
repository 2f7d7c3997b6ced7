"""FCOS head: output order and priors, loss by hand, training, post-processing, build."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.ops import box_iou

from anchorlab.assign import FCOS_REGRESS_RANGES
from anchorlab.config import ModelConfig
from anchorlab.models import Detector, build_detector
from anchorlab.models.heads.fcos import FCOSHead, default_regress_ranges

from . import helpers
from .helpers import NUM_CLASSES, plant_logit, synthetic_batch, train


def tiny_config(**fcos) -> ModelConfig:
    return helpers.tiny_config("fcos", fpn={"channels": 32, "min_level": 3, "max_level": 5}, fcos=fcos)


@pytest.fixture(scope="module")
def trained() -> tuple[Detector, list[float]]:
    torch.manual_seed(0)
    model = build_detector(tiny_config())
    return model, train(model, 40)


def test_outputs_are_flattened_in_the_points_order() -> None:
    """A logit planted at level 1, cell (y=2, x=3) comes back at the flat index of the point at the
    centre of that cell, ((3 + 0.5) * 16, (2 + 0.5) * 16)."""
    torch.manual_seed(0)
    head = FCOSHead(8, NUM_CLASSES, [8, 16, 32], channels=8, num_convs=1).eval()
    level, y, x, k = 1, 2, 3, 2
    plant_logit(head.cls_logits, level, (0, k, y, x))
    features = [torch.randn(1, 8, 12 // 2**i + 1, 10 // 2**i + 1) for i in range(3)]  # non-square maps
    sizes = [tuple(f.shape[-2:]) for f in features]
    with torch.no_grad():
        outputs = head(features)
    points, strides = head.priors(sizes, [8, 16, 32], torch.device("cpu"), torch.float32)
    assert outputs["cls_logits"].shape == (1, points.shape[0], NUM_CLASSES)
    assert outputs["box_dist"].shape == (1, points.shape[0], 4)
    assert outputs["centerness"].shape == (1, points.shape[0])
    assert outputs["num_priors_per_level"] == [h * w for h, w in sizes]
    found, found_class = divmod(int(outputs["cls_logits"][0].argmax()), NUM_CLASSES)
    assert found_class == k
    assert found == sizes[0][0] * sizes[0][1] + y * sizes[1][1] + x
    assert points[found].tolist() == [3.5 * 16, 2.5 * 16] and float(strides[found]) == 16
    assert bool((outputs["box_dist"] >= 0).all())  # relu(scale x) * stride


def test_default_regress_ranges() -> None:
    assert default_regress_ranges([8, 16, 32]) == [(0, 64), (64, 128), (128, math.inf)]
    assert default_regress_ranges([8, 16, 32, 64, 128]) == list(FCOS_REGRESS_RANGES)
    assert default_regress_ranges([4, 8]) == [(0, 32), (32, math.inf)]
    with pytest.raises(ValueError, match="3 regress ranges for 2 levels"):
        FCOSHead(8, 2, [8, 16], regress_ranges=[(0, 1), (1, 2), (2, 3)])
    with pytest.raises(ValueError, match="box_loss 'l1'"):
        FCOSHead(8, 2, [8, 16], box_loss="l1")


def test_loss_values_by_hand() -> None:
    """One 8x8 grid of stride 8 (points at 4, 12, 20, ...), one 12x12 object centred at (24, 24) -> the 4
    points (20 | 28, 20 | 28) are positives (centre sampling 1.5 strides = 12 px > the half size 6)."""
    head = FCOSHead(4, 2, [8], num_convs=0, cls_weight=1.0, box_weight=2.0)
    points, strides = head.priors([(8, 8)], [8], torch.device("cpu"), torch.float32)
    box = torch.tensor([[18.0, 18, 30, 30]])
    targets = [{"boxes": box, "labels": torch.tensor([1])}]
    dist = torch.stack((points[:, 0] - 18, points[:, 1] - 18, 30 - points[:, 0], 30 - points[:, 1]), -1)
    outputs = {
        "cls_logits": torch.zeros(1, 64, 2),
        "box_dist": dist.clamp(min=0)[None].clone(),  # exact boxes at the positives
        "centerness": torch.zeros(1, 64),
        "num_priors_per_level": [64],
    }
    losses = head.loss(outputs, (points, strides), targets)
    # p = 0.5 everywhere: 4 positive entries 0.25 * 0.25 ln2, 124 negative ones 0.75 * 0.25 ln2, / 4
    assert float(losses["loss_cls"]) == pytest.approx((4 * 0.0625 + 124 * 0.1875) * math.log(2) / 4, rel=1e-5)
    assert float(losses["loss_box"]) == pytest.approx(0.0, abs=1e-5)  # perfect boxes
    # centerness targets: distances (2, 10) per axis -> 0.2; BCE at logit 0 is ln 2 whatever the target
    assert float(losses["loss_centerness"]) == pytest.approx(math.log(2), rel=1e-5)
    # shrink the boxes of the positives by half: GIoU 1 - 0.25 (nested), weighted mean, x box_weight 2
    outputs["box_dist"] = outputs["box_dist"] * 0.5
    assert float(head.loss(outputs, (points, strides), targets)["loss_box"]) == pytest.approx(1.5, rel=1e-4)
    # non-positives do not regress
    outputs["box_dist"][0, :10] = 1e3
    assert float(head.loss(outputs, (points, strides), targets)["loss_box"]) == pytest.approx(1.5, rel=1e-4)


def test_loss_keys_gradients_empty_image_and_crowd() -> None:
    torch.manual_seed(0)
    model = build_detector(tiny_config())
    images, targets = synthetic_batch()
    targets[0] = {"boxes": torch.zeros((0, 4)), "labels": torch.zeros((0,), dtype=torch.int64)}
    targets[1]["crowd"] = torch.tensor([[0.0, 60, 20, 80]])
    losses = model(images, targets)
    assert set(losses) == {"loss_cls", "loss_box", "loss_centerness"}
    assert all(torch.isfinite(v) and v.ndim == 0 for v in losses.values())
    sum(losses.values()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.head.parameters())
    # no object at all: only the classification loss pulls
    empty = [{"boxes": torch.zeros((0, 4)), "labels": torch.zeros((0,), dtype=torch.int64)}] * 2
    losses = model(images, empty)
    assert all(torch.isfinite(v) for v in losses.values()) and float(losses["loss_box"]) == 0


def test_training_reduces_the_loss(trained) -> None:
    _, history = trained
    assert all(math.isfinite(v) for v in history)
    first, last = sum(history[:5]) / 5, sum(history[-5:]) / 5
    assert last < 0.6 * first, history  # measured ~0.33 (seeds 1, 2)


def test_eval_output_format_and_a_found_object(trained) -> None:
    model, _ = trained
    images, targets = synthetic_batch()
    detections = model.eval()(images)
    for det, image in zip(detections, images, strict=True):
        assert set(det) == {"boxes", "scores", "labels"}
        n = det["boxes"].shape[0]
        assert 0 < n <= 7 and det["scores"].shape == (n,) and det["labels"].shape == (n,)
        assert bool((det["scores"][:-1] >= det["scores"][1:]).all())
        h, w = image.shape[-2:]
        b = det["boxes"]
        assert bool((b >= 0).all() and (b[:, 2] <= w).all() and (b[:, 3] <= h).all())
    assert float(box_iou(detections[0]["boxes"][:3], targets[0]["boxes"]).max()) > 0.5
    pre = model.detect(images, return_pre_nms=True)
    assert pre[0]["pre_nms_boxes"].shape[0] >= pre[0]["boxes"].shape[0]


def test_postprocess_scores_are_the_geometric_mean() -> None:
    head = FCOSHead(4, 2, [8], num_convs=0)
    points, strides = head.priors([(2, 2)], [8], torch.device("cpu"), torch.float32)
    outputs = {
        "cls_logits": torch.full((1, 4, 2), -10.0),
        "box_dist": torch.full((1, 4, 4), 3.0),
        "centerness": torch.full((1, 4), -10.0),
        "num_priors_per_level": [4],
    }
    outputs["cls_logits"][0, 1, 1] = math.log(0.64 / 0.36)  # sigmoid 0.64
    outputs["centerness"][0, 1] = math.log(0.25 / 0.75)  # sigmoid 0.25
    det = head.postprocess(outputs, (points, strides), [(16, 16)], score_thresh=0.1)[0]
    assert det["scores"].tolist() == pytest.approx([0.4])  # sqrt(0.64 * 0.25)
    assert det["labels"].tolist() == [1]
    assert det["boxes"].tolist() == [pytest.approx([9.0, 1.0, 15.0, 7.0])]  # point (12, 4) +- 3


def test_build_takes_the_box_loss_and_ranges_from_the_config() -> None:
    model = build_detector(tiny_config())
    assert isinstance(model.head, FCOSHead) and model.anchor_generator is None
    assert model.head.box_loss == "giou"  # model.loss.box defaults to smooth_l1: not an IoU kind
    assert model.head.regress_ranges == [(0, 64), (64, 128), (128, math.inf)]
    cfg = tiny_config(regress_ranges=[[0, 32], [32, 96], [96, 1e8]], center_sampling_radius=None)
    cfg.loss.box = "ciou"
    head = build_detector(cfg).head
    assert head.box_loss == "ciou" and head.regress_ranges[1] == (32, 96)
    assert head.center_sampling_radius is None
