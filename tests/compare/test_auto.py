"""The auto budget on the resolved config: native size up to the cap, the median object check, the
small-data recipe, the length, keys the user pinned, the quick budget's downscale warning, and the same
decision from ``anchorlab train`` (``train.preset: auto``) and ``anchorlab compare`` (``--budget auto``)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

import anchorlab.cli.compare  # noqa: F401  (registers the command)
from anchorlab.cli import app
from anchorlab.compare import resolve_config
from anchorlab.compare.auto import (
    MIN_OBJECT_PX,
    SMALL_DATA_IMAGES,
    apply_auto,
    downscale_warning,
    iterations_for,
)
from anchorlab.config import TrainConfig, config_from_dict, load_config
from anchorlab.data import Category, DetectionSet, ImageRecord, make_synthetic


def _dataset(images: int, size: int | tuple[int, int], objects: tuple[float, float], seed: int = 0):
    """An in-memory set of ``images`` images of ``size`` (h, w) with 3 objects each of side ``objects``."""
    h, w = (size, size) if isinstance(size, int) else size
    rng = np.random.default_rng(seed)
    records = []
    for i in range(images):
        side = rng.uniform(*objects, size=(3, 1))
        xy = rng.uniform(0, min(h, w) - objects[1], size=(3, 2))
        boxes = np.concatenate([xy, xy + side], axis=1).astype(np.float32)
        records.append(
            ImageRecord(i + 1, Path(f"img{i}.png"), w, h, boxes, np.zeros(3, np.int64), np.arange(3) + 1)
        )
    return DetectionSet(records, [Category(1, "tree")])


def _resolved(ds: DetectionSet, device: str = "cpu", overrides: list[str] | None = None):
    cfg = load_config(None, ["train.preset=auto", *(overrides or [])])
    budget = apply_auto(cfg, ds, device=device)
    return cfg, budget


def _length(cfg) -> int:
    """Iterations the resolved config trains (from train.epochs where the engine has that key)."""
    if "epochs" in TrainConfig.model_fields and cfg.train.epochs:
        return iterations_for(cfg.train.epochs, 400, cfg.train.batch_size)
    return cfg.train.iterations


def test_400px_images_with_20_40px_objects_train_at_400px_or_more():
    cfg, budget = _resolved(_dataset(400, 400, (20, 40)))
    assert cfg.data.min_size >= 400 and cfg.data.max_size >= 400
    assert cfg.model.fit_anchors is True and cfg.train.preset is None
    assert cfg.data.mosaic == 0 and cfg.data.scale_jitter is None  # 400 images: not small data
    assert cfg.train.ema and cfg.train.optimizer == "adamw"
    assert 20 <= budget.facts["median_object"] <= 40 and not budget.warnings
    assert budget.line().startswith("auto budget: 400 training images at 400/400 px (native")
    assert "anchors fitted" in budget.line()
    assert _length(cfg) * cfg.train.batch_size >= 6000  # at least 15 epochs here


def test_30_images_get_the_small_data_recipe():
    cfg, budget = _resolved(_dataset(30, 416, (40, 80)))
    assert SMALL_DATA_IMAGES > 30
    assert cfg.data.min_size == 416
    assert cfg.data.scale_jitter == [312, 520] and cfg.data.max_size == 520  # +-25 %, room to upscale
    assert cfg.data.photometric and cfg.data.hflip == 0.5 and cfg.data.mosaic == 0.5
    assert cfg.train.ema and cfg.train.ema_tau < 200  # a short ramp for a short run
    assert cfg.train.warmup_iters < 0.1 * cfg.train.iterations + 1
    assert "small-data recipe" in budget.line() and "mosaic 0.5" in budget.line()
    overrides, reasons = budget  # the (overrides, reasons) contract
    assert overrides["data.photometric"] is True and reasons == budget.reasons


def test_small_objects_skip_the_mosaic_that_would_halve_them():
    cfg, budget = _resolved(_dataset(30, 400, (20, 40)))
    assert cfg.data.mosaic == 0 and cfg.data.photometric and cfg.data.scale_jitter is not None
    assert "no mosaic (it halves objects" in budget.line()


def test_4000px_images_are_capped_at_640_on_cpu_and_the_median_object_checked():
    cfg, budget = _resolved(_dataset(20, 4000, (80, 120)))
    assert cfg.data.min_size == 640 and budget.facts["cap"] == 640
    assert "shrunk 6.25x to the CPU cap 640" in budget.line()
    assert budget.facts["median_object"] >= MIN_OBJECT_PX and not budget.warnings  # 100 px -> 16 px
    cfg, budget = _resolved(_dataset(20, 4000, (40, 60)))  # 50 px -> 8 px: said so
    assert cfg.data.min_size == 640
    assert len(budget.warnings) == 1 and "shrinks from 50 px to 8.0 px (< 16)" in budget.warnings[0]
    assert re.search(r"--set data.min_size=12\d\d --set data.max_size=12\d\d", budget.warnings[0])
    cfg, budget = _resolved(_dataset(20, 4000, (40, 60)), device="cuda")
    assert cfg.data.min_size == 1333 and "CUDA cap 1333" in budget.line()


def test_non_square_images_keep_their_aspect_within_the_cap():
    cfg, _ = _resolved(_dataset(300, (480, 640), (30, 60)))
    assert (cfg.data.min_size, cfg.data.max_size) == (480, 640)
    cfg, _ = _resolved(_dataset(300, (3000, 4000), (300, 400)))
    assert (cfg.data.min_size, cfg.data.max_size) == (480, 640)


def test_keys_set_on_the_command_line_are_kept_and_named():
    cfg, budget = _resolved(
        _dataset(30, 400, (40, 80)), overrides=["data.min_size=256", "train.iterations=5"]
    )
    assert cfg.data.min_size == 256 and cfg.train.iterations == 5
    assert "data.min_size" not in budget.values and budget.kept["data.min_size"] == 256
    assert "kept yours: data.min_size=256" in budget.line()


def test_the_quick_budget_on_user_data_warns_with_the_factor():
    cfg = config_from_dict({"data": {"min_size": 128, "max_size": 128}})
    note = downscale_warning(_dataset(10, 400, (20, 40)), cfg, "quick")
    assert note is not None and "shrunk 3.1x" in note and "--budget auto" in note
    assert downscale_warning(_dataset(10, 128, (20, 40)), cfg, "quick") is None


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    return make_synthetic(out, images=8, seed=0, size=96, min_object=20, max_object=48, objects=(1, 3))


def test_compare_resolves_auto_for_user_data(synth, tmp_path):
    report: list = []
    cfg = resolve_config(
        "fcos", budget="auto", data=synth.train, val=synth.val, out=tmp_path, auto_report=report
    )
    assert (cfg.data.min_size, cfg.data.max_size) == (96, 120) and cfg.data.scale_jitter == [72, 120]
    assert cfg.model.fit_anchors and cfg.train.preset is None and cfg.model.fpn.channels == 64
    assert len(report) == 1 and report[0].facts["images"] == 6
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump({"data": {"val": str(synth.val)}, "train": {"lr": 0.5}}))
    cfg = resolve_config("fcos", budget="auto", data=synth.train, base_config=base, out=tmp_path)
    assert cfg.data.min_size == 96 and cfg.model.fit_anchors and cfg.train.lr == 0.002  # auto's recipe


def test_compare_cli_defaults_to_auto_with_data_and_quick_warns(synth, tmp_path, monkeypatch):
    import anchorlab.compare.run as run_module

    seen = {}

    def fake_compare(names, **kwargs):  # the CLI's choice of budget, without training
        seen.update(kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(run_module, "compare", fake_compare)
    args = ["compare", "--data", str(synth.train), "--val", str(synth.val), "--out", str(tmp_path)]
    CliRunner().invoke(app, args)
    assert seen["budget"] is None  # compare() then picks auto for user data
    assert run_module.default_budget(synth.train) == "auto" and run_module.default_budget(None) == "quick"


def test_train_with_preset_auto_records_the_choice(synth, tmp_path):
    from anchorlab.engine.train import train

    cfg = load_config(
        None,
        [
            f"data.train={synth.train}",
            "model.backbone.name=resnet18",
            "model.fpn.channels=16",
            "model.head.channels=16",
            "model.head.num_convs=1",
            "model.fpn.max_level=5",
            "train.preset=auto",
            "train.iterations=2",
            "train.workers=0",
            f"train.out={tmp_path / 'run'}",
        ],
    )
    summary = train(cfg, evaluate=False, show_progress=False)
    assert summary["iterations"] == 2  # pinned by --set
    written = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert written["data"]["min_size"] == 96 and written["train"]["preset"] is None
    assert written["model"]["fit_anchors"] is True and written["data"]["photometric"] is True
    record = json.loads((tmp_path / "run" / "auto_budget.json").read_text())
    assert record["kept"] == {"train.iterations": 2} and record["facts"]["images"] == 6


TINY = [
    "--set", "train.iterations=2",
    "--set", "model.fpn.channels=16",
    "--set", "model.head.channels=16",
    "--set", "model.head.num_convs=1",
    "--set", "train.workers=0",
]  # fmt: skip


def test_compare_on_user_data_prints_the_auto_line_and_records_it(synth, tmp_path):
    args = ["compare", "--detectors", "fcos", "--threads", "1", "--data", str(synth.train)]
    result = CliRunner().invoke(app, [*args, "--val", str(synth.val), "--out", str(tmp_path), *TINY])
    assert result.exit_code == 0, result.output
    assert "auto budget: 6 training images at 96/96 px (native" in result.output
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["budget"] == "auto" and results["auto"]["values"]["data.min_size"] == 96
    assert "kept yours: train.iterations=2" in " ".join(results["auto"]["reasons"])
    assert "Auto budget: 6 training images" in (tmp_path / "report.md").read_text()


def test_compare_quick_sized_budget_on_larger_user_images_warns(tmp_path):
    data = make_synthetic(tmp_path / "d", images=8, seed=0, size=128, min_object=24, max_object=48)
    args = ["compare", "--detectors", "fcos", "--budget", "tiny", "--threads", "1", "--data", str(data.train)]
    result = CliRunner().invoke(app, [*args, "--val", str(data.val), "--out", str(tmp_path / "c"), *TINY])
    assert result.exit_code == 0, result.output
    assert "warning: the tiny budget trains at 96/96 px" in result.output and "shrunk 1.3x" in result.output
    assert "shrunk 1.3x" in json.loads((tmp_path / "c" / "results.json").read_text())["warnings"][0]
