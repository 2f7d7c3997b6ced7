"""``model.fit_anchors``: priors fitted to the training boxes (anchorlab.design.fit), with known answers,
and end to end through ``anchorlab train --fit-anchors``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from anchorlab.cli import app
from anchorlab.config import load_config
from anchorlab.data import make_synthetic
from anchorlab.data.core import Category, DetectionSet, ImageRecord
from anchorlab.design import coverage, resize_boxes
from anchorlab.design.fit import (
    MIN_BPR_GAIN,
    _anchor_generator,
    _sample,
    apply_fit,
    fit_priors,
    level_counts,
)
from anchorlab.engine.checkpoint import load_checkpoint
from anchorlab.models import build_detector


def boxes_set(wh: np.ndarray, size: int = 128, per_image: int = 4) -> DetectionSet:
    """Boxes of ``wh [N, 2]`` spread over ``size`` x ``size`` images, ``per_image`` each, at seeded spots."""
    rng = np.random.default_rng(0)
    records = []
    for i, start in enumerate(range(0, len(wh), per_image)):
        chunk = wh[start : start + per_image]
        xy = rng.uniform(0, size - chunk.max(0), (len(chunk), 2))
        boxes = np.concatenate([xy, xy + chunk], 1).astype(np.float32)
        records.append(ImageRecord(i, Path(f"{i}.png"), size, size, boxes, np.zeros(len(chunk), np.int64)))
    return DetectionSet(records, [Category(1, "thing")])


def cfg_for(detector: str, *extra: str):
    return load_config(
        None,
        [
            f"model.detector={detector}",
            "model.num_classes=1",
            "data.min_size=128",
            "data.max_size=128",
            "model.fpn.max_level=5",
            *extra,
        ],
    )


def test_tall_boxes_replace_square_ish_anchors_and_raise_recall():
    rng = np.random.default_rng(1)
    w = rng.uniform(10, 24, 200)
    ds = boxes_set(np.stack([w, 3.2 * w], 1))  # h / w = 3.2: the default ratios (0.5, 1, 2) miss most
    cfg = cfg_for("retinanet")
    fit = fit_priors(cfg, ds)
    r = fit.report["anchors"]
    assert r["chosen"] != "config" and "anchors" in fit.values
    assert r["bpr"][r["chosen"]] >= r["bpr"]["config"] + MIN_BPR_GAIN
    assert max(fit.values["anchors"]["aspect_ratios"]) > 2.5
    apply_fit(cfg, fit)
    # the config now builds the generator the report scored, and that generator has the reported recall
    gen = _anchor_generator(cfg.model, cfg.model.anchors.model_dump())
    boxes = resize_boxes(ds, min_size=128, max_size=128)
    assert coverage(boxes, gen, pos_iou=0.5).summary()["bpr"] == pytest.approx(r["bpr"][r["chosen"]])
    build_detector(cfg)


def test_anchors_that_already_fit_are_kept():
    rng = np.random.default_rng(2)
    side = 2 * 8 * 2 ** rng.integers(0, 3, 300) * 2 ** (rng.integers(0, 3, 300) / 3)  # exactly the anchors
    ds = boxes_set(np.stack([side, side], 1), size=256, per_image=2)
    cfg = cfg_for("retinanet", "model.anchors.octave_base_scale=2", "data.min_size=256", "data.max_size=256")
    fit = fit_priors(cfg, ds)
    assert fit.values == {} and fit.report["anchors"]["chosen"] == "config"
    assert "kept" in fit.notes[0]


def test_faster_rcnn_fit_gives_rpn_sizes_with_one_count_per_level():
    rng = np.random.default_rng(3)
    side = rng.uniform(12, 40, 300)
    ds = boxes_set(np.stack([side, side * rng.uniform(0.8, 1.25, 300)], 1))
    cfg = cfg_for("faster_rcnn", "model.fpn.min_level=2", "model.fpn.max_level=6")
    fit = fit_priors(cfg, ds)
    assert fit.report["anchors"]["chosen"] != "config"  # 8 x stride (32..512 px) is far off 12-40 px objects
    sizes = fit.values["anchors"]["sizes"]
    assert len(sizes) == 5 and {len(s) for s in sizes} == {1}
    apply_fit(cfg, fit)
    build_detector(cfg)


def test_level_counts_are_half_open_ranges():
    ranges = [(0.0, 28.0), (28.0, 56.0), (56.0, math.inf)]
    assert level_counts(np.array([1.0, 27.9, 28.0, 1e6]), ranges, 3) == {"P3": 2, "P4": 1, "P5": 1}


@pytest.mark.parametrize("detector", ["fcos", "grid"])
def test_anchor_free_ranges_are_kept_and_each_levels_use_reported(detector):
    # fitting the ranges to the data's scale cost 45 (FCOS) / 32 (grid) val AP50 points: they stay
    rng = np.random.default_rng(4)
    side = np.exp(rng.uniform(np.log(12), np.log(100), 400))
    cfg = cfg_for(detector)
    before = cfg.model.model_dump()
    fit = fit_priors(cfg, boxes_set(np.stack([side, side], 1)))
    assert fit.values == {}
    r = fit.report["ranges"]
    value = side / 2 if detector == "fcos" else side  # FCOS ranges are on max(l, t, r, b) at the centre
    expected = {"P3": int((value < 64).sum()), "P4": int(((value >= 64) & (value < 128)).sum()), "P5": 0}
    assert r["objects_per_level"] == expected and r["config"][0] == [0, 64]
    idle = "P4, P5: model.fpn.max_level=3" if detector == "fcos" else "P5: model.fpn.max_level=4"
    assert "kept" in fit.notes[0] and idle in fit.summary()
    apply_fit(cfg, fit)
    assert cfg.model.model_dump() == before
    json.dumps(fit.to_dict(), allow_nan=False)  # the open last range is written as null


def test_centernet_has_nothing_to_fit_and_empty_data_is_an_error():
    ds = boxes_set(np.full((8, 2), 20.0))
    fit = fit_priors(cfg_for("centernet", "model.fpn.min_level=2"), ds)
    assert fit.values == {} and "nothing to fit" in fit.summary()
    empty = DetectionSet(
        [ImageRecord(0, Path("0.png"), 64, 64, np.zeros((0, 4), np.float32), np.zeros(0))], []
    )
    with pytest.raises(ValueError, match="no boxes"):
        fit_priors(cfg_for("retinanet"), empty)


def test_large_sets_are_sampled_by_whole_images_deterministically():
    boxes = resize_boxes(boxes_set(np.full((400, 2), 20.0)), min_size=128, max_size=128)
    a, b = _sample(boxes, 101, seed=0), _sample(boxes, 101, seed=0)
    assert np.array_equal(a.boxes, b.boxes) and 101 <= len(a.boxes) < 101 + 4
    assert len(a.boxes) % 4 == 0 and a.image_index.max() == len(a.image_sizes) - 1
    assert _sample(boxes, 10_000, seed=0) is boxes


def test_cli_train_fit_anchors_records_the_fit_and_trains_with_it(tmp_path):
    synth = make_synthetic(
        tmp_path / "d", images=8, seed=0, size=96, min_object=12, max_object=40, objects=(1, 3)
    )
    cfg = load_config(
        None,
        [
            "model.detector=retinanet",
            "model.anchors.octave_base_scale=16",  # anchors of 128 px and up for 12-40 px objects
            f"data.train={synth.train}",
            f"data.val={synth.val}",
            "data.min_size=96",
            "data.max_size=96",
            "model.fpn.channels=16",
            "model.fpn.max_level=5",
            "model.head.channels=16",
            "model.head.num_convs=1",
            "train.iterations=2",
            "train.batch_size=2",
            "train.workers=0",
            "train.threads=1",
            "train.device=cpu",
            f"train.out={tmp_path / 'run'}",
        ],
    )
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    result = CliRunner().invoke(app, ["train", str(path), "--no-eval", "--fit-anchors"])
    assert result.exit_code == 0, result.output
    assert "fit_anchors: " in result.stderr and "anchors (best possible recall" in result.stderr
    fitted = json.loads((tmp_path / "run" / "fit_anchors.json").read_text())["values"]["anchors"]
    recorded = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["model"]
    assert recorded["fit_anchors"] is True
    assert {k: recorded["anchors"][k] for k in fitted} == fitted
    assert fitted.get("sizes") or fitted["octave_base_scale"] < 16
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert state["config"]["model"]["anchors"] == recorded["anchors"]


def test_levels_no_object_uses_are_named_with_the_max_level_that_skips_them():
    side = np.linspace(10, 20, 80)  # all far below P4's range
    fit = fit_priors(cfg_for("fcos"), boxes_set(np.stack([side, side], 1)))
    assert fit.report["ranges"]["objects_per_level"] == {"P3": 80, "P4": 0, "P5": 0}
    assert any("P4, P5: model.fpn.max_level=3" in n for n in fit.notes), fit.notes
    anchors = fit_priors(cfg_for("retinanet"), boxes_set(np.stack([side, side], 1)))
    assert anchors.report["anchors"]["objects_per_best_level"]["P5"] == 0
    assert any("best anchor on P4, P5: model.fpn.max_level=3" in n for n in anchors.notes), anchors.notes
