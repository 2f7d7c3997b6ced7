"""``anchorlab eval --gt --detections`` through typer's CliRunner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from anchorlab.cli import app
from anchorlab.cli.evaluate import METRIC_DESCRIPTIONS, print_metrics, print_nms_recall
from anchorlab.evaluation import METRIC_NAMES, coco_metrics, nms_recall

GT = {
    "images": [{"id": 1, "width": 200, "height": 200}, {"id": 2, "width": 200, "height": 200}],
    "categories": [{"id": 4, "name": "zebra"}, {"id": 9, "name": "yak"}],
    "annotations": [
        {"id": 1, "image_id": 1, "category_id": 4, "bbox": [10, 10, 60, 60], "area": 3600, "iscrowd": 0},
        {"id": 2, "image_id": 2, "category_id": 9, "bbox": [50, 50, 20, 20], "area": 400, "iscrowd": 0},
    ],
}
DETS = [
    {"image_id": 1, "category_id": 4, "bbox": [12, 10, 60, 60], "score": 0.9},
    {"image_id": 2, "category_id": 9, "bbox": [100, 100, 20, 20], "score": 0.8},
]

runner = CliRunner()


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    gt, dets = tmp_path / "gt.json", tmp_path / "dets.json"
    gt.write_text(json.dumps(GT))
    dets.write_text(json.dumps(DETS))
    return gt, dets


def test_table_output(files: tuple[Path, Path]) -> None:
    gt, dets = files
    result = runner.invoke(app, ["eval", "--gt", str(gt), "--detections", str(dets)])
    assert result.exit_code == 0, result.output
    expected = coco_metrics(gt, dets)
    for name in METRIC_NAMES:
        assert name in result.stdout
    assert f"{100 * expected['AP']:.1f}" in result.stdout
    assert "zebra" in result.stdout and "yak" in result.stdout and "n/a" in result.stdout  # no large objects


def test_json_output_and_file(files: tuple[Path, Path], tmp_path: Path) -> None:
    gt, dets = files
    out = tmp_path / "sub" / "metrics.json"
    result = runner.invoke(app, ["eval", "--gt", str(gt), "-d", str(dets), "--json", "-o", str(out)])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert printed == json.loads(out.read_text()) == coco_metrics(gt, dets)
    assert printed["per_category"]["yak"] == 0.0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--gt", "{gt}", "--detections", "{missing}"], "no such file"),
        (["--gt", "{gt}", "--detections", "{broken}"], "malformed JSON at line 2, column 18"),
        (["--gt", "{gt}", "--detections", "{unknown}"], "image ids not in the ground truth: 77"),
        (["--gt", "{gt}"], "missing --detections"),
        (["--gt", "{gt}", "--detections", "{dets}", "--nms-recall"], "need a CONFIG"),
        (["{gt}", "--gt", "{gt}", "--detections", "{dets}"], "not both"),
        (["cfg.yaml", "--checkpoint", "last.pt"], "config file cfg.yaml does not exist"),
    ],
)
def test_errors_exit_1_without_traceback(
    files: tuple[Path, Path], tmp_path: Path, args: list[str], message: str
) -> None:
    gt, dets = files
    (tmp_path / "broken.json").write_text('[\n  {"image_id": 1,}\n]')
    (tmp_path / "unknown.json").write_text(json.dumps([{**DETS[0], "image_id": 77}]))
    paths = {
        "gt": gt,
        "dets": dets,
        "missing": tmp_path / "missing.json",
        "broken": tmp_path / "broken.json",
        "unknown": tmp_path / "unknown.json",
    }
    result = runner.invoke(app, ["eval", *(a.format(**paths) for a in args)])
    assert result.exit_code == 1
    assert message in result.stderr
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_help_shows_examples() -> None:
    result = runner.invoke(app, ["eval", "--help"])
    assert result.exit_code == 0
    assert "anchorlab eval --gt val.json --detections dets.json" in result.stdout
    assert "--nms-recall" in result.stdout and "--checkpoint" in result.stdout


def test_printers_are_reusable() -> None:
    assert tuple(METRIC_DESCRIPTIONS) == METRIC_NAMES
    console = Console(record=True, width=120)
    print_metrics({"AP": 0.5, "APs": -1.0}, "run A", console=console)
    result = nms_recall(
        [[[0, 0, 10, 10], [5, 0, 15, 10]]], [[[0, 0, 10, 10], [5, 0, 15, 10]]], [[[0, 0, 10, 10]]]
    )
    print_nms_recall(result, "NMS recall", console=console)
    text = console.export_text()
    assert "run A" in text and "50.0" in text and "n/a" in text and "AR100" not in text
    assert "class-agnostic, 2 objects" in text and "0.95" in text
