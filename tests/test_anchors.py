import math

import pytest
import torch

from anchorlab.anchors import AnchorGenerator, grid_points

FEATURES = [(3, 5), (2, 3)]


def small_generator(offset: float = 0.5) -> AnchorGenerator:
    # level 0: sizes 4, 8 x ratios 0.25, 1 -> A = 4; level 1: size 16 x ratio 1 -> A = 1
    return AnchorGenerator([[4, 8], [16]], [[0.25, 1.0], [1.0]], [4, 8], offset=offset)


def reference_anchors(gen: AnchorGenerator, feature_sizes) -> torch.Tensor:
    """Slow nested-loop reference of the documented order (test only)."""
    rows = []
    for sizes, ratios, stride, (h, w) in zip(
        gen.sizes, gen.aspect_ratios, gen.strides, feature_sizes, strict=True
    ):
        for y in range(h):
            for x in range(w):
                cx, cy = (x + gen.offset) * stride, (y + gen.offset) * stride
                for size in sizes:
                    for ratio in ratios:
                        aw, ah = size / math.sqrt(ratio), size * math.sqrt(ratio)
                        rows.append([cx - aw / 2, cy - ah / 2, cx + aw / 2, cy + ah / 2])
    return torch.tensor(rows, dtype=torch.float64).reshape(-1, 4)


def test_counts_and_level_ranges():
    gen = small_generator()
    assert gen.num_anchors_per_location() == [4, 1]
    anchors = gen.grid_anchors(FEATURES)
    assert anchors.shape == (3 * 5 * 4 + 2 * 3 * 1, 4)
    assert anchors.dtype == torch.float32
    assert gen.level_ranges(FEATURES) == [(0, 60), (60, 66)]


def test_hand_computed_order_pin():
    gen = small_generator(offset=0.5)
    anchors = gen.grid_anchors(FEATURES)
    # level 0, y=2, x=3, a=2 (size 8, ratio 0.25 -> w 16, h 4); index (2*5+3)*4+2; centre (3.5*4, 2.5*4)
    assert (2 * 5 + 3) * 4 + 2 == 54
    assert anchors[54].tolist() == [6.0, 8.0, 22.0, 12.0]
    # level 1, y=1, x=2, a=0 (16 x 16); index 60 + (1*3+2)*1; centre (2.5*8, 1.5*8)
    assert anchors[65].tolist() == [12.0, 4.0, 28.0, 20.0]
    # anchor index at a location: size-major, then ratio (ratio = h / w, area = size**2)
    first = anchors[:4]
    assert first.tolist() == [
        [-2.0, 1.0, 6.0, 3.0],
        [0.0, 0.0, 4.0, 4.0],
        [-6.0, 0.0, 10.0, 4.0],
        [-2.0, -2.0, 6.0, 6.0],
    ]


def test_first_anchors_centred_at_offset_of_cell_zero():
    for offset in (0.0, 0.5):
        anchors = small_generator(offset).grid_anchors(FEATURES)
        centres = (anchors[:4, :2] + anchors[:4, 2:]) / 2
        assert torch.allclose(centres, torch.full((4, 2), offset * 4))
    assert small_generator(0.0).grid_anchors(FEATURES)[0].tolist() == [-4.0, -1.0, 4.0, 1.0]


def test_matches_nested_loop_reference():
    gen = AnchorGenerator.retinanet(min_level=3, max_level=5)
    sizes = [(4, 6), (2, 3), (1, 2)]
    expected = reference_anchors(gen, sizes)
    got = gen.grid_anchors(sizes, dtype=torch.float64)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(gen.grid_anchors(sizes), expected.float())


