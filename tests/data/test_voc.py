"""Pascal VOC loading (1-based coordinates, difficult objects, class lists) and VOC -> COCO conversion."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from anchorlab.data import DataError, ProblemReport, convert, detect_format, load_coco, load_dataset, load_voc


def _obj(name, box, difficult=0):
    x1, y1, x2, y2 = box
    return (
        f"<object><name>{name}</name><difficult>{difficult}</difficult>"
        f"<bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"
    )


def _xml(filename, objects, size=(48, 32)):
    size_xml = (
        f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>" if size else ""
    )
    return f"<annotation><filename>{filename}</filename>{size_xml}{''.join(objects)}</annotation>"


def _voc(tmp_path, files):
    """``files``: {stem: xml text}; writes a 48x32 JPEG per stem."""
    (tmp_path / "Annotations").mkdir(parents=True, exist_ok=True)
    (tmp_path / "JPEGImages").mkdir(exist_ok=True)
    for stem, text in files.items():
        (tmp_path / "Annotations" / f"{stem}.xml").write_text(text)
        Image.new("RGB", (48, 32), (10, 200, 30)).save(tmp_path / "JPEGImages" / f"{stem}.jpg")
    return tmp_path


GOOD = {
    "000001": _xml("000001.jpg", [_obj("person", (1, 1, 10, 20)), _obj("car", (5, 6, 48, 32), difficult=1)]),
    "000002": _xml("000002.jpg", [_obj("car", (11, 2, 30, 12)), _obj("bird", (2, 3, 4, 5))]),
}


def test_load_voc_converts_one_based_and_difficult_to_crowd(tmp_path):
    ds = load_voc(_voc(tmp_path, GOOD))
    assert ds.class_names == ["bird", "car", "person"] and [c.id for c in ds.categories] == [1, 2, 3]
    a, b = ds.images
    assert a.file == tmp_path / "JPEGImages" / "000001.jpg" and (a.width, a.height) == (48, 32)
    np.testing.assert_allclose(a.boxes, [[0, 0, 10, 20]])
    assert a.labels.tolist() == [2]
    np.testing.assert_allclose(a.crowd, [[4, 5, 48, 32]])  # difficult -> ignore region
    assert a.crowd_labels.tolist() == [1]  # a difficult car
    np.testing.assert_allclose(b.boxes, [[10, 1, 30, 12], [1, 2, 4, 5]])
    assert b.labels.tolist() == [1, 0] and b.ann_ids.tolist() == [3, 4]
    assert detect_format(tmp_path) == ("voc", tmp_path)
    assert len(load_dataset(tmp_path / "Annotations")) == 2  # the annotations folder itself works too


def test_class_list_unknown_label_and_split(tmp_path):
    root = _voc(tmp_path, GOOD)
    (root / "classes.txt").write_text("person\ncar\n")
    report = ProblemReport()
    with pytest.raises(DataError, match=r"000002\.xml.*annotation 4.*unknown_label.*'bird'"):
        load_voc(root, classes=root / "classes.txt", report=report)
    ds = load_voc(root, classes=["person", "car"], policy={"unknown_label": "drop"})
    assert ds.class_names == ["person", "car"]
    assert ds.images[1].labels.tolist() == [1] and ds.images[0].labels.tolist() == [0]
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "ImageSets" / "Main" / "val.txt").write_text("000002\n")
    assert [r.file.name for r in load_voc(root, split="val").images] == ["000002.jpg"]


def test_malformed_xml_reports_line_and_column_and_keeps_other_files(tmp_path):
    root = _voc(
        tmp_path, {**GOOD, "000003": "<annotation>\n  <filename>x.jpg</filename>\n  <object>\n</annotation>"}
    )
    report = ProblemReport()
    with pytest.raises(DataError, match=r"000003\.xml:4:\d+.*malformed_xml"):
        load_voc(root, report=report)
    (p,) = report.problems
    assert p.line == 4 and p.column is not None
    ds = load_voc(root, policy={"malformed_xml": "drop"})
    assert [r.file.name for r in ds.images] == ["000001.jpg", "000002.jpg"]


def test_missing_size_reads_header_and_bad_boxes_are_dropped(tmp_path):
    objs = [_obj("car", (1, 1, 8, 8)), _obj("car", (9, 9, 3, 12)), _obj("car", (40, 20, 60, 40))]
    root = _voc(tmp_path, {"a": _xml("a.jpg", objs, size=None), "b": _xml("missing.jpg", [])})
    report = ProblemReport()
    ds = load_voc(root, report=report, policy={"image_missing": "drop"})
    assert [(p.kind, p.image, p.annotation) for p in report.problems] == [
        ("image_missing", "missing.jpg", None),
        ("box_degenerate", "a.jpg", 2),
        ("box_partly_outside", "a.jpg", 3),
    ]
    assert report.problems[1].file.endswith("a.xml")
    (a,) = ds.images
    assert (a.width, a.height) == (48, 32)
    np.testing.assert_allclose(a.boxes, [[0, 0, 8, 8], [39, 19, 48, 32]])


def test_voc_to_coco_round_trip(tmp_path):
    root = _voc(tmp_path / "voc", GOOD)
    src = load_voc(root)
    out = tmp_path / "out" / "voc.json"
    convert(root, out)  # images outside out's folder: file_names relative to their own folder
    back = load_coco(out, images_dir=root / "JPEGImages")
    assert back.images[0].crowd_labels.tolist() == [1]  # the difficult car stays a car
    assert back.class_names == src.class_names and [c.id for c in back.categories] == [1, 2, 3]
    for r, s in zip(src.images, back.images, strict=True):
        assert s.file.resolve() == r.file.resolve() and (s.width, s.height) == (r.width, r.height)
        np.testing.assert_allclose(s.boxes, r.boxes)
        np.testing.assert_allclose(s.crowd, r.crowd)
        assert s.labels.tolist() == r.labels.tolist() and s.ann_ids.tolist() == r.ann_ids.tolist()
