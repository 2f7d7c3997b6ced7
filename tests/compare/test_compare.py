"""``anchorlab compare`` end to end on the tiny budget: report files and rows, a failing detector, reuse of
finished runs and --fresh, parallel training (--jobs), a self-contained HTML report, and presets that cannot
drift from configs/."""

from __future__ import annotations

import base64
import io
import json
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image
from typer.testing import CliRunner

import anchorlab.cli.compare  # noqa: F401  (registers the command)
from anchorlab.cli import app
from anchorlab.compare import compare, model_tree, resolve_config
from anchorlab.compare.presets import BUDGETS, budget_tree
from anchorlab.compare.run import config_hash
from anchorlab.config import ConfigError
from anchorlab.data import make_synthetic
from anchorlab.models import build as build_module

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
FIGURES = 3  # PR curves, AP by size, detections side by side


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    return make_synthetic(out, images=16, seed=0, size=96, min_object=20, max_object=48, objects=(1, 3))


def _cli(synth, out: Path, detectors: str, *extra: str):
    args = [
        "compare",
        "--detectors",
        detectors,
        "--budget",
        "tiny",
        "--threads",
        "1",
        "--data",
        str(synth.train),
    ]
    return CliRunner().invoke(app, [*args, "--val", str(synth.val), "--out", str(out), *extra])


