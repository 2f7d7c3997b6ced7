"""Assignment report: the sparse assigners equal the dense ones, and hand-made images give known counts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from anchorlab.anchors import AnchorGenerator, grid_points
from anchorlab.assign import batched_iou, centernet_targets, fcos_assign, max_iou_assign, pad_boxes
from anchorlab.config import config_from_dict
from anchorlab.data.core import Category, DetectionSet, ImageRecord
from anchorlab.models.build import build_anchor_generator
from anchorlab.report import assignment_report, image_assignment, save_pictures, sparse
from anchorlab.report.strategies import fcos_ranges, grid_size_ranges


def _random_boxes(gen: torch.Generator, num_images: int, h: int, w: int) -> list[torch.Tensor]:
    boxes = []
    for _ in range(num_images):
        m = int(torch.randint(0, 10, (), generator=gen))
        xy = torch.rand(m, 2, generator=gen) * torch.tensor([w - 4.0, h - 4.0])
        wh = torch.rand(m, 2, generator=gen) ** 2 * 120 + 1
        b = torch.cat([xy, torch.minimum(xy + wh, torch.tensor([float(w), float(h)]))], 1)
        if m > 2:
            b[1] = b[0]  # an exact duplicate: ties everywhere
        boxes.append(b)
    return boxes


def _flat(boxes: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    counts = torch.tensor([len(b) for b in boxes])
    starts = torch.cumsum(counts, 0) - counts
    return torch.cat(boxes), torch.repeat_interleave(torch.arange(len(boxes)), counts), starts


def _densify(num_images: int, num_priors: int, ukey, matched, img, starts, ignore_keys) -> torch.Tensor:
    """A ``[B, R]`` matched tensor (per-image object indices) from sparse keys, like the dense assigners."""
    dense = torch.full((num_images * num_priors,), -1, dtype=torch.int64)
    dense[ukey] = torch.where(matched >= 0, matched - starts[img[matched.clamp(min=0)]], matched)
    dense[ignore_keys[dense[ignore_keys] == -1]] = -2
    return dense.view(num_images, num_priors)


MIXED = AnchorGenerator(
    [[16.0, 24.0], [48.0], [96.0, 128.0]], [[0.5, 1.0, 2.0], [1.0], [0.5, 2.0]], [8, 16, 32]
)


@pytest.mark.parametrize(
    ("low_quality", "anchors_gen", "seed"),
    [
        (True, AnchorGenerator.retinanet(3, 5), 1),
        (False, AnchorGenerator.retinanet(3, 5), 2),
        (True, MIXED, 3),
    ],
)
def test_sparse_max_iou_and_bags_equal_dense(
    low_quality: bool, anchors_gen: AnchorGenerator, seed: int
) -> None:
    gen = torch.Generator().manual_seed(seed)
    h, w = 96, 160
    sizes = [(h // s, w // s) for s in (8, 16, 32)]
    anchors = anchors_gen.grid_anchors(sizes)
    shapes = sparse.anchor_shapes(anchors_gen, sizes, torch.device("cpu"), torch.float32)
    boxes = _random_boxes(gen, 5, h, w)
    crowd = [torch.tensor([[5.0, 5.0, 90.0, 60.0]])] + [torch.zeros(0, 4)] * 4
    flat, img, starts = _flat(boxes)
    bag_size = 20

    pairs = sparse.anchor_pairs(anchors, shapes, flat, neg_iou=0.4, bag_size=bag_size)
    ukey, matched = sparse.resolve_max_iou(
        pairs, img, anchors.shape[0], pos_iou=0.5, neg_iou=0.4, low_quality=low_quality
    )
    covered = sparse.crowd_covered_anchors(anchors, shapes, crowd[0], torch.zeros(1, dtype=torch.int64), 0.5)
    got = _densify(len(boxes), anchors.shape[0], ukey, matched, img, starts, covered)
    want = max_iou_assign(anchors, boxes, low_quality=low_quality, crowd=crowd).matched
    assert torch.equal(got, want)

    gt, _, valid = pad_boxes(boxes)
    top = batched_iou(gt, anchors).topk(bag_size, dim=2).values[valid]  # [N, k]
    bag = sparse.free_anchor_bags(pairs, len(flat), bag_size)
    sums = torch.zeros(len(flat), dtype=torch.float64).index_add_(0, pairs.obj[bag], pairs.iou[bag].double())
    torch.testing.assert_close(sums, top.double().sum(1))
    assert torch.equal(torch.bincount(pairs.obj[bag], minlength=len(flat)), (top > 0).sum(1))


def test_sparse_fcos_and_centernet_equal_dense() -> None:
    gen = torch.Generator().manual_seed(2)
    h, w = 128, 128
    strides = [8, 16, 32, 64, 128]
    sizes = [(h // s, w // s) for s in strides]
    points, point_strides = grid_points(sizes, strides)
    boxes = _random_boxes(gen, 6, h, w)
    crowd = [torch.zeros(0, 4), torch.tensor([[0.0, 0.0, 70.0, 50.0]])] + [torch.zeros(0, 4)] * 4
    flat, img, starts = _flat(boxes)
    ranges = fcos_ranges(3, 7)
    geometry, start = [], 0
    for s, (fh, fw) in zip(strides, sizes, strict=True):
        geometry.append((s, fh, fw, start))
        start += fh * fw
    obj, point, area = sparse.fcos_pairs(points, point_strides, geometry, torch.tensor(ranges), flat)
    ukey, winner, _ = sparse.resolve_fcos(obj, point, area, img, points.shape[0])
    inside = sparse.fcos_crowd_points(geometry, points, crowd[1], torch.ones(1, dtype=torch.int64))
    got = _densify(len(boxes), points.shape[0], ukey, winner, img, starts, inside)
    want = fcos_assign(points, point_strides, boxes, regress_ranges=ranges, crowd=crowd).matched
    assert torch.equal(got, want)

    labels = [torch.zeros(len(b), dtype=torch.int64) for b in boxes]
    ct = centernet_targets(boxes, labels, 1, (h // 4, w // 4))
    index, mask = sparse.centernet_cells(flat, (h // 4, w // 4))
    _, _, valid = pad_boxes(boxes)
    assert torch.equal(mask, ct.mask[valid])
    assert torch.equal(index[mask], ct.index[valid][ct.mask[valid]])


def test_ranges_follow_the_levels() -> None:
    assert fcos_ranges(3, 7) == [(0.0, 64.0), (64.0, 128.0), (128.0, 256.0), (256.0, 512.0), (512.0, np.inf)]
    assert fcos_ranges(4, 5) == [(0.0, 128.0), (128.0, np.inf)]
    assert grid_size_ranges(3, 5) == [(0.0, 64.0), (64.0, 128.0), (128.0, np.inf)]  # YOLO_SIZE_RANGES


def _cfg(size: int = 128, **model) -> object:
    tree = {
        "data": {"min_size": size, "max_size": size},
        "model": {"fpn": {"min_level": 3, "max_level": 5}, **model},
    }
    return config_from_dict(tree)


def _ds(images: list[tuple[int, int, list[list[float]], list[int]]], crowd=None) -> DetectionSet:
    recs = []
    for i, (h, w, boxes, labels) in enumerate(images):
        recs.append(
            ImageRecord(
                id=i + 1,
                file=Path(f"/nonexistent/{i}.png"),
                width=w,
                height=h,
                boxes=np.asarray(boxes, np.float32).reshape(-1, 4),
                labels=np.asarray(labels, np.int64),
                ann_ids=np.arange(len(labels), dtype=np.int64),
                crowd=np.asarray(crowd if crowd and i == 0 else [], np.float32).reshape(-1, 4),
            )
        )
    return DetectionSet(recs, [Category(1, "cat"), Category(2, "dog")])


def test_two_centres_in_one_cell() -> None:
    # centres (20, 21) and (22, 22): stride-8 cell (2, 2) and stride-4 cell (5, 5) for both
    ds = _ds([(128, 128, [[10, 11, 30, 31], [14, 14, 30, 30], [80, 80, 120, 110]], [0, 1, 0])])
    rep = assignment_report(ds, _cfg(), ("grid", "centernet", "fcos"))
    grid, cn = rep["strategies"]["grid"], rep["strategies"]["centernet"]
    assert grid["zero_positive"]["count"] == 1
    assert grid["collisions"] == {"locations": 1, "per_level": {"P3": 1, "P4": 0, "P5": 0}}
    # the object whose centre is farther from the cell centre (20, 20) loses: the second one, a dog
    assert grid["zero_positive"]["by_class"]["dog"] == {"objects": 1, "zero_positive": 1, "share": 1.0}
    assert cn["collisions"]["locations"] == 1 and cn["extra"]["collided_objects"] == 2
    assert cn["zero_positive"]["count"] == 0 and cn["positives_per_object"]["mean"] == 1.0
    assert rep["crowded_images"][0]["collisions"] >= 2
    assert rep["strategies"]["fcos"]["priors"]["total"] == 16 * 16 + 8 * 8 + 4 * 4


def test_bad_anchors_leave_objects_without_positives() -> None:
    tiny = [[10, 10, 14, 14], [50, 60, 55, 64], [90, 30, 96, 35]]
    ds = _ds([(128, 128, tiny, [0, 0, 1])])
    huge = {"sizes": [[256.0], [300.0], [400.0]], "aspect_ratios": [1.0]}
    off = assignment_report(ds, _cfg(anchors=huge, assign={"low_quality": False}), ("max_iou", "free_anchor"))
    mi = off["strategies"]["max_iou"]
    assert mi["zero_positive"]["count"] == 3 and mi["zero_positive"]["share"] == 1.0
    assert mi["zero_positive"]["by_size"]["small"] == {"objects": 3, "zero_positive": 3, "share": 1.0}
    assert mi["ignored"]["count"] == 0  # every anchor has IoU < 0.4: background
    fa = off["strategies"]["free_anchor"]["extra"]
    assert fa["bag_low_iou_share"] == 1.0 and fa["bag_mean_iou"] < 0.01
    cfg_on = _cfg(anchors=huge)
    on = assignment_report(ds, cfg_on, ("max_iou",))
    # low-quality matches: each object claims its best anchors, but every tiny box lies inside the same
    # huge anchors and the largest box (highest IoU) wins them all -- the dense assigner agrees
    anchors = build_anchor_generator(cfg_on.model).grid_anchors([(16, 16), (8, 8), (4, 4)])
    dense = max_iou_assign(anchors, [torch.tensor(tiny, dtype=torch.float32)]).matched[0]
    served = torch.bincount(dense[dense >= 0], minlength=3)
    assert served.tolist() == [0, 0, int(served[2])] and served[2] > 0
    assert on["strategies"]["max_iou"]["zero_positive"]["count"] == 2


def test_image_without_objects_and_empty_set() -> None:
    ds = _ds([(100, 120, [], []), (128, 128, [[10, 10, 60, 60]], [1])])
    rep = assignment_report(ds, _cfg())
    assert rep["images"] == 2 and rep["objects"] == 1
    for s in rep["strategies"].values():
        assert s["priors"]["total"] > 0
    threads = torch.get_num_threads()
    empty = assignment_report(_ds([(64, 64, [], [])]), _cfg(), threads=1)
    assert torch.get_num_threads() == threads
    for s in empty["strategies"].values():
        assert s["zero_positive"]["count"] == 0 and s["zero_positive"]["share"] is None
        assert s["positives_per_object"]["mean"] is None and s["collisions"]["locations"] == 0


def test_size_buckets_after_resize_and_crowd_ignore() -> None:
    boxes = [
        [0, 0, 10, 10],
        [20, 20, 40, 40],
        [0, 0, 60, 60],
        [2, 2, 2.2, 30],
    ]  # last: < 1 px wide after resize
    ds = _ds([(64, 64, boxes, [0, 0, 1, 1])], crowd=[[40, 0, 64, 30]])
    rep = assignment_report(ds, _cfg(128), ("max_iou", "fcos"))  # 64 -> 128: areas x4
    assert rep["dropped_objects"] == 1 and rep["objects"] == 3 and rep["crowd_regions"] == 1
    assert rep["size_buckets"] == {"small": 1, "medium": 1, "large": 1}  # 20^2, 40^2, 120^2
    by_size = rep["strategies"]["max_iou"]["zero_positive"]["by_size"]
    assert [by_size[b]["objects"] for b in ("small", "medium", "large")] == [1, 1, 1]
    assert rep["strategies"]["fcos"]["ignored"]["count"] > 0  # points inside the crowd region


def test_image_assignment_matches_report_and_pictures(tmp_path: Path) -> None:
    boxes = [[10, 10, 40, 50], [30, 20, 90, 80], [60, 60, 120, 120], [12, 12, 38, 44]]
    ds = _ds([(128, 128, boxes, [0, 1, 0, 1])])
    Image.fromarray(np.full((128, 128, 3), 200, np.uint8)).save(tmp_path / "0.png")
    ds.images[0].file = tmp_path / "0.png"
    cfg = _cfg()
    rep = assignment_report(ds, cfg)
    ia = image_assignment(ds, 0, cfg)
    for name, (priors, obj) in ia.positives.items():
        mean = rep["strategies"][name]["positives_per_object"]["mean"]
        assert len(obj) == pytest.approx(mean * 4)
        assert priors.shape[1] == (4 if name in ("max_iou", "free_anchor") else 2)
    paths = save_pictures(ds, cfg, rep, tmp_path / "out", count=2)
    ds.images[0].file = tmp_path / "missing.png"  # grey canvas
    paths += save_pictures(ds, cfg, rep, tmp_path / "grey", count=1, strategies=("grid",))
    for p in paths:
        with Image.open(p) as im:
            im.load()
            assert im.size[0] > 100


def test_unknown_strategy_names_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="valid: max_iou, free_anchor, fcos, centernet, grid"):
        assignment_report(_ds([]), _cfg(), ("max_iou", "yolo"))
