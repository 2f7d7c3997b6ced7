"""``anchorlab eval CONFIG --checkpoint``: the test split from an image-info file (real image ids, score
threshold 0.05, a zip for the evaluation server), ``--set model.inference.*`` applied or refused, and the
NMS-recall protocols. The checkpoint is a hand-made weights file of a tiny untrained RetinaNet whose
classifier prior (0.5) puts every score near 0.5; the images are tiny hand-made PNGs."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
import torch
import yaml
from torchvision.io import write_png
from typer.testing import CliRunner

from anchorlab.cli import app
from anchorlab.config import Config
from anchorlab.engine.checkpoint import save_checkpoint
from anchorlab.evaluation.submission import algorithm_name, submission_name
from anchorlab.models import build_detector

runner = CliRunner()
CATEGORIES = [{"id": 3, "name": "car"}, {"id": 7, "name": "tree"}]
TEST_IDS = [139, 285, 632]


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("evalmodel")
    images = []
    for i, image_id in enumerate(TEST_IDS):
        name = f"img{i}.png"
        pixels = torch.full((3, 64, 64), 30, dtype=torch.uint8)
        pixels[:, 10 + 8 * i : 40, 12:50] = 220
        write_png(pixels, str(root / name))
        images.append({"id": image_id, "file_name": name, "width": 64, "height": 64})
    (root / "image_info_test.json").write_text(json.dumps({"images": images, "categories": CATEGORIES}))
    anns = [
        {"id": k + 1, "image_id": im["id"], "category_id": 3, "bbox": [12, 18, 38, 22], "iscrowd": 0}
        for k, im in enumerate(images)
    ]
    (root / "val.json").write_text(
        json.dumps({"images": images, "annotations": anns, "categories": CATEGORIES})
    )
    tree = {
        "model": {
            "detector": "retinanet",
            "num_classes": 2,
            "fpn": {"channels": 16, "max_level": 5},
            "head": {"channels": 16, "num_convs": 1, "norm": "gn", "prior_prob": 0.5},
            "anchors": {"octave_base_scale": 2},
            "inference": {"score_thresh": 0.6, "max_detections": 150},
        },
        "data": {"val": str(root / "val.json"), "test": str(root / "image_info_test.json"), "min_size": 64,
                 "max_size": 64},
        "train": {"device": "cpu", "workers": 0, "batch_size": 2, "out": str(root / "run")},
    }  # fmt: skip
    cfg = Config.model_validate(tree)
    torch.manual_seed(0)
    model = build_detector(cfg)
    state = {
        "format": "anchorlab/1",
        "model": model.state_dict(),
        "config": cfg.model_dump(mode="json"),
        "categories": CATEGORIES,
        "iteration": 0,
        "metrics": {},
    }
    save_checkpoint(root / "weights.pt", state)
    config = root / "tiny_retina.yaml"
    config.write_text(yaml.safe_dump({"data": tree["data"], "train": tree["train"]}))
    return {"root": root, "config": config, "ckpt": root / "weights.pt"}


def _eval(setup, *args: str):
    return runner.invoke(app, ["eval", str(setup["config"]), "--checkpoint", str(setup["ckpt"]), *args])


def test_test_split_writes_results_with_real_ids_and_a_server_zip(setup) -> None:
    out = setup["root"] / "dets.json"
    result = _eval(setup, "--split", "test", "--results", str(out), "--alg", "tiny_retina.v1")
    assert result.exit_code == 0, result.output
    dets = json.loads(out.read_text())
    assert dets and {d["image_id"] for d in dets} <= set(TEST_IDS)
    assert {d["category_id"] for d in dets} <= {3, 7}
    scores = [d["score"] for d in dets]
    # The checkpoint's own threshold is 0.6; the benchmark's 0.05 applies to a results file.
    assert min(scores) > 0.05 and min(scores) < 0.6
    per_image = [sum(d["image_id"] == i for d in dets) for i in TEST_IDS]
    assert max(per_image) <= 100  # COCO's 100 per image, not the checkpoint's 150
    member = "detections_test-dev2017_tiny-retina-v1_results.json"
    with zipfile.ZipFile(out.with_suffix(".zip")) as archive:
        assert archive.namelist() == [member]
        assert json.loads(archive.read(member)) == dets
    assert "upload" in result.stdout and member in result.stdout
    again = _eval(setup, "--split", "test", "--results", str(out))
    assert again.exit_code == 1 and "--force" in again.stderr


def test_unlabelled_split_needs_results_and_has_no_nms_recall(setup) -> None:
    result = _eval(setup, "--split", "test")
    assert result.exit_code == 1 and "holds no annotations" in result.stderr
    out = setup["root"] / "x.json"
    result = _eval(setup, "--split", "test", "--results", str(out), "--nms-recall")
    assert result.exit_code == 1 and "NMS recall needs ground truth" in result.stderr


def test_set_model_inference_applies_and_other_model_keys_are_refused(setup) -> None:
    plain = json.loads(_eval(setup, "--json", "--set", "model.inference.score_thresh=0.0").stdout)
    capped = _eval(
        setup,
        "--json",
        "--set",
        "model.inference.score_thresh=0.0",
        "--set",
        "model.inference.max_detections=2",
    )
    assert capped.exit_code == 0, capped.output
    assert plain["num_detections"] == 3 * 150 and json.loads(capped.stdout)["num_detections"] == 3 * 2
    refused = _eval(setup, "--set", "model.backbone.name=resnet50")
    assert refused.exit_code == 2 and "only model.inference.*" in refused.stderr
    bad = _eval(setup, "--set", "model.inference.nms_iou=7")
    assert bad.exit_code == 1 and "nms_iou" in bad.stderr


def test_nms_recall_protocols_from_the_cli(setup) -> None:
    authors = _eval(setup, "--json", "--nms-recall")
    assert authors.exit_code == 0, authors.output
    nr = json.loads(authors.stdout)["nms_recall"]
    assert nr["protocol"] == "freeanchor" and not nr["class_aware"] and nr["strict"]
    assert len(nr["iou_thresholds"]) == 9 and nr["num_objects"] == 3
    ours = json.loads(_eval(setup, "--json", "--nms-recall", "--nms-recall-protocol", "anchorlab").stdout)
    assert ours["nms_recall"]["protocol"] == "anchorlab" and len(ours["nms_recall"]["iou_thresholds"]) == 10
    table = _eval(setup, "--nms-recall")
    assert "NMS Recall (NR) [0.5:0.9] =" in table.stdout and "freeanchor protocol" in table.stdout
    wrong = _eval(setup, "--nms-recall", "--nms-recall-protocol", "coco")
    assert wrong.exit_code == 2 and "freeanchor, anchorlab" in wrong.stderr


def test_submission_names() -> None:
    assert (
        submission_name("test-dev2017", "free_anchor_r101")
        == "detections_test-dev2017_free-anchor-r101_results.json"
    )
    assert algorithm_name("a.b__c") == "a-b-c"
    with pytest.raises(ValueError, match="test-dev2017"):
        submission_name("val2017", "x")
