"""``anchorlab assign-report`` via typer's CliRunner on a tiny COCO JSON with PNG images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import anchorlab.cli.assign_report  # noqa: F401  (registers the command until cli/__init__ imports it)
from anchorlab.cli.app import app

runner = CliRunner()
ENV = {"COLUMNS": "220"}
SETS = ["--set", "data.min_size=96", "--set", "data.max_size=128", "--set", "model.fpn.max_level=5"]


@pytest.fixture
def coco(tmp_path: Path) -> Path:
    """4 images of 96x128 (PNG files next to the JSON) with 2-6 boxes, two classes, one crowd region."""
    rng = np.random.default_rng(0)
    images, anns = [], []
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
        images.append({"id": i + 1, "file_name": f"{i}.png", "width": 128, "height": 96})
        for _ in range(int(rng.integers(2, 7))):
            w, h = np.exp(rng.uniform(np.log(6), np.log(60), 2))
            x, y = rng.uniform(0, 128 - w), rng.uniform(0, 96 - h)
            anns.append(
                {"id": len(anns) + 1, "image_id": i + 1, "category_id": int(rng.choice([3, 7])),
                 "bbox": [round(x, 2), round(y, 2), round(w, 2), round(h, 2)], "area": w * h, "iscrowd": 0}
            )  # fmt: skip
    anns.append(
        {
            "id": len(anns) + 1,
            "image_id": 1,
            "category_id": 3,
            "bbox": [0, 0, 40, 30],
            "area": 1200,
            "iscrowd": 1,
        }
    )
    cats = [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}]
    path = tmp_path / "val.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return path


def _header(output: str) -> str:
    return next(line for line in output.splitlines() if "metric" in line)


def test_writes_json_pngs_and_one_column_per_strategy(coco: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = runner.invoke(
        app, ["assign-report", str(coco), *SETS, "--out", str(out), "--pictures", "2"], env=ENV
    )
    assert result.exit_code == 0, result.output
    report = json.loads((out / "assign_report.json").read_text())
    names = ["max_iou", "free_anchor", "fcos", "centernet", "grid"]
    assert list(report["strategies"]) == names
    assert report["images"] == 4 and report["crowd_regions"] == 1
    header = _header(result.output)
    assert all(name in header for name in names)
    pngs = sorted(out.glob("assign_*.png"))
    assert len(pngs) == 3  # all crowded images together + one per image
    for p in pngs:
        with Image.open(p) as im:
            im.load()
            assert im.format == "PNG" and min(im.size) > 50


def test_strategy_subset_and_no_pictures(coco: Path, tmp_path: Path) -> None:
    out = tmp_path / "sub"
    args = ["assign-report", str(coco), *SETS, "--strategies", "grid,max_iou", "--out", str(out)]
    result = runner.invoke(app, [*args, "--pictures", "0", "--max-images", "2"], env=ENV)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "assign_report.json").read_text())
    assert list(report["strategies"]) == ["max_iou", "grid"] and report["images"] == 2
    header = _header(result.output)
    assert "max_iou" in header and "grid" in header and "fcos" not in header
    assert not list(out.glob("*.png"))


def test_unknown_strategy_and_missing_file(coco: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["assign-report", str(coco), "--strategies", "max_iou,yolo"], env=ENV)
    assert result.exit_code == 1
    assert "unknown strategy yolo" in result.output
    assert "max_iou, free_anchor, fcos, centernet, grid" in result.output
    missing = runner.invoke(
        app, ["assign-report", str(tmp_path / "nope.json"), "--out", str(tmp_path)], env=ENV
    )
    assert missing.exit_code == 1 and "error" in missing.output


def test_help_shows_an_example() -> None:
    result = runner.invoke(app, ["assign-report", "--help"], env=ENV)
    assert result.exit_code == 0
    assert "Example: anchorlab assign-report" in result.output
