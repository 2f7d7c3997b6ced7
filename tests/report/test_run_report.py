"""The report of one run: vectorised matching and the confusion matrix (background row / column), the
curves from results.csv or log.jsonl, and ``anchorlab report RUN_DIR`` end to end on a tiny run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import anchorlab.report.run as run_report
from anchorlab.cli import app
from anchorlab.config import load_config
from anchorlab.data import make_synthetic
from anchorlab.report.run import confusion_matrix, match_detections, read_curves

GT = [np.array([[0, 0, 10, 10], [20, 20, 40, 40]], float), np.array([[0, 0, 10, 10]], float)]
GT_LABELS = [np.array([0, 1]), np.array([1])]
# image 0: a hit on object 0 (right class), a wrong-class hit on object 1, a false positive;
# image 1: a box at image 0's object 0 place does not match across images (there it hits object 2 anyway)
DETS = [
    np.array([[0, 0, 10, 9], [21, 21, 40, 40], [60, 60, 70, 70]], float),
    np.array([[1, 1, 10, 10]], float),
]
DET_LABELS = [np.array([0, 0, 1]), np.array([0])]


def test_matching_stays_within_each_image_and_is_one_to_one():
    det_match, gt_match = match_detections(DETS, GT)
    assert det_match.tolist() == [0, 1, -1, 2] and gt_match.tolist() == [0, 1, 3]
    two_on_one = [np.array([[0, 0, 10, 10], [0, 0, 10, 9]], float)]
    det_match, gt_match = match_detections(two_on_one, [GT[1]])
    assert det_match.tolist() == [0, -1] and gt_match.tolist() == [0]  # the higher IoU wins


def test_confusion_matrix_has_a_background_row_and_column():
    m = confusion_matrix(DETS, DET_LABELS, GT, GT_LABELS, num_classes=2)
    # rows: true class 0, 1, background; columns: predicted 0, 1, background
    assert m.tolist() == [[1, 0, 0], [2, 0, 0], [0, 1, 0]]
    missed = confusion_matrix([np.zeros((0, 4))], [np.zeros(0)], [GT[0]], [GT_LABELS[0]], num_classes=2)
    assert missed.tolist() == [[0, 0, 1], [0, 0, 1], [0, 0, 0]]


def test_matching_in_blocks_equals_one_block(monkeypatch):
    rng = np.random.default_rng(0)
    xy = [rng.uniform(0, 50, (n, 2)) for n in (5, 0, 7, 3)]
    gts = [np.concatenate([p, p + 12], 1) for p in xy]
    dets = [np.concatenate([p + 1, p + 13], 1) for p in xy]
    whole = match_detections(dets, gts)
    monkeypatch.setattr(run_report, "_MAX_PAIRS", 30)
    assert len(run_report._blocks(np.array([5, 0, 7, 3]), np.array([5, 0, 7, 3]))) > 1
    blocked = match_detections(dets, gts)
    assert all((a == b).all() for a, b in zip(whole, blocked, strict=True))


def test_curves_prefer_results_csv_over_log_eval_records(tmp_path):
    (tmp_path / "log.jsonl").write_text(
        '{"iteration": 1, "loss": 2.0, "loss_cls": 1.5, "lr": 0.001}\n'
        '{"iteration": 2, "eval": {"AP": 0.1, "AP50": 0.2, "AP75": 0.05}}\n{"iteration": 3, "lo'
    )
    train, evals, source = read_curves(tmp_path)
    assert [r["iteration"] for r in train] == [1] and evals == [
        {"iteration": 2, "AP": 0.1, "AP50": 0.2, "AP75": 0.05}
    ]
    assert source == "log.jsonl"
    (tmp_path / "results.csv").write_text(
        "iteration,epoch,loss,lr,AP,AP50\n2,1,2.0,0.001,0.3,0.5\n4,2,1.0,0.0,,0.6\n"
    )
    _, evals, source = read_curves(tmp_path)
    assert (
        source == "results.csv" and evals[0]["AP"] == 0.3 and "AP" not in evals[1] and evals[1]["AP50"] == 0.6
    )


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from anchorlab.engine.train import train

    root = tmp_path_factory.mktemp("run")
    synth = make_synthetic(
        root / "data", images=8, seed=0, size=64, min_object=16, max_object=32, objects=(1, 3)
    )
    cfg = load_config(
        None,
        [
            f"data.train={synth.train}",
            f"data.val={synth.val}",
            "data.min_size=64",
            "data.max_size=64",
            "model.fpn.channels=16",
            "model.fpn.max_level=5",
            "model.head.channels=16",
            "model.head.num_convs=1",
            "train.iterations=4",
            "train.batch_size=2",
            "train.eval_every=2",
            "model.inference.topk_per_level=50",
            "model.inference.max_detections=20",
            "train.log_every=1",
            "train.workers=0",
            f"train.out={root / 'run'}",
        ],
    )
    train(cfg, show_progress=False)
    return root / "run", synth


def test_report_command_writes_every_picture_and_names_the_classes(tiny_run):
    run_dir, synth = tiny_run
    result = CliRunner().invoke(app, ["report", str(run_dir), "--score-thresh", "0.0"])
    assert result.exit_code == 0, result.output
    for name in ("curves_loss", "curves_ap", "pr_curves", "confusion_matrix", "val_predictions"):
        assert (run_dir / f"{name}.png").stat().st_size > 1000, name
    names = [c["name"] for c in json.loads(Path(synth.val).read_text())["categories"]]
    report = json.loads((run_dir / "report.json").read_text())
    assert list(report["per_class"]) == names
    assert report["confusion_matrix"]["labels"] == [*names, "background"]
    page = (run_dir / "report.html").read_text()
    assert page.count("src='data:image/png;base64,") == 5 and "http" not in page
    assert all(f"<td>{n}</td>" for n in names)
    assert all(f"<td>{n}</td>" in page for n in names)


def test_report_of_a_folder_that_is_no_run_is_a_clear_error(tmp_path):
    result = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 1 and "not an anchorlab run folder" in result.output
