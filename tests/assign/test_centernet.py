"""CenterNet targets: CornerNet radius, gaussian peaks and windows, offsets, classes, collisions."""

import math

import numpy as np
import pytest
import torch

from anchorlab.assign.centernet import CenterNetTargets, centernet_targets, gaussian_radius


def boxes(*rows: tuple[float, float, float, float]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32).reshape(-1, 4)


def labels(*values: int) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int64)


def cornernet_radius(h: float, w: float, o: float = 0.7) -> float:
    """The published three cases, written out independently (one box at a time)."""
    r1 = ((h + w) + math.sqrt((h + w) ** 2 - 4 * w * h * (1 - o) / (1 + o))) / 2
    r2 = (2 * (h + w) + math.sqrt(4 * (h + w) ** 2 - 16 * (1 - o) * w * h)) / 2
    r3 = (-2 * o * (h + w) + math.sqrt(4 * o * o * (h + w) ** 2 - 16 * o * (o - 1) * w * h)) / 2
    return min(r1, r2, r3)


def draw_reference(boxes_px: np.ndarray, classes: np.ndarray, k: int, out_h: int, out_w: int, stride: int):
    """CenterNet's ctdet loop with draw_umich_gaussian, restated in numpy (one object at a time)."""
    hm = np.zeros((k, out_h, out_w), dtype=np.float32)
    rows = []
    for box, cls in zip(boxes_px, classes, strict=True):
        b = box / stride
        b[[0, 2]] = np.clip(b[[0, 2]], 0, out_w - 1)
        b[[1, 3]] = np.clip(b[[1, 3]], 0, out_h - 1)
        h, w = b[3] - b[1], b[2] - b[0]
        if not (h > 0 and w > 0):
            rows.append(None)
            continue
        r = max(0, int(cornernet_radius(math.ceil(h), math.ceil(w))))
        ct = np.array([(b[0] + b[2]) / 2, (b[1] + b[3]) / 2], dtype=np.float32)
        x, y = ct.astype(np.int32)
        d = 2 * r + 1
        sigma = d / 6
        yy, xx = np.ogrid[-r : r + 1, -r : r + 1]
        g = np.exp(-(xx * xx + yy * yy) / (2 * sigma * sigma))
        left, right = min(x, r), min(out_w - x, r + 1)
        top, bottom = min(y, r), min(out_h - y, r + 1)
        window = hm[cls, y - top : y + bottom, x - left : x + right]
        np.maximum(window, g[r - top : r + bottom, r - left : r + right], out=window)
        rows.append(((w, h), ct - np.array([x, y]), y * out_w + x, r))
    return hm, rows


def test_result_fields():
    assert CenterNetTargets._fields == ("heatmap", "size", "offset", "index", "mask", "collisions", "radius")


def test_gaussian_radius_matches_cornernet_formula():
    h = torch.tensor([10.0, 1.0, 37.0, 120.0, 3.0, 64.0])
    w = torch.tensor([10.0, 100.0, 12.0, 80.0, 3.0, 2.0])
    got = gaussian_radius(h, w)
    want = torch.tensor([cornernet_radius(a, b) for a, b in zip(h.tolist(), w.tolist(), strict=True)])
    torch.testing.assert_close(got, want)
    assert got.dtype == torch.float32
    # hand-checked: a 10 x 10 box at 0.7 gives (-28 + sqrt(1120)) / 2 (case 3, the quirky one)
    assert gaussian_radius(10.0, 10.0).item() == pytest.approx((-28 + math.sqrt(1120)) / 2)
    assert gaussian_radius(10.0, 10.0, min_overlap=0.5).item() == pytest.approx(cornernet_radius(10, 10, 0.5))
    assert gaussian_radius(torch.tensor([4.0], dtype=torch.float64), 6.0).dtype == torch.float64


def test_peak_is_exactly_one_at_the_centre_cell_and_only_there():
    t = centernet_targets([boxes((40, 36, 104, 100))], [labels(0)], 1, (32, 32), stride=4)
    # output box (10, 9, 26, 25): centre (18, 17), w = h = 16
    hm = t.heatmap[0, 0]
    assert hm[17, 18].item() == 1.0
    assert int((hm == 1.0).sum()) == 1
    assert t.index.tolist() == [[17 * 32 + 18]]
    r = int(gaussian_radius(16.0, 16.0))
    assert t.radius.tolist() == [[r]]
    sigma = (2 * r + 1) / 6
    assert hm[17, 19].item() == pytest.approx(math.exp(-1 / (2 * sigma**2)), rel=1e-6)
    assert hm[17 + r, 18 + r].item() == pytest.approx(math.exp(-2 * r * r / (2 * sigma**2)), rel=1e-5)
    # the window is the square |dx|, |dy| <= r
    assert hm[17 + r + 1, 18].item() == 0.0 and hm[17, 18 - r - 1].item() == 0.0
    assert int((hm > 0).sum()) == (2 * r + 1) ** 2


def test_size_offset_index_hand_computed():
    t = centernet_targets([boxes((10, 14, 30, 40))], [labels(2)], 3, (16, 20), stride=4)
    # output box (2.5, 3.5, 7.5, 10): w 5, h 6.5, centre (5, 6.75) -> cell (5, 6)
    torch.testing.assert_close(t.size, torch.tensor([[[5.0, 6.5]]]))
    torch.testing.assert_close(t.offset, torch.tensor([[[0.0, 0.75]]]))
    assert t.index.tolist() == [[6 * 20 + 5]] and t.mask.tolist() == [[True]]
    assert t.heatmap.shape == (1, 3, 16, 20)
    assert t.heatmap[0, 2, 6, 5].item() == 1.0 and t.heatmap[0, :2].abs().sum() == 0


