"""COCO loading, id mapping, crowd handling, the writer, and every bad-input kind the validator knows."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from anchorlab.data import DataError, ProblemReport, load_coco, resolve_policy, write_coco


def _png(path, w=40, h=30):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (w, h), (90, 120, 150)).save(path)


def _ann(id, image_id, cat, bbox, crowd=0):
    return {"id": id, "image_id": image_id, "category_id": cat, "bbox": bbox, "iscrowd": crowd}


def _coco(tmp_path, anns, images=None, cats=None, subdir="", name="ann.json", make_files=True):
    """Write two 40x30 images and a COCO JSON; categories 7, 3, 12 (unsorted, non-contiguous)."""
    images = images or [
        {"id": 1, "file_name": "a.png", "width": 40, "height": 30},
        {"id": 2, "file_name": "b.png", "width": 40, "height": 30},
    ]
    for im in images if make_files else []:
        if not (tmp_path / subdir / im["file_name"]).exists():
            _png(tmp_path / subdir / im["file_name"])
    cats = cats or [{"id": 7, "name": "cat"}, {"id": 3, "name": "dog"}, {"id": 12, "name": "fox"}]
    path = tmp_path / name
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return path


GOOD = [_ann(1, 1, 3, [1, 2, 10, 5]), _ann(2, 1, 12, [20, 10, 5, 5]), _ann(3, 2, 7, [0, 0, 40, 30])]


def test_load_maps_ids_converts_boxes_and_keeps_crowd(tmp_path):
    path = _coco(tmp_path, [*GOOD, _ann(4, 2, 3, [5, 5, 10, 10], crowd=1)])
    ds = load_coco(path)
    assert [c.id for c in ds.categories] == [3, 7, 12]
    assert ds.class_names == ["dog", "cat", "fox"]
    a, b = ds.images
    assert a.file == tmp_path / "a.png" and (a.width, a.height) == (40, 30)
    np.testing.assert_allclose(a.boxes, [[1, 2, 11, 7], [20, 10, 25, 15]])
    assert a.boxes.dtype == np.float32 and a.labels.tolist() == [0, 2] and a.ann_ids.tolist() == [1, 2]
    assert b.labels.tolist() == [1] and b.ann_ids.tolist() == [3]
    np.testing.assert_allclose(b.crowd, [[5, 5, 15, 15]])  # a crowd region, never an object
    assert ds.label_to_category_id(a.labels).tolist() == [3, 12]


def test_images_found_in_images_subdir_or_images_dir(tmp_path):
    path = _coco(tmp_path, GOOD, subdir="images")
    assert load_coco(path).images[0].file == tmp_path / "images" / "a.png"
    other = tmp_path / "elsewhere"
    _png(other / "a.png")
    _png(other / "b.png")
    assert load_coco(path, images_dir=other).images[1].file == other / "b.png"


def test_write_coco_round_trip_keeps_ids_and_crowd(tmp_path):
    ds = load_coco(_coco(tmp_path, [*GOOD, _ann(9, 2, 3, [5, 5, 10, 10], crowd=1)]))
    out = write_coco(ds, tmp_path / "out" / "copy.json")
    doc = json.loads(out.read_text())
    assert doc["images"][0]["file_name"] == "a.png"  # never "../a.png": relative to the images' folder
    assert sorted(c["id"] for c in doc["categories"]) == [3, 7, 12]
    assert {a["id"]: a["category_id"] for a in doc["annotations"] if not a["iscrowd"]} == {1: 3, 2: 12, 3: 7}
    assert [(a["bbox"], a["category_id"]) for a in doc["annotations"] if a["iscrowd"]] == [
        ([5, 5, 10, 10], 3)
    ]
    again = load_coco(out, images_dir=tmp_path)
    for r, s in zip(ds.images, again.images, strict=True):
        np.testing.assert_allclose(r.boxes, s.boxes)
        np.testing.assert_allclose(r.crowd, s.crowd)
        assert r.labels.tolist() == s.labels.tolist() and r.file == s.file.resolve()


def test_malformed_json_names_line_and_column(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"images": [],\n  "annotations": [,]}')
    report = ProblemReport()
    with pytest.raises(DataError, match=r"bad\.json:2:19"):
        load_coco(path, report=report)
    (p,) = report.problems
    assert (p.kind, p.line, p.column) == ("malformed_json", 2, 19)


def test_missing_top_level_key_is_malformed_json(tmp_path):
    path = tmp_path / "x.json"
    path.write_text('{"images": [], "annotations": []}')
    with pytest.raises(DataError, match=r"malformed_json.*categories"):
        load_coco(path)
    path.write_text('{"images": [], "annotations": 3, "categories": []}')
    with pytest.raises(DataError, match=r"malformed_json.*annotations"):
        load_coco(path)


def test_image_info_file_without_annotations_loads_with_its_ids(tmp_path):
    """COCO's image_info_test-dev2017.json: images and categories, no 'annotations' key."""
    images = [{"id": i, "file_name": f"{i:012d}.jpg", "width": 640, "height": 480} for i in (1, 139, 285)]
    path = tmp_path / "image_info_test-dev2017.json"
    path.write_text(json.dumps({"info": {}, "images": images, "categories": [{"id": 90, "name": "x"}]}))
    ds = load_coco(path, check_images="none")
    assert [r.id for r in ds.images] == [1, 139, 285]
    assert all(len(r.boxes) == 0 and len(r.crowd) == 0 for r in ds.images)
    assert [c.id for c in ds.categories] == [90]


