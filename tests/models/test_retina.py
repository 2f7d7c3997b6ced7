"""RetinaNet head + Detector + build: level order, losses, training, post-processing, FreeAnchor mode."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.ops import box_iou

from anchorlab.anchors import AnchorGenerator
from anchorlab.config import Config, ModelConfig
from anchorlab.data.batch import pad_images
from anchorlab.models import Detector, RetinaHead, build_detector
from anchorlab.models.heads.retina import flatten_levels

from . import helpers
from .helpers import NUM_CLASSES, plant_logit, synthetic_batch, train


def tiny_config(detector: str = "retinanet", **loss) -> ModelConfig:
    return helpers.tiny_config(detector, loss={"normalizer_momentum": 0.0, **loss}, channels_last=True)


@pytest.fixture(scope="module")
def trained() -> tuple[Detector, list[float]]:
    torch.manual_seed(0)
    model = build_detector(tiny_config())
    return model, train(model, 30, lr=1e-3)


def test_level_order_of_head_outputs_matches_anchors() -> None:
    """A logit planted at level 1, cell (y=2, x=3), anchor 4, class 1 comes back at the flat index whose
    anchor is centred on that cell of stride 16 with anchor 4's size."""
    torch.manual_seed(0)
    generator = AnchorGenerator.retinanet()
    head = RetinaHead(8, 9, NUM_CLASSES, channels=8, num_convs=1).eval()
    level, y, x, a, k = 1, 2, 3, 4, 1
    plant_logit(head.cls_logits, level, (0, a * NUM_CLASSES + k, y, x))
    features = [torch.randn(1, 8, 12 // 2**i + 1, 10 // 2**i + 1) for i in range(5)]  # non-square maps
    with torch.no_grad():
        logits = head(features)["cls_logits"]
    sizes = [tuple(f.shape[-2:]) for f in features]
    anchors = generator.grid_anchors(sizes)
    assert logits.shape == (1, anchors.shape[0], NUM_CLASSES)
    flat = int(logits[0].argmax())
    found, found_class = divmod(flat, NUM_CLASSES)
    assert found_class == k
    anchor = anchors[found]
    stride = 16
    centre = ((anchor[0] + anchor[2]) / 2, (anchor[1] + anchor[3]) / 2)
    assert centre == pytest.approx((x * stride, y * stride))
    expected = generator.base_anchors(level)[a]
    assert anchor[2] - anchor[0] == pytest.approx(float(expected[2] - expected[0]))
    assert anchor[3] - anchor[1] == pytest.approx(float(expected[3] - expected[1]))
    start, _ = generator.level_ranges(sizes)[level]
    assert found == start + (y * sizes[level][1] + x) * 9 + a


def test_flatten_levels_order_and_channels_last() -> None:
    maps = [torch.arange(2 * 6 * 2 * 3, dtype=torch.float32).reshape(2, 6, 2, 3)]  # A=2, C=3
    flat = flatten_levels(maps, 3)
    # image 1, cell (y=1, x=2), anchor 1, channel 2 -> row (1 * 3 + 2) * 2 + 1
    assert flat[1, (1 * 3 + 2) * 2 + 1, 2] == maps[0][1, 1 * 3 + 2, 1, 2]
    cl = [maps[0].contiguous(memory_format=torch.channels_last)]
    assert torch.equal(flatten_levels(cl, 3), flat)


def test_losses_finite_backward_and_training(trained) -> None:
    _, history = trained
    assert all(torch.isfinite(torch.tensor(history)))
    first, last = sum(history[:10]) / 10, sum(history[-10:]) / 10
    assert last < 0.3 * first, history  # measured ~0.05 over seeds 0-2


def test_focal_loss_values_by_hand() -> None:
    """Anchor 0 equals the object (positive), anchor 1 is background, anchor 2 (IoU 0.44) is ignored."""
    head = RetinaHead(4, 1, 2, num_convs=0, normalizer_momentum=0.0, cls_weight=2.0, box_weight=3.0)
    anchors = torch.tensor([[0.0, 0, 10, 10], [100, 100, 110, 110], [0, 0, 10, 22.5]])
    outputs = {"cls_logits": torch.zeros(1, 3, 2), "box_deltas": torch.full((1, 3, 4), 0.5)}
    targets = [{"boxes": torch.tensor([[0.0, 0, 10, 10]]), "labels": torch.tensor([1])}]
    losses = head.loss(outputs, anchors, targets)
    # logits 0 -> p = 0.5: positive entry 0.25 * 0.5**2 * ln 2, negative entries 0.75 * 0.5**2 * ln 2;
    # anchor 0 has one of each, anchor 1 two negatives, anchor 2 nothing; one positive.
    expected_cls = (0.0625 + 3 * 0.1875) * math.log(2)
    assert float(losses["loss_cls"]) == pytest.approx(2.0 * expected_cls, rel=1e-5)
    # anchor 0's targets are 0: smooth L1 (beta 0.11) of 0.5 is 0.5 - 0.055, summed over 4 deltas.
    assert float(losses["loss_box"]) == pytest.approx(3.0 * 4 * 0.445, rel=1e-5)
    # the ignore band and background do not regress: moving their deltas changes nothing
    outputs["box_deltas"][0, 1:] = 5.0
    assert float(head.loss(outputs, anchors, targets)["loss_box"]) == pytest.approx(3.0 * 4 * 0.445, rel=1e-5)


def test_normalizer_is_checkpointed() -> None:
    head = RetinaHead(4, 1, 2, num_convs=0, normalizer_momentum=0.5)
    anchors = torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30]])
    outputs = {"cls_logits": torch.zeros(1, 2, 2), "box_deltas": torch.zeros(1, 2, 4)}
    targets = [{"boxes": anchors.clone(), "labels": torch.tensor([0, 1])}]
    head.loss(outputs, anchors, targets)  # 2 positives: 0.5 * 100 + 0.5 * 2
    assert float(head.loss_normalizer) == pytest.approx(51.0)
    fresh = RetinaHead(4, 1, 2, num_convs=0, normalizer_momentum=0.5)
    fresh.load_state_dict(head.state_dict())
    assert all(isinstance(v, torch.Tensor) for v in fresh.state_dict().values())
    head.loss(outputs, anchors, targets)
    fresh.loss(outputs, anchors, targets)  # continues from 51, not from 100
    assert float(fresh.loss_normalizer) == float(head.loss_normalizer) == pytest.approx(26.5)
    fresh.eval()
    fresh.loss(outputs, anchors, targets)  # evaluation losses leave it alone
    assert float(fresh.loss_normalizer) == pytest.approx(26.5)