def test_classes_are_separate_and_one_class_takes_the_max():
    a, b = (20, 20, 60, 60), (36, 20, 76, 60)  # centre cells (10, 10) and (14, 10), windows overlap
    same = centernet_targets([boxes(a, b)], [labels(1, 1)], 2, (32, 32))
    apart = centernet_targets([boxes(a, b)], [labels(0, 1)], 2, (32, 32))
    ha, hb = apart.heatmap[0, 0], apart.heatmap[0, 1]
    assert ha[10, 10] == 1 and hb[10, 14] == 1 and ha[10, 14] < 1 and hb[10, 10] < 1
    assert (ha * hb > 0).any()  # the windows overlap ...
    torch.testing.assert_close(same.heatmap[0, 1], torch.maximum(ha, hb))  # ... and combine by max, not sum
    assert same.heatmap[0, 0].abs().sum() == 0
    assert same.collisions.tolist() == [0]


def test_window_truncated_at_borders_and_boxes_clipped():
    gt = boxes((0, 0, 12, 8), (100, 100, 140, 150), (-30, 10, -2, 30), (60, 0, 90, 20))
    t = centernet_targets([gt], [labels(0, 0, 1, 1)], 2, (32, 32))
    hm, _ = draw_reference(gt.numpy(), np.array([0, 0, 1, 1]), 2, 32, 32, 4)
    torch.testing.assert_close(t.heatmap[0], torch.from_numpy(hm))
    # object 1 is clipped to (25, 25, 31, 31): centre (28, 28); object 2 lies left of the image: no target
    assert t.mask.tolist() == [[True, True, False, True]]
    torch.testing.assert_close(t.size[0, 1], torch.tensor([6.0, 6.0]))
    assert t.index[0, 1].item() == 28 * 32 + 28
    assert t.size[0, 2].abs().sum() == 0 and t.index[0, 2] == 0 and t.radius[0, 2] == 0
    assert t.heatmap[0, 0, 1, 1].item() == 1.0  # object 0: centre (1.5, 1) -> cell (1, 1), window cut at 0


def test_matches_centernet_reference_on_random_boxes():
    gen = torch.Generator().manual_seed(3)
    xy = torch.rand(12, 2, generator=gen) * 150
    gt = torch.cat([xy, xy + torch.rand(12, 2, generator=gen) * 80 + 2], dim=1)
    cls = torch.randint(0, 3, (12,), generator=gen)
    t = centernet_targets([gt], [cls], 3, (40, 40), stride=4)
    hm, rows = draw_reference(gt.numpy(), cls.numpy(), 3, 40, 40, 4)
    torch.testing.assert_close(t.heatmap[0], torch.from_numpy(hm))
    for m, row in enumerate(rows):
        assert t.mask[0, m].item() == (row is not None)
        if row is not None:
            torch.testing.assert_close(t.size[0, m], torch.tensor(row[0], dtype=torch.float32))
            torch.testing.assert_close(t.offset[0, m], torch.tensor(row[1], dtype=torch.float32))
            assert (t.index[0, m].item(), t.radius[0, m].item()) == (row[2], row[3])
    # chunked drawing gives the same heatmap
    small = centernet_targets([gt], [cls], 3, (40, 40), stride=4, max_elements=40 * 40 * 2)
    torch.testing.assert_close(small.heatmap, t.heatmap)


def test_min_radius():
    t = centernet_targets([boxes((0, 0, 8, 8))], [labels(0)], 1, (16, 16), min_radius=3)
    assert t.radius.tolist() == [[3]] and int((t.heatmap > 0).sum()) == 5 * 5  # window cut at the top-left


def test_collisions_count_objects_sharing_a_cell_across_classes():
    gt = [
        boxes((40, 40, 60, 60), (42, 42, 58, 58), (100, 100, 120, 120), (0, 0, 20, 20)),
        boxes((40, 40, 60, 60), (0, 0, 20, 20)),
    ]
    t = centernet_targets(gt, [labels(0, 1, 0, 1), labels(0, 0)], 2, (32, 32))
    assert t.collisions.tolist() == [2, 0]
    assert t.mask.tolist() == [[True] * 4, [True, True, False, False]]
    # both colliding objects keep their peak in their own class channel
    assert t.heatmap[0, 0, 12, 12] == 1 and t.heatmap[0, 1, 12, 12] == 1


def test_zero_objects_and_batching():
    t = centernet_targets([torch.zeros(0, 4), torch.zeros(0, 4)], [labels(), labels()], 4, (8, 10))
    assert t.heatmap.shape == (2, 4, 8, 10) and t.heatmap.abs().sum() == 0
    assert t.size.shape == (2, 0, 2) and t.index.shape == (2, 0) and t.collisions.tolist() == [0, 0]
    gts = [boxes((10, 10, 50, 70), (60, 5, 90, 30)), torch.zeros(0, 4), boxes((4, 4, 120, 100))]
    labs = [labels(0, 2), labels(), labels(1)]
    batched = centernet_targets(gts, labs, 3, (32, 32))
    for i in range(3):
        single = centernet_targets([gts[i]], [labs[i]], 3, (32, 32))
        torch.testing.assert_close(batched.heatmap[i], single.heatmap[0])
        m = gts[i].shape[0]
        for field in ("size", "offset", "index", "mask", "radius"):
            torch.testing.assert_close(getattr(batched, field)[i, :m], getattr(single, field)[0])
        assert not batched.mask[i, m:].any()


def test_invalid_arguments():
    with pytest.raises(ValueError, match="labels must lie"):
        centernet_targets([boxes((0, 0, 8, 8))], [labels(3)], 3, (8, 8))
    with pytest.raises(ValueError, match="num_classes"):
        centernet_targets([boxes((0, 0, 8, 8))], [labels(0)], 0, (8, 8))
