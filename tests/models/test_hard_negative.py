"""RetinaNet + SSD hard negative mining: softmax prior init, loss by hand, postprocess scores, training."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import box_iou

from anchorlab.config import ModelConfig
from anchorlab.models import build_detector
from anchorlab.models.heads.hnm import HardNegativeHead

from . import helpers
from .helpers import NUM_CLASSES, synthetic_batch, train


def tiny_config(**hnm) -> ModelConfig:
    return helpers.tiny_config("retinanet", sampler="hard_negative", hnm=hnm, channels_last=False)


def test_prior_init_gives_background_probability() -> None:
    head = HardNegativeHead(8, 9, NUM_CLASSES, channels=8, num_convs=1, prior_prob=0.02)
    assert head.num_classes == NUM_CLASSES + 1 and head.num_foreground == NUM_CLASSES
    probs = head.cls_logits.bias.view(9, NUM_CLASSES + 1).softmax(-1)
    torch.testing.assert_close(probs[:, NUM_CLASSES], torch.full((9,), 0.98))
    torch.testing.assert_close(probs[:, :NUM_CLASSES], torch.full((9, NUM_CLASSES), 0.02 / NUM_CLASSES))


def test_loss_by_hand() -> None:
    """1 positive, 5 background anchors of known loss, 1 ignored: CE(pos) + the 3 hardest negatives."""
    head = HardNegativeHead(4, 1, 2, num_convs=0, neg_pos_ratio=3.0, box_weight=2.0)
    anchors = torch.tensor(
        [[0.0, 0, 10, 10], [100, 100, 110, 110], [120, 0, 130, 10], [0, 120, 10, 130], [50, 50, 60, 60],
         [200, 0, 210, 10], [0, 0, 10, 22.5]]
    )  # fmt: skip
    logits = torch.zeros(1, 7, 3)
    logits[0, :, 2] = torch.tensor([0.0, 1.0, -1.0, 3.0, -2.0, 0.5, -5.0])  # background logit
    logits[0, 0, 1] = 2.0
    outputs = {"cls_logits": logits, "box_deltas": torch.full((1, 7, 4), 0.5)}
    targets = [{"boxes": torch.tensor([[0.0, 0, 10, 10]]), "labels": torch.tensor([1])}]
    losses = head.loss(outputs, anchors, targets)
    ce = F.cross_entropy(logits[0], torch.tensor([1, 2, 2, 2, 2, 2, 2]), reduction="none")
    # negatives 1..5 have losses ordered by their background logit: hardest are 4, 2, 5 (anchor 6 ignored)
    assert float(losses["loss_cls"]) == pytest.approx(float(ce[0] + ce[4] + ce[2] + ce[5]), rel=1e-5)
    assert float(losses["loss_box"]) == pytest.approx(2.0 * 4 * (0.5 - 0.055), rel=1e-5)
    # no positives: min_negatives hard negatives, normalised by 1
    head.min_negatives = 2
    empty = [{"boxes": torch.zeros((0, 4)), "labels": torch.zeros((0,), dtype=torch.int64)}]
    losses = head.loss(outputs, anchors, empty)
    ce_bg = F.cross_entropy(logits[0], torch.full((7,), 2), reduction="none")
    assert float(losses["loss_cls"]) == pytest.approx(float(ce_bg.topk(2).values.sum()), rel=1e-5)
    assert float(losses["loss_box"]) == 0


def test_postprocess_scores_are_softmax_foreground_probabilities() -> None:
    head = HardNegativeHead(4, 1, 2, num_convs=0).eval()
    anchors = torch.tensor([[0.0, 0, 10, 10], [40, 40, 60, 60]])
    logits = torch.tensor([[[2.0, 0.5, 1.0], [-1.0, 1.5, 0.0]]])
    outputs = {"cls_logits": logits, "box_deltas": torch.zeros(1, 2, 4), "num_priors_per_level": [2]}
    det = head.postprocess(outputs, anchors, [(64, 64)], score_thresh=0.0, max_detections=10)[0]
    expected = logits[0].softmax(-1)[:, :2].flatten().sort(descending=True).values
    torch.testing.assert_close(det["scores"], expected)
    assert det["labels"].tolist() == [1, 0, 1, 0]  # 0.77 (anchor 1), 0.63, 0.14 (anchor 0), 0.06
    # class_scores (what ONNX export scores priors with): the K foreground probabilities, not K + 1 sigmoids
    torch.testing.assert_close(head.class_scores(logits), logits.softmax(-1)[..., :2])
    assert build_detector(tiny_config()).name == "retinanet_hnm"  # what an export's metadata records


def test_hnm_detector_trains_and_detects() -> None:
    torch.manual_seed(0)
    model = build_detector(tiny_config())
    assert isinstance(model.head, HardNegativeHead)

    def check(losses: dict[str, torch.Tensor]) -> None:
        assert set(losses) == {"loss_cls", "loss_box"}

    history = train(model, 30, lr=1e-3, check=check)
    assert all(torch.isfinite(torch.tensor(history)))
    assert sum(history[-5:]) / 5 < 0.2 * sum(history[:5]) / 5, history  # measured 0.035-0.05, seeds 0-2
    model.eval()
    images, targets = synthetic_batch()
    detections = model(images)
    for det, target in zip(detections, targets, strict=True):
        assert det["boxes"].shape[0] == 7 and bool((det["scores"] <= 1).all())
        assert float(box_iou(det["boxes"][:1], target["boxes"]).max()) > 0.5
    assert int(detections[0]["labels"][0]) == 0