def test_loss_keys_and_gradients() -> None:
    torch.manual_seed(0)
    model = build_detector(tiny_config())
    images, targets = synthetic_batch()
    targets[0]["crowd"] = torch.tensor([[60.0, 60, 90, 90]])
    losses = model(images, targets)
    assert set(losses) == {"loss_cls", "loss_box"}
    assert all(torch.isfinite(v) and v.ndim == 0 for v in losses.values())
    sum(losses.values()).backward()
    grads = [p.grad for p in model.head.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("box", ["l1", "giou", "ciou"])
def test_box_loss_kinds_and_an_image_without_objects(box: str) -> None:
    torch.manual_seed(0)
    model = build_detector(tiny_config(box=box))
    images, targets = synthetic_batch()
    targets[0] = {"boxes": torch.zeros((0, 4)), "labels": torch.zeros((0,), dtype=torch.int64)}
    losses = model(images, targets)
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_box"] > 0


def test_eval_output_format(trained) -> None:
    model, _ = trained
    images, targets = synthetic_batch()
    model.eval()
    detections = model(images)
    assert len(detections) == 2
    for det, image in zip(detections, images, strict=True):
        assert set(det) == {"boxes", "scores", "labels"}
        n = det["boxes"].shape[0]
        assert n == 7  # score_thresh 0: the max_detections cap (7) is what stops it
        assert det["scores"].shape == (n,) and det["labels"].shape == (n,)
        assert det["labels"].dtype == torch.int64 and bool(((det["labels"] >= 0) & (det["labels"] < 3)).all())
        assert bool((det["scores"][:-1] >= det["scores"][1:]).all())
        h, w = image.shape[-2:]
        boxes = det["boxes"]
        assert bool((boxes >= 0).all() and (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all())
    # the 30-iteration model already finds an object in each image (IoU ~0.98 over seeds 0-2)
    for det, target in zip(detections, targets, strict=True):
        assert float(box_iou(det["boxes"][:1], target["boxes"]).max()) > 0.5
    pre = model.detect(images, return_pre_nms=True)
    assert pre[0]["pre_nms_boxes"].shape[0] >= pre[0]["boxes"].shape[0]
    assert model.training is False


def test_batched_postprocess_equals_single_images() -> None:
    torch.manual_seed(0)
    generator = AnchorGenerator.retinanet()
    head = RetinaHead(8, 9, 5, channels=8, num_convs=1).eval()
    features = [torch.randn(2, 8, 16 // 2**i, 12 // 2**i + 1) for i in range(5)]
    anchors = generator.grid_anchors([tuple(f.shape[-2:]) for f in features])
    sizes = [(128, 96), (100, 70)]
    kwargs = {"score_thresh": 0.01, "topk_per_level": 50, "max_detections": 30}
    with torch.no_grad():
        outputs = head(features)
    batched = head.postprocess(outputs, anchors, sizes, **kwargs)
    for i in range(2):
        single = dict(
            outputs, cls_logits=outputs["cls_logits"][i : i + 1], box_deltas=outputs["box_deltas"][i : i + 1]
        )
        alone = head.postprocess(single, anchors, sizes[i : i + 1], **kwargs)[0]
        assert batched[i]["boxes"].shape[0] > 0
        for key in ("boxes", "scores", "labels"):
            assert torch.equal(batched[i][key], alone[key])


def test_image_batch_input_and_zero_padding() -> None:
    torch.manual_seed(0)
    model = build_detector(tiny_config()).eval()
    images, _ = synthetic_batch()
    batch = model.preprocess(images)
    assert batch.tensor.shape[-2:] == (96, 96)  # padded to a multiple of 32 (P7 needs no more)
    assert [tuple(im.shape[-2:]) for im in images] == [(96, 96), (80, 96)]
    assert batch.tensor[1, :, 80:, :].abs().max() == 0 and batch.tensor[1, :, :80].abs().max() > 0
    from_batch = model(pad_images(images, 16))  # an ImageBatch gives what the list gives
    from_list = model(images)
    for a, b in zip(from_batch, from_list, strict=True):
        assert torch.allclose(a["boxes"], b["boxes"]) and torch.equal(a["labels"], b["labels"])


def test_free_anchor_mode_trains() -> None:
    torch.manual_seed(0)
    model = build_detector(tiny_config("free_anchor"))
    images, targets = synthetic_batch()
    losses = model(images, targets)
    assert set(losses) == {"loss_positive_bag", "loss_negative_bag"}
    assert all(torch.isfinite(v) for v in losses.values())
    history = train(model, 20, lr=1e-3)
    assert sum(history[-5:]) / 5 < 0.5 * sum(history[:5]) / 5, history  # measured ~0.2


def test_build_errors_and_explicit_anchor_sizes(monkeypatch) -> None:
    from anchorlab.models import build

    monkeypatch.delitem(build.DETECTORS, "fcos")
    with pytest.raises(
        ValueError, match=r"'fcos' is not available; available detectors: retinanet, free_anchor"
    ):
        build_detector(ModelConfig(detector="fcos", num_classes=2))
    with pytest.raises(ValueError, match=r"model\.num_classes is not set"):
        build_detector(Config())
    with pytest.raises(ValueError, match="has 2 levels but the FPN has 5"):
        build_detector(ModelConfig(num_classes=2, anchors={"sizes": [[32], [64]]}))
    cfg = Config(model=tiny_config())
    cfg.model.anchors.sizes = [[24, 40], [48, 80], [96], [192, 300], [384, 500]]
    with pytest.raises(ValueError, match="same number of anchors on every level"):
        build_detector(cfg)
    cfg.model.anchors.sizes = [[24, 40], [48, 80], [96, 160], [192, 300], [384, 500]]
    model = build_detector(cfg)
    assert model.head.num_anchors == 6 and model.anchor_generator.sizes[0] == (24.0, 40.0)
