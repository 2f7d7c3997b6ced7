"""Tests for ``free_anchor_loss`` against a slow per-image / per-object reference of the authors' method."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.ops import box_iou

from anchorlab.boxes import BoxCoder
from anchorlab.losses.free_anchor import free_anchor_loss, mean_max

CODER = BoxCoder(stds=(0.1, 0.1, 0.2, 0.2))
F64 = torch.float64


def grid_anchors(image: int = 64, stride: int = 8, sizes=(12.0, 20.0, 32.0), dtype=F64) -> torch.Tensor:
    """``[R, 4]`` anchors: every size x ratios (0.5, 1, 2) at every cell centre of a square image."""
    c = (torch.arange(image // stride, dtype=dtype) + 0.5) * stride
    cy, cx = torch.meshgrid(c, c, indexing="ij")
    shapes = []
    for s in sizes:
        for r in (0.5, 1.0, 2.0):
            w, h = s / math.sqrt(r), s * math.sqrt(r)
            shapes.append([-w / 2, -h / 2, w / 2, h / 2])
    centres = torch.stack((cx, cy, cx, cy), dim=-1).reshape(-1, 1, 4)
    return (centres + torch.tensor(shapes, dtype=dtype)).reshape(-1, 4)


def reference_loss(anchors, cls_logits, box_deltas, gt_boxes, gt_labels, *, bag_size=50, bbox_thr=0.6,
                   alpha=0.5, gamma=2.0, reg_weight=0.75, beta=0.11):  # fmt: skip
    """Straight from the paper and the structure of the authors' code: loops over images and objects."""
    _, num_anchors, num_classes = cls_logits.shape
    cls_prob = torch.sigmoid(cls_logits)
    positive_terms, negative_total, num_objects = [], 0.0, 0
    box_probs = []
    for b in range(cls_logits.shape[0]):
        boxes, labels = gt_boxes[b], gt_labels[b]
        box_prob = torch.zeros(num_anchors, num_classes, dtype=cls_prob.dtype)
        with torch.no_grad():
            pred = CODER.decode(anchors, box_deltas[b])
            for i in range(len(boxes)):
                iou = box_iou(boxes[i : i + 1], pred)[0]
                t2 = max(float(iou.max()), bbox_thr + 1e-12)
                prob = ((iou - bbox_thr) / (t2 - bbox_thr)).clamp(0, 1)
                c = int(labels[i])
                box_prob[:, c] = torch.maximum(box_prob[:, c], prob)
        box_probs.append(box_prob)
        for i in range(len(boxes)):
            num_objects += 1
            anchor_iou = box_iou(boxes[i : i + 1], anchors)[0]
            order = torch.argsort(anchor_iou, descending=True)
            k = min(bag_size, num_anchors)
            if k < num_anchors:  # the bag must be well defined for the comparison
                assert anchor_iou[order[k - 1]] > anchor_iou[order[k]]
            likelihoods = []
            for j in order[:k].tolist():
                target = CODER.encode(anchors[j], boxes[i])
                loc = 0.0
                for d in range(4):
                    diff = (box_deltas[b, j, d] - target[d]).abs()
                    loc = loc + (0.5 * diff**2 / beta if diff < beta else diff - 0.5 * beta)
                likelihoods.append(cls_prob[b, j, int(labels[i])] * torch.exp(-reg_weight * loc))
            x = torch.stack(likelihoods)
            w = 1 / (1 - x)
            positive_terms.append(-torch.log((w * x).sum() / w.sum()))
        p = cls_prob[b] * (1 - box_prob)
        negative_total = negative_total + (p**gamma * -torch.log(1 - p)).sum()
    positive = sum(positive_terms) / max(1, num_objects) if positive_terms else torch.tensor(0.0, dtype=F64)
    negative = negative_total / max(1, num_objects * bag_size)
    return {"positive_bag_loss": alpha * positive, "negative_bag_loss": (1 - alpha) * negative}, box_probs


def random_case(gen, anchors, objects_per_image, num_classes, same_class_overlap=True, noise=0.3):
    """Random objects (some overlapping with a shared class), logits and deltas near the targets."""
    boxes, labels = [], []
    for m in objects_per_image:
        wh = 14 + 22 * torch.rand(m, 2, generator=gen, dtype=F64)
        xy = 4 + torch.rand(m, 2, generator=gen, dtype=F64) * (60 - wh)
        b = torch.cat((xy, xy + wh), dim=1)
        lab = torch.randint(num_classes, (m,), generator=gen)
        if same_class_overlap and m >= 2:  # a shifted copy of object 0 with the same class
            b[1] = b[0] + 3.0
            lab[1] = lab[0]
        boxes.append(b)
        labels.append(lab)
    n, r = len(objects_per_image), anchors.shape[0]
    logits = torch.randn(n, r, num_classes, generator=gen, dtype=F64) - 1.0
    deltas = noise * torch.randn(n, r, 4, generator=gen, dtype=F64)
    for i, b in enumerate(boxes):  # predictions regress toward the best-overlapping object
        if len(b):
            best = box_iou(b, anchors).argmax(dim=0)
            deltas[i] += CODER.encode(anchors, b[best])
    return logits.requires_grad_(), deltas.requires_grad_(), boxes, labels


