"""FCOS assignment on hand-made cases (P3-P7 point grids and single points with chosen ranges)."""

import math

import pytest
import torch

from anchorlab.anchors import grid_points
from anchorlab.assign import BACKGROUND, IGNORE
from anchorlab.assign.fcos import FCOS_REGRESS_RANGES, FcosAssignment, fcos_assign, level_index_from_strides

BG, IG = BACKGROUND, IGNORE
STRIDES = (8, 16, 32, 64, 128)


def pyramid(size: int = 320) -> tuple[torch.Tensor, torch.Tensor]:
    return grid_points([(math.ceil(size / s),) * 2 for s in STRIDES], STRIDES)


def boxes(*rows: tuple[float, float, float, float]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32).reshape(-1, 4)


def positive_strides(out: FcosAssignment, strides: torch.Tensor, image: int = 0) -> set[int]:
    return {int(s) for s in strides[out.matched[image] >= 0].tolist()}


def one_level(*xy: tuple[float, float]) -> dict:
    """Points of stride 8 with the single range (0, inf): only the inside / centre rules matter."""
    pts = torch.tensor(xy, dtype=torch.float32).reshape(-1, 2)
    return {
        "points": pts,
        "point_strides": torch.full((pts.shape[0],), 8.0),
        "regress_ranges": [(0.0, math.inf)],
        "level_index": torch.zeros(pts.shape[0], dtype=torch.int64),
    }


def test_result_fields_and_defaults():
    assert FcosAssignment._fields == ("matched", "reg_targets", "centerness", "num_pos")
    assert ((0, 64), (64, 128), (128, 256), (256, 512), (512, math.inf)) == FCOS_REGRESS_RANGES


def test_regress_range_rule_picks_the_level():
    points, strides = pyramid()
    small = fcos_assign(points, strides, [boxes((100, 100, 140, 140))])  # max distance <= 40
    assert positive_strides(small, strides) == {8}
    # a 160 px box: max distance >= 80 everywhere, and <= 80 + 1.5 * 32 < 128 inside the P5 centre region
    big = fcos_assign(points, strides, [boxes((80, 80, 240, 240))])
    assert positive_strides(big, strides) == {16}
    # without centre sampling, points near its border have max distance >= 128: P5 claims them too
    big_all = fcos_assign(points, strides, [boxes((80, 80, 240, 240))], center_sampling_radius=None)
    assert positive_strides(big_all, strides) == {16, 32}
    # a 100 px box with centre sampling stays at P3: the P3 points within 12 px of its centre have
    # max distance 54 <= 64, and no P4 point within 24 px of the centre reaches 64
    mid = fcos_assign(points, strides, [boxes((110, 110, 210, 210))])
    assert positive_strides(mid, strides) == {8}
    assert mid.num_pos.tolist() == [4]  # (156 | 164, 156 | 164)
    mid_all = fcos_assign(points, strides, [boxes((110, 110, 210, 210))], center_sampling_radius=None)
    assert positive_strides(mid_all, strides) == {8, 16}


def test_regress_range_is_closed_at_both_ends():
    pts = torch.tensor([[64.0, 64.0], [64.0, 64.0], [64.5, 64.0], [64.5, 64.0]])
    kw = {"point_strides": torch.full((4,), 8.0), "regress_ranges": [(0, 64), (64, 128)]}
    level = torch.tensor([0, 1, 0, 1])
    out = fcos_assign(
        pts, gt_boxes=[boxes((0, 0, 128, 128))], level_index=level, center_sampling_radius=None, **kw
    )
    # max distance exactly 64 -> both levels; 64.5 -> only (64, 128)
    assert out.matched.tolist() == [[0, 0, BG, 0]]


