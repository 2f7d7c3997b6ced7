"""Max-IoU assignment on tiny hand-computed cases (boxes of height 1 on one row, so IoU = 1-D overlap)."""

import pytest
import torch
from torchvision.models.detection._utils import Matcher
from torchvision.ops import box_iou

from anchorlab.assign import (
    BACKGROUND,
    IGNORE,
    Assignment,
    batched_ioa,
    batched_iou,
    gather_matched,
    max_iou_assign,
    pad_boxes,
)

BG, IG = BACKGROUND, IGNORE


def row(*spans: tuple[float, float]) -> torch.Tensor:
    """Boxes ``[x1, 0, x2, 1]``: IoU between them is the 1-D overlap ratio."""
    return torch.tensor([[x1, 0.0, x2, 1.0] for x1, x2 in spans]).reshape(-1, 4)


def random_boxes(n: int, generator: torch.Generator, size: float = 100.0) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=generator) * size
    wh = torch.rand(n, 2, generator=generator) * size / 2 + 1
    return torch.cat([xy, xy + wh], dim=1)


def test_constants_are_the_documented_ones():
    assert (BACKGROUND, IGNORE) == (-1, -2)
    assert Assignment._fields == ("matched", "max_iou", "num_pos")


def test_thresholds_and_ignore_band():
    gt = [row((0, 10))]
    priors = row((0, 10), (0, 20), (0, 22), (0, 25), (0, 30), (50, 60))
    # IoU: 1.0, 0.5, 0.4545, 0.4, 0.333, 0
    out = max_iou_assign(priors, gt, pos_iou=0.5, neg_iou=0.4)
    assert out.matched.tolist() == [[0, 0, IG, IG, BG, BG]]
    torch.testing.assert_close(out.max_iou, torch.tensor([[1.0, 0.5, 10 / 22, 0.4, 1 / 3, 0.0]]))
    assert out.num_pos.tolist() == [2]
    assert out.matched.dtype == torch.int64


def test_no_ignore_band_when_thresholds_equal():
    out = max_iou_assign(row((0, 20), (0, 25)), [row((0, 10))], pos_iou=0.45, neg_iou=0.45, low_quality=False)
    assert out.matched.tolist() == [[0, BG]]
    with pytest.raises(ValueError, match="neg_iou <= pos_iou"):
        max_iou_assign(row((0, 1)), [row((0, 1))], pos_iou=0.4, neg_iou=0.5)


def test_low_quality_match_keeps_all_tied_best_anchors():
    gt = [row((0, 10))]
    priors = row((0, 30), (0, 30), (5, 35), (40, 50))  # IoU 1/3, 1/3 (tie), 1/7, 0
    assert max_iou_assign(priors, gt, low_quality=False).matched.tolist() == [[BG, BG, BG, BG]]
    out = max_iou_assign(priors, gt)
    assert out.matched.tolist() == [[0, 0, BG, BG]]
    assert out.num_pos.tolist() == [2]
    # the best IoU (1/3) must exceed low_quality_min_iou
    assert max_iou_assign(priors, gt, low_quality_min_iou=0.4).matched.tolist() == [[BG, BG, BG, BG]]
    assert max_iou_assign(priors, gt, low_quality_min_iou=0.3).matched.tolist() == [[0, 0, BG, BG]]


def test_low_quality_best_anchor_of_ignore_band_becomes_positive():
    out = max_iou_assign(row((0, 22), (0, 30)), [row((0, 10))])  # 0.4545 (ignore band) is the GT's best
    assert out.matched.tolist() == [[0, BG]]


def test_gt_without_overlap_claims_nothing():
    # torchvision/detectron2 would mark every anchor positive for a GT of max IoU 0; we require > 0
    out = max_iou_assign(row((0, 10), (10, 20)), [row((100, 110))])
    assert out.matched.tolist() == [[BG, BG]]


