"""Run folders: a fresh run never touches an earlier run (refused, or with --exist-ok replaced only once
the new run has a checkpoint), one process per folder (lock, two real processes), leftovers of a killed
run removed, log.jsonl truncated on --resume, one-line errors for impossible resumes and devices."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from anchorlab.cli import app
from anchorlab.config import dump_config
from anchorlab.engine import train as train_module
from anchorlab.engine.checkpoint import load_checkpoint
from anchorlab.engine.run_folder import RunFolder
from anchorlab.engine.train import TrainingError, train

from .test_train import poison_loss_at, synth, tiny  # noqa: F401  (synth is a fixture)


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _config(synth, tmp_path, run, *extra) -> Path:  # noqa: F811
    path = tmp_path / f"{run.name}.yaml"
    path.write_text(dump_config(tiny(synth, run, "train.iterations=3", *extra)))
    return path


def test_fresh_run_into_a_run_is_refused_and_touches_nothing(synth, tmp_path):  # noqa: F811
    run = tmp_path / "run"
    cfg = _config(synth, tmp_path, run)
    assert CliRunner().invoke(app, ["train", str(cfg), "--no-eval"]).exit_code == 0
    before = _files(run)
    result = CliRunner().invoke(app, ["train", str(cfg), "--no-eval"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    message = " ".join(result.stderr.split())
    assert str(run) in message and "--resume" in message and "--exist-ok" in message
    assert _files(run) == before


def test_exist_ok_replaces_only_after_the_first_checkpoint(synth, tmp_path, monkeypatch):  # noqa: F811
    run = tmp_path / "run"
    train(tiny(synth, run, "train.iterations=3"), evaluate=False, show_progress=False)
    before = _files(run)
    with monkeypatch.context() as patch:  # the new run fails at its first step: nothing replaced
        poison_loss_at(1, patch)
        with pytest.raises(TrainingError):
            train(tiny(synth, run, "train.iterations=4"), exist_ok=True, evaluate=False, show_progress=False)
    assert _files(run) == before and not (run / ".incoming").exists()

    summary = train(
        tiny(synth, run, "train.iterations=4"), exist_ok=True, evaluate=False, show_progress=False
    )
    assert (
        summary["checkpoint"] == str(run / "last.pt") and load_checkpoint(run / "last.pt")["iteration"] == 4
    )
    log = [json.loads(line)["iteration"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert log == [1, 2, 3, 4] and "iterations: 4" in (run / "config.yaml").read_text()
    assert not (run / ".incoming").exists()


def test_a_second_process_gets_a_clear_error(synth, tmp_path):  # noqa: F811
    run = tmp_path / "run"
    cfg = _config(synth, tmp_path, run)
    holder = textwrap.dedent(
        f"""
        import sys, time
        from anchorlab.engine.run_folder import RunFolder
        folder = RunFolder({str(run)!r}).open()
        print("locked", flush=True)
        time.sleep(60)
        """
    )
    first = subprocess.Popen([sys.executable, "-c", holder], stdout=subprocess.PIPE, text=True)
    try:
        assert first.stdout.readline().strip() == "locked"
        second = subprocess.run(
            [sys.executable, "-m", "anchorlab", "train", str(cfg), "--no-eval"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert second.returncode == 2, second.stderr
        message = " ".join(second.stderr.split())
        assert "in use by another training" in message and f"process {first.pid}" in message
        assert "Traceback" not in second.stderr and not (run / "last.pt").exists()
    finally:
        first.kill()
        first.wait()
    RunFolder(run).open().close()  # the lock went with the process: the folder is free again


def test_resume_cleans_leftovers_and_truncates_the_log(synth, tmp_path, monkeypatch):  # noqa: F811
    run = tmp_path / "run"
    real = train_module.save_checkpoint

    def up_to_3(path, state):  # a run "killed" after iteration 6 whose last checkpoint is at 3
        if state["iteration"] <= 3:
            real(path, state)

    monkeypatch.setattr(train_module, "save_checkpoint", up_to_3)
    train(tiny(synth, run, "train.eval_every=3"), show_progress=False)
    monkeypatch.setattr(train_module, "save_checkpoint", real)
    stale = run / ".last.pt.12345.0badf00d.tmp"
    stale.write_bytes(b"half a checkpoint")
    train(tiny(synth, run, "train.eval_every=3"), resume=True, show_progress=False)
    assert not stale.exists()
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records] == [1, 2, 3, 4, 5, 6]
    rows = (run / "results.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in rows[1:]] == ["3", "6"]


@pytest.mark.parametrize(
    ("override", "named"),
    [("train.optimizer=sgd", "train.optimizer=adamw"), ("model.detector=fcos", "model.detector=retinanet")],
)
def test_resume_with_another_design_is_a_one_line_error(synth, tmp_path, override, named):  # noqa: F811
    run = tmp_path / "run"
    cfg = _config(synth, tmp_path, run)
    assert CliRunner().invoke(app, ["train", str(cfg), "--no-eval"]).exit_code == 0
    result = CliRunner().invoke(app, ["train", str(cfg), "--resume", "--set", override])
    assert result.exit_code == 1 and "Traceback" not in result.output
    message = " ".join(result.stderr.split())
    assert "cannot resume" in message and named in message


def test_another_class_count_is_a_one_line_error(synth, tmp_path):  # noqa: F811
    run = tmp_path / "run"
    train(tiny(synth, run, "train.iterations=2"), evaluate=False, show_progress=False)
    state = load_checkpoint(run / "last.pt")
    state["config"]["model"]["num_classes"] = 7
    torch.save(state, run / "last.pt")
    result = CliRunner().invoke(app, ["train", str(_config(synth, tmp_path, run)), "--resume"])
    assert result.exit_code == 1 and "model.num_classes=7" in " ".join(result.stderr.split())


@pytest.mark.parametrize("device", ["banana", "cuda"])
def test_impossible_device_is_a_one_line_error(synth, tmp_path, device):  # noqa: F811
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    cfg = _config(synth, tmp_path, tmp_path / "run")
    result = CliRunner().invoke(app, ["train", str(cfg), "--set", f"train.device={device}"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"train.device '{device}'" in " ".join(result.stderr.split())


def test_out_option_and_default_folder(synth, tmp_path, monkeypatch):  # noqa: F811
    cfg = tiny(synth, tmp_path / "unused", "train.iterations=1")
    tree = cfg.model_dump(mode="json")
    del tree["train"]["out"]
    path = tmp_path / "my_detector.yaml"
    path.write_text(__import__("yaml").safe_dump(tree))
    monkeypatch.chdir(tmp_path)
    assert CliRunner().invoke(app, ["train", str(path), "--no-eval"]).exit_code == 0
    assert (tmp_path / "runs" / "my_detector" / "last.pt").is_file()
    out = tmp_path / "elsewhere"
    assert CliRunner().invoke(app, ["train", str(path), "--no-eval", "--out", str(out)]).exit_code == 0
    assert load_checkpoint(out / "last.pt")["config"]["train"]["out"] == str(out)


def test_resume_with_another_architecture_is_a_one_line_error(synth, tmp_path):  # noqa: F811
    run = tmp_path / "run"
    cfg = _config(synth, tmp_path, run)
    assert CliRunner().invoke(app, ["train", str(cfg), "--no-eval"]).exit_code == 0
    result = CliRunner().invoke(app, ["train", str(cfg), "--resume", "--set", "model.head.channels=8"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    message = " ".join(result.stderr.split())
    assert "its model does not fit this config" in message and "differently shaped" in message
