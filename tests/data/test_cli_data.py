"""``anchorlab data synth | check | convert`` through typer's CliRunner: output and exit codes."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from anchorlab.cli import app

runner = CliRunner(env={"COLUMNS": "200"})


def _synth(tmp_path):
    args = ["--images", "8", "--seed", "1", "--size", "64", "--min-size", "8", "--max-size", "24"]
    res = runner.invoke(app, ["data", "synth", str(tmp_path / "s"), *args])
    assert res.exit_code == 0, res.output
    return tmp_path / "s"


def test_synth_then_check_ok(tmp_path):
    root = _synth(tmp_path)
    assert (root / "train.json").is_file() and len(list((root / "images").glob("*.png"))) == 8
    res = runner.invoke(app, ["data", "check", str(root / "train.json")])
    assert res.exit_code == 0, res.output
    assert "6 images" in res.output and "0 error(s)" in res.output
    doc = json.loads((root / "train.json").read_text())
    doc["images"][2]["height"] = 99  # only the image header can tell
    (root / "train.json").write_text(json.dumps(doc))
    res = runner.invoke(app, ["data", "check", str(root / "train.json")])
    assert (
        res.exit_code == 1 and "image_size_mismatch" in res.output and "img_000002.png is 64x64" in res.output
    )
    res = runner.invoke(app, ["data", "check", str(root / "train.json"), "--no-images"])
    assert res.exit_code == 0, res.output


def test_check_reports_errors_and_fixes(tmp_path):
    root = _synth(tmp_path)
    doc = json.loads((root / "val.json").read_text())
    doc["annotations"][0]["bbox"][0] = -5.0  # partly outside: clipped
    doc["images"][0]["file_name"] = "nope.png"  # missing: error
    bad = root / "bad.json"
    bad.write_text(json.dumps(doc))
    res = runner.invoke(app, ["data", "check", str(bad)])
    assert res.exit_code == 1
    assert (
        "image_missing" in res.output and "box_partly_outside" in res.output and "Traceback" not in res.output
    )
    res = runner.invoke(app, ["data", "check", str(bad), "--json", "--policy", "image_missing=drop"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    assert report["ok"] and report["counts"] == {"drop:image_missing": 1}  # its boxes went with the image
    assert report["problems"][0]["image"] == doc["images"][0]["id"]
    res = runner.invoke(app, ["data", "check", str(bad), "--strict", "--policy", "image_missing=drop"])
    assert res.exit_code == 1 and "--strict" in res.output


def test_clear_errors_without_traceback(tmp_path):
    res = runner.invoke(app, ["data", "check", str(tmp_path / "missing.json")])
    assert res.exit_code == 2 and "does not exist" in res.output and "Traceback" not in res.output
    root = _synth(tmp_path)
    res = runner.invoke(app, ["data", "check", str(root / "train.json"), "--policy", "box_degenerate=clip"])
    assert res.exit_code == 2 and "drop|error" in res.output
    res = runner.invoke(app, ["data", "synth", str(tmp_path / "x"), "--classes", "12"])
    assert res.exit_code == 2 and "classes must be" in res.output


def test_convert_yolo_to_coco(tmp_path):
    from PIL import Image

    (tmp_path / "y" / "images").mkdir(parents=True)
    (tmp_path / "y" / "labels").mkdir()
    Image.new("RGB", (20, 10)).save(tmp_path / "y" / "images" / "a.png")
    (tmp_path / "y" / "labels" / "a.txt").write_text("0 0.5 0.5 0.5 0.5\n0 1.0 0.5 0.5 0.5\n")
    res = runner.invoke(app, ["data", "convert", str(tmp_path / "y"), str(tmp_path / "out.json")])
    assert res.exit_code == 0, res.output
    assert "1 images, 2 objects" in res.output and "1 clip: box_partly_outside" in res.output
    doc = json.loads((tmp_path / "out.json").read_text())
    assert [a["bbox"] for a in doc["annotations"]] == [[5.0, 2.5, 10.0, 5.0], [15.0, 2.5, 5.0, 5.0]]
    res = runner.invoke(app, ["data", "convert", str(tmp_path / "y"), str(tmp_path / "o2.json"),
                              "--policy", "box_partly_outside=error"])  # fmt: skip
    assert res.exit_code == 1 and "nothing written" in res.output and not (tmp_path / "o2.json").exists()


def test_convert_to_an_impossible_folder_is_a_clear_error(tmp_path):
    root = _synth(tmp_path)
    (tmp_path / "blocker").write_text("a file where the output folder should be")
    dst = tmp_path / "blocker" / "out.json"
    res = runner.invoke(app, ["data", "convert", str(root / "train.json"), str(dst)])
    assert res.exit_code == 1, res.output
    assert "error:" in res.output and "blocker" in res.output and "Traceback" not in res.output


def test_check_into_a_pipe_is_never_cut_and_user_text_is_not_markup(tmp_path):
    """Not a terminal (CliRunner, `> file`, a CI log): whole messages on one line at any COLUMNS; `[x]`
    in a path and a NaN box's values are printed as they are."""
    root = tmp_path / "set [x]"
    root.mkdir()
    long_name = "a_very_long_image_file_name_" * 4 + "[red]missing[/red].png"
    doc = {
        "images": [{"id": 1, "file_name": long_name, "width": 10, "height": 10}],
        "annotations": [{"id": 7, "image_id": 1, "category_id": 1, "bbox": [float("nan"), 1, 2, 3]}],
        "categories": [{"id": 1, "name": "x"}],
    }
    (root / "ann.json").write_text(json.dumps(doc))  # NaN as JSON's common extension
    narrow = CliRunner(env={"COLUMNS": "40"})
    res = narrow.invoke(app, ["data", "check", str(root / "ann.json"), "--headers-only"])
    assert res.exit_code == 1
    out = " ".join(res.output.split())
    assert f"image file {root / long_name} not found" in res.output  # one piece, unwrapped, markup kept
    assert "box xyxy [nan, 1, nan, 4] in image" in out
    assert str(root / "ann.json") in res.output
