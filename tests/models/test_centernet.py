"""CenterNet head: shapes, targets at the right cells, loss by hand, training, peak decoding, build."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.ops import box_iou

from anchorlab.config import ModelConfig
from anchorlab.models import Detector, build_detector
from anchorlab.models.heads.centernet import CenterNetHead

from . import helpers
from .helpers import NUM_CLASSES, synthetic_batch, train


def tiny_config() -> ModelConfig:
    return helpers.tiny_config(
        "centernet", fpn={"channels": 32, "min_level": 2, "max_level": 5}, head={"channels": 32}
    )


@pytest.fixture(scope="module")
def trained() -> tuple[Detector, list[float]]:
    torch.manual_seed(0)
    model = build_detector(tiny_config())
    return model, train(model, 40)


def test_shapes_priors_and_initialisation() -> None:
    torch.manual_seed(0)
    model = build_detector(tiny_config())
    assert model.strides[0] == 4
    batch = model.preprocess(synthetic_batch()[0])
    features = model.backbone(batch.tensor)
    outputs = model.head(features)
    assert outputs["heatmap"].shape == (2, NUM_CLASSES, 24, 24)  # 96 px (padded to 32) / 4
    assert outputs["size"].shape == outputs["offset"].shape == (2, 2, 24, 24)
    assert model.priors(features) == {"size": (24, 24), "stride": 4}
    assert float(model.head.heatmap[-1].bias[0]) == pytest.approx(-2.19, abs=0.01)


def _outputs_from_targets(head: CenterNetHead, boxes: torch.Tensor, labels: torch.Tensor, sharp: bool):
    """Perfect sizes and offsets at the centres; the heatmap is the target as probabilities, or (``sharp``)
    logits +-20 (1 at the centres, 0 elsewhere)."""
    hw = (16, 16)
    from anchorlab.assign import centernet_targets

    t = centernet_targets([boxes], [labels], head.num_classes, hw, 4)
    p = (t.heatmap >= 1).float() if sharp else t.heatmap
    p = p.clamp(1e-9, 1 - 1e-9)
    size = torch.zeros(1, 2, hw[0] * hw[1])
    offset = torch.zeros(1, 2, hw[0] * hw[1])
    size[0, :, t.index[0]] = t.size[0].T
    offset[0, :, t.index[0]] = t.offset[0].T
    return {
        "heatmap": (p / (1 - p)).log(),
        "size": size.reshape(1, 2, *hw),
        "offset": offset.reshape(1, 2, *hw),
    }, t


def test_loss_values_by_hand() -> None:
    head = CenterNetHead(4, 2, channels=4)
    boxes, labels = torch.tensor([[8.0, 8, 30, 26], [36, 4, 60, 40]]), torch.tensor([0, 1])
    targets = [{"boxes": boxes, "labels": labels}]
    priors = {"size": (16, 16), "stride": 4}
    outputs, t = _outputs_from_targets(head, boxes, labels, sharp=True)
    losses = head.loss(outputs, priors, targets)
    assert set(losses) == {"loss_heatmap", "loss_size", "loss_offset"}
    assert float(losses["loss_size"]) == pytest.approx(0.0, abs=1e-6)
    assert float(losses["loss_offset"]) == pytest.approx(0.0, abs=1e-6)
    assert float(losses["loss_heatmap"]) < 1e-6
    # object 0's size is off by 2 cells in w: L1 sum 2 over 2 objects x 2 coordinates, x weight 0.1
    cell = int(t.index[0, 0])
    outputs["size"].view(1, 2, -1)[0, 0, cell] += 2.0
    assert float(head.loss(outputs, priors, targets)["loss_size"]) == pytest.approx(0.1 * 2 / 4)
    # moving sizes away from the centres changes nothing
    outputs["size"].view(1, 2, -1)[0, :, cell + 1] = 50.0
    assert float(head.loss(outputs, priors, targets)["loss_size"]) == pytest.approx(0.1 * 2 / 4)
    # a heatmap of logit 0 (p = 0.5): 2 centres cost 0.25 ln2 each, the rest (1 - y)^4 0.25 ln2; / 2
    outputs["heatmap"] = torch.zeros(1, 2, 16, 16)
    expected = float(((1 - t.heatmap) ** 4).sum() * 0.25 * math.log(2) + 2 * 0.25 * math.log(2)) / 2
    assert float(head.loss(outputs, priors, targets)["loss_heatmap"]) == pytest.approx(expected, rel=1e-4)


def test_decoding_recovers_the_boxes_and_needs_no_nms() -> None:
    head = CenterNetHead(4, 2, channels=4, topk=5)
    boxes, labels = torch.tensor([[8.0, 8, 30, 26], [36, 4, 60, 40]]), torch.tensor([0, 1])
    outputs, _ = _outputs_from_targets(head, boxes, labels, sharp=False)
    det = head.postprocess(outputs, {"size": (16, 16), "stride": 4}, [(64, 64)], score_thresh=0.5)[0]
    assert det["labels"].tolist() == [0, 1] or det["labels"].tolist() == [1, 0]
    order = det["labels"].argsort()
    assert torch.allclose(det["boxes"][order], boxes, atol=1e-4)
    assert det["scores"].tolist() == pytest.approx([1.0, 1.0], abs=1e-5)
    # neighbours of a peak are suppressed by the 3x3 max-pool: with threshold 0, 5 (topk) come back and
    # the gaussian shoulders of the two objects (values up to ~0.8) are not among them
    outputs["size"] = torch.where(outputs["size"] == 0, 2.0, outputs["size"])  # no empty boxes elsewhere
    det = head.postprocess(outputs, {"size": (16, 16), "stride": 4}, [(64, 64)], score_thresh=0.0)[0]
    assert det["boxes"].shape[0] == 5 and det["scores"][2] < 0.01


def test_loss_keys_gradients_and_empty_image() -> None:
    torch.manual_seed(0)
    model = build_detector(tiny_config())
    images, targets = synthetic_batch()
    targets[0] = {"boxes": torch.zeros((0, 4)), "labels": torch.zeros((0,), dtype=torch.int64)}
    losses = model(images, targets)
    assert all(torch.isfinite(v) and v.ndim == 0 for v in losses.values())
    sum(losses.values()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.head.parameters())
    empty = [{"boxes": torch.zeros((0, 4)), "labels": torch.zeros((0,), dtype=torch.int64)}] * 2
    assert all(torch.isfinite(v) for v in model(images, empty).values())


def test_training_reduces_the_loss(trained) -> None:
    _, history = trained
    assert all(math.isfinite(v) for v in history)
    first, last = sum(history[:5]) / 5, sum(history[-5:]) / 5
    assert last < 0.2 * first, history  # measured 0.03-0.04 (seeds 1, 2)


def test_eval_output_format(trained) -> None:
    model, _ = trained
    images, _ = synthetic_batch()
    detections = model.eval()(images)
    for det, image in zip(detections, images, strict=True):
        assert set(det) == {"boxes", "scores", "labels"}
        n = det["boxes"].shape[0]
        assert n == 7  # score_thresh 0: max_detections (7) < topk (100) caps it
        assert det["scores"].shape == (n,) and det["labels"].shape == (n,)
        assert bool((det["scores"][:-1] >= det["scores"][1:]).all())
        h, w = image.shape[-2:]
        b = det["boxes"]
        assert bool((b >= 0).all() and (b[:, 2] <= w).all() and (b[:, 3] <= h).all())
    pre = model.detect(images, return_pre_nms=True)
    assert pre[0]["pre_nms_boxes"].shape[0] >= pre[0]["boxes"].shape[0]


def test_trained_model_finds_the_object(trained) -> None:
    model, _ = trained
    images, targets = synthetic_batch()
    det = model.eval()(images)[0]
    assert float(box_iou(det["boxes"][:3], targets[0]["boxes"]).max()) > 0.3
