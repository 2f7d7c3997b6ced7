"""NMS recall on hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torchvision.ops import nms

from anchorlab.evaluation import DEFAULT_IOU_THRESHOLDS, covered_objects, nms_recall

# Two objects side by side, IoU 50 / 150 = 1/3 with each other.
GT = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 0.0, 15.0, 10.0]])


def test_nms_killing_the_only_detection_of_an_object_lowers_recall() -> None:
    pre = GT.clone()  # one perfect detection per object
    scores = torch.tensor([0.9, 0.8])
    post = pre[nms(pre, scores, iou_threshold=0.3)]  # IoU 1/3 > 0.3: the second is suppressed
    assert post.shape == (1, 4)
    out = nms_recall([GT], [pre], [post])
    assert out["iou_thresholds"] == pytest.approx(DEFAULT_IOU_THRESHOLDS.tolist())
    assert out["recall_before"] == [1.0] * 10
    assert out["recall_after"] == [0.5] * 10
    assert out["ratio"] == [0.5] * 10
    assert (out["mean_recall_before"], out["mean_recall_after"], out["mean_ratio"]) == (1.0, 0.5, 0.5)
    assert (out["num_objects"], out["num_pre_nms"], out["num_post_nms"]) == (2, 2, 1)
    assert out["class_aware"] is False
    # A looser NMS keeps both: nothing is lost.
    post_loose = pre[nms(pre, scores, iou_threshold=0.5)]
    assert nms_recall([GT], [pre], [post_loose])["ratio"] == [1.0] * 10


def test_thresholds_are_inclusive_and_per_object() -> None:
    gt = [[0.0, 0.0, 10.0, 10.0]]
    det = [[0.0, 0.0, 10.0, 6.0], [0.0, 0.0, 10.0, 3.0]]  # IoU 0.6 and 0.3
    hits = covered_objects(np.array(gt), np.array(det), [0.3, 0.5, 0.6, 0.65])
    assert hits.tolist() == [[True, True, True, False]]
    out = nms_recall(
        [np.array(gt)], [np.array(det)], [np.array(det[1:])], iou_thresholds=[0.3, 0.5, 0.6, 0.65]
    )
    assert out["recall_before"] == [1.0, 1.0, 1.0, 0.0]
    assert out["recall_after"] == [1.0, 0.0, 0.0, 0.0]
    assert out["ratio"][:3] == [1.0, 0.0, 0.0] and math.isnan(out["ratio"][3])
    assert out["mean_ratio"] == pytest.approx(1 / 3)  # mean over thresholds where the ratio exists


def test_counts_pool_objects_over_images() -> None:
    gts = [GT, torch.zeros(0, 4), torch.tensor([[20.0, 20.0, 40.0, 40.0]])]  # 3 objects, one empty image
    pre = [GT, torch.tensor([[0.0, 0.0, 5.0, 5.0]]), torch.zeros(0, 4)]  # 3rd image: object never detected
    post = [GT[:1], torch.zeros(0, 4), torch.zeros(0, 4)]
    out = nms_recall(gts, pre, post, iou_thresholds=[0.5])
    assert out["recall_before"] == [pytest.approx(2 / 3)]
    assert out["recall_after"] == [pytest.approx(1 / 3)]
    assert out["ratio"] == [0.5]
    assert out["num_objects"] == 3 and out["num_pre_nms"] == 3 and out["num_post_nms"] == 1


def test_class_aware_needs_the_right_label() -> None:
    gt_labels = [torch.tensor([0, 1])]
    pre_labels = [torch.tensor([0, 1])]
    post = [GT.clone()]
    post_labels = [torch.tensor([0, 0])]  # second box relabelled: no longer covers object 1
    agnostic = nms_recall([GT], [GT], post, iou_thresholds=[0.5])
    aware = nms_recall(
        [GT],
        [GT],
        post,
        iou_thresholds=[0.5],
        gt_labels=gt_labels,
        pre_labels=pre_labels,
        post_labels=post_labels,
    )
    assert agnostic["recall_after"] == [1.0]
    assert aware["recall_before"] == [1.0] and aware["recall_after"] == [0.5] and aware["class_aware"] is True
    with pytest.raises(ValueError, match="together"):
        nms_recall([GT], [GT], post, gt_labels=gt_labels)


def test_no_objects_gives_nan_and_bad_inputs_raise() -> None:
    out = nms_recall([torch.zeros(0, 4)], [GT], [GT])
    assert all(math.isnan(v) for v in out["recall_before"] + out["recall_after"] + out["ratio"])
    with pytest.raises(ValueError, match="post_nms has 0 images, gt_boxes has 1"):
        nms_recall([GT], [GT], [])
    with pytest.raises(ValueError, match=r"IoU thresholds must lie in \(0, 1\]"):
        nms_recall([GT], [GT], [GT], iou_thresholds=[0.0, 0.5])


def test_matches_a_plain_loop_on_random_boxes() -> None:
    rng = np.random.default_rng(3)
    gts, pres, posts = [], [], []
    for _ in range(4):
        xy = rng.uniform(0, 100, (6, 2))
        gts.append(np.concatenate([xy, xy + rng.uniform(5, 40, (6, 2))], 1))
        jittered = np.repeat(gts[-1], 5, axis=0) + rng.normal(0, 4, (30, 4))  # 5 noisy copies per object
        pre = torch.as_tensor(
            np.concatenate([jittered[:, :2], np.maximum(jittered[:, 2:], jittered[:, :2] + 1)], 1)
        )
        pres.append(pre)
        posts.append(pre[nms(pre, torch.as_tensor(rng.random(30)), 0.4)])
    out = nms_recall(gts, pres, posts)

    def iou(a: np.ndarray, b: np.ndarray) -> float:
        w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        area = lambda z: (z[2] - z[0]) * (z[3] - z[1])  # noqa: E731
        return w * h / (area(a) + area(b) - w * h)

    for key, dets in (("recall_before", pres), ("recall_after", posts)):
        expected = [
            np.mean(
                [
                    max((iou(g, d) for d in det.numpy()), default=0.0) >= t
                    for gt, det in zip(gts, dets, strict=True)
                    for g in gt
                ]
            )
            for t in DEFAULT_IOU_THRESHOLDS
        ]
        assert out[key] == pytest.approx(expected)
    assert 0 < out["mean_recall_after"] < out["mean_recall_before"] < 1