def test_head_flattening_recipe_matches_order():
    """A head output [B, A*4, H, W] flattened as permute(0, H, W, A, 4) lines up with the anchors."""
    gen = small_generator()
    anchors = gen.grid_anchors(FEATURES)
    flat = []
    for (start, end), (h, w), a in zip(
        gen.level_ranges(FEATURES), FEATURES, gen.num_anchors_per_location(), strict=True
    ):
        # build the "head output" by placing every anchor at its channel block and pixel
        out = anchors[start:end].reshape(h, w, a, 4).permute(2, 3, 0, 1).reshape(1, a * 4, h, w)
        flat.append(out.view(1, a, 4, h, w).permute(0, 3, 4, 1, 2).reshape(1, -1, 4))
        assert out[0, 4 * (a - 1) : 4 * a, h - 1, w - 1].tolist() == anchors[end - 1].tolist()
    assert torch.equal(torch.cat(flat, dim=1)[0], anchors)


def test_retinanet_sizes():
    gen = AnchorGenerator.retinanet()
    assert gen.strides == (8, 16, 32, 64, 128)
    assert gen.num_anchors_per_location() == [9] * 5
    for level, stride in enumerate(gen.strides):
        expected = [4 * stride * 2 ** (i / 3) for i in range(3)]
        assert gen.sizes[level] == pytest.approx(expected)
    assert gen.sizes[0] == pytest.approx([32.0, 40.3175, 50.7968], rel=1e-5)
    base = gen.base_anchors(0, dtype=torch.float64)
    wh = base[:, 2:] - base[:, :2]
    torch.testing.assert_close(
        wh.prod(dim=1),
        torch.tensor([32.0, 40.3175, 50.7968]).repeat_interleave(3).double() ** 2,
        rtol=1e-5,
        atol=0,
    )
    torch.testing.assert_close(wh[:, 1] / wh[:, 0], torch.tensor([0.5, 1.0, 2.0] * 3, dtype=torch.float64))


def test_cache_returns_same_object_per_key():
    gen = small_generator()
    a = gen.grid_anchors(FEATURES)
    assert gen.grid_anchors([list(s) for s in FEATURES]) is a
    b = gen.grid_anchors(FEATURES, dtype=torch.float64)
    assert b is not a and b.dtype == torch.float64
    assert gen.grid_anchors([(1, 1), (1, 1)]) is not a


def test_empty_levels_and_errors():
    gen = small_generator()
    assert gen.grid_anchors([(0, 0), (0, 3)]).shape == (0, 4)
    with pytest.raises(ValueError, match="feature sizes"):
        gen.grid_anchors([(3, 5)])
    with pytest.raises(ValueError, match="one entry per level"):
        AnchorGenerator([[32]], [[1.0]], [8, 16])
    with pytest.raises(ValueError, match="positive"):
        AnchorGenerator([[0.0]], [[1.0]], [8])


def test_ratio_broadcast_to_all_levels():
    gen = AnchorGenerator([[32], [64]], [[0.5, 1.0, 2.0]], [8, 16])
    assert gen.num_anchors_per_location() == [3, 3]


def test_grid_points_order_and_strides():
    points, strides = grid_points(FEATURES, [4, 8])
    assert points.shape == (15 + 6, 2) and strides.shape == (21,)
    assert points[0].tolist() == [2.0, 2.0]
    # level 1, y=1, x=2 -> 15 + 1*3 + 2
    assert points[20].tolist() == [20.0, 12.0]
    assert strides[:15].eq(4).all() and strides[15:].eq(8).all()
    # level 0, y=2, x=3 -> 2*5 + 3
    assert points[13].tolist() == [14.0, 10.0]
    assert grid_points(FEATURES, [4, 8])[0] is points


def test_points_are_the_anchor_centres_with_one_anchor_per_location():
    gen = AnchorGenerator([[16], [32]], [[1.0], [1.0]], [4, 8], offset=0.5)
    anchors = gen.grid_anchors(FEATURES)
    points, _ = grid_points(FEATURES, [4, 8], offset=0.5)
    torch.testing.assert_close((anchors[:, :2] + anchors[:, 2:]) / 2, points)
    centres0, _ = grid_points(FEATURES, [4, 8], offset=0.0)
    assert centres0[0].tolist() == [0.0, 0.0]
