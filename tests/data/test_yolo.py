"""YOLO txt loading: normalised boxes, class names from data.yaml / classes.txt, bad lines and labels."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from anchorlab.data import DataError, ProblemReport, convert, detect_format, load_coco, load_yolo


def _yolo(tmp_path, labels, sub="", size=(100, 50)):
    """``labels``: {stem: label text or None (no label file)}; writes ``size`` PNGs."""
    for stem, text in labels.items():
        img = tmp_path / "images" / sub / f"{stem}.png"
        img.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", size).save(img)
        if text is not None:
            lbl = tmp_path / "labels" / sub / f"{stem}.txt"
            lbl.parent.mkdir(parents=True, exist_ok=True)
            lbl.write_text(text)
    return tmp_path


def test_load_yolo_boxes_names_and_background_images(tmp_path):
    root = _yolo(tmp_path, {"a": "1 0.5 0.5 0.2 0.4\n0 0.1 0.2 0.2 0.4\n", "b": None, "c": ""})
    (root / "data.yaml").write_text("names: {0: cat, 1: dog}\n")
    ds = load_yolo(root)
    assert ds.class_names == ["cat", "dog"] and [c.id for c in ds.categories] == [0, 1]
    a, b, c = ds.images
    assert (a.width, a.height) == (100, 50) and a.file == root / "images" / "a.png"
    np.testing.assert_allclose(a.boxes, [[40, 15, 60, 35], [0, 0, 20, 20]], atol=1e-5)
    assert a.labels.tolist() == [1, 0] and b.num_objects == 0 and c.num_objects == 0
    assert detect_format(root) == ("yolo", root)


def test_classes_txt_polygons_and_split_folders(tmp_path):
    root = _yolo(tmp_path, {"x": "2 0.1 0.1 0.3 0.1 0.3 0.5 0.2 0.3\n"}, sub="val")
    (root / "classes.txt").write_text("a\nb\nc\n")
    (root / "data.yaml").write_text("train: images/train\nval: images/val\n")
    ds = load_yolo(root / "data.yaml", split="val")
    assert ds.class_names == ["a", "b", "c"]
    np.testing.assert_allclose(ds.images[0].boxes, [[10, 5, 30, 25]], atol=1e-5)
    with pytest.raises(DataError, match="split 'test'"):
        load_yolo(root, split="test")


def test_without_class_list_names_are_indices(tmp_path):
    ds = load_yolo(_yolo(tmp_path, {"a": "3 0.5 0.5 0.1 0.1\n"}))
    assert ds.class_names == ["0", "1", "2", "3"] and ds.images[0].labels.tolist() == [3]


def test_bad_lines_labels_and_orphans_are_reported_with_line_numbers(tmp_path):
    text = "0 0.5 0.5 0.2 0.2\n0 0.5 0.5\n7 0.5 0.5 0.1 0.1\n1 0.95 0.5 0.2 0.2\n1 0.5 0.5 0 0.2\n"
    root = _yolo(tmp_path, {"a": text, "b": "0 0.5 0.5 0.5 0.5\n"})
    (root / "labels" / "ghost.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    report = ProblemReport()
    with pytest.raises(DataError) as info:
        load_yolo(root, classes=["p", "q"], report=report)
    msg = str(info.value)
    assert "a.txt:2, image a.png: malformed_label" in msg
    assert "a.txt:3, image a.png, annotation 2: unknown_label" in msg and "ghost.txt" in msg
    kinds = [(p.kind, p.line) for p in report.problems]
    assert kinds == [
        ("malformed_label", 2),
        ("unknown_label", 3),
        ("image_missing", None),
        ("box_degenerate", 5),
        ("box_partly_outside", 4),
    ]
    policy = {"malformed_label": "drop", "unknown_label": "drop", "image_missing": "drop"}
    ds = load_yolo(root, classes=["p", "q"], policy=policy)
    a, b = ds.images
    np.testing.assert_allclose(a.boxes, [[40, 20, 60, 30], [85, 20, 100, 30]], atol=1e-5)  # second clipped
    assert a.ann_ids.tolist() == [1, 3] and b.num_objects == 1


def test_yolo_to_coco_keeps_boxes(tmp_path):
    root = _yolo(tmp_path / "y", {"a": "1 0.5 0.5 0.2 0.4\n", "b": "0 0.25 0.5 0.5 1.0\n"})
    (root / "data.yaml").write_text("names: [cat, dog]\n")
    convert(root, tmp_path / "y.json")
    back = load_coco(tmp_path / "y.json", check_images="header")
    assert back.class_names == ["cat", "dog"]
    np.testing.assert_allclose(back.images[1].boxes, [[0, 0, 50, 50]], atol=1e-4)


def test_unreadable_image_is_an_error_or_dropped(tmp_path):
    root = _yolo(tmp_path, {"a": "0 0.5 0.5 0.2 0.2\n"})
    (root / "images" / "bad.png").write_bytes(b"\x89PNG junk")
    (root / "labels" / "bad.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    with pytest.raises(DataError, match=r"bad\.txt, image bad\.png: image_unreadable"):
        load_yolo(root)
    ds = load_yolo(root, policy={"image_unreadable": "drop"})
    assert [r.file.name for r in ds.images] == ["a.png"] and ds.images[0].num_objects == 1


def test_seven_columns_is_an_error_not_a_triangle(tmp_path):
    """5 columns: a box; 9, 11, ... (4+ points): a polygon; 7 is ambiguous (box + 2 columns?): an error."""
    root = _yolo(tmp_path, {"a": "0 0.5 0.5 0.2 0.2 0.9 0.1\n"})
    with pytest.raises(DataError, match=r"a\.txt:1, image a\.png: malformed_label: 7 columns"):
        load_yolo(root)