def _load(path, **kw):
    report = ProblemReport()
    try:
        ds = load_coco(path, report=report, **kw)
    except DataError as exc:
        return None, report, str(exc)
    return ds, report, ""


# (kind, bad annotations/images added to GOOD, expected image id, expected annotation id)
BOX_CASES = [
    ("box_not_finite", _ann(5, 2, 3, [float("nan"), 1, 2, 2]), 2, 5),
    ("box_degenerate", _ann(5, 2, 3, [4, 4, 0, 3]), 2, 5),
    ("box_outside_image", _ann(5, 1, 3, [45, 4, 10, 3]), 1, 5),
]


@pytest.mark.parametrize(("kind", "bad", "image", "ann"), BOX_CASES)
def test_bad_boxes_are_dropped_and_reported_valid_ones_survive(tmp_path, kind, bad, image, ann):
    ds, report, _ = _load(_coco(tmp_path, [*GOOD, bad]))
    (p,) = report.problems
    assert (p.kind, p.action.value, p.image, p.annotation) == (kind, "drop", image, ann)
    assert "ann.json" in str(p) and f"image {image}" in str(p) and f"annotation {ann}" in str(p)
    assert sorted(i for r in ds.images for i in r.ann_ids.tolist()) == [1, 2, 3]
    assert f"1 drop: {kind}" in report.summary()
    _, _, msg = _load(_coco(tmp_path, [*GOOD, bad]), policy={kind: "error"})
    assert f"annotation {ann}" in msg and kind in msg


def test_box_partly_outside_is_clipped(tmp_path):
    ds, report, _ = _load(_coco(tmp_path, [*GOOD, _ann(5, 2, 3, [30, -5, 20, 10])]))
    (p,) = report.problems
    assert (p.kind, p.action.value, p.annotation) == ("box_partly_outside", "clip", 5)
    np.testing.assert_allclose(ds.images[1].boxes[1], [30, 0, 40, 5])
    ds, report, _ = _load(
        _coco(tmp_path, [*GOOD, _ann(5, 2, 3, [30, -5, 20, 10])]), policy={"box_partly_outside": "drop"}
    )
    assert ds.images[1].ann_ids.tolist() == [3]


def test_rounding_noise_is_clipped_silently(tmp_path):
    ds, report, _ = _load(_coco(tmp_path, [_ann(1, 1, 3, [0, 0, 40.004, 30])]))
    assert not report.problems and ds.images[0].boxes[0, 2] == 40


@pytest.mark.parametrize(
    ("kind", "mutate", "where"),
    [
        ("duplicate_annotation_id", lambda a, i: a.append(_ann(2, 2, 3, [1, 1, 4, 4])), "annotation 2"),
        ("unknown_category", lambda a, i: a.append(_ann(5, 2, 99, [1, 1, 4, 4])), "annotation 5"),
        ("unknown_image", lambda a, i: a.append(_ann(5, 77, 3, [1, 1, 4, 4])), "annotation 5"),
        ("malformed_annotation", lambda a, i: a.append(_ann(5, 2, 3, [1, 1, 4])), "annotation 5"),
        ("duplicate_image_id", lambda a, i: i.append({"id": 2, "file_name": "c.png"}), "image 2"),
        ("image_missing", lambda a, i: i.append({"id": 3, "file_name": "gone.png"}), "image 3"),
        ("image_size_invalid", lambda a, i: i.append({"id": 3, "file_name": "c.png", "width": 0}), "image 3"),
    ],
)
def test_error_kinds_raise_by_default_and_drop_keeps_the_rest(tmp_path, kind, mutate, where):
    anns, images = (
        [dict(a) for a in GOOD],
        [
            {"id": 1, "file_name": "a.png", "width": 40, "height": 30},
            {"id": 2, "file_name": "b.png", "width": 40, "height": 30},
        ],
    )
    for name in ("a.png", "b.png", "c.png"):
        _png(tmp_path / name)
    mutate(anns, images)
    path = _coco(tmp_path, anns, images, make_files=False)
    ds, report, msg = _load(path)
    assert ds is None and kind in msg and where in msg and "ann.json" in msg
    assert [p.kind for p in report.errors] == [kind]
    ds, report, msg = _load(path, policy={kind: "drop"})
    assert msg == "" and [p.kind for p in report.problems] == [kind]
    assert sorted(i for r in ds.images for i in r.ann_ids.tolist()) == [1, 2, 3]
    assert [r.id for r in ds.images][:2] == [1, 2]


