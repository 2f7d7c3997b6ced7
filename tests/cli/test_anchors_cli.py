"""``anchorlab anchors`` via typer's CliRunner on a tiny COCO JSON (recorded image sizes, no image files)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

import anchorlab.cli.anchors  # noqa: F401  (registers the command until cli/__init__ imports it)
from anchorlab.cli.app import app
from anchorlab.config import config_from_dict
from anchorlab.models.build import build_anchor_generator

runner = CliRunner()


@pytest.fixture
def coco(tmp_path: Path) -> Path:
    """20 images of 96x128 with 2-4 boxes each (two classes, sides 8..48 px)."""
    rng = np.random.default_rng(0)
    images, anns = [], []
    for i in range(20):
        images.append({"id": i + 1, "file_name": f"{i}.png", "width": 128, "height": 96})
        for _ in range(int(rng.integers(2, 5))):
            w, h = np.exp(rng.uniform(np.log(8), np.log(48), 2))
            x, y = rng.uniform(0, 128 - w), rng.uniform(0, 96 - h)
            anns.append(
                {"id": len(anns) + 1, "image_id": i + 1, "category_id": int(rng.choice([3, 7])),
                 "bbox": [round(x, 2), round(y, 2), round(w, 2), round(h, 2)], "area": w * h, "iscrowd": 0}
            )  # fmt: skip
    cats = [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}]
    path = tmp_path / "train.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return path


def test_anchors_writes_snippet_stats_and_plots(coco: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    sets = ["--set", "data.min_size=96", "--set", "data.max_size=128"]
    result = runner.invoke(
        app, ["anchors", str(coco), *sets, "--out", str(out), "--anchors-per-level", "6", "--ratios", "2"]
    )
    assert result.exit_code == 0, result.output
    for word in ("best possible recall", "per size bucket", "config", "ranges", "kmeans", "recommended"):
        assert word in result.output
    stats = json.loads((out / "anchor_stats.json").read_text())
    assert stats["stats"]["num_objects"] == sum(1 for _ in json.loads(coco.read_text())["annotations"])
    assert set(stats["coverage"]) == {"config", "ranges", "kmeans"}
    assert set(stats["stats"]["per_class"]) == {"cat", "dog"}
    assert 0 <= stats["coverage"]["ranges"]["bpr"] <= 1
    # the snippet pastes under model: and the config validates and builds the proposed anchors
    snippet = yaml.safe_load((out / "anchors.yaml").read_text())
    assert set(snippet) == {"anchors"}
    cfg = config_from_dict({"model": snippet})
    gen = build_anchor_generator(cfg.model)
    assert set(gen.num_anchors_per_location()) <= {2, 3, 6}
    for key, value in snippet["anchors"].items():
        assert getattr(cfg.model.anchors, key) == value
    recommended = stats["proposals"][stats["recommended"]]["anchors"]
    assert snippet["anchors"] == recommended
    for name in ("wh_scatter.png", "best_iou.png"):
        with Image.open(out / name) as im:
            assert im.format == "PNG" and im.size[0] > 100


def test_anchors_reports_bad_input(tmp_path: Path) -> None:
    result = runner.invoke(app, ["anchors", str(tmp_path / "missing.json"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and "missing.json" in result.output
    assert not (tmp_path / "o").exists()
    bad = runner.invoke(
        app, ["anchors", str(tmp_path / "x.json"), "--anchors-per-level", "7", "--ratios", "3"]
    )
    assert bad.exit_code == 1


def test_anchors_help_has_an_example() -> None:
    result = runner.invoke(app, ["anchors", "--help"])
    assert result.exit_code == 0 and "Example: anchorlab anchors" in result.output


def test_anchor_free_detectors_get_their_levels_use(coco: Path, tmp_path: Path) -> None:
    sets = ["--set", "model.detector=grid", "--set", "data.min_size=96", "--set", "data.max_size=128"]
    out = tmp_path / "grid"
    result = runner.invoke(
        app, ["anchors", str(coco), *sets, "--set", "model.fpn.max_level=5", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "levels: grid.size_ranges kept [(0, 64), " in result.stdout
    use = json.loads((out / "anchor_stats.json").read_text())["level_use"]
    assert use["values"] == {} and use["ranges"]["config"][-1][1] is None  # the last level is open-ended
    objects = json.loads((out / "anchor_stats.json").read_text())["stats"]["num_objects"]
    assert sum(use["ranges"]["objects_per_level"].values()) == objects > 0
