"""Evaluation during training: results.csv, best.pt = its best row, patience, every epoch by default,
train.epochs; and the wall-clock schedule (train.max_minutes) on a fake clock."""

import csv
import io
import itertools
import json

import pytest
import torch

from anchorlab.config import TrainConfig
from anchorlab.engine import clock
from anchorlab.engine import train as train_module
from anchorlab.engine.checkpoint import load_checkpoint
from anchorlab.engine.predict import load_trained
from anchorlab.engine.schedule import lr_factor
from anchorlab.engine.train import train

from .test_train import _same_weights, synth, tiny  # noqa: F401  (synth is a fixture)


def _rows(run) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO((run / "results.csv").read_text())))


def fake_ap(monkeypatch, values: list[float]) -> list[int]:
    """Evaluations return AP = ``values`` in turn (instead of running the model); returns the list of
    evaluated iterations' call count holder."""
    calls: list[int] = []

    def evaluate(model, cfg, val_set, console):
        calls.append(1)
        ap = values[min(len(calls), len(values)) - 1]
        return {"AP": ap, "AP50": ap + 0.1, "AP75": ap - 0.1, "num_detections": 5}

    monkeypatch.setattr(train_module, "_evaluate_and_log", evaluate)
    return calls


def test_best_pt_is_the_best_row_of_results_csv(synth, tmp_path):  # noqa: F811
    run = tmp_path / "run"
    summary = train(tiny(synth, run, "train.iterations=6", "train.eval_every=2"), show_progress=False)
    rows = _rows(run)
    assert [int(r["iteration"]) for r in rows] == [2, 4, 6]
    assert {"epoch", "loss", "lr", "AP", "AP50", "AP75", "APs", "time", "best"} <= set(rows[0])
    best_row = max(rows, key=lambda r: float(r["AP"]))  # the first of equal APs, like the tracker
    best = load_checkpoint(run / "best.pt")
    assert best["iteration"] == int(best_row["iteration"]) == summary["best"]["iteration"]
    assert best["metrics"]["AP"] == pytest.approx(float(best_row["AP"]))
    assert [c["name"] for c in best["categories"]] and best["config"]["model"]["detector"] == "retinanet"
    model, _, categories = load_trained(run / "best.pt", "cpu")
    assert _same_weights(model.state_dict(), best["model"]) and categories == best["categories"]


def test_patience_stops_early(synth, tmp_path, monkeypatch):  # noqa: F811
    fake_ap(monkeypatch, [0.3, 0.5, 0.4, 0.45, 0.5, 0.9])
    run = tmp_path / "run"
    cfg = tiny(synth, run, "train.iterations=20", "train.eval_every=1", "train.patience=3")
    summary = train(cfg, show_progress=False)
    assert summary["iterations"] == 5 and summary["stopped_early"] == "patience"
    assert summary["best"] == {"iteration": 2, "AP": 0.5}  # 0.5 again at 5 is not better
    assert load_checkpoint(run / "best.pt")["iteration"] == 2
    assert load_checkpoint(run / "last.pt")["iteration"] == 5
    assert [r["best"] for r in _rows(run)] == ["1", "1", "0", "0", "0"]


def test_every_epoch_by_default_and_epochs(synth, tmp_path, monkeypatch):  # noqa: F811
    calls = fake_ap(monkeypatch, [0.1, 0.2])
    run = tmp_path / "run"
    epoch = len(json.loads(synth.train.read_text())["images"]) // 2  # batches of 2
    summary = train(tiny(synth, run, "train.epochs=2", "train.log_every=100"), show_progress=False)
    assert summary["iterations"] == 2 * epoch and summary["epochs"] == 2.0 and len(calls) == 2
    assert [(r["iteration"], r["epoch"]) for r in _rows(run)] == [
        (str(epoch), "1.0"),
        (str(2 * epoch), "2.0"),
    ]
    assert f"iterations: {2 * epoch}" in (run / "config.yaml").read_text()
    assert json.loads((run / "metrics.json").read_text())["iteration"] == 2 * epoch


