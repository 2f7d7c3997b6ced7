"""YOLO-style grid head: predictions and targets in one flat order, box coding, losses of every kind,
collision statistics, training, post-processing, build."""

from __future__ import annotations

import math

import pytest
import torch

from anchorlab.config import ModelConfig
from anchorlab.models import build_detector
from anchorlab.models.heads.grid import GRID_BOX_LOSSES, GridHead

from . import helpers
from .helpers import NUM_CLASSES, plant_logit, synthetic_batch, train

STRIDES = [8, 16, 32]


def tiny_config(box_loss: str = "giou", **grid) -> ModelConfig:
    return helpers.tiny_config(
        "grid",
        fpn={"channels": 16, "min_level": 3, "max_level": 5},
        head={"channels": 16, "num_convs": 1, "norm": "gn"},
        grid={"box_loss": box_loss, **grid},
    )


def _priors(head: GridHead, sizes):
    return head.priors(sizes, STRIDES, torch.device("cpu"), torch.float32)


def test_target_and_prediction_of_a_planted_object_share_the_flat_index() -> None:
    """Seed 002: an object of 80 px (level 1, stride 16) centred in cell (y=2, x=3) must be the positive at
    exactly the flat index where the head puts the prediction of that level's cell (y=2, x=3)."""
    torch.manual_seed(0)
    head = GridHead(8, NUM_CLASSES, channels=8, num_convs=1).eval()
    level, y, x = 1, 2, 3
    plant_logit(head.pred, level, (0, 0, y, x))  # objectness channel
    features = [torch.randn(1, 8, 11 // 2**i + 1, 13 // 2**i + 1) for i in range(3)]  # non-square maps
    sizes = [tuple(f.shape[-2:]) for f in features]
    with torch.no_grad():
        outputs = head(features)
    predicted = int(outputs["obj_logits"][0].argmax())

    cx, cy = (x + 0.3) * 16, (y + 0.6) * 16
    box = torch.tensor([[cx - 40, cy - 30, cx + 40, cy + 30]])
    head.loss(outputs, _priors(head, sizes), [{"boxes": box, "labels": torch.tensor([0])}])
    from anchorlab.assign import grid_assign

    matched = grid_assign([box], sizes, STRIDES).matched[0]
    (positive,) = torch.nonzero(matched >= 0)[:, 0].tolist()
    assert positive == predicted == sizes[0][0] * sizes[0][1] + y * sizes[1][1] + x
    assert head.last_stats == {"collisions": 0, "moved": 0, "num_pos": 1}
    assert outputs["cls_logits"].shape == (1, matched.shape[0], NUM_CLASSES)
    assert outputs["box_raw"].shape == (1, matched.shape[0], 4)


def test_box_coding_and_l1_targets_by_hand() -> None:
    head = GridHead(4, 2, num_convs=0, box_loss="l1", obj_weight=0.0, cls_weight=0.0, box_weight=1.0)
    priors = _priors(head, [(4, 4), (2, 2), (1, 1)])
    box = torch.tensor([[4.0, 6, 20, 18]])  # 16 x 12: level 0 (stride 8), centre (12, 12) -> cell (1, 1)
    cell = 1 * 4 + 1
    raw = torch.zeros(1, priors.corners.shape[0], 4)
    # exact encoding: offsets (0.5, 0.5) -> logit 0; log(16 / 8), log(12 / 8)
    raw[0, cell] = torch.tensor([0.0, 0.0, math.log(2.0), math.log(1.5)])
    decoded = GridHead.decode(raw[0, cell], priors.corners[cell], priors.strides[cell])
    assert decoded.tolist() == pytest.approx(box[0].tolist())
    outputs = {
        "obj_logits": torch.zeros(1, raw.shape[1]),
        "cls_logits": torch.zeros(1, raw.shape[1], 2),
        "box_raw": raw,
        "num_priors_per_level": [16, 4, 1],
    }
    targets = [{"boxes": box, "labels": torch.tensor([1])}]
    assert float(head.loss(outputs, priors, targets)["loss_box"]) == pytest.approx(0.0, abs=1e-6)
    raw[0, cell, 2] += 0.5  # tw off by 0.5 -> L1 0.5 over one positive
    assert float(head.loss(outputs, priors, targets)["loss_box"]) == pytest.approx(0.5, rel=1e-5)
    head.box_loss = "iou"  # width 16 e^0.5 around the same centre: IoU = 16 / (16 e^0.5)
    assert float(head.loss(outputs, priors, targets)["loss_box"]) == pytest.approx(
        1 - math.exp(-0.5), rel=1e-5
    )


def test_objectness_and_class_losses_by_hand() -> None:
    head = GridHead(4, 2, num_convs=0, obj_weight=1.0, cls_weight=2.0, box_weight=0.0)
    priors = _priors(head, [(4, 4), (2, 2), (1, 1)])
    num_cells = priors.corners.shape[0]  # 21
    outputs = {
        "obj_logits": torch.zeros(1, num_cells),
        "cls_logits": torch.zeros(1, num_cells, 2),
        "box_raw": torch.zeros(1, num_cells, 4),
        "num_priors_per_level": [16, 4, 1],
    }
    boxes = torch.tensor([[4.0, 6, 20, 18], [2, 2, 30, 30]])  # two 16/28 px objects in different cells
    losses = head.loss(outputs, priors, [{"boxes": boxes, "labels": torch.tensor([1, 0])}])
    # logit 0: every cell's objectness BCE is ln 2; 21 cells / 2 positives; classes: 2 entries per positive
    assert float(losses["loss_obj"]) == pytest.approx(21 * math.log(2) / 2, rel=1e-5)
    assert float(losses["loss_cls"]) == pytest.approx(2.0 * 2 * 2 * math.log(2) / 2, rel=1e-5)


def test_collisions_are_counted_in_last_stats_not_in_the_losses() -> None:
    head = GridHead(4, 2, num_convs=0)
    priors = _priors(head, [(4, 4), (2, 2), (1, 1)])
    num_cells = priors.corners.shape[0]
    outputs = {
        "obj_logits": torch.zeros(1, num_cells),
        "cls_logits": torch.zeros(1, num_cells, 2),
        "box_raw": torch.zeros(1, num_cells, 4),
        "num_priors_per_level": [16, 4, 1],
    }
    # two small objects whose centres share cell (1, 1) of stride 8: (12, 12) wins over (9, 10)
    boxes = torch.tensor([[2.0, 4, 16, 16], [4, 4, 20, 20]])
    targets = [{"boxes": boxes, "labels": torch.tensor([0, 1])}]
    losses = head.loss(outputs, priors, targets)
    assert set(losses) == {"loss_obj", "loss_cls", "loss_box"}
    assert head.last_stats == {"collisions": 1, "moved": 0, "num_pos": 1}
    head.move_losers = True  # the loser moves to the coarser level
    head.loss(outputs, priors, targets)
    assert head.last_stats == {"collisions": 0, "moved": 1, "num_pos": 2}
    assert head.collision == "move"


def test_collision_policy_reaches_the_head_from_the_config() -> None:
    """``model.grid.collision: last`` trains the contested cell on the object written last: the loss equals
    the loss of that object alone; ``nearest`` on the object nearest the cell centre."""
    # centres (12, 12) -- cell (1, 1)'s centre at stride 8 -- and (9.5, 10) share that cell
    near, late = [4.0, 4, 20, 20], [2.0, 4, 17, 16]
    losses = {}
    for policy in ("last", "nearest"):
        torch.manual_seed(0)
        model = build_detector(tiny_config("giou", collision=policy))
        assert model.head.collision == policy
        images = [torch.rand(3, 64, 64)]
        both = model(images, [{"boxes": torch.tensor([near, late]), "labels": torch.tensor([0, 2])}])
        assert model.head.last_stats["collisions"] == 1
        winner = late if policy == "last" else near
        alone = model(
            images,
            [{"boxes": torch.tensor([winner]), "labels": torch.tensor([2 if policy == "last" else 0])}],
        )
        torch.testing.assert_close(both["loss_box"], alone["loss_box"])
        losses[policy] = float(both["loss_box"].detach())
    assert losses["last"] != pytest.approx(losses["nearest"])


@pytest.mark.parametrize("box_loss", GRID_BOX_LOSSES)
def test_every_box_loss_trains(box_loss: str) -> None:
    torch.manual_seed(0)
    model = build_detector(tiny_config(box_loss))
    images, targets = synthetic_batch()
    targets[0] = {"boxes": torch.zeros((0, 4)), "labels": torch.zeros((0,), dtype=torch.int64)}
    losses = model(images, targets)
    assert all(torch.isfinite(v) and v.ndim == 0 for v in losses.values())
    if box_loss != "giou":  # the box loss lives in the head: a frozen ResNet body halves the test's time
        model.backbone.body.requires_grad_(False)
    history = train(model, 30 if box_loss == "giou" else 20)
    assert all(math.isfinite(v) for v in history)
    first, last = sum(history[:5]) / 5, sum(history[-5:]) / 5
    assert last < 0.5 * first, (box_loss, history)
    if box_loss == "giou":  # the longest run also checks the post-processing format
        detections = model.eval()(images)
        for det, image in zip(detections, images, strict=True):
            n = det["boxes"].shape[0]
            assert 0 < n <= 7 and det["scores"].shape == (n,) and det["labels"].shape == (n,)
            assert bool((det["scores"][:-1] >= det["scores"][1:]).all())
            h, w = image.shape[-2:]
            b = det["boxes"]
            assert bool((b >= 0).all() and (b[:, 2] <= w).all() and (b[:, 3] <= h).all())
        pre = model.detect(images, return_pre_nms=True)
        assert pre[1]["pre_nms_boxes"].shape[0] >= pre[1]["boxes"].shape[0]


def test_config_errors() -> None:
    with pytest.raises(ValueError, match="box_loss 'smooth_l1'"):
        GridHead(4, 2, box_loss="smooth_l1")
    with pytest.raises(ValueError, match="box_loss"):
        tiny_config("smooth_l1")


def test_objectness_starts_at_the_prior_and_classes_at_one_over_k() -> None:
    head = GridHead(16, 4, channels=16, num_convs=1, prior_prob=0.01)
    probs = torch.sigmoid(head.pred.bias.detach())
    assert probs[0].item() == pytest.approx(0.01)
    assert probs[1:5].tolist() == pytest.approx([0.25] * 4)