@pytest.fixture(scope="module")
def first_run(synth, tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    result = _cli(synth, out, "retinanet,free_anchor")
    assert result.exit_code == 0, result.output
    return out


def _table_rows(report_md: str) -> dict[str, list[str]]:
    rows = {}
    for line in report_md.split("\n## ")[0].splitlines():  # the results table, before the sections
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and cells[0] in build_module.DETECTORS:
            assert cells[0] not in rows, f"two rows for {cells[0]}"
            rows[cells[0]] = cells
    return rows


def test_report_files_and_rows(first_run):
    for name in (
        "results.json",
        "report.md",
        "report.html",
        "pr_curves.png",
        "ap_by_size.png",
        "predictions.png",
    ):
        assert (first_run / name).is_file(), name
    results = json.loads((first_run / "results.json").read_text())
    assert results["detectors"] == ["retinanet", "free_anchor"]
    assert results["environment"]["threads"] == 1 and results["jobs"] == 1
    for det in ("retinanet", "free_anchor"):
        run = results["runs"][det]
        assert run["status"] == "ok" and run["error"] is None
        assert set(run["metrics"]) >= {"AP", "AP50", "AP75", "APs", "APm", "APl", "nms_recall", "pr_curve"}
        assert len(run["metrics"]["pr_curve"]["precision"]) == 101
        assert run["metrics"]["nms_recall"]["num_objects"] > 0
        assert run["params_m"] > 1 and run["gflops"] > 0 and run["inference_ms"] > 0
        assert run["train_time_s"] > 0 and run["train_images_per_s"] > 0 and run["iterations"] == 6
        assert run["eval_size"] == [96, 96] and run["jobs"] == 1
        # in-process training: the compare process's peak RSS during the training (reset on Linux)
        assert run["peak_memory_mb"] > 50 and "compare process" in run["peak_memory_source"]
        assert run["metrics"]["nms_recall"]["protocol"] == "anchorlab"
        assert (first_run / det / "last.pt").is_file() and (first_run / det / "result.json").is_file()
        # --threads holds inside training too (train() would otherwise pick the machine's core count)
        assert yaml.safe_load((first_run / det / "config.yaml").read_text())["train"]["threads"] == 1
    # the same backbone and model size: the two share the RetinaNet architecture
    assert results["runs"]["retinanet"]["params_m"] == results["runs"]["free_anchor"]["params_m"]
    assert set(results["assignment"]["strategies"]) == {"max_iou", "free_anchor", "fcos", "centernet", "grid"}
    report = (first_run / "report.md").read_text()
    assert "Trainings ran" not in report  # the --jobs note
    rows = _table_rows(report)
    assert set(rows) == {"retinanet", "free_anchor"}
    assert all(r[-1] == "ok" and len(r) == 16 for r in rows.values())
    assert "peak mem MB" in report


class _Images(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.links: list[tuple[str, str, str]] = []

    def handle_starttag(self, tag, attrs):
        for key, value in attrs:
            if key in ("src", "href"):
                self.links.append((tag, key, value or ""))
        if tag == "img":
            self.images.append(dict(attrs)["src"])
        assert tag not in ("script", "link", "iframe"), f"external/active content: <{tag}>"


def test_html_report_is_self_contained(first_run):
    parser = _Images()
    parser.feed((first_run / "report.html").read_text())
    assert len(parser.images) == FIGURES
    prefix = "data:image/png;base64,"
    assert all(value.startswith(prefix) for _, _, value in parser.links), parser.links
    for src in parser.images:
        image = Image.open(io.BytesIO(base64.b64decode(src[len(prefix) :], validate=True)))
        image.load()
        assert image.format == "PNG" and min(image.size) > 100


def test_rerun_reuses_finished_runs(synth, first_run):
    stamps = {d: (first_run / d / "last.pt").stat().st_mtime_ns for d in ("retinanet", "free_anchor")}
    result = _cli(synth, first_run, "retinanet,free_anchor")
    assert result.exit_code == 0, result.output
    results = json.loads((first_run / "results.json").read_text())
    assert all(results["runs"][d]["reused"] for d in stamps)
    assert all((first_run / d / "last.pt").stat().st_mtime_ns == t for d, t in stamps.items())
    assert all(r[-1] == "reused" for r in _table_rows((first_run / "report.md").read_text()).values())


def test_failing_detector_is_reported_and_fresh_retrains(synth, tmp_path, monkeypatch):
    def broken(cfg):
        raise RuntimeError("head exploded")

    monkeypatch.setitem(build_module.DETECTORS, "free_anchor", broken)
    out = tmp_path / "cmp"
    # the failing detector first: the one after it must still train, evaluate and be reported
    result = _cli(synth, out, "free_anchor,retinanet", "--set", "train.iterations=1")
    assert result.exit_code == 1 and "1 of 2 detectors failed" in result.output
    results = json.loads((out / "results.json").read_text())
    assert results["runs"]["free_anchor"]["status"] == "failed"
    assert results["runs"]["free_anchor"]["error"] == "RuntimeError: head exploded"
    assert "head exploded" in (out / "free_anchor" / "error.txt").read_text()
    assert results["runs"]["retinanet"]["status"] == "ok" and results["runs"]["retinanet"]["iterations"] == 1
    rows = _table_rows((out / "report.md").read_text())
    assert rows["free_anchor"][-1] == "failed: RuntimeError: head exploded"
    assert rows["retinanet"][-1] == "ok"

    checkpoint = out / "retinanet" / "last.pt"
    stamp = checkpoint.stat().st_mtime_ns
    kwargs = {"budget": "tiny", "data": synth.train, "val": synth.val, "out": out}
    opts = {"show_progress": False, "threads": 1}
    threads = torch.get_num_threads()
    torch.set_num_threads(threads + 1)
    try:
        again = compare(["retinanet"], overrides=["train.iterations=1"], **opts, **kwargs)
        assert torch.get_num_threads() == threads + 1  # --threads holds for the comparison only
    finally:
        torch.set_num_threads(threads)
    assert again["environment"]["threads"] == 1
    assert again["runs"]["retinanet"]["reused"] and checkpoint.stat().st_mtime_ns == stamp
    fresh = compare(["retinanet"], overrides=["train.iterations=1"], fresh=True, **opts, **kwargs)
    assert not fresh["runs"]["retinanet"]["reused"] and checkpoint.stat().st_mtime_ns != stamp
    # a changed config (or data file) is a different run: its hash differs, so it is retrained
    same = config_hash(resolve_config("retinanet", overrides=["train.iterations=1"], **kwargs))
    assert same == fresh["runs"]["retinanet"]["config_hash"]
    assert config_hash(resolve_config("retinanet", overrides=["train.iterations=3"], **kwargs)) != same
    val = tmp_path / "val.json"
    val.write_bytes(synth.val.read_bytes())
    copied = config_hash(
        resolve_config("retinanet", overrides=["train.iterations=1"], **{**kwargs, "val": val})
    )
    val.write_bytes(synth.val.read_bytes() + b" ")
    edited = config_hash(
        resolve_config("retinanet", overrides=["train.iterations=1"], **{**kwargs, "val": val})
    )
    assert copied != edited


def test_parallel_jobs_report_a_failure_and_evaluate_the_rest(synth, tmp_path):
    out = tmp_path / "cmp"
    # anchors.sizes with one level: RetinaNet fails when its model is built (in the worker), FCOS has no
    # anchors and trains; the config resolves for both
    extra = ("--jobs", "2", "--set", "model.anchors.sizes=[[32]]", "--set", "train.iterations=2")
    result = _cli(synth, out, "retinanet,fcos", *extra)
    assert result.exit_code == 1 and "1 of 2 detectors failed" in result.output
    results = json.loads((out / "results.json").read_text())
    assert results["jobs"] == 2
    failed, ok = results["runs"]["retinanet"], results["runs"]["fcos"]
    assert failed["status"] == "failed" and failed["error"].startswith("ValueError: model.anchors.sizes")
    assert "build_anchor_generator" in (out / "retinanet" / "error.txt").read_text()  # the worker's traceback
    assert ok["status"] == "ok" and ok["jobs"] == 2 and ok["train_threads"] == 1 and ok["iterations"] == 2
    assert ok["metrics"]["nms_recall"]["num_objects"] > 0 and ok["inference_ms"] > 0 and ok["gflops"] > 0
    assert json.loads((out / "fcos" / "result.json").read_text())["jobs"] == 2
    assert ok["peak_memory_mb"] > 50 and "training worker process" in ok["peak_memory_source"]
    report = (out / "report.md").read_text()
    rows = _table_rows(report)
    assert list(rows) == ["retinanet", "fcos"]  # the user's order
    assert rows["retinanet"][-1].startswith("failed: ValueError") and rows["fcos"][-1] == "ok"
    assert "Trainings ran 2 at a time with 1 torch thread each (fcos)" in report

    result = _cli(synth, tmp_path / "zero", "fcos", "--jobs", "0")
    assert result.exit_code == 1 and "--jobs must be >= 1" in result.output
    assert not (tmp_path / "zero").exists()


def test_unknown_detector_lists_the_available_ones(tmp_path):
    result = CliRunner().invoke(app, ["compare", "--detectors", "retinanet,yolo9", "--out", str(tmp_path)])
    assert result.exit_code == 1
    assert "'yolo9'" in result.output and all(name in result.output for name in build_module.DETECTORS)
    assert not any(tmp_path.iterdir())


def test_bad_budget_or_missing_data_is_a_clear_error(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["compare", "--budget", "huge", "--out", str(tmp_path)])
    assert result.exit_code == 1 and all(b in result.output for b in BUDGETS)
    result = runner.invoke(app, ["compare", "--budget", "standard", "--out", str(tmp_path)])
    assert result.exit_code == 1 and "--data" in result.output
    result = runner.invoke(
        app, ["compare", "--detectors", "fcos", "--set", "train.lr=-1", "--out", str(tmp_path)]
    )
    assert result.exit_code == 1 and "train.lr" in result.output
    assert not any(tmp_path.iterdir())


def _canonical_quick_configs() -> list[Path]:
    """configs/<detector>_r18*_quick.yaml (variants such as retinanet_hnm_r18_fpn_quick.yaml excluded)."""
    out = []
    for path in sorted(CONFIGS.glob("*_quick.yaml")):
        detector = yaml.safe_load(path.read_text())["model"]["detector"]
        if path.stem.startswith(f"{detector}_r18"):
            out.append(path)
    return out


@pytest.mark.parametrize("path", _canonical_quick_configs(), ids=lambda p: p.stem)
def test_quick_model_presets_equal_the_config_files(path):
    tree = yaml.safe_load(path.read_text())
    assert model_tree(tree["model"]["detector"], "quick") == tree["model"]


def test_quick_data_and_train_equal_the_retinanet_config():
    tree = yaml.safe_load((CONFIGS / "retinanet_r18_fpn_quick.yaml").read_text())
    quick = budget_tree("quick")
    assert tree["data"] == quick["data"]
    assert {k: v for k, v in tree["train"].items() if k != "out"} == quick["train"]


@pytest.mark.parametrize("budget", list(BUDGETS))
def test_every_detector_shares_data_schedule_and_backbone(budget, synth, tmp_path):
    data = {"data": "train.json", "val": "val.json"} if budget == "standard" else {}
    if budget == "auto":  # sized to real data
        data = {"data": synth.train, "val": synth.val}
    names = dict.fromkeys([*build_module.DETECTORS, "faster_rcnn"])  # every preset, registered or not yet
    configs = {d: resolve_config(d, budget=budget, out=tmp_path, **data) for d in names}
    ref = configs["retinanet"]
    for det, cfg in configs.items():
        assert cfg.model.detector == det
        assert cfg.data == ref.data and cfg.model.backbone == ref.model.backbone
        assert cfg.train.model_dump(exclude={"out"}) == ref.train.model_dump(exclude={"out"})
        assert cfg.model.fpn.channels == ref.model.fpn.channels
        if "head" in model_tree(det, budget):  # Faster R-CNN has RPN + RoI heads instead
            assert cfg.model.head.channels == ref.model.head.channels
        assert cfg.model.inference.score_thresh == ref.model.inference.score_thresh
        assert cfg.train.out == str(tmp_path / det)


def test_data_val_and_base_config_resolution(tmp_path):
    with pytest.raises(ConfigError, match="--val"):
        resolve_config("fcos", budget="quick", data="mine/train.json", out=tmp_path)
    cfg = resolve_config("fcos", budget="quick", data="mine/train.json", val="mine/val.json", out=tmp_path)
    assert (cfg.data.train, cfg.data.val, cfg.data.synthetic) == ("mine/train.json", "mine/val.json", None)
    base = tmp_path / "base.yaml"
    base.write_text(
        yaml.safe_dump(
            {
                "model": {"detector": "grid"},
                "data": {"train": "b/train.json", "val": "b/val.json", "min_size": 64, "max_size": 64},
                "train": {"iterations": 7, "batch_size": 1},
            }
        )
    )
    cfg = resolve_config("fcos", budget="quick", base_config=base, overrides=["train.lr=0.5"], out=tmp_path)
    assert cfg.model.detector == "fcos" and cfg.model.fpn.channels == 64  # model: from the preset
    assert (cfg.data.val, cfg.data.min_size, cfg.train.iterations, cfg.train.lr) == ("b/val.json", 64, 7, 0.5)
    cfg = resolve_config("fcos", budget="quick", base_config=base, data="c/train.json", out=tmp_path)
    assert (cfg.data.train, cfg.data.val) == ("c/train.json", "b/val.json")


def test_fit_anchors_runs_for_every_detector_and_the_assignment_report(synth, tmp_path):
    result = _cli(synth, tmp_path, "retinanet,grid", "--fit-anchors")
    assert result.exit_code == 0, result.output
    for det, key in (("retinanet", "anchors"), ("grid", "ranges")):
        fit = json.loads((tmp_path / det / "fit_anchors.json").read_text())
        assert fit["detector"] == det and key in fit
        assert yaml.safe_load((tmp_path / det / "config.yaml").read_text())["model"]["fit_anchors"] is True
    grid_fit = json.loads((tmp_path / "grid" / "fit_anchors.json").read_text())
    assert grid_fit["values"] == {} and "kept" in grid_fit["notes"][0]  # ranges stay (training.md)
    assert "fitted" in json.loads((tmp_path / "assignment.json").read_text())["model"]


def test_peak_memory_is_reset_per_measurement():
    """The second of two measurements in one process does not report the first's larger peak."""
    from anchorlab.compare.measure import PeakMemory

    with PeakMemory("cpu", "test process") as big:
        block = bytearray(300 * 2**20)
        block[::4096] = b"x" * len(block[::4096])  # touch every page
    del block
    with PeakMemory("cpu", "test process") as small:
        pass
    assert big.result()["peak_memory_mb"] >= 300
    if "since it started" not in small.source:  # the OS let us reset the peak
        assert small.result()["peak_memory_mb"] < big.result()["peak_memory_mb"] - 200