@pytest.mark.parametrize(
    ("objects", "num_classes", "bag_size", "seed"),
    [((3, 0, 4), 5, 6, 0), ((2, 2), 1, 5, 1), ((0, 5), 3, 8, 2), ((4,), 7, 3, 3)],
)
def test_matches_reference(objects, num_classes, bag_size, seed):
    gen = torch.Generator().manual_seed(seed)
    anchors = grid_anchors()
    anchors = anchors + torch.rand(anchors.shape, generator=gen, dtype=F64)  # no IoU ties at the bag edge
    logits, deltas, boxes, labels = random_case(gen, anchors, objects, num_classes)
    out = free_anchor_loss(anchors, logits, deltas, boxes, labels, bag_size=bag_size)
    grads = torch.autograd.grad(out["positive_bag_loss"] + 0.7 * out["negative_bag_loss"], (logits, deltas))
    ref, box_probs = reference_loss(anchors, logits, deltas, boxes, labels, bag_size=bag_size)
    ref_grads = torch.autograd.grad(
        ref["positive_bag_loss"] + 0.7 * ref["negative_bag_loss"], (logits, deltas)
    )
    # the case must exercise the saturated-linear box likelihood: fractional values and saturated ones
    all_probs = torch.cat([p.flatten() for p in box_probs])
    assert ((all_probs > 0) & (all_probs < 1)).any() and (all_probs == 1).any()
    for key in ref:
        torch.testing.assert_close(out[key], ref[key], rtol=1e-5, atol=1e-12)
    for g, rg in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, rg, rtol=1e-5, atol=1e-10)


def _tiny_case(seed=0, noise=0.05):
    gen = torch.Generator().manual_seed(seed)
    anchors = grid_anchors(image=32, stride=16, sizes=(16.0, 24.0))  # 24 anchors
    logits, deltas, boxes, labels = random_case(gen, anchors, (2,), 3, noise=noise)
    return anchors, logits.detach().requires_grad_(), deltas.detach().requires_grad_(), boxes, labels


def test_gradcheck_positive_wrt_logits_and_deltas():
    anchors, logits, deltas, boxes, labels = _tiny_case()

    def positive(lg, dl):
        return free_anchor_loss(anchors, lg, dl, boxes, labels, bag_size=4)["positive_bag_loss"]

    assert torch.autograd.gradcheck(positive, (logits, deltas))


def test_gradcheck_both_terms_wrt_logits():
    anchors, logits, deltas, boxes, labels = _tiny_case()
    _, box_probs = reference_loss(anchors, logits, deltas, boxes, labels, bag_size=4)
    assert (box_probs[0] > 0).any()  # the negative term's (1 - box likelihood) is not trivially 1

    def both(lg):
        out = free_anchor_loss(anchors, lg, deltas.detach(), boxes, labels, bag_size=4)
        return out["positive_bag_loss"], out["negative_bag_loss"]

    assert torch.autograd.gradcheck(both, (logits,))


def test_box_likelihood_is_detached():
    """The negative term sees (1 - box likelihood) as a constant: no gradient reaches the deltas."""
    anchors, logits, deltas, boxes, labels = _tiny_case()
    out = free_anchor_loss(anchors, logits, deltas, boxes, labels, bag_size=4)
    (grad,) = torch.autograd.grad(out["negative_bag_loss"], deltas, allow_unused=True)
    assert grad is None or torch.count_nonzero(grad) == 0


def test_positive_gradient_only_on_bag_members_and_object_class():
    anchors, logits, deltas, boxes, labels = _tiny_case()
    out = free_anchor_loss(anchors, logits, deltas, boxes, labels, bag_size=4)
    (grad,) = torch.autograd.grad(out["positive_bag_loss"], logits)
    expected = torch.zeros_like(grad, dtype=torch.bool)
    for i in range(len(boxes[0])):
        bag = box_iou(boxes[0][i : i + 1], anchors)[0].topk(4).indices
        expected[0, bag, labels[0][i]] = True
    assert torch.equal(grad != 0, expected)


