"""Dense-head post-processing (``heads/postprocess.py``) against a straightforward reference.

The reference is the textbook order, per image and level: every score, the threshold, a ``topk`` among the
survivors, then decode, clip, drop empty boxes, class-wise NMS over all candidates, the best
``max_detections``. The heads (RetinaNet, FCOS, grid) must return the same detections and the same NMS
inputs on random outputs: many, fewer than ``k`` and no scores above the threshold, batch of 2.
"""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import batched_nms

from anchorlab.anchors import AnchorGenerator
from anchorlab.models import RetinaHead
from anchorlab.models.heads.fcos import FCOSHead, distances_to_boxes
from anchorlab.models.heads.grid import GridHead
from anchorlab.models.heads.postprocess import _nms_best, level_topk

K = 5
STRIDES = (8, 16, 32)
IMAGE_SIZES = [(64, 64), (48, 60)]  # (h, w) of a batch of 2 padded to 64 x 64
FEATURE_SIZES = [(8, 8), (4, 4), (2, 2)]
NMS_IOU = 0.5

# (score_thresh, topk_per_level, max_detections): many survivors with k binding, fewer than k
# survivors, none at all.
CASES = {
    "k_binds": (0.05, 6, 10),
    "fewer_than_k": (0.6, 1000, 100),
    "none_pass": (0.9999, 1000, 100),
}