def test_low_quality_prior_goes_to_the_gt_that_claims_it():
    gt = [row((0, 10), (8, 28))]
    # p0 [2, 12]: GT0 8/12 = 0.667, GT1 4/26 = 0.154 (GT1's best); p1 [0, 10]: GT0 1.0, GT1 2/28
    priors = row((2, 12), (0, 10), (30, 40))
    out = max_iou_assign(priors, gt)
    assert out.matched.tolist() == [[1, 0, BG]]
    torch.testing.assert_close(out.max_iou, torch.tensor([[8 / 12, 1.0, 0.0]]))
    # without low-quality matches p0 goes to its argmax
    assert max_iou_assign(priors, gt, low_quality=False).matched.tolist() == [[0, 0, BG]]


def test_two_gts_claiming_the_same_prior_highest_iou_wins():
    gt = [row((0, 10), (0, 2))]  # the only overlapping prior is GT0's (1.0) and GT1's (0.2) best
    out = max_iou_assign(row((0, 10), (50, 60)), gt)
    assert out.matched.tolist() == [[0, BG]]


def test_positive_argmax_picks_highest_iou_gt():
    gt = [row((0, 8), (0, 12), (0, 100))]
    # prior [0, 10]: GT0 0.8, GT1 0.833, GT2 0.1 -> GT1
    priors = row((0, 10), (0, 8), (0, 12), (0, 100))
    assert max_iou_assign(priors[:1], gt, low_quality=False).matched.tolist() == [[1]]
    # each GT also has its own perfect prior: low-quality matching changes nothing
    assert max_iou_assign(priors, gt).matched.tolist() == [[1, 0, 1, 2]]


def test_zero_gt_images_and_empty_inputs():
    priors = row((0, 10), (5, 15))
    out = max_iou_assign(priors, [torch.zeros(0, 4), row((0, 10)), torch.zeros(0, 4)])
    assert out.matched.tolist() == [[BG, BG], [0, BG], [BG, BG]]
    assert out.max_iou[0].tolist() == [0.0, 0.0] and out.num_pos.tolist() == [0, 1, 0]

    out = max_iou_assign(priors, [torch.zeros(0, 4)])
    assert out.matched.tolist() == [[BG, BG]] and out.max_iou.tolist() == [[0.0, 0.0]]

    out = max_iou_assign(torch.zeros(0, 4), [row((0, 10)), torch.zeros(0, 4)], crowd=[row((0, 5)), row()])
    assert out.matched.shape == (2, 0) and out.max_iou.shape == (2, 0) and out.num_pos.tolist() == [0, 0]

    out = max_iou_assign(priors, [])
    assert out.matched.shape == (0, 2) and out.num_pos.shape == (0,)


def test_crowd_regions_ignore_background_only():
    gt = [row((0, 10))]
    # p0 positive under the crowd box stays positive; p1 background covered 80% -> ignore;
    # p2 covered 40% -> background; p3 in the ignore band stays ignore
    priors = row((0, 10), (40, 50), (42, 67), (0, 22))
    crowd = [row((0, 8), (42, 100))]
    # IoA(p1, crowd1 [42,100]) = 8/10; IoA(p2) = 25/25 -> use a narrower crowd for p2 below
    out = max_iou_assign(priors, gt, crowd=crowd)
    assert out.matched.tolist() == [[0, IG, IG, IG]]
    crowd = [row((0, 8), (42, 50))]  # p1: 8/10 = 0.8; p2: 8/25 = 0.32
    out = max_iou_assign(priors, gt, crowd=crowd)
    assert out.matched.tolist() == [[0, IG, BG, IG]]
    assert max_iou_assign(priors, gt, crowd=crowd, crowd_ioa=0.85).matched.tolist() == [[0, BG, BG, IG]]
    # an image with crowd regions but no objects; another with objects but no crowd
    out = max_iou_assign(priors, [torch.zeros(0, 4), row((0, 10))], crowd=[row((40, 50)), row()])
    assert out.matched.tolist() == [[BG, IG, BG, BG], [0, BG, BG, IG]]
    with pytest.raises(ValueError, match="crowd"):
        max_iou_assign(priors, gt, crowd=[row(), row()])


