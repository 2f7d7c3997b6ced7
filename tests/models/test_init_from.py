"""``model.init_from``: start from an imported torchvision RetinaNet with another class count (issue 20)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tests.models.test_pretrained import random_torchvision
from typer.testing import CliRunner

from anchorlab.cli import app
from anchorlab.config import load_config
from anchorlab.data import make_synthetic
from anchorlab.engine.checkpoint import save_checkpoint
from anchorlab.engine.train import train
from anchorlab.models import build_detector
from anchorlab.models.init_from import match_state

SIZE = 64


@pytest.fixture(scope="module")
def coco_retinanet(tmp_path_factory) -> Path:
    """An anchorlab weights file imported from a random-state torchvision RetinaNet (no download)."""
    root = tmp_path_factory.mktemp("coco")
    torch.save(random_torchvision("retinanet_resnet50_fpn").state_dict(), root / "tv.pth")
    result = CliRunner().invoke(
        app,
        [
            "weights",
            "import",
            "torchvision:retinanet_resnet50_fpn",
            "--weights",
            str(root / "tv.pth"),
            "--out",
            str(root / "retinanet_r50_coco.pt"),
        ],
    )
    assert result.exit_code == 0, result.output
    return root / "retinanet_r50_coco.pt"


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return make_synthetic(
        tmp_path_factory.mktemp("synth"), images=12, val_images=4, size=SIZE, classes=3, seed=0
    )


def finetune_overrides(weights: Path, synth, out: Path) -> list[str]:
    return [
        f"model.init_from={weights}",
        "model.num_classes=null",
        f"data.train={synth.train}",
        f"data.val={synth.val}",
        f"data.min_size={SIZE}",
        f"data.max_size={SIZE}",
        "train.iterations=3",
        "train.batch_size=2",
        "train.lr=0.001",
        "train.warmup_iters=1",
        "train.workers=0",
        "train.log_every=1",
        "train.checkpoint_every=100",
        "train.device=cpu",
        "train.threads=1",
        f"train.out={out}",
    ]


def test_match_state_lists_every_tensor() -> None:
    target = {"a": torch.zeros(2), "cls_logits.weight": torch.zeros(3, 4), "new": torch.zeros(1)}
    source = {"a": torch.ones(2), "cls_logits.weight": torch.ones(5, 4), "old": torch.ones(7)}
    load, report = match_state(target, source)
    assert set(load) == {"a"} and report["loaded"] == ["a"]
    reasons = {e["key"]: (e["file_shape"], e["reason"]) for e in report["reinitialised"]}
    assert reasons == {
        "cls_logits.weight": ([5, 4], "shape differs (class-specific)"),
        "new": (None, "not in file"),
    }
    assert report["unused"] == [{"key": "old", "file_shape": [7]}]


def test_init_from_with_three_classes_trains_and_reports(coco_retinanet, synth, tmp_path) -> None:
    coco = torch.load(coco_retinanet, weights_only=True)
    cfg = load_config(
        "configs/retinanet_r50_coco_finetune.yaml",
        finetune_overrides(coco_retinanet, synth, tmp_path / "run"),
    )
    summary = train(cfg, show_progress=False, evaluate=False)
    report = json.loads((tmp_path / "run" / "init_from.json").read_text())
    reinit = {e["key"]: e for e in report["reinitialised"]}
    assert set(reinit) == {"head.cls_logits.weight", "head.cls_logits.bias"}
    assert reinit["head.cls_logits.weight"]["file_shape"][0] == 9 * 80
    assert reinit["head.cls_logits.weight"]["shape"][0] == 9 * 3
    assert report["unused"] == [] and len(report["loaded"]) == len(coco["model"]) - 2
    state = torch.load(summary["checkpoint"], weights_only=False)["model"]
    # frozen stem: still the imported weights; classifier: 3 classes, started at the prior probability
    assert torch.equal(state["backbone.body.conv1.weight"], coco["model"]["backbone.body.conv1.weight"])
    assert state["head.cls_logits.bias"].shape == (27,)
    fresh = build_detector(cfg.model.model_copy(update={"num_classes": 3}))
    assert float(fresh.head.cls_logits.bias[0].detach()) == pytest.approx(-4.595, abs=1e-3)


def test_init_from_a_file_that_fits_nothing_is_an_error(synth, tmp_path) -> None:
    save_checkpoint(tmp_path / "other.pt", {"model": {"x.weight": torch.zeros(3)}})
    overrides = finetune_overrides(tmp_path / "other.pt", synth, tmp_path / "run")
    cfg = load_config("configs/retinanet_r18_fpn_quick.yaml", [*overrides, "data.synthetic=null"])
    with pytest.raises(ValueError, match="none of its 1 tensors fits this retinanet model"):
        train(cfg, show_progress=False, evaluate=False)


def test_cli_import_finetune_predict(coco_retinanet, synth, tmp_path) -> None:
    """weights import (fixture) -> train with init_from on 3 synthetic classes -> predict, from the CLI."""
    runner = CliRunner()
    overrides = finetune_overrides(coco_retinanet, synth, tmp_path / "run")
    args = ["train", "configs/retinanet_r50_coco_finetune.yaml", "--no-eval"]
    result = runner.invoke(app, [*args, *[a for o in overrides for a in ("--set", o)]])
    assert result.exit_code == 0, result.output
    assert "re-initialised" in result.output and (tmp_path / "run" / "init_from.json").is_file()
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    result = runner.invoke(
        app,
        [
            "predict",
            summary["checkpoint"],
            str(Path(synth.val).parent / "images"),
            "--out",
            str(tmp_path / "pred"),
            "--save-json",
            "--device",
            "cpu",
            "--score-thresh",
            "0.001",
            "--no-draw",
        ],
    )
    assert result.exit_code == 0, result.output
    detections = json.loads((tmp_path / "pred" / "detections.json").read_text())
    assert detections  # the prior-probability classifier scores ~0.01: above 0.001 everywhere
    assert {d["category_id"] for d in detections} <= {
        c["id"] for c in json.loads(Path(synth.train).read_text())["categories"]
    }