def test_near_perfect_prediction_gives_near_zero_losses():
    anchors = grid_anchors(image=128, stride=8, sizes=(16.0, 24.0))
    boxes = [torch.tensor([[10.0, 12.0, 34.0, 30.0], [80.0, 70.0, 110.0, 116.0]], dtype=F64)]
    labels = [torch.tensor([1, 2])]
    bag_size = 8
    logits = torch.full((1, anchors.shape[0], 4), -40.0, dtype=F64)
    deltas = torch.zeros(1, anchors.shape[0], 4, dtype=F64)
    for i in range(2):
        bag = box_iou(boxes[0][i : i + 1], anchors)[0].topk(bag_size).indices
        logits[0, bag, labels[0][i]] = 40.0
        deltas[0, bag] = CODER.encode(anchors[bag], boxes[0][i])
    out = free_anchor_loss(anchors, logits, deltas, boxes, labels, bag_size=bag_size)
    assert out["positive_bag_loss"] < 1e-12
    assert out["negative_bag_loss"] < 1e-12
    # a mediocre prediction (probabilities 0.5, deltas off the targets) is clearly worse
    bad = free_anchor_loss(anchors, torch.zeros_like(logits), deltas + 0.5, boxes, labels, bag_size=bag_size)
    assert bad["positive_bag_loss"] > 0.1 and bad["negative_bag_loss"] > 0.1


def test_all_negative_logits_give_near_zero_negative_loss():
    gen = torch.Generator().manual_seed(5)
    anchors = grid_anchors()
    _, deltas, boxes, labels = random_case(gen, anchors, (3, 2), 4)
    logits = torch.full((2, anchors.shape[0], 4), -30.0, dtype=F64)
    out = free_anchor_loss(anchors, logits, deltas, boxes, labels, bag_size=6)
    assert 0 <= out["negative_bag_loss"] < 1e-20
    assert out["positive_bag_loss"] > 10  # every bag has class probability ~1e-13


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_extreme_logits_and_deltas_are_finite(dtype):
    gen = torch.Generator().manual_seed(7)
    anchors = grid_anchors(dtype=dtype)
    _, _, boxes, labels = random_case(gen, anchors, (3, 0, 2), 4)
    sign = torch.randint(0, 2, (3, anchors.shape[0], 4), generator=gen).to(dtype) * 2 - 1
    logits = (100.0 * sign).requires_grad_()
    deltas = (50.0 * torch.randn(3, anchors.shape[0], 4, generator=gen)).to(dtype).requires_grad_()
    boxes = [b.to(dtype) for b in boxes]
    for lg, dl in ((logits, deltas), (logits, torch.zeros_like(deltas, requires_grad=True))):
        out = free_anchor_loss(anchors, lg, dl, boxes, labels, bag_size=6)
        total = out["positive_bag_loss"] + out["negative_bag_loss"]
        assert all(torch.isfinite(v) for v in out.values()) and out["negative_bag_loss"] > 0
        g_logits, g_deltas = torch.autograd.grad(total, (lg, dl))
        assert torch.isfinite(g_logits).all() and torch.isfinite(g_deltas).all()


def test_saturated_bag_member_keeps_finite_values_and_gradients():
    """x == 1 exactly in float32 (logit 30, deltas on target): the mean-max weight clip takes over."""
    anchors = grid_anchors(dtype=torch.float32)
    boxes = [torch.tensor([[10.0, 12.0, 34.0, 30.0]])]
    labels = [torch.tensor([0])]
    logits = torch.full((1, anchors.shape[0], 2), -5.0)
    deltas = torch.zeros(1, anchors.shape[0], 4)
    best = box_iou(boxes[0], anchors)[0].argmax()
    logits[0, best, 0] = 30.0
    deltas[0, best] = CODER.encode(anchors[best], boxes[0][0])
    logits.requires_grad_()
    deltas.requires_grad_()
    out = free_anchor_loss(anchors, logits, deltas, boxes, labels, bag_size=6)
    grads = torch.autograd.grad(sum(out.values()), (logits, deltas))
    assert out["positive_bag_loss"] < 1e-6
    assert all(torch.isfinite(g).all() for g in grads)


