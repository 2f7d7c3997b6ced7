"""The synthetic shapes dataset: determinism, valid boxes, class ids, crowded mode."""

from __future__ import annotations

import json

import numpy as np
import pytest

from anchorlab.data import ProblemReport, load_coco, make_synthetic


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = make_synthetic(tmp_path / "a", images=6, seed=3, size=64, min_object=8, max_object=32)
    b = make_synthetic(tmp_path / "b", images=6, seed=3, size=64, min_object=8, max_object=32)
    c = make_synthetic(tmp_path / "c", images=6, seed=4, size=64, min_object=8, max_object=32)
    fa, fb, fc = _files(a.root), _files(b.root), _files(c.root)
    assert fa == fb and len(fa) == 8  # 6 PNGs + train.json + val.json
    assert fa["train.json"] != fc["train.json"]
    assert all(fa[k] != fc[k] for k in fa if k.endswith(".png"))


def test_boxes_inside_classes_and_splits(tmp_path):
    paths = make_synthetic(tmp_path, images=24, seed=0, classes=5, size=96, objects=(2, 3), val_images=4)
    report = ProblemReport()
    train = load_coco(paths.train, check_images="header", report=report)
    val = load_coco(paths.val, check_images="header", report=report)
    assert not report.problems  # every box inside its image, sizes match the PNGs
    assert (len(train), len(val)) == (20, 4)
    assert [c.id for c in train.categories] == [10, 20, 30, 40, 50]
    assert train.class_names == ["rectangle", "ellipse", "triangle", "cross", "diamond"]
    recs = train.images + val.images
    assert all(2 <= r.num_objects <= 3 for r in recs)
    boxes = np.concatenate([r.boxes for r in recs])
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= 96).all() and (boxes[:, 2:] > boxes[:, :2]).all()
    assert set(np.concatenate([r.labels for r in recs]).tolist()) == set(range(5))
    ids = [a["id"] for f in (paths.train, paths.val) for a in json.loads(f.read_text())["annotations"]]
    assert len(ids) == len(set(ids))  # annotation ids unique across the splits
    sides = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    assert sides.min() >= 9 and sides.max() <= 96


def _max_centres_per_cell(records, stride=16):
    best = 0
    for r in records:
        c = ((r.boxes[:, :2] + r.boxes[:, 2:]) / 2 // stride).astype(int)
        _, counts = np.unique(c, axis=0, return_counts=True)
        best = max(best, int(counts.max(initial=0)))
    return best


def test_crowded_mode_shares_stride16_cells(tmp_path):
    crowded = load_coco(make_synthetic(tmp_path / "c", images=6, seed=1, crowded=True, val_images=1).train)
    plain = load_coco(make_synthetic(tmp_path / "p", images=6, seed=1, objects=(1, 1), val_images=1).train)
    assert _max_centres_per_cell(crowded.images) >= 2
    assert sum(_max_centres_per_cell([r]) >= 2 for r in crowded.images) >= 3  # most images, not by luck
    assert _max_centres_per_cell(plain.images) == 1


def test_arguments_are_checked(tmp_path):
    with pytest.raises(ValueError, match="classes"):
        make_synthetic(tmp_path, images=2, classes=9)
    with pytest.raises(ValueError, match="val_images"):
        make_synthetic(tmp_path, images=2, val_images=2)