def test_batch_equals_one_image_at_a_time():
    g = torch.Generator().manual_seed(0)
    priors = random_boxes(300, g)
    gts = [random_boxes(3, g), torch.zeros(0, 4), random_boxes(7, g), random_boxes(1, g)]
    crowd = [random_boxes(1, g), random_boxes(2, g), row(), row()]
    batched = max_iou_assign(priors, gts, crowd=crowd, pos_iou=0.3, neg_iou=0.2)
    for i, (gt, cr) in enumerate(zip(gts, crowd, strict=True)):
        single = max_iou_assign(priors, [gt], crowd=[cr], pos_iou=0.3, neg_iou=0.2)
        assert torch.equal(batched.matched[i], single.matched[0])
        assert torch.equal(batched.max_iou[i], single.max_iou[0])
        assert batched.num_pos[i] == single.num_pos[0]
    assert (batched.matched >= 0).any() and (batched.matched == IG).any()


def test_agrees_with_torchvision_matcher():
    """Same positive / background / ignore masks as torchvision's Matcher; same object index except where
    a low-quality claim overrides the prior's argmax (torchvision keeps the argmax there)."""
    g = torch.Generator().manual_seed(1)
    priors = random_boxes(500, g)
    matcher = Matcher(0.5, 0.4, allow_low_quality_matches=True)
    for m in (1, 4, 12):
        gt = random_boxes(m, g)
        iou = box_iou(gt, priors)
        assert (iou.max(dim=1).values > 0).all()
        ref = matcher(iou)
        ours = max_iou_assign(priors, [gt]).matched[0]
        assert torch.equal(ours.clamp(min=-1) >= 0, ref >= 0)
        assert torch.equal(ours == IG, ref == -2)
        differ = ours != ref
        # where they differ, our object has this prior among its best priors
        best = iou.max(dim=1).values
        assert torch.equal(iou[ours[differ], differ.nonzero()[:, 0]], best[ours[differ]])


def test_batched_iou_equals_box_iou_per_image():
    g = torch.Generator().manual_seed(2)
    priors = random_boxes(50, g)
    gts = [random_boxes(4, g), random_boxes(2, g)]
    boxes, _, _ = pad_boxes(gts)
    iou = batched_iou(boxes, priors)
    assert iou.shape == (2, 4, 50)
    for i, gt in enumerate(gts):
        torch.testing.assert_close(iou[i, : len(gt)], box_iou(gt, priors))
    per_image_priors = torch.stack([priors, priors.flip(0)])
    torch.testing.assert_close(batched_iou(boxes, per_image_priors)[1, :2], box_iou(gts[1], priors.flip(0)))
    # padded rows are zero boxes: IoU 0, never NaN; two zero-area boxes give 0 (torchvision: NaN)
    assert iou[1, 2:].eq(0).all()
    assert batched_iou(torch.zeros(1, 1, 4), torch.zeros(1, 4)).tolist() == [[[0.0]]]


def test_batched_ioa_is_over_the_second_argument():
    crowd = row((0, 10))[None]
    priors = row((5, 15), (0, 40), (3, 3))
    assert batched_ioa(crowd, priors).tolist() == [[[0.5, 0.25, 0.0]]]


def test_pad_boxes_and_gather_matched():
    boxes, labels, valid = pad_boxes(
        [row((0, 1), (2, 3)), row(), row((4, 5))], [torch.tensor([3, 1]), torch.zeros(0), torch.tensor([7])]
    )
    assert boxes.shape == (3, 2, 4)
    assert labels.tolist() == [[3, 1], [-1, -1], [7, -1]]
    assert valid.tolist() == [[True, True], [False, False], [True, False]]
    assert boxes[2, 0].tolist() == [4.0, 0.0, 5.0, 1.0] and boxes[2, 1].eq(0).all()
    assert pad_boxes([row()])[0].shape == (1, 0, 4)
    assert pad_boxes([])[0].shape == (0, 0, 4)

    matched = torch.tensor([[1, BG, 0, IG], [BG, BG, BG, BG], [0, 0, IG, BG]])
    assert gather_matched(labels, matched, fill=-1).tolist() == [[1, -1, 3, -1], [-1] * 4, [7, 7, -1, -1]]
    targets = gather_matched(boxes, matched)
    assert targets.shape == (3, 4, 4)
    assert targets[0, 0].tolist() == [2.0, 0.0, 3.0, 1.0] and targets[0, 1].eq(0).all()
    empty = gather_matched(torch.zeros(2, 0, 4), torch.full((2, 3), BG))
    assert empty.shape == (2, 3, 4)
