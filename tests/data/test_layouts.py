"""One data entry for every command: each layout through ``engine.common.load_split`` (what train, eval,
compare, anchors and assign-report call), auto-detected, with data.format / data.split / data.classes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anchorlab.config import load_config
from anchorlab.data import DataError, detect_format, load_dataset
from anchorlab.engine.common import load_split


def _image(path: Path, size=(80, 60)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (90, 90, 90)).save(path)


def _cfg(*sets: str):
    return load_config(None, list(sets))


def roboflow(root: Path) -> Path:
    """A Roboflow "YOLOv8" export: data.yaml with ../train/images, a `valid` split, names as a dict."""
    for split, stems in (("train", ["a", "b"]), ("valid", ["c"])):
        for stem in stems:
            _image(root / split / "images" / f"{stem}.jpg")
            (root / split / "labels").mkdir(parents=True, exist_ok=True)
            (root / split / "labels" / f"{stem}.txt").write_text("1 0.5 0.5 0.25 0.5\n")
    (root / "data.yaml").write_text(
        "train: ../train/images\nval: ../valid/images\nnc: 2\nnames: {0: car, 1: tree}\n"
    )
    return root / "data.yaml"


def test_roboflow_export_with_dotdot_paths_and_names_as_dict(tmp_path):
    yaml = roboflow(tmp_path / "export")
    cfg = _cfg(f"data.train={yaml}", f"data.val={yaml}")
    train, val = load_split(cfg, "train"), load_split(cfg, "val")
    assert [r.file.name for r in train.images] == ["a.jpg", "b.jpg"] and [
        r.file.name for r in val.images
    ] == ["c.jpg"]
    assert train.class_names == ["car", "tree"] and val.class_names == ["car", "tree"]
    np.testing.assert_allclose(val.images[0].boxes, [[30, 15, 50, 45]])
    assert val.images[0].labels.tolist() == [1]
    whole = load_dataset(yaml)  # no split (data check): every split the yaml declares
    assert [r.file.name for r in whole.images] == ["a.jpg", "b.jpg", "c.jpg"]
    assert whole.images[2].file.parent.parent.name == "valid"


def test_ultralytics_yaml_with_path_key_and_list_splits(tmp_path):
    root = tmp_path / "datasets" / "mine"
    for sub, stem in (("part1", "a"), ("part2", "b"), ("val", "c"), ("extra", "d")):
        _image(root / "images" / sub / f"{stem}.png")
        (root / "labels" / sub).mkdir(parents=True, exist_ok=True)
        (root / "labels" / sub / f"{stem}.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    (root / "extra.txt").write_text("./images/extra/d.png\n")
    cfgdir = tmp_path / "cfg"
    cfgdir.mkdir()
    (cfgdir / "mine.yaml").write_text(
        "path: ../datasets/mine\ntrain: [images/part1, images/part2, extra.txt]\nval: images/val\n"
        "names: [thing]\n"
    )
    cfg = _cfg(f"data.train={cfgdir / 'mine.yaml'}", f"data.val={cfgdir / 'mine.yaml'}")
    train = load_split(cfg, "train")
    assert [r.file.name for r in train.images] == ["a.png", "b.png", "d.png"]
    assert load_split(cfg, "val").class_names == ["thing"]
    # data.split picks another entry of the file for a split
    cfg = _cfg(f"data.train={cfgdir / 'mine.yaml'}", "data.split={train: val}")
    assert [r.file.name for r in load_split(cfg, "train").images] == ["c.png"]


def cvat_export(root: Path) -> Path:
    """CVAT "YOLO 1.1": obj.data, obj.names, train.txt listing data/obj_train_data/<image>."""
    data = root / "obj_train_data"
    for stem, line in (("p", "0 0.5 0.5 0.5 0.5\n"), ("q", "1 0.25 0.25 0.5 0.5\n")):
        _image(data / f"{stem}.png", (40, 40))
        (data / f"{stem}.txt").write_text(line)
    (root / "obj.names").write_text("person\nbike\n")
    (root / "obj.data").write_text(
        "classes = 2\ntrain = data/train.txt\nnames = data/obj.names\nbackup = backup/\n"
    )
    (root / "train.txt").write_text("data/obj_train_data/p.png\ndata/obj_train_data/q.png\n")
    return root


def test_cvat_yolo_1_1_export(tmp_path):
    root = cvat_export(tmp_path / "cvat")
    assert detect_format(root) == ("cvat", root)
    assert detect_format(root / "obj.data") == ("cvat", root)
    ds = load_split(_cfg(f"data.train={root}"), "train")
    assert ds.class_names == ["person", "bike"] and [c.id for c in ds.categories] == [0, 1]
    np.testing.assert_allclose(ds.images[1].boxes, [[0, 0, 20, 20]])
    assert ds.images[1].labels.tolist() == [1]


def test_voc_folder_with_split_and_classes_from_the_config(tmp_path):
    root = tmp_path / "voc"
    (root / "Annotations").mkdir(parents=True)
    (root / "ImageSets" / "Main").mkdir(parents=True)
    for stem in ("a", "b"):
        _image(root / "JPEGImages" / f"{stem}.jpg")
        (root / "Annotations" / f"{stem}.xml").write_text(
            f"<annotation><filename>{stem}.jpg</filename><size><width>80</width><height>60</height></size>"
            "<object><name>dog</name><bndbox><xmin>11</xmin><ymin>11</ymin><xmax>30</xmax><ymax>30</ymax>"
            "</bndbox></object></annotation>"
        )
    (root / "ImageSets" / "Main" / "train.txt").write_text("a\n")
    (root / "ImageSets" / "Main" / "val.txt").write_text("b\n")
    cfg = _cfg(f"data.train={root}", f"data.val={root}", "data.classes=[cat, dog]")
    train, val = load_split(cfg, "train"), load_split(cfg, "val")
    assert [r.file.name for r in train.images] == ["a.jpg"] and [r.file.name for r in val.images] == ["b.jpg"]
    assert train.class_names == ["cat", "dog"] and train.images[0].labels.tolist() == [1]


def test_format_can_be_forced_and_a_missing_path_is_named(tmp_path):
    root = cvat_export(tmp_path / "c")
    (root / "stray.json").write_text("{}")  # would not confuse: cvat is given
    assert load_split(_cfg(f"data.train={root}", "data.format=cvat"), "train").num_classes == 2
    with pytest.raises(FileNotFoundError, match=r"data.val: .*nope.json does not exist"):
        load_split(_cfg(f"data.val={tmp_path / 'nope.json'}"), "val")


def test_string_ids_are_converted_at_load_as_data_check_says(tmp_path):
    _image(tmp_path / "a.png")
    doc = {
        "images": [{"id": "1", "file_name": "a.png", "width": 80, "height": 60}],
        "annotations": [{"id": "5", "image_id": "1", "category_id": "3", "bbox": [1, 1, 10, 10]}],
        "categories": [{"id": "3", "name": "x"}],
    }
    (tmp_path / "val.json").write_text(json.dumps(doc))
    ds = load_split(_cfg(f"data.val={tmp_path / 'val.json'}"), "val")
    assert ds.images[0].id == 1 and ds.categories[0].id == 3
    doc["images"][0]["id"] = "one"
    (tmp_path / "val.json").write_text(json.dumps(doc))
    with pytest.raises(DataError, match="needs an integer id"):
        load_split(_cfg(f"data.val={tmp_path / 'val.json'}"), "val")


def test_compare_takes_val_from_a_data_yaml_that_declares_it(tmp_path):
    from anchorlab.compare.run import resolve_config

    yaml = roboflow(tmp_path / "export")
    cfg = resolve_config("retinanet", budget="tiny", data=yaml, out=tmp_path / "runs")
    assert cfg.data.val == str(yaml) and cfg.data.synthetic is None
    assert [r.file.name for r in load_split(cfg, "val").images] == ["c.jpg"]


def test_anchors_and_assign_report_read_a_roboflow_export(tmp_path):
    from typer.testing import CliRunner

    from anchorlab.cli import app

    yaml = roboflow(tmp_path / "export")
    sets = ["--set", "data.min_size=64", "--set", "data.max_size=96"]
    res = CliRunner().invoke(app, ["anchors", str(yaml), *sets, "--out", str(tmp_path / "a")])
    assert res.exit_code == 0, res.output
    assert set(json.loads((tmp_path / "a" / "anchor_stats.json").read_text())["stats"]["per_class"]) >= {
        "tree"
    }
    res = CliRunner().invoke(
        app, ["assign-report", str(yaml), *sets, "--out", str(tmp_path / "r"), "--pictures", "0"]
    )
    assert res.exit_code == 0, res.output
