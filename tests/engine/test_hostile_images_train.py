"""End to end on one tiny training run: a ~100-byte PNG whose image data is shorter than its header (it
segfaulted torchvision's decoder) is skipped by train and predict; `eval` matches a val file's categories
to the checkpoint's by id (an extra id in use is named, an unused one or a missing one is not an
IndexError and relabels nothing)."""

from __future__ import annotations

import json

import pytest
from tests.data.test_image import short_idat_png
from typer.testing import CliRunner

from anchorlab.cli import app
from anchorlab.config import dump_config, load_config
from anchorlab.data import make_synthetic
from anchorlab.engine.train import train

runner = CliRunner()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile")
    synth = make_synthetic(tmp / "d", images=5, seed=0, size=64, min_object=16, max_object=32, val_images=1)
    bad = short_idat_png(synth.images / "bad.png")
    doc = json.loads(synth.train.read_text())
    doc["images"].append({"id": 99, "file_name": "bad.png", "width": 64, "height": 64})
    synth.train.write_text(json.dumps(doc))
    cfg = load_config(
        None,
        [f"data.train={synth.train}", "data.min_size=64", "data.max_size=64", "model.fpn.channels=8",
         "model.fpn.max_level=5", "model.head.channels=8", "model.head.num_convs=1", "model.head.norm=gn",
         "train.iterations=3", "train.batch_size=5", "train.workers=0", "train.warmup_iters=0",
         "train.device=cpu", "train.threads=1", "train.log_every=1", f"train.out={tmp / 'run'}"],
    )  # fmt: skip
    with pytest.warns(RuntimeWarning, match="skipping unreadable image .*bad.png"):
        summary = train(cfg, evaluate=False, show_progress=False)
    return tmp, synth, bad, cfg, summary["checkpoint"]


def test_truncated_png_is_skipped_by_train_and_predict(run):
    tmp, synth, bad, _, checkpoint = run
    pred = tmp / "pred"
    good = synth.images / "img_000000.png"
    res = runner.invoke(app, ["predict", checkpoint, str(good), str(bad), "--out", str(pred), "--save-json"])
    assert res.exit_code == 1, res.output  # every readable image predicted; the skipped one makes it exit 1
    assert "bad.png" in res.output and "Traceback" not in res.output
    assert [im["file_name"] for im in json.loads((pred / "images.json").read_text())] == [good.name]


def _eval(tmp, cfg, checkpoint, val: dict):
    (tmp / "d" / "val_variant.json").write_text(json.dumps(val))
    cfg = cfg.model_copy(deep=True)
    cfg.data.val = str(tmp / "d" / "val_variant.json")
    path = tmp / "eval.yaml"
    path.write_text(dump_config(cfg))
    return runner.invoke(app, ["eval", str(path), "--checkpoint", checkpoint, "--json"])


@pytest.mark.filterwarnings("ignore:.*category id:UserWarning")
def test_eval_matches_val_categories_by_id(run):
    tmp, synth, _, cfg, checkpoint = run
    val = json.loads(synth.val.read_text())
    same = _eval(tmp, cfg, checkpoint, val)
    extra = _eval(tmp, cfg, checkpoint, {**val, "categories": [{"id": 0, "name": "all"}, *val["categories"]]})
    assert same.exit_code == 0 and extra.exit_code == 0, extra.output  # an unused extra id: warned
    ap = [json.loads(r.stdout)["per_category"] for r in (same, extra)]
    assert ap[0] == ap[1]  # nothing shifted: the same AP per category
    used = json.loads(json.dumps(val))
    used["categories"].append({"id": 5, "name": "new"})
    used["annotations"][0]["category_id"] = 5
    res = _eval(tmp, cfg, checkpoint, used)
    assert res.exit_code == 1 and "category id(s) 5 ('new') are used by annotations" in " ".join(
        res.output.split()
    )
    first = val["categories"][0]["id"]
    fewer = {**val, "categories": val["categories"][:1],
             "annotations": [a for a in val["annotations"] if a["category_id"] == first]}  # fmt: skip
    res = _eval(tmp, cfg, checkpoint, fewer)
    assert res.exit_code == 0 and "IndexError" not in res.output, res.output
