"""Image paths that leave the dataset's folder are an error by default in every loader and in data convert
(``--policy image_outside=allow`` / ``data.policy`` permits them)."""

from __future__ import annotations

import json

import pytest
from PIL import Image
from typer.testing import CliRunner

from anchorlab.cli import app
from anchorlab.data import DataError, load_coco, load_cvat, load_voc

runner = CliRunner()


def _coco(root, names):
    root.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (20, 20)).save(root / "a.png")
    doc = {
        "images": [{"id": i + 1, "file_name": n, "width": 20, "height": 20} for i, n in enumerate(names)],
        "annotations": [
            {"id": i + 1, "image_id": i + 1, "category_id": 1, "bbox": [1, 1, 5, 5]}
            for i in range(len(names))
        ],
        "categories": [{"id": 1, "name": "x"}],
    }
    (root / "ann.json").write_text(json.dumps(doc))
    return root / "ann.json"


def test_coco_dotdot_and_absolute_paths_are_errors_unless_allowed(tmp_path):
    Image.new("RGB", (20, 20)).save(tmp_path / "outside.png")
    ann = _coco(
        tmp_path / "ds", ["a.png", "../../../etc/passwd", str(tmp_path / "outside.png"), "../outside.png"]
    )
    with pytest.raises(DataError) as info:
        load_coco(ann)
    outside = [p for p in info.value.problems if p.kind == "image_outside"]
    assert [p.image for p in outside] == [2, 3, 4] and "unknown_image" not in str(info.value)
    dropped = load_coco(ann, policy={"image_outside": "drop"})
    assert [r.id for r in dropped.images] == [1]  # the rest and its annotations left out, nothing else
    allowed = load_coco(ann, policy={"image_outside": "allow", "image_missing": "drop"})
    assert [r.id for r in allowed.images] == [1, 3, 4]  # /etc/passwd is not an image file here: missing
    res = runner.invoke(app, ["data", "check", str(ann), "--headers-only"])
    assert res.exit_code == 1 and "image_outside" in res.output


def test_voc_filename_leaving_the_folder_is_refused_by_data_convert(tmp_path):
    root = tmp_path / "voc"
    (root / "Annotations").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    Image.new("RGB", (20, 20)).save(root / "JPEGImages" / "a.jpg")
    (root / "Annotations" / "a.xml").write_text(
        "<annotation><filename>../../etc/hostname</filename><size><width>20</width><height>20</height></size>"
        "</annotation>"
    )
    out = tmp_path / "out.json"
    res = runner.invoke(app, ["data", "convert", str(root), str(out)])
    assert res.exit_code == 1 and "image_outside" in res.output and not out.exists()
    with pytest.raises(DataError, match="image_outside"):
        load_voc(root)


def test_cvat_list_entry_leaving_the_export_is_refused(tmp_path):
    root = tmp_path / "cvat"
    (root / "obj_train_data").mkdir(parents=True)
    Image.new("RGB", (20, 20)).save(root / "obj_train_data" / "a.png")
    (root / "obj.names").write_text("x\n")
    (root / "obj.data").write_text("classes = 1\ntrain = data/train.txt\nnames = data/obj.names\n")
    (root / "train.txt").write_text("data/obj_train_data/a.png\n../../etc/passwd\n")
    with pytest.raises(DataError, match=r"image_outside: image path .*etc/passwd leaves"):
        load_cvat(root)
    assert len(load_cvat(root, policy={"image_outside": "drop"}).images) == 1
