"""Anchor design: statistics after the resize, proposals, k-means and coverage, with known answers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from anchorlab.anchors import AnchorGenerator
from anchorlab.assign.common import batched_iou
from anchorlab.config import AnchorConfig
from anchorlab.data.core import Category, DetectionSet, ImageRecord
from anchorlab.data.transforms import shortest_edge_size
from anchorlab.design import (
    ResizedBoxes,
    box_stats,
    coverage,
    kmeans_anchors,
    propose_from_ranges,
    propose_kmeans,
    resize_boxes,
    shape_iou,
)


def make_set(
    images: list[tuple[int, int, list[list[float]]]], labels: list[list[int]] | None = None
) -> DetectionSet:
    """``images``: ``(height, width, boxes xyxy)``; one category unless ``labels`` says otherwise."""
    records = []
    for i, (h, w, boxes) in enumerate(images):
        b = np.array(boxes, np.float32).reshape(-1, 4)
        lab = np.array(labels[i] if labels else [0] * len(b), np.int64)
        records.append(ImageRecord(i, Path(f"{i}.png"), w, h, b, lab))
    n_cls = 1 + max((max(lab, default=0) for lab in labels), default=0) if labels else 1
    return DetectionSet(records, [Category(10 * (k + 1), f"c{k}") for k in range(n_cls)])


def resized(boxes: list[list[float]], size: tuple[int, int] = (128, 128)) -> ResizedBoxes:
    """One already-resized image of ``size (h, w)`` holding ``boxes``."""
    b = np.array(boxes, np.float64).reshape(-1, 4)
    return ResizedBoxes(b, np.zeros(len(b), np.int64), np.zeros(len(b), np.int64), np.array([size]), ["x"])


def two_to_one_boxes(n: int = 300, seed: int = 0) -> np.ndarray:
    """``[n, 2]`` shapes with h / w = 2 exactly and widths log-uniform in 8..64."""
    w = np.exp(np.random.default_rng(seed).uniform(np.log(8), np.log(64), n))
    return np.stack([w, 2 * w], 1)


# ---- statistics after the resize -------------------------------------------------------------------


@pytest.mark.parametrize("hw", [(100, 300), (480, 640), (640, 427), (37, 1000), (128, 128)])
def test_resized_image_size_matches_the_transform(hw: tuple[int, int]) -> None:
    ds = make_set([(hw[0], hw[1], [[0, 0, 10, 10]])])
    for min_size, max_size in [(128, 200), (800, 1333), ([96, 128], 160), (64, None)]:
        short = min_size if isinstance(min_size, int) else max(min_size)
        rb = resize_boxes(ds, min_size=min_size, max_size=max_size)
        assert tuple(rb.image_sizes[0]) == shortest_edge_size(hw[0], hw[1], short, max_size)


def test_stats_use_boxes_after_resize() -> None:
    # 100x200 image, shorter side 100 -> 200: scale 2. A 20x40 (w x h) box becomes 40x80.
    ds = make_set([(100, 200, [[10, 10, 30, 50]])])
    stats = box_stats(ds, min_size=200, max_size=1000)
    assert stats.overall["width"]["p50"] == pytest.approx(40)
    assert stats.overall["height"]["p50"] == pytest.approx(80)
    assert stats.overall["aspect"]["mean"] == pytest.approx(2.0)
    assert stats.overall["size"]["mean"] == pytest.approx(math.sqrt(40 * 80))
    np.testing.assert_allclose(stats.boxes.boxes[0], [20, 20, 60, 100])
    # the max_size cap: 100x300 with short 128, max 200 -> 67x200 (scales 0.67 and 0.6667)
    capped = box_stats(make_set([(100, 300, [[0, 0, 30, 30]])]), min_size=128, max_size=200)
    assert capped.overall["width"]["p50"] == pytest.approx(30 * 200 / 300)
    assert capped.overall["height"]["p50"] == pytest.approx(30 * 67 / 100)


def test_size_buckets_use_area_after_resize() -> None:
    # 20x20 in a 100x100 image is small (400 px²); resized to 200 it is 40x40 = 1600 px²: medium.
    ds = make_set([(100, 100, [[0, 0, 20, 20], [50, 50, 58, 58], [0, 0, 60, 60]])])
    native = box_stats(ds, min_size=100, max_size=1000)
    assert [native.per_bucket[b]["size"]["count"] for b in ("small", "medium", "large")] == [2, 1, 0]
    doubled = box_stats(ds, min_size=200, max_size=1000)
    assert [doubled.per_bucket[b]["size"]["count"] for b in ("small", "medium", "large")] == [1, 1, 1]


def test_per_class_stats_clipping_and_json() -> None:
    ds = make_set(
        [(64, 64, [[0, 0, 8, 16], [10, 10, 42, 26], [60, 60, 90, 90]]), (64, 64, [[0, 0, 0.5, 0.5]])],
        labels=[[0, 1, 1], [0]],
    )
    stats = box_stats(ds, min_size=64, max_size=64)
    # [60, 60, 90, 90] is clipped to the 64x64 image (4x4); the 0.5 px box is dropped
    assert stats.num_objects == 3 and stats.boxes.dropped == 1
    assert stats.per_class["c0"]["size"]["count"] == 1
    assert stats.per_class["c1"]["width"]["p50"] == pytest.approx((32 + 4) / 2)
    assert stats.per_class["c0"]["aspect"]["mean"] == pytest.approx(2.0)
    data = json.loads(json.dumps(stats.to_dict()))
    assert data["num_objects"] == 3 and data["overall"]["size"]["count"] == 3
    assert data["per_bucket"]["large"]["size"]["mean"] is None


# ---- proposals ----------------------------------------------------------------------------------------


def test_ranges_on_two_to_one_boxes_proposes_two_to_one() -> None:
    proposal = propose_from_ranges(two_to_one_boxes())
    assert proposal.anchors["aspect_ratios"] == [2.0]
    AnchorConfig(**proposal.anchors)  # a valid model.anchors section


def test_ranges_base_scale_from_the_fifth_percentile() -> None:
    wh = np.full((100, 2), 64.0)
    proposal = propose_from_ranges(wh, levels=(3, 7))
    assert proposal.anchors["octave_base_scale"] == 8.0  # smallest anchor 8 * 2**3 = 64 px
    assert proposal.anchors["aspect_ratios"] == [1.0]
    assert proposal.generator().sizes[0][0] == pytest.approx(64)
    tiny = propose_from_ranges(np.full((100, 2), 8.0), levels=(3, 7))
    assert tiny.anchors["octave_base_scale"] == 2.0  # 1.0 clipped to the lower limit
    assert any("fpn.min_level=2" in note for note in tiny.notes)


def test_ranges_centres_a_range_wider_than_the_pyramid() -> None:
    wh = np.repeat(np.exp(np.linspace(np.log(4), np.log(4000), 200))[:, None], 2, axis=1)
    proposal = propose_from_ranges(wh, levels=(3, 5), base_scale_range=(0.01, 100))
    sizes = proposal.generator().sizes
    p_lo, p_hi = np.percentile(wh[:, 0], [5, 95])
    # in log space the anchors' span is centred on [p5, p95]
    assert math.log(sizes[0][0] / p_lo) == pytest.approx(-math.log(sizes[-1][-1] / p_hi), abs=0.01)


def test_kmeans_finds_two_separated_clusters_deterministically() -> None:
    rng = np.random.default_rng(1)
    a = np.array([10.0, 40.0]) * rng.uniform(0.95, 1.05, (200, 2))
    b = np.array([80.0, 20.0]) * rng.uniform(0.95, 1.05, (100, 2))
    wh = rng.permutation(np.concatenate([a, b]))
    centres = kmeans_anchors(wh, 2, seed=3)
    np.testing.assert_allclose(centres, [[10, 40], [80, 20]], rtol=0.02)  # sorted by area
    np.testing.assert_array_equal(centres, kmeans_anchors(wh, 2, seed=3))
    with pytest.raises(ValueError, match="k <= number of boxes"):
        kmeans_anchors(wh[:3], 4)


def test_kmeans_on_two_to_one_boxes() -> None:
    wh = two_to_one_boxes()
    centres = kmeans_anchors(wh, 6)
    np.testing.assert_allclose(centres[:, 1] / centres[:, 0], 2.0, rtol=1e-9)
    assert np.all(np.diff(centres.prod(1)) >= 0)
    proposal = propose_kmeans(wh, levels=(3, 5), anchors_per_level=3, num_ratios=1)
    assert proposal.anchors["aspect_ratios"] == [2.0]
    assert len(proposal.anchors["sizes"]) == 3 and all(len(s) == 3 for s in proposal.anchors["sizes"])
    AnchorConfig(**proposal.anchors)


def test_kmeans_proposal_beats_default_anchors_on_narrow_data() -> None:
    rng = np.random.default_rng(0)
    boxes = []
    for _ in range(40):
        wh = np.exp(rng.uniform(np.log(10), np.log(24), (4, 2)))
        xy = rng.uniform(0, 128 - wh)
        boxes.append(np.concatenate([xy, xy + wh], 1))
    b = np.concatenate(boxes)
    rb = ResizedBoxes(
        b, np.zeros(len(b), np.int64), np.repeat(np.arange(40), 4), np.full((40, 2), 128), ["x"]
    )
    default = coverage(rb, AnchorGenerator.retinanet()).summary()["bpr"]
    for proposal in (propose_kmeans(rb, anchors_per_level=9), propose_from_ranges(rb)):
        assert coverage(rb, proposal.generator()).summary()["bpr"] > default + 0.2


# ---- coverage -----------------------------------------------------------------------------------------


def test_box_centred_on_an_anchor_of_its_shape_has_iou_one() -> None:
    gen = AnchorGenerator([[32.0]], [[1.0]], [16])  # centres at multiples of 16
    cov = coverage(resized([[16, 16, 48, 48]], (64, 64)), gen)
    assert cov.best_iou[0] == pytest.approx(1.0)
    # neighbours shifted by 16 px: 512 / 1536 = 1/3 < 0.5, so exactly one positive
    assert cov.num_positive[0] == 1
    s = cov.summary()
    assert s["bpr"] == 1.0 and s["zero_positive"] == 0 and s["per_level"]["P4"]["objects"] == 1


def test_small_box_with_only_large_anchors_is_a_miss() -> None:
    gen = AnchorGenerator([[64.0]], [[1.0]], [16])
    cov = coverage(resized([[24, 24, 40, 40]]), gen)  # 16x16 inside the 64x64 anchor centred on it
    assert cov.best_iou[0] == pytest.approx(1 / 16)
    s = cov.summary()
    assert s["bpr"] == 0.0 and s["zero_positive"] == 1 and s["per_bucket"]["small"]["bpr"] == 0.0


def test_bad_anchor_set_leaves_tiny_objects_without_positives() -> None:
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 150, (30, 2))
    cov = coverage(resized(np.concatenate([xy, xy + 6], 1), (160, 160)), AnchorGenerator.retinanet(5, 7, 8))
    s = cov.summary()
    assert s["zero_positive"] == 30 and s["bpr"] == 0.0 and s["anchors_per_object"] == 0.0
    assert s["mean_best_iou"] < 0.01


def test_best_level_and_resize_of_a_detection_set() -> None:
    # 16x16 box in a 64x64 image, resized to 128: 32x32 centred at (48, 48) -> the 32 px anchor on P3
    ds = make_set([(64, 64, [[16, 16, 32, 32]])])
    gen = AnchorGenerator([[32.0], [64.0]], [[1.0]], [8, 16])
    cov = coverage(ds, gen, min_size=128, max_size=128)
    assert cov.best_iou[0] == pytest.approx(1.0) and cov.best_level[0] == 0
    assert cov.summary()["per_level"]["P3"]["bpr"] == 1.0
    # shifted by 4 px (half a P3 cell): 28 * 28 / (2 * 1024 - 784) = 0.6203
    shifted = coverage(resized([[52, 52, 84, 84]]), gen)
    assert shifted.best_iou[0] == pytest.approx(784 / 1264)
    assert shifted.num_positive[0] == 4  # the 2x2 P3 anchors around the centre


@pytest.mark.parametrize(
    ("gen", "pos_iou"),
    [
        (AnchorGenerator.retinanet(3, 5, octave_base_scale=2), 0.5),
        (AnchorGenerator([[8, 16], [32], [50, 64]], [[0.5, 1, 2]], [4, 8, 16], offset=0.5), 0.3),
        (AnchorGenerator.retinanet(3, 5), 0.7),
    ],
)
def test_coverage_equals_brute_force_over_all_grid_anchors(gen: AnchorGenerator, pos_iou: float) -> None:
    rng = np.random.default_rng(0)
    sizes = rng.integers(90, 160, (12, 2))
    boxes, index = [], []
    for i, (h, w) in enumerate(sizes):
        m = int(rng.integers(0, 7))
        wh = np.minimum(np.exp(rng.uniform(np.log(4), np.log(120), (m, 2))), [w - 1, h - 1])
        xy = rng.uniform(0, [w, h] - wh)
        boxes.append(np.concatenate([xy, xy + wh], 1))
        index += [i] * m
    rb = ResizedBoxes(np.concatenate(boxes), np.zeros(len(index), np.int64), np.array(index), sizes, ["x"])
    cov = coverage(rb, gen, pos_iou=pos_iou, budget=4000)  # small budget: many chunks
    div = max(gen.strides)
    best, level, count = [], [], []
    for i, (h, w) in enumerate(sizes):
        if not (rb.image_index == i).any():
            continue
        ph, pw = math.ceil(h / div) * div, math.ceil(w / div) * div
        feats = [(math.ceil(ph / s), math.ceil(pw / s)) for s in gen.strides]
        iou = batched_iou(
            torch.tensor(rb.boxes[rb.image_index == i])[None], gen.grid_anchors(feats, dtype=torch.float64)
        )[0]
        value, arg = iou.max(1)
        starts = torch.tensor([start for start, _ in gen.level_ranges(feats)])
        best += value.tolist()
        level += (torch.searchsorted(starts, arg, right=True) - 1).tolist()
        count += (iou >= pos_iou).sum(1).tolist()
    np.testing.assert_allclose(cov.best_iou, best, atol=1e-9)
    np.testing.assert_array_equal(cov.best_level, level)
    np.testing.assert_array_equal(cov.num_positive, count)


def test_coverage_of_no_objects_and_shape_iou() -> None:
    s = coverage(resized([]), AnchorGenerator.retinanet()).summary()
    assert s["objects"] == 0 and s["bpr"] is None and s["zero_positive"] == 0
    np.testing.assert_allclose(
        shape_iou(np.array([[16.0, 16.0]]), np.array([[64.0, 64.0], [16, 32]])), [[1 / 16, 0.5]]
    )