def test_time_fraction_drives_the_schedule():
    cfg = TrainConfig(iterations=1000, warmup_iters=0, schedule="cosine", max_minutes=1)
    assert lr_factor(10, cfg, 0.0) == pytest.approx(lr_factor(10, cfg))  # iterations ahead of time
    assert lr_factor(10, cfg, 0.5) == pytest.approx(0.505)
    assert lr_factor(10, cfg, 1.0) == pytest.approx(0.01)
    steps = TrainConfig(iterations=90, warmup_iters=0, schedule="step", steps=[60, 80], max_minutes=1)
    assert lr_factor(1, steps, 0.7) == pytest.approx(0.1)


class FakeClock:
    """``clock.now`` advancing ``step`` seconds per reading (the loop reads it once per iteration)."""

    def __init__(self, step: float) -> None:
        self.t, self.step = 0.0, step

    def __call__(self) -> float:
        value, self.t = self.t, self.t + self.step
        return value


def test_lr_reaches_its_floor_when_the_budget_runs_out(synth, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setattr(clock, "now", FakeClock(6.0))  # 10 iterations = the 1-minute budget
    run = tmp_path / "run"
    extra = ("train.iterations=1000", "train.max_minutes=1", "train.warmup_iters=2", "train.lr=0.001")
    summary = train(tiny(synth, run, *extra), evaluate=False, show_progress=False)
    assert summary["iterations"] == 10 and summary["stopped_by_time"]
    lrs = [json.loads(line)["lr"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert lrs[-1] == pytest.approx(0.001 * 0.01)  # the cosine's floor, exactly at the budget
    assert all(a >= b for a, b in itertools.pairwise(lrs[1:]))  # decaying after the warm-up
    assert load_checkpoint(run / "last.pt")["elapsed_s"] == pytest.approx(60.0)


def test_resume_continues_the_clock(synth, tmp_path, monkeypatch):  # noqa: F811
    extra = (
        "train.iterations=1000",
        "train.max_minutes=1",
        "train.warmup_iters=2",
        "train.checkpoint_every=4",
    )
    monkeypatch.setattr(clock, "now", FakeClock(6.0))
    full = train(tiny(synth, tmp_path / "full", *extra), evaluate=False, show_progress=False)
    real = train_module.save_checkpoint
    monkeypatch.setattr(  # a run whose last checkpoint is at iteration 4 (24 s)
        train_module, "save_checkpoint", lambda p, s: real(p, s) if s["iteration"] <= 4 else None
    )
    monkeypatch.setattr(clock, "now", FakeClock(6.0))
    train(tiny(synth, tmp_path / "cut", *extra), evaluate=False, show_progress=False)
    monkeypatch.setattr(train_module, "save_checkpoint", real)
    assert load_checkpoint(tmp_path / "cut" / "last.pt")["elapsed_s"] == pytest.approx(24.0)
    monkeypatch.setattr(clock, "now", FakeClock(6.0))
    summary = train(tiny(synth, tmp_path / "cut", *extra), resume=True, evaluate=False, show_progress=False)
    assert summary["iterations"] == full["iterations"] == 10  # 6 more iterations, not 10
    a, b = (load_checkpoint(tmp_path / n / "last.pt") for n in ("full", "cut"))
    assert _same_weights(a["model"], b["model"]) and torch.equal(a["rng"]["torch"], b["rng"]["torch"])


def test_resuming_a_finished_run_reports_its_metrics_without_a_new_row(synth, tmp_path, monkeypatch):  # noqa: F811
    calls = fake_ap(monkeypatch, [0.2, 0.3])
    run = tmp_path / "run"
    first = train(tiny(synth, run, "train.iterations=2", "train.eval_every=1"), show_progress=False)
    again = train(
        tiny(synth, run, "train.iterations=2", "train.eval_every=1"), resume=True, show_progress=False
    )
    assert len(calls) == 2 and again["metrics"]["AP"] == first["metrics"]["AP"] == 0.3
    assert [r["iteration"] for r in _rows(run)] == ["1", "2"]


def test_default_eval_cadence_is_every_epoch_at_most_50_times():
    from anchorlab.engine.train import default_eval_every

    assert default_eval_every(10, 200, None) == 10  # 20 epochs: every epoch
    assert default_eval_every(3, 750, None) == 3 * 5  # 250 epochs: every 5th epoch, 50 evaluations
    assert default_eval_every(3, 750, 7) == 7 and default_eval_every(3, 750, 0) == 0  # explicit wins
