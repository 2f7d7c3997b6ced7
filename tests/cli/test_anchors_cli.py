"""``anchorlab anchors`` via typer's CliRunner on a tiny COCO JSON (recorded image sizes, no image files)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
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
    assert set(stats["coverage"]) == {"config", "seed", "ranges", "kmeans"}
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


def test_method_seed_writes_the_min_max_recipe(tmp_path: Path) -> None:
    """Boxes whose sides run from 10 to 50 px (no resize: 100 px images, min_size 100): seed 003's recipe
    gives sizes 10, 30, 50 on every level, ratios 1:1 and 2:1 (h / w = 0.5), anchors at cell centres."""
    sides = [(10, 20), (30, 30), (50, 24), (16, 40)]  # (w, h): smallest side 10, largest 50
    images = [{"id": 1, "file_name": "a.png", "width": 100, "height": 100}]
    anns = [
        {"id": k + 1, "image_id": 1, "category_id": 1, "bbox": [5, 5, w, h], "iscrowd": 0}
        for k, (w, h) in enumerate(sides)
    ]
    path = tmp_path / "t.json"
    path.write_text(
        json.dumps({"images": images, "annotations": anns, "categories": [{"id": 1, "name": "a"}]})
    )
    out = tmp_path / "out"
    sets = ["--set", "data.min_size=100", "--set", "data.max_size=100", "--set", "model.fpn.max_level=5"]
    result = runner.invoke(app, ["anchors", str(path), *sets, "--method", "seed", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "--method 'seed'" in result.output
    for column in ("seed", "ranges", "kmeans", "config"):
        assert column in result.output
    snippet = yaml.safe_load((out / "anchors.yaml").read_text())
    assert snippet["anchors"] == {
        "sizes": [[10.0, 30.0, 50.0]] * 3,
        "aspect_ratios": [1.0, 0.5],
        "offset": 0.5,
    }
    stats = json.loads((out / "anchor_stats.json").read_text())
    assert stats["chosen"] == "seed" and set(stats["coverage"]) == {"config", "seed", "ranges", "kmeans"}
    gen = build_anchor_generator(config_from_dict({"model": {**snippet, "fpn": {"max_level": 5}}}).model)
    first = gen.grid_anchors([(13, 13), (7, 7), (4, 4)])[0]  # P3 cell (0, 0), size 10, ratio 1
    assert first.tolist() == [-1.0, -1.0, 9.0, 9.0]  # centred at (4, 4) = (0 + 0.5) * 8
    bad = runner.invoke(app, ["anchors", str(path), "--method", "octaves", "--out", str(out)])
    assert bad.exit_code == 1 and "seed, ranges, kmeans" in bad.output


def test_anchor_offset_key_moves_the_centres_by_half_a_stride() -> None:
    corner = build_anchor_generator(config_from_dict({"model": {"fpn": {"max_level": 3}}}).model)
    centre = build_anchor_generator(
        config_from_dict({"model": {"fpn": {"max_level": 3}, "anchors": {"offset": 0.5}}}).model
    )
    a, b = corner.grid_anchors([(2, 2)]), centre.grid_anchors([(2, 2)])
    torch.testing.assert_close(b - a, torch.full_like(a, 4.0))  # P3: half of stride 8