def reference(scores, boxes, counts, score_thresh, k, max_detections):
    """``scores [B, R, K]``, decoded ``boxes [B, R, 4]`` -> per image ``(boxes, scores, labels)`` of the
    NMS inputs and of the detections, one image and one level at a time."""
    out = []
    for i, (h, w) in enumerate(IMAGE_SIZES):
        cand_boxes, cand_scores, cand_labels, start = [], [], [], 0
        for count in counts:
            level = scores[i, start : start + count].reshape(-1)
            survivors = (level > score_thresh).nonzero().squeeze(1)
            top = level[survivors].topk(min(k, survivors.numel()))
            flat = survivors[top.indices]
            cand_boxes.append(boxes[i, flat // K + start])
            cand_scores.append(top.values)
            cand_labels.append(flat % K)
            start += count
        b, s, lab = torch.cat(cand_boxes), torch.cat(cand_scores), torch.cat(cand_labels)
        b = torch.minimum(b.clamp(min=0), torch.tensor([w, h, w, h], dtype=b.dtype))
        keep = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
        b, s, lab = b[keep], s[keep], lab[keep]
        kept = batched_nms(b, s, lab, NMS_IOU)[:max_detections]
        out.append(((b, s, lab), (b[kept], s[kept], lab[kept])))
    return out


def assert_same(results, expected) -> None:
    assert len(results) == len(expected)
    for det, ((pre_b, pre_s, pre_l), (b, s, lab)) in zip(results, expected, strict=True):
        torch.testing.assert_close(det["scores"], s)
        torch.testing.assert_close(det["boxes"], b)
        assert torch.equal(det["labels"], lab)
        # the same NMS inputs, in any order
        order, ref_order = det["pre_nms_scores"].argsort(), pre_s.argsort()
        torch.testing.assert_close(det["pre_nms_scores"][order], pre_s[ref_order])
        torch.testing.assert_close(det["pre_nms_boxes"][order], pre_b[ref_order])
        assert torch.equal(det["pre_nms_labels"][order], pre_l[ref_order])


def _run(head, outputs, priors, scores, boxes, counts, case):
    score_thresh, k, max_detections = CASES[case]
    results = head.postprocess(
        dict(outputs, num_priors_per_level=counts),
        priors,
        IMAGE_SIZES,
        score_thresh=score_thresh,
        topk_per_level=k,
        nms_iou=NMS_IOU,
        max_detections=max_detections,
        return_pre_nms=True,
    )
    expected = reference(scores, boxes, counts, score_thresh, k, max_detections)
    assert_same(results, expected)
    return results


@pytest.mark.parametrize("case", list(CASES))
def test_retina_postprocess_matches_reference(case: str) -> None:
    g = torch.Generator().manual_seed(0)
    head = RetinaHead(8, 3, K, channels=8, num_convs=1)
    generator = AnchorGenerator([[16], [32], [64]], [[0.5, 1.0, 2.0]], STRIDES)
    anchors = generator.grid_anchors(FEATURE_SIZES, torch.device("cpu"))
    counts = [h * w * 3 for h, w in FEATURE_SIZES]
    logits = torch.randn(2, anchors.shape[0], K, generator=g) * 2 - 1
    deltas = torch.randn(2, anchors.shape[0], 4, generator=g) * 0.3
    boxes = head.coder.decode(anchors[None], deltas)
    outputs = {"cls_logits": logits, "box_deltas": deltas}
    results = _run(head, outputs, anchors, logits.sigmoid(), boxes, counts, case)
    if case == "none_pass":
        assert all(len(r["scores"]) == 0 for r in results)
    else:
        assert all(len(r["scores"]) > 0 for r in results)


@pytest.mark.parametrize("case", list(CASES))
def test_fcos_postprocess_matches_reference(case: str) -> None:
    g = torch.Generator().manual_seed(1)
    head = FCOSHead(8, K, STRIDES, channels=8, num_convs=1)
    points, point_strides = head.priors(FEATURE_SIZES, STRIDES, torch.device("cpu"), torch.float32)
    counts = [h * w for h, w in FEATURE_SIZES]
    logits = torch.randn(2, points.shape[0], K, generator=g) * 2
    ctr = torch.randn(2, points.shape[0], generator=g) * 2
    dist = torch.rand(2, points.shape[0], 4, generator=g) * point_strides[:, None] * 4
    scores = (logits.sigmoid() * ctr.sigmoid()[..., None]).sqrt()
    outputs = {"cls_logits": logits, "box_dist": dist, "centerness": ctr}
    _run(head, outputs, (points, point_strides), scores, distances_to_boxes(points, dist), counts, case)


@pytest.mark.parametrize("case", list(CASES))
def test_grid_postprocess_matches_reference(case: str) -> None:
    g = torch.Generator().manual_seed(2)
    head = GridHead(8, K, channels=8, num_convs=1)
    priors = head.priors(FEATURE_SIZES, STRIDES, torch.device("cpu"), torch.float32)
    counts = [h * w for h, w in FEATURE_SIZES]
    logits = torch.randn(2, priors.corners.shape[0], K, generator=g) * 2
    obj = torch.randn(2, priors.corners.shape[0], generator=g) * 2 + 1
    raw = torch.randn(2, priors.corners.shape[0], 4, generator=g)
    scores = obj.sigmoid()[..., None] * logits.sigmoid()
    boxes = head.decode(raw, priors.corners, priors.strides)
    outputs = {"cls_logits": logits, "box_raw": raw, "obj_logits": obj}
    _run(head, outputs, priors, scores, boxes, counts, case)


@pytest.mark.parametrize("k", [1, 7, 40, 10_000])
def test_level_topk_equals_topk_over_every_pair(k: int) -> None:
    g = torch.Generator().manual_seed(3)
    counts = [50, 9, 2]
    scores = torch.rand(3, sum(counts), K, generator=g)
    prior, values, labels = level_topk(
        scores.amax(-1), lambda rows: scores.gather(1, rows[..., None].expand(-1, -1, K)), counts, k
    )
    start = 0
    for count, (p, v, lab) in zip(
        counts,
        zip(*(t.split([min(k, c * K) for c in counts], dim=1) for t in (prior, values, labels)), strict=True),
        strict=True,
    ):
        ref_values, ref_index = scores[:, start : start + count].reshape(3, -1).topk(min(k, count * K), dim=1)
        torch.testing.assert_close(v, ref_values)
        assert torch.equal(p, ref_index // K + start) and torch.equal(lab, ref_index % K)
        start += count


@pytest.mark.parametrize("max_detections", [1, 12, 20, 500])
def test_nms_on_a_growing_prefix_equals_nms_over_all(max_detections: int) -> None:
    """Clusters of near-duplicate boxes: most candidates are suppressed, so the first prefix
    (4 x max_detections) holds fewer than ``max_detections`` survivors and has to grow."""
    g = torch.Generator().manual_seed(4)
    centres = torch.rand(10, 2, generator=g) * 500
    base = torch.cat((centres, centres + 40), dim=1).repeat_interleave(60, dim=0)  # [600, 4]
    boxes = base + torch.rand(600, 4, generator=g) * 3
    labels = torch.randint(0, 2, (600,), generator=g)
    scores = torch.rand(600, generator=g)
    expected = batched_nms(boxes, scores, labels, NMS_IOU)[:max_detections]
    assert len(expected) == min(max_detections, 20)
    assert torch.equal(_nms_best(boxes, scores, labels, NMS_IOU, max_detections), expected)