def test_image_checks_read_headers(tmp_path):
    images = [
        {"id": 1, "file_name": "a.png", "width": 40, "height": 30},
        {"id": 2, "file_name": "b.png", "width": 64, "height": 30},  # the file is 40x30
        {"id": 3, "file_name": "junk.png", "width": 40, "height": 30},
        {"id": 4, "file_name": "c.png", "width": 0, "height": 30},
    ]
    for name in ("a.png", "b.png", "c.png"):
        _png(tmp_path / name)
    (tmp_path / "junk.png").write_bytes(b"not a png")
    path = _coco(tmp_path, [*GOOD, _ann(5, 4, 3, [30, 1, 20, 5])], images)
    ds, report, msg = _load(path, check_images="header")
    kinds = {p.kind: p for p in report.problems}
    assert set(kinds) == {"image_size_mismatch", "image_unreadable", "image_size_invalid"}
    assert kinds["image_size_mismatch"].image == 2 and "64x30" in kinds["image_size_mismatch"].message
    assert kinds["image_unreadable"].image == 3 and "junk.png" in msg
    policy = {"image_size_mismatch": "clip", "image_unreadable": "drop", "image_size_invalid": "clip"}
    ds, report, msg = _load(path, check_images="header", policy=policy)
    assert [(r.id, r.width) for r in ds.images] == [(1, 40), (2, 40), (4, 40)]
    np.testing.assert_allclose(ds.images[2].boxes, [[30, 1, 40, 6]])  # clipped to the file's size
    assert "1 clip: box_partly_outside" in report.summary()
    ds, _, _ = _load(path, check_images="none", policy={"image_size_invalid": "drop"})
    assert len(ds) == 3  # no header read: mismatch and junk go unnoticed


def test_policy_validation():
    assert resolve_policy({"image_missing": "DROP"})["image_missing"].value == "drop"
    with pytest.raises(ValueError, match="known kinds"):
        resolve_policy({"box_wrong": "drop"})
    with pytest.raises(ValueError, match=r"drop\|error"):
        resolve_policy({"box_degenerate": "clip"})


def test_36k_boxes_load_and_validate_at_scale(tmp_path):
    """Scale check of the vectorised loader (its speed is measured in bench/, not asserted here)."""
    rng = np.random.default_rng(0)
    n_img, per = 3000, 12
    images = [{"id": i, "file_name": f"{i}.jpg", "width": 640, "height": 480} for i in range(1, n_img + 1)]
    xy = rng.uniform(0, 400, (n_img * per, 2))
    wh = rng.uniform(1, 200, (n_img * per, 2))
    bboxes = np.concatenate([xy, wh], 1).round(2).tolist()
    anns = [_ann(k + 1, k // per + 1, 1 + k % 5, b) for k, b in enumerate(bboxes)]
    cats = [{"id": c, "name": str(c)} for c in range(1, 6)]
    path = tmp_path / "big.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    report = ProblemReport()
    ds = load_coco(path, check_images="none", report=report)
    assert len(ds) == n_img and sum(r.num_objects for r in ds.images) == n_img * per
    assert {p.kind for p in report.problems} == {"box_partly_outside"}


def test_random_boxes_every_annotation_is_kept_clipped_or_reported(tmp_path):
    rng = np.random.default_rng(1)
    n = 400
    xywh = rng.uniform(-30, 60, (n, 4))
    xywh[rng.random((n, 4)) < 0.02] = np.nan
    xywh[rng.random((n, 4)) < 0.01] = np.inf
    anns = [_ann(k + 1, 1 + k % 2, 3, b) for k, b in enumerate(xywh.tolist())]
    ds, report, _ = _load(_coco(tmp_path, anns))
    boxes = np.concatenate([r.boxes for r in ds.images])
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 40).all() and (boxes[:, 3] <= 30).all()
    assert (boxes[:, 2:] > boxes[:, :2]).all()
    dropped = {p.annotation for p in report.problems if p.action.value == "drop"}
    clipped = {p.annotation for p in report.problems if p.action.value == "clip"}
    kept = {int(i) for r in ds.images for i in r.ann_ids}
    assert kept | dropped == set(range(1, n + 1)) and not kept & dropped and clipped <= kept
    x1, y1 = xywh[:, 0], xywh[:, 1]
    with np.errstate(invalid="ignore"):
        inside = (
            (x1 >= 0)
            & (y1 >= 0)
            & (x1 + xywh[:, 2] <= 40)
            & (y1 + xywh[:, 3] <= 30)
            & (xywh[:, 2:] > 0).all(1)
        )
    assert kept - clipped == {
        k + 1 for k in np.flatnonzero(inside)
    }  # untouched boxes are exactly the valid ones
