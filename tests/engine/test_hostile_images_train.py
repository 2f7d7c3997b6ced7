"""A ~100-byte PNG whose image data is shorter than its header (it segfaulted torchvision's decoder) in
the training data and among the images to predict: training skips it with a warning, predict skips it."""

from __future__ import annotations

import json

import pytest
from tests.data.test_image import short_idat_png
from typer.testing import CliRunner

from anchorlab.cli import app
from anchorlab.config import load_config
from anchorlab.data import make_synthetic
from anchorlab.engine.train import train

runner = CliRunner()


def test_truncated_png_is_skipped_by_train_and_predict(tmp_path):
    synth = make_synthetic(
        tmp_path / "d", images=5, seed=0, size=64, min_object=16, max_object=32, val_images=1
    )
    bad = short_idat_png(synth.images / "bad.png")
    doc = json.loads(synth.train.read_text())
    doc["images"].append({"id": 99, "file_name": "bad.png", "width": 64, "height": 64})
    synth.train.write_text(json.dumps(doc))
    cfg = load_config(
        None,
        [f"data.train={synth.train}", "data.min_size=64", "data.max_size=64", "model.fpn.channels=8",
         "model.fpn.max_level=5", "model.head.channels=8", "model.head.num_convs=1", "model.head.norm=gn",
         "train.iterations=3", "train.batch_size=5", "train.workers=0", "train.warmup_iters=0",
         "train.device=cpu", "train.threads=1", "train.log_every=1", f"train.out={tmp_path / 'run'}"],
    )  # fmt: skip
    with pytest.warns(RuntimeWarning, match="skipping unreadable image .*bad.png"):
        summary = train(cfg, evaluate=False, show_progress=False)
    pred = tmp_path / "pred"
    good = synth.images / "img_000000.png"
    res = runner.invoke(app, ["predict", summary["checkpoint"], str(good), str(bad), "--out", str(pred)])
    assert res.exit_code == 0, res.output
    assert [im["file_name"] for im in json.loads((pred / "images.json").read_text())] == [str(good)]
