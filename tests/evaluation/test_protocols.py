"""NMS recall under the two protocols on hand-built boxes whose numbers are computed by hand."""

from __future__ import annotations

import math

import pytest

from anchorlab.evaluation import PROTOCOLS, protocol_nms_recall


def test_protocol_settings_are_the_authors_and_ours() -> None:
    fa, al = PROTOCOLS["freeanchor"], PROTOCOLS["anchorlab"]
    assert fa.iou_thresholds == (
        0.5,
        0.55,
        0.6,
        0.65,
        0.7,
        0.75,
        0.8,
        0.85,
        0.9,
    )  # np.arange(0.5, 0.95, 0.05)
    assert fa.strict and not fa.class_aware and fa.uncovered_ratio == 0.0
    assert fa.inference["score_thresh"] == 0.05 and fa.inference["topk_per_level"] > 10**12
    assert fa.inference["max_detections"] > 10**12
    assert len(al.iou_thresholds) == 10 and not al.strict and al.class_aware and not al.inference


def test_class_awareness_and_strictness_give_different_numbers() -> None:
    # Object A (class 0): before NMS a wrong-class box fits it exactly (IoU 1) and a right-class box has
    # IoU 100/200 = 0.5 exactly; NMS keeps only the wrong-class box. Object B (class 1): before NMS one
    # right-class box of IoU exactly 0.5; nothing after NMS.
    gt = [[[0, 0, 10, 10], [20, 0, 30, 10]]]
    gt_labels = [[0, 1]]
    pre = [[[0, 0, 10, 10], [0, 0, 10, 20], [20, 0, 30, 20]]]
    pre_labels = [[1, 0, 1]]
    post = [[[0, 0, 10, 10]]]
    post_labels = [[1]]
    kw = {"gt_labels": gt_labels, "pre_labels": pre_labels, "post_labels": post_labels}
    fa = protocol_nms_recall("freeanchor", gt, pre, post, **kw)
    al = protocol_nms_recall("anchorlab", gt, pre, post, **kw)
    # freeanchor: any class; A covered before and after at every t (IoU 1 > 0.9); B's 0.5 is not > 0.5.
    assert fa["recall_before"] == [0.5] * 9 and fa["recall_after"] == [0.5] * 9
    assert fa["ratio"] == [1.0] * 9 and fa["mean_ratio"] == 1.0 and fa["reported"]["0.50"] == 1.0
    # anchorlab: own class only; A (0.5) and B (0.5) covered before at t = 0.50 only (>=), none after.
    assert al["recall_before"] == [1.0] + [0.0] * 9 and al["recall_after"] == [0.0] * 10
    assert al["ratio"][0] == 0.0 and all(math.isnan(r) for r in al["ratio"][1:])
    assert al["mean_ratio"] == 0.0


def test_uncovered_thresholds_count_as_zero_for_the_authors_only() -> None:
    # One object; the same box (IoU 75/100 = 0.75 exactly) before and after NMS.
    gt, det = [[[0, 0, 10, 10]]], [[[0, 0, 10, 7.5]]]
    fa = protocol_nms_recall("freeanchor", gt, det, det)
    al = protocol_nms_recall("anchorlab", gt, det, det, gt_labels=[[0]], pre_labels=[[0]], post_labels=[[0]])
    # freeanchor: covered at 0.50..0.70 (5 thresholds, 0.75 > t), ratio 1; at 0.75..0.90 nothing was
    # covered before: after / max(before, 1) = 0. NR = 5 / 9.
    assert fa["ratio"] == [1.0] * 5 + [0.0] * 4
    assert fa["mean_ratio"] == pytest.approx(5 / 9)
    assert fa["reported"] == {"0.50": 1.0, "0.60": 1.0, "0.70": 1.0, "0.80": 0.0, "0.90": 0.0}
    # anchorlab: covered at 0.50..0.75 (6 thresholds, >=), ratio 1; the 4 others are NaN and left out.
    assert al["ratio"][:6] == [1.0] * 6 and all(math.isnan(r) for r in al["ratio"][6:])
    assert al["mean_ratio"] == 1.0


def test_unknown_protocol_and_missing_labels_are_errors() -> None:
    with pytest.raises(ValueError, match="choose one of freeanchor, anchorlab"):
        protocol_nms_recall("coco", [[[0, 0, 1, 1]]], [[]], [[]])
    with pytest.raises(ValueError, match="class-aware"):
        protocol_nms_recall("anchorlab", [[[0, 0, 1, 1]]], [[]], [[]])