def test_center_sampling_radius():
    gt = [boxes((0, 0, 100, 100))]  # centre (50, 50); radius 1.5 * 8 = 12 -> region (38, 62)
    kw = one_level((50, 50), (20, 50), (50, 61.9), (50, 62), (-5, 50))
    assert fcos_assign(gt_boxes=gt, **kw).matched.tolist() == [[0, BG, 0, BG, BG]]
    # a large radius: every point inside the box; the region stays clipped to the box
    assert fcos_assign(gt_boxes=gt, center_sampling_radius=10.0, **kw).matched.tolist() == [[0, 0, 0, 0, BG]]
    assert fcos_assign(gt_boxes=gt, center_sampling_radius=None, **kw).matched.tolist() == [[0, 0, 0, 0, BG]]
    # the radius is in units of each point's stride
    kw["point_strides"] = torch.tensor([8.0, 32.0, 8.0, 8.0, 8.0])
    assert fcos_assign(gt_boxes=gt, **kw).matched.tolist() == [[0, 0, 0, BG, BG]]
    with pytest.raises(ValueError, match="center_sampling_radius"):
        fcos_assign(gt_boxes=gt, center_sampling_radius=0.0, **kw)


def test_points_on_the_box_border_are_outside():
    kw = one_level((0, 50), (100, 50), (50, 0), (0.5, 50))
    out = fcos_assign(gt_boxes=[boxes((0, 0, 100, 100))], center_sampling_radius=None, **kw)
    assert out.matched.tolist() == [[BG, BG, BG, 0]]


def test_ambiguous_point_goes_to_the_smallest_box():
    kw = one_level((50, 50), (20, 20))
    big, small = (0, 0, 100, 100), (40, 40, 60, 60)
    out = fcos_assign(gt_boxes=[boxes(big, small)], center_sampling_radius=None, **kw)
    assert out.matched.tolist() == [[1, 0]]
    out = fcos_assign(gt_boxes=[boxes(small, big)], center_sampling_radius=None, **kw)
    assert out.matched.tolist() == [[0, 1]]
    # equal areas: the lower index
    out = fcos_assign(gt_boxes=[boxes((30, 30, 60, 60), (40, 40, 70, 70))], center_sampling_radius=None, **kw)
    assert out.matched.tolist() == [[0, BG]]
    # the smaller box only wins where it is a candidate: out of range at this level -> the big one
    kw["regress_ranges"] = [(11.0, math.inf)]  # the small box's max distance at (50, 50) is 10
    out = fcos_assign(gt_boxes=[boxes(big, small)], center_sampling_radius=None, **kw)
    assert out.matched.tolist() == [[0, 0]]


def test_regression_targets_and_centerness_hand_computed():
    kw = one_level((20, 40), (30, 60), (5, 5))
    out = fcos_assign(gt_boxes=[boxes((10, 20, 50, 100))], center_sampling_radius=None, **kw)
    assert out.matched.tolist() == [[0, 0, BG]]
    torch.testing.assert_close(
        out.reg_targets, torch.tensor([[[10.0, 20, 30, 60], [20, 40, 20, 40], [0, 0, 0, 0]]])
    )
    # sqrt(10/30 * 20/60) = 1/3; a point at the centre gets 1; background 0
    torch.testing.assert_close(out.centerness, torch.tensor([[1 / 3, 1.0, 0.0]]))
    assert out.num_pos.tolist() == [2]


def test_crowd_regions_ignore_background_points_only():
    kw = one_level((50, 50), (150, 50), (250, 50))
    gt = [boxes((0, 0, 100, 100))]
    crowd = [boxes((40, 0, 200, 100))]
    out = fcos_assign(gt_boxes=gt, crowd=crowd, center_sampling_radius=None, **kw)
    assert out.matched.tolist() == [[0, IG, BG]]
    assert out.num_pos.tolist() == [1]
    assert out.reg_targets[0, 1].abs().sum() == 0
    empty = fcos_assign(gt_boxes=gt, crowd=[torch.zeros(0, 4)], center_sampling_radius=None, **kw)
    assert empty.matched.tolist() == [[0, BG, BG]]


