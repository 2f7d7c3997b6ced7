"""Properties shared by every assigner (max-IoU, FCOS, CenterNet, YOLO grid).

Ground truth is drawn per image with 0..6 objects of every awkward kind: ordinary, zero-width/-height,
bigger than the image, partly and wholly outside it, and exact duplicates. Every assigner must return
indices in ``0..M_i-1`` or ``BACKGROUND``/``IGNORE``, give no positives to images without objects, and
give the same answer for an image whether it is assigned alone or in a padded batch.
"""

from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st

from anchorlab.anchors import grid_points
from anchorlab.assign import (
    BACKGROUND,
    IGNORE,
    centernet_targets,
    fcos_assign,
    grid_assign,
    level_index_from_strides,
    max_iou_assign,
)
from anchorlab.boxes import pairwise_iou

IMAGE = 128  # input pixels; levels 8/16/32 give 16x16 + 8x8 + 4x4 points
STRIDES = (8, 16, 32)
SIZES = tuple((IMAGE // s, IMAGE // s) for s in STRIDES)
RANGES = ((0.0, 64.0), (64.0, 128.0), (128.0, float("inf")))  # FCOS ranges for three levels


@st.composite
def gt_box(draw) -> list[float]:
    kind = draw(st.sampled_from(["normal", "degenerate", "huge", "partly_out", "outside", "tiny"]))
    x, y = draw(st.floats(0, IMAGE)), draw(st.floats(0, IMAGE))
    w, h = draw(st.floats(1, IMAGE)), draw(st.floats(1, IMAGE))
    if kind == "degenerate":
        w, h = draw(st.sampled_from([(0.0, h), (w, 0.0), (0.0, 0.0)]))
    elif kind == "huge":
        x, y = draw(st.floats(-3 * IMAGE, 0)), draw(st.floats(-3 * IMAGE, 0))
        w, h = draw(st.floats(2 * IMAGE, 8 * IMAGE)), draw(st.floats(2 * IMAGE, 8 * IMAGE))
    elif kind == "partly_out":
        x, y = x - IMAGE / 2, y - IMAGE / 2
    elif kind == "outside":
        x = draw(st.sampled_from([-2 * IMAGE, 2 * IMAGE])) + x
    elif kind == "tiny":
        w, h = draw(st.floats(0.01, 1)), draw(st.floats(0.01, 1))
    return [x, y, x + w, y + h]


@st.composite
def images_gt(draw, max_images: int = 3, max_objects: int = 6) -> list[torch.Tensor]:
    """A list of ``B`` tensors ``[M_i, 4]``, sometimes with empty images, sometimes duplicates."""
    out = []
    for _ in range(draw(st.integers(1, max_images))):
        rows = draw(st.lists(gt_box(), max_size=max_objects))
        if rows and draw(st.booleans()):
            rows.append(list(rows[draw(st.integers(0, len(rows) - 1))]))
        out.append(torch.tensor(rows, dtype=torch.float32).reshape(-1, 4))
    return out


def _labels(gt: list[torch.Tensor], data, k: int) -> list[torch.Tensor]:
    return [
        torch.tensor(data.draw(st.lists(st.integers(0, k - 1), min_size=len(g), max_size=len(g)))).long()
        for g in gt
    ]


def _check_range(matched: torch.Tensor, gt: list[torch.Tensor], allow_ignore: bool = True) -> None:
    assert matched.dtype == torch.int64 and matched.shape[0] == len(gt)
    for i, g in enumerate(gt):
        m = matched[i]
        ok = ((m >= 0) & (m < g.shape[0])) | (m == BACKGROUND) | ((m == IGNORE) & allow_ignore)
        assert ok.all(), f"image {i} with {g.shape[0]} objects got indices {m.unique().tolist()}"
        if g.shape[0] == 0:
            assert (m < 0).all(), "an image without objects got positives"


@st.composite
def anchors(draw) -> torch.Tensor:
    """Random anchors ``[R, 4]`` over the image, R in 0..40, some degenerate, some repeated."""
    rows = draw(st.lists(gt_box(), max_size=40))
    return torch.tensor(rows, dtype=torch.float32).reshape(-1, 4)


@given(anchors(), images_gt(), st.floats(0.3, 0.7), st.floats(0, 0.3), st.booleans(), st.data())
def test_max_iou_assign_properties(priors, gt, pos_iou, band, low_quality, data) -> None:
    neg_iou = pos_iou - band
    crowd = [g[: data.draw(st.integers(0, 2))] + 3 for g in gt] if data.draw(st.booleans()) else None
    kw = dict(pos_iou=pos_iou, neg_iou=neg_iou, low_quality=low_quality, crowd=crowd)
    res = max_iou_assign(priors, gt, **kw)
    assert res.matched.shape == (len(gt), priors.shape[0])
    _check_range(res.matched, gt)
    assert torch.isfinite(res.max_iou).all() and (res.max_iou >= 0).all() and (res.max_iou <= 1 + 1e-6).all()
    assert torch.equal(res.num_pos, (res.matched >= 0).sum(dim=1))
    if crowd is not None:  # crowd regions only turn background into ignore
        plain = max_iou_assign(priors, gt, **{**kw, "crowd": None}).matched
        changed = plain != res.matched
        assert ((plain[changed] == BACKGROUND) & (res.matched[changed] == IGNORE)).all()
    for i, g in enumerate(gt):
        one = max_iou_assign(priors, [g], **{**kw, "crowd": None if crowd is None else [crowd[i]]})
        assert torch.equal(one.matched[0], res.matched[i]), f"image {i} differs alone vs batched"
        torch.testing.assert_close(one.max_iou[0], res.max_iou[i])
        pos = res.matched[i] >= 0
        if pos.any():  # a positive always overlaps the object it learns
            iou = pairwise_iou(g, priors)[res.matched[i][pos], pos.nonzero()[:, 0]]
            assert (iou > 0).all()
            if not low_quality:
                assert (iou >= pos_iou).all()


@given(images_gt(), st.sampled_from([None, 1.5, 2.5]), st.booleans())
def test_fcos_assign_properties(gt, radius, with_crowd) -> None:
    points, strides = grid_points(SIZES, STRIDES)
    crowd = [g[:1] for g in gt] if with_crowd else None
    res = fcos_assign(points, strides, gt, regress_ranges=RANGES, center_sampling_radius=radius, crowd=crowd)
    _check_range(res.matched, gt)
    assert torch.isfinite(res.reg_targets).all() and torch.isfinite(res.centerness).all()
    for i, g in enumerate(gt):
        one = fcos_assign(
            points,
            strides,
            [g],
            regress_ranges=RANGES,
            center_sampling_radius=radius,
            crowd=None if crowd is None else [crowd[i]],
        )
        assert torch.equal(one.matched[0], res.matched[i])
        torch.testing.assert_close(one.reg_targets[0], res.reg_targets[i])
        pos = res.matched[i] >= 0
        box = g[res.matched[i][pos]]  # [P, 4]
        p = points[pos]
        # every positive point lies strictly inside its box, and its targets are the distances to it
        assert (p[:, 0] > box[:, 0]).all() and (p[:, 0] < box[:, 2]).all()
        assert (p[:, 1] > box[:, 1]).all() and (p[:, 1] < box[:, 3]).all()
        expected = torch.cat((p - box[:, :2], box[:, 2:] - p), dim=1)
        torch.testing.assert_close(res.reg_targets[i][pos], expected)
        # ... and its largest distance lies in the regress range of its level (closed at both ends)
        lo, hi = torch.tensor(RANGES)[level_index_from_strides(strides)[pos]].unbind(dim=1)
        far = expected.amax(dim=1)
        assert ((far >= lo - 1e-3) & (far <= hi + 1e-3)).all()
        c = res.centerness[i]
        assert ((c[pos] > 0) & (c[pos] <= 1)).all() and (c[~pos] == 0).all()
        assert (res.reg_targets[i][~pos] == 0).all()
        degenerate = (g[:, 2] <= g[:, 0]) | (g[:, 3] <= g[:, 1])
        assert not degenerate[res.matched[i][pos]].any(), "a zero-area box got positive points"


@given(images_gt(), st.integers(1, 4), st.sampled_from([(32, 32), (20, 28), (1, 1), (7, 3)]), st.data())
def test_centernet_targets_properties(gt, num_classes, out_size, data) -> None:
    labels = _labels(gt, data, num_classes)
    stride = 4
    res = centernet_targets(gt, labels, num_classes, out_size, stride)
    out_h, out_w = out_size
    hm = res.heatmap
    assert hm.shape == (len(gt), num_classes, out_h, out_w)
    assert torch.isfinite(hm).all() and (hm >= 0).all() and (hm <= 1).all()
    for i, g in enumerate(gt):
        one = centernet_targets([g], [labels[i]], num_classes, out_size, stride)
        torch.testing.assert_close(one.heatmap[0], hm[i], rtol=0, atol=0)
        m = int(g.shape[0])
        mask = res.mask[i, :m]
        assert torch.equal(one.mask[0], mask) and torch.equal(one.index[0][mask], res.index[i, :m][mask])
        assert not res.mask[i, m:].any()
        idx = res.index[i, :m]
        assert ((idx >= 0) & (idx < out_h * out_w)).all()
        # exactly one 1.0 per (class, centre cell) of the objects that got targets, none elsewhere
        peaks = {(int(labels[i][j]), int(idx[j])) for j in range(m) if mask[j]}
        ones = (hm[i] == 1.0).nonzero().tolist()
        assert {(k, y * out_w + x) for k, y, x in ones} == peaks
        assert len(ones) == len(peaks)
        off = res.offset[i, :m][mask]
        assert ((off >= 0) & (off < 1)).all() and (res.size[i, :m][mask] > 0).all()
        if m == 0:
            assert (hm[i] == 0).all()


@given(images_gt(max_objects=8), st.booleans(), st.sampled_from([SIZES, ((16, 16), (8, 8), (0, 0))]))
def test_grid_assign_properties(gt, move, sizes) -> None:
    res = grid_assign(gt, sizes, STRIDES, move_losers_to_neighbour_level=move)
    num_priors = sum(h * w for h, w in sizes)
    assert res.matched.shape == (len(gt), num_priors)
    _check_range(res.matched, gt, allow_ignore=False)
    for i, g in enumerate(gt):
        one = grid_assign([g], sizes, STRIDES, move_losers_to_neighbour_level=move)
        assert torch.equal(one.matched[0], res.matched[i])
        m = int(g.shape[0])
        assert torch.equal(one.cell_of_gt[0], res.cell_of_gt[i, :m])
        matched = res.matched[i]
        owners = matched[matched >= 0]
        assert owners.unique().numel() == owners.numel(), "an object owns two cells"
        cells = res.cell_of_gt[i, :m]
        placed = cells >= 0
        assert ((cells >= -1) & (cells < num_priors)).all()
        # cell_of_gt and matched agree, and nobody is both placed and a loser
        assert torch.equal(matched[cells[placed]], torch.arange(m)[placed])
        assert int(placed.sum()) == owners.numel()
        assert not (res.losers[i, :m] & placed).any()
        assert int(res.collisions[i]) == int(res.losers[i].sum())