def test_batch_without_objects():
    gen = torch.Generator().manual_seed(3)
    anchors = grid_anchors()
    logits = torch.randn(2, anchors.shape[0], 3, generator=gen, dtype=F64, requires_grad=True)
    deltas = torch.randn(2, anchors.shape[0], 4, generator=gen, dtype=F64, requires_grad=True)
    empty = [torch.zeros(0, 4, dtype=F64)] * 2
    labels = [torch.zeros(0, dtype=torch.long)] * 2
    out = free_anchor_loss(anchors, logits, deltas, empty, labels)
    assert out["positive_bag_loss"] == 0
    p = torch.sigmoid(logits)
    expected = 0.5 * (p**2 * -torch.log1p(-p)).sum()  # normaliser max(1, 0 * 50) = 1
    torch.testing.assert_close(out["negative_bag_loss"], expected)
    g_logits, g_deltas = torch.autograd.grad(sum(out.values()), (logits, deltas))
    assert (g_logits != 0).all() and torch.count_nonzero(g_deltas) == 0


def test_float32_matches_float64_and_bag_larger_than_anchor_count():
    gen = torch.Generator().manual_seed(11)
    anchors = grid_anchors(image=32, stride=16, sizes=(16.0,))  # 12 anchors < bag_size
    logits, deltas, boxes, labels = random_case(gen, anchors, (2, 1), 3)
    out64 = free_anchor_loss(anchors, logits, deltas, boxes, labels)  # bag_size 50 > 12 anchors
    out32 = free_anchor_loss(
        anchors.float(), logits.detach().float(), deltas.detach().float(), [b.float() for b in boxes], labels
    )
    ref, _ = reference_loss(anchors, logits, deltas, boxes, labels)  # bags are all 12; normaliser keeps 50
    for key in out64:
        torch.testing.assert_close(out64[key], ref[key], rtol=1e-5, atol=1e-12)
        assert out32[key].dtype == torch.float32
        torch.testing.assert_close(out32[key].double(), out64[key].detach(), rtol=1e-4, atol=1e-7)


def test_mean_max_between_mean_and_max():
    x = torch.tensor([[0.1, 0.2, 0.9], [0.5, 0.5, 0.5], [0.0, 0.0, 1.0]], dtype=F64)
    mm = mean_max(x, dim=1)
    assert (mm >= x.mean(dim=1) - 1e-12).all() and (mm <= x.amax(dim=1) + 1e-12).all()
    torch.testing.assert_close(mm[1], torch.tensor(0.5, dtype=F64))
    torch.testing.assert_close(mm[2], torch.tensor(1.0, dtype=F64))  # one certain member decides the bag


def test_shape_mismatch_raises():
    anchors = grid_anchors()
    with pytest.raises(ValueError, match="do not match"):
        free_anchor_loss(
            anchors, torch.zeros(1, 5, 2), torch.zeros(1, 5, 4), [torch.zeros(0, 4)], [torch.zeros(0)]
        )


def test_label_out_of_range_raises():
    anchors = grid_anchors()
    logits, deltas = torch.zeros(1, anchors.shape[0], 2), torch.zeros(1, anchors.shape[0], 4)
    boxes = [torch.tensor([[10.0, 10.0, 30.0, 30.0]])]
    with pytest.raises(ValueError, match=r"labels must be in 0\.\.1"):
        free_anchor_loss(anchors, logits, deltas, boxes, [torch.tensor([2])])


def test_ddp_normalisers_are_the_mean_over_ranks(monkeypatch):
    """Two simulated ranks with 4 and 2 objects: each divides by the mean count (3) from
    ``mean_across_ranks``, so the ranks' averaged losses and gradients (what DDP applies) equal one
    process's on the whole batch; per-rank counts would give 4 and 2 and differ."""
    import anchorlab.losses.free_anchor as free_anchor_module

    gen = torch.Generator().manual_seed(5)
    anchors = grid_anchors()
    logits, deltas, boxes, labels = random_case(gen, anchors, (3, 1, 0, 2), 4)
    full = free_anchor_loss(anchors, logits, deltas, boxes, labels, bag_size=6)
    full_grads = torch.autograd.grad(sum(full.values()), (logits, deltas))
    counts = [4.0, 2.0]
    losses, grads = [], []
    for rank, part in enumerate((slice(0, 2), slice(2, 4))):

        def fake_mean(value: torch.Tensor, rank: int = rank) -> torch.Tensor:
            assert float(value) == counts[rank]  # this rank's own object count goes in
            return value.new_tensor(sum(counts) / len(counts))

        monkeypatch.setattr(free_anchor_module, "mean_across_ranks", fake_mean)
        out = free_anchor_loss(anchors, logits[part], deltas[part], boxes[part], labels[part], bag_size=6)
        losses.append(out)
        grads.append(torch.autograd.grad(sum(out.values()), (logits, deltas)))
    for key in full:
        torch.testing.assert_close((losses[0][key] + losses[1][key]) / 2, full[key])
    for i in range(2):
        torch.testing.assert_close((grads[0][i] + grads[1][i]) / 2, full_grads[i])
