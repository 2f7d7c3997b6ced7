"""Nothing loaded from disk runs code: a checkpoint whose pickle would run code is refused by
load_checkpoint and by every command that reads one (predict, eval, export, train --resume, backbone
weights), and its marker file never appears. Older checkpoints (numpy RNG state) still load."""

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from anchorlab.cli import app
from anchorlab.config import dump_config
from anchorlab.engine import rng
from anchorlab.engine.checkpoint import CheckpointError, load_checkpoint
from anchorlab.engine.train import train

from .test_train import synth, tiny  # noqa: F401  (synth is a fixture)


class _Evil:
    """Unpickling this writes the marker file (via ``exec``): what a hostile .pt would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def evil_checkpoint(path: Path, marker: Path) -> Path:
    torch.save({"model": {"w": torch.ones(1)}, "config": {}, "iteration": 1, "x": _Evil(marker)}, path)
    return path


def test_the_evil_file_really_runs_code_when_unpickled_unsafely(tmp_path):
    marker = tmp_path / "proof"
    torch.load(evil_checkpoint(tmp_path / "evil.pt", marker), weights_only=False)
    assert marker.read_text() == "pwned"  # so the refusals below are meaningful


def test_load_checkpoint_refuses_in_one_line(tmp_path):
    marker = tmp_path / "marker"
    path = evil_checkpoint(tmp_path / "evil.pt", marker)
    with pytest.raises(CheckpointError, match="refused") as err:
        load_checkpoint(path)
    assert str(path) in str(err.value) and "exec" in str(err.value)
    assert "\n" not in str(err.value)
    assert not marker.exists()


def _refused(result, marker: Path) -> None:
    assert result.exit_code == 1, result.output
    assert "refused" in result.stderr and "Traceback" not in result.output
    assert not marker.exists()


def test_every_command_refuses_it(synth, tmp_path):  # noqa: F811
    marker = tmp_path / "marker"
    evil = evil_checkpoint(tmp_path / "evil.pt", marker)
    runner = CliRunner()
    cfg_path = tmp_path / "tiny.yaml"
    cfg_path.write_text(dump_config(tiny(synth, tmp_path / "run")))
    images = Path(synth.train).parent / "images"
    _refused(runner.invoke(app, ["predict", str(evil), str(images), "--out", str(tmp_path / "p")]), marker)
    _refused(runner.invoke(app, ["eval", str(cfg_path), "--checkpoint", str(evil)]), marker)
    _refused(runner.invoke(app, ["export", str(evil), "--out", str(tmp_path / "m.onnx")]), marker)
    (tmp_path / "run").mkdir()
    evil_checkpoint(tmp_path / "run" / "last.pt", marker)
    _refused(runner.invoke(app, ["train", str(cfg_path), "--resume"]), marker)
    weights = ["--set", f"model.backbone.weights={evil}", "--out", str(tmp_path / "fresh")]
    _refused(runner.invoke(app, ["train", str(cfg_path), *weights]), marker)


def test_checkpoints_hold_plain_data_only(synth, tmp_path):  # noqa: F811
    train(tiny(synth, tmp_path / "run", "train.ema=true", "train.iterations=2"), show_progress=False)
    for name in ("last.pt", "best.pt"):  # both read with weights_only=True and nothing allowlisted
        state = torch.load(tmp_path / "run" / name, weights_only=True)
        assert state["format"] == "anchorlab/1" and state["iteration"] == 2
        assert {"model", "config", "categories", "metrics"} <= set(state)
    best = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    assert "optimizer" not in best and isinstance(best["metrics"]["AP"], float)


def test_an_older_runs_checkpoint_pt_resumes(synth, tmp_path):  # noqa: F811
    run = tmp_path / "run"
    train(tiny(synth, run, "train.iterations=3"), evaluate=False, show_progress=False)
    state = load_checkpoint(run / "last.pt")
    rng.restore(state["rng"])
    state["rng"] = rng.capture()  # the old layout: numpy arrays and Python tuples
    del state["format"], state["elapsed_s"], state["tracker"]
    torch.save(state, run / "checkpoint.pt")
    (run / "last.pt").unlink()
    assert isinstance(load_checkpoint(run / "checkpoint.pt")["rng"]["numpy"], tuple)
    summary = train(tiny(synth, run, "train.iterations=5"), resume=True, evaluate=False, show_progress=False)
    assert summary["iterations"] == 5 and load_checkpoint(run / "last.pt")["iteration"] == 5


def test_which_file_a_run_folder_offers(tmp_path):
    from anchorlab.engine.checkpoint import resumable_checkpoint, save_checkpoint, trained_weights

    assert resumable_checkpoint(tmp_path) == tmp_path / "last.pt"
    save_checkpoint(tmp_path / "checkpoint.pt", {"model": {}})  # an older anchorlab's run
    assert resumable_checkpoint(tmp_path) == trained_weights(tmp_path) == tmp_path / "checkpoint.pt"
    save_checkpoint(tmp_path / "last.pt", {"model": {}})
    assert resumable_checkpoint(tmp_path) == trained_weights(tmp_path) == tmp_path / "last.pt"
    save_checkpoint(tmp_path / "best.pt", {"model": {}})
    assert trained_weights(tmp_path) == tmp_path / "best.pt"  # what eval CONFIG uses without --checkpoint


def test_saving_anything_but_plain_data_is_refused(tmp_path):
    from anchorlab.engine.checkpoint import save_checkpoint

    with pytest.raises(CheckpointError, match=r"state\['extra'\] is a PosixPath"):
        save_checkpoint(tmp_path / "x.pt", {"model": {}, "extra": tmp_path})
    assert not (tmp_path / "x.pt").exists()