def test_zero_objects_and_zero_points():
    points, strides = pyramid(64)
    out = fcos_assign(points, strides, [torch.zeros(0, 4), torch.zeros(0, 4)])
    assert out.matched.shape == (2, points.shape[0])
    assert (out.matched == BG).all() and out.num_pos.tolist() == [0, 0]
    assert out.reg_targets.shape == (2, points.shape[0], 4) and out.centerness.abs().sum() == 0
    none = fcos_assign(torch.zeros(0, 2), torch.zeros(0), [boxes((0, 0, 10, 10))], level_index=torch.zeros(0))
    assert (
        none.matched.shape == (1, 0) and none.reg_targets.shape == (1, 0, 4) and none.num_pos.tolist() == [0]
    )


def test_level_index_defaults_to_stride_rank():
    points, strides = pyramid(128)
    explicit = torch.cat([torch.full(((128 // s) ** 2,), i) for i, s in enumerate(STRIDES)])
    assert torch.equal(level_index_from_strides(strides), explicit)
    gt = [boxes((10, 10, 50, 40), (0, 0, 120, 90))]
    a = fcos_assign(points, strides, gt)
    b = fcos_assign(points, strides, gt, level_index=explicit)
    assert torch.equal(a.matched, b.matched)
    per_point = torch.tensor(FCOS_REGRESS_RANGES)[explicit]
    c = fcos_assign(points, strides, gt, regress_ranges=per_point)
    assert torch.equal(a.matched, c.matched)
    with pytest.raises(ValueError, match="distinct strides"):
        fcos_assign(points, strides, gt, regress_ranges=[(0, 64), (64, math.inf)])


def random_boxes(n: int, gen: torch.Generator, size: float = 200.0) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=gen) * size * 0.8
    wh = torch.rand(n, 2, generator=gen) * size * 0.6 + 4
    return torch.cat([xy, xy + wh], dim=1)


def reference(points, strides, levels, gt, ranges, radius):
    """Plain-Python restatement of mmdetection's per-point rule, one image."""
    out = []
    for (x, y), s, lvl in zip(points.tolist(), strides.tolist(), levels.tolist(), strict=True):
        best, best_area = BG, math.inf
        for m, (x1, y1, x2, y2) in enumerate(gt.tolist()):
            dist = (x - x1, y - y1, x2 - x, y2 - y)
            cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
            region = (
                max(cx - radius * s, x1),
                max(cy - radius * s, y1),
                min(cx + radius * s, x2),
                min(cy + radius * s, y2),
            )
            inside = region[0] < x < region[2] and region[1] < y < region[3]
            lo, hi = ranges[lvl]
            area = (x2 - x1) * (y2 - y1)
            if inside and lo <= max(dist) <= hi and area < best_area:
                best, best_area = m, area
        out.append(best)
    return out


def test_batched_equals_one_image_at_a_time_and_the_plain_rule():
    gen = torch.Generator().manual_seed(0)
    points, strides = pyramid(200)
    gts = [random_boxes(5, gen), random_boxes(0, gen), random_boxes(9, gen)]
    ranges = [(0, 32), (32, 64), (64, 96), (96, 128), (128, math.inf)]  # small ranges: every level is used
    batched = fcos_assign(points, strides, gts, regress_ranges=ranges)
    for i, gt in enumerate(gts):
        single = fcos_assign(points, strides, [gt], regress_ranges=ranges)
        for field in FcosAssignment._fields:
            torch.testing.assert_close(getattr(batched, field)[i], getattr(single, field)[0])
    levels = level_index_from_strides(strides)
    assert batched.matched[0].tolist() == reference(points, strides, levels, gts[0], ranges, 1.5)
    assert batched.matched[2].tolist() == reference(points, strides, levels, gts[2], ranges, 1.5)
    assert len(set(strides[batched.matched[2] >= 0].tolist())) >= 3
