"""Training callbacks: called in order with the right payloads; anchorlab.train from a notebook; the
docs' CSV-logger example."""

import csv
from pathlib import Path

import pytest

import anchorlab
from anchorlab.config import ConfigError, dump_config
from anchorlab.engine.callbacks import Callback
from anchorlab.engine.checkpoint import load_checkpoint
from anchorlab.engine.train import train

from .test_train import synth, tiny  # noqa: F401  (synth is a fixture)


class Recorder(Callback):
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def on_start(self, info):
        self.calls.append(("start", info["start"], info["resume"], info["iterations"]))

    def on_log(self, record):
        self.calls.append(("log", record["iteration"], record["loss"]))

    def on_eval(self, record):
        self.calls.append(("eval", record["iteration"], record["best"], record["metrics"]["AP"]))

    def on_checkpoint(self, path, kind, iteration):
        assert Path(path).is_file() and load_checkpoint(path)["iteration"] == iteration
        self.calls.append(("checkpoint", kind, iteration, Path(path).name))

    def on_end(self, summary):
        self.calls.append(("end", summary["iterations"]))


def test_callbacks_in_order_with_payloads(synth, tmp_path):  # noqa: F811
    first, second = Recorder(), Recorder()
    extra = ("train.iterations=4", "train.eval_every=2", "train.checkpoint_every=2", "train.log_every=1")
    summary = train(tiny(synth, tmp_path / "run", *extra), show_progress=False, callbacks=[first, second])
    assert first.calls == second.calls
    kinds = [c[0] for c in first.calls]
    assert kinds[0] == "start" and first.calls[0] == ("start", 0, False, 4) and kinds[-1] == "end"
    assert [c[1] for c in first.calls if c[0] == "log"] == [1, 2, 3, 4]
    evals = [c for c in first.calls if c[0] == "eval"]
    assert [c[1] for c in evals] == [2, 4] and evals[0][2] is True
    assert evals[-1][3] == pytest.approx(summary["metrics"]["AP"])
    lasts = [c for c in first.calls if c[:2] == ("checkpoint", "last")]
    assert [(c[2], c[3]) for c in lasts] == [(2, "last.pt"), (4, "last.pt")]
    bests = [c[2] for c in first.calls if c[:2] == ("checkpoint", "best")]
    assert bests and bests[-1] == summary["best"]["iteration"]
    # per iteration: log, then (when due) best.pt (written before on_eval reports it), evaluation, last.pt
    i = first.calls.index(("eval", *evals[0][1:]))
    assert [c[0] for c in first.calls[i - 2 : i + 3]] == ["log", "checkpoint", "eval", "checkpoint", "log"]
    assert first.calls[i - 1] == ("checkpoint", "best", 2, "best.pt")
    assert first.calls[i + 1] == ("checkpoint", "last", 2, "last.pt")
    assert first.calls[-1] == ("end", 4)


class CSVLogger(Callback):
    """The docs/training.md example: one CSV row per log record."""

    def __init__(self, path):
        self.path, self.writer, self.file = Path(path), None, None

    def on_log(self, record):
        if self.writer is None:
            self.file = self.path.open("w", newline="")
            self.writer = csv.DictWriter(self.file, fieldnames=list(record))
            self.writer.writeheader()
        self.writer.writerow(record)
        self.file.flush()

    def close(self):
        if self.file is not None:
            self.file.close()


def test_anchorlab_train_with_overrides_and_the_csv_example(synth, tmp_path):  # noqa: F811
    cfg_path = tmp_path / "tiny.yaml"
    cfg_path.write_text(dump_config(tiny(synth, tmp_path / "from_config")))
    logger = CSVLogger(tmp_path / "losses.csv")
    summary = anchorlab.train(
        cfg_path,
        callbacks=[logger],
        out=tmp_path / "nb",
        evaluate=False,
        show_progress=False,
        train__iterations=3,
        train__log_every=1,
    )
    assert summary["iterations"] == 3 and summary["checkpoint"] == str(tmp_path / "nb" / "last.pt")
    rows = list(csv.DictReader((tmp_path / "losses.csv").open()))
    assert [int(r["iteration"]) for r in rows] == [1, 2, 3] and all(float(r["loss"]) > 0 for r in rows)
    with pytest.raises(ConfigError, match="section__key"):
        anchorlab.train(cfg_path, iterations=3)
    with pytest.raises(ConfigError, match="unknown key"):
        anchorlab.train(cfg_path, train__iteration=3)
