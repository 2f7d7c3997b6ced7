"""TensorBoard logging (--tensorboard): scalars per log step and evaluation, resume purging, and a clear
error when the optional package is missing."""

import json
import sys

import pytest
from tensorboard.backend.event_processing import event_accumulator
from typer.testing import CliRunner

from anchorlab.cli import app
from anchorlab.config import dump_config
from anchorlab.engine import train as train_module
from anchorlab.engine.tb import INSTALL_HINT, TensorBoardMissing
from anchorlab.engine.train import train

from .test_train import synth, tiny  # noqa: F401  (synth is a fixture)


def _scalars(folder) -> dict[str, list[tuple[int, float]]]:
    acc = event_accumulator.EventAccumulator(str(folder), size_guidance={event_accumulator.SCALARS: 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_scalars_per_step_and_eval_and_resume_purges_stale_points(synth, tmp_path, monkeypatch):  # noqa: F811
    run = tmp_path / "run"
    cfg_path = tmp_path / "tiny.yaml"
    cfg_path.write_text(dump_config(tiny(synth, run, "train.eval_every=3")))
    # A run that "crashes" after iteration 6 with its last checkpoint at iteration 3: steps 4-6 are stale.
    real_save = train_module.save_checkpoint

    def save_up_to_3(path, state):
        if state["iteration"] <= 3:
            real_save(path, state)

    monkeypatch.setattr(train_module, "save_checkpoint", save_up_to_3)
    result = CliRunner().invoke(app, ["train", str(cfg_path), "--tensorboard"])
    assert result.exit_code == 0, result.output
    monkeypatch.setattr(train_module, "save_checkpoint", real_save)
    result = CliRunner().invoke(app, ["train", str(cfg_path), "--tensorboard", "--resume"])
    assert result.exit_code == 0, result.output

    scalars = _scalars(run / "tensorboard")
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    last = [r for r in records if "loss" in r][-1]
    terms = [k for k in last if k.startswith("loss_")]
    assert terms
    for key in ("loss", *terms, "lr", "images_per_s"):
        # once per iteration: the resumed run's purge hid the crashed run's points after iteration 3
        assert [s for s, _ in scalars[f"train/{key}"]] == [1, 2, 3, 4, 5, 6], key
    assert scalars["train/loss"][-1][1] == pytest.approx(last["loss"], abs=1e-4)
    assert scalars["train/lr"][-1][1] == pytest.approx(last["lr"], rel=1e-5)
    metrics = json.loads((run / "metrics.json").read_text())
    for key in ("AP", "AP50", "AP75", "APs", "AR100"):
        assert [s for s, _ in scalars[f"eval/{key}"]] == [3, 6], key
    assert scalars["eval/AP50"][-1][1] == pytest.approx(metrics["AP50"], abs=1e-6)
    assert not any(tag.startswith("eval/iteration") for tag in scalars)


def test_fresh_run_replaces_old_event_files(synth, tmp_path):  # noqa: F811
    run = tmp_path / "run"
    for _ in range(2):
        train(
            tiny(synth, run, "train.iterations=2", "train.tensorboard=true"),
            evaluate=False,
            show_progress=False,
            exist_ok=True,  # the second run replaces the first (a fresh run is refused without it)
        )
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 1
    assert [s for s, _ in _scalars(run / "tensorboard")["train/loss"]] == [1, 2]


def test_missing_package_is_a_clear_error_before_training(synth, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import now raises ImportError
    with pytest.raises(TensorBoardMissing, match=r"pip install 'anchorlab\[tensorboard\]'"):
        train(tiny(synth, tmp_path / "api", "train.tensorboard=true"), show_progress=False)
    assert not (tmp_path / "api").exists()

    cfg_path = tmp_path / "tiny.yaml"
    cfg_path.write_text(dump_config(tiny(synth, tmp_path / "cli")))
    result = CliRunner().invoke(app, ["train", str(cfg_path), "--set", "train.tensorboard=true"])
    assert result.exit_code == 1 and INSTALL_HINT in result.stderr and "Traceback" not in result.output
    assert not (tmp_path / "cli").exists()
    # without the option nothing needs the package
    off = train(tiny(synth, tmp_path / "off", "train.iterations=1"), evaluate=False, show_progress=False)
    assert off["iterations"] == 1 and not (tmp_path / "off" / "tensorboard").exists()
