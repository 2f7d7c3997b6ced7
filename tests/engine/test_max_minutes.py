"""``train.max_minutes``: a wall-clock budget stops training early, still checkpointing and evaluating."""

import json

import pytest

from anchorlab.config import ConfigError, load_config
from anchorlab.data import make_synthetic
from anchorlab.engine.checkpoint import load_checkpoint
from anchorlab.engine.train import train


def test_max_minutes_stops_early_checkpoints_and_evaluates(tmp_path):
    synth = make_synthetic(tmp_path / "data", images=6, seed=0, size=64, min_object=16, max_object=32)
    out = tmp_path / "run"
    cfg = load_config(
        None,
        [
            f"data.train={synth.train}",
            f"data.val={synth.val}",
            "data.min_size=64",
            "data.max_size=64",
            "model.fpn.channels=8",
            "model.fpn.max_level=5",
            "model.head.channels=8",
            "model.head.num_convs=1",
            "model.anchors.octave_base_scale=2",
            "train.iterations=50",
            "train.max_minutes=1e-6",  # 60 microseconds: out of time after the first iteration
            "train.batch_size=2",
            "train.workers=0",
            "train.checkpoint_every=1000",
            "train.log_every=1000",
            "train.device=cpu",
            "train.threads=1",
            f"train.out={out}",
        ],
    )
    summary = train(cfg, show_progress=False)
    assert summary["iterations"] == 1 and summary["stopped_by_time"] is True
    assert load_checkpoint(out / "last.pt")["iteration"] == 1
    assert "AP" in summary["metrics"]
    assert json.loads((out / "metrics.json").read_text())["iteration"] == 1
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert log[-1]["iteration"] == 1


def test_max_minutes_must_be_positive():
    with pytest.raises(ConfigError, match="max_minutes"):
        load_config(None, ["train.max_minutes=0"])
