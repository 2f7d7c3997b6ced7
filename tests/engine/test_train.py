"""The training engine end to end on tiny synthetic data: run folder, resume exactness, interrupts,
non-finite losses, predict and eval from the CLI."""

import json
import math
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from anchorlab.cli import app
from anchorlab.config import load_config
from anchorlab.data import make_synthetic
from anchorlab.engine import train as train_module
from anchorlab.engine.checkpoint import load_checkpoint
from anchorlab.engine.train import TrainingError, train
from anchorlab.models import build_detector


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    return make_synthetic(out, images=16, seed=0, size=96, min_object=20, max_object=48, objects=(1, 3))


def tiny(synth, out: Path, *extra: str):
    return load_config(
        None,
        [
            f"data.train={synth.train}",
            f"data.val={synth.val}",
            "data.min_size=96",
            "data.max_size=96",
            "model.fpn.channels=16",
            "model.fpn.max_level=5",
            "model.head.channels=16",
            "model.head.num_convs=1",
            "model.head.norm=gn",
            "model.anchors.octave_base_scale=2",
            "train.iterations=6",
            "train.batch_size=2",
            "train.workers=0",
            "train.optimizer=adamw",
            "train.lr=0.001",
            "train.warmup_iters=2",
            "train.schedule=cosine",
            "train.checkpoint_every=3",
            "train.log_every=1",
            "train.device=cpu",
            "train.threads=1",
            f"train.out={out}",
            *extra,
        ],
    )


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def _same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_run_folder_contents(synth, tmp_path):
    summary = train(tiny(synth, tmp_path / "run"), show_progress=False)
    run = tmp_path / "run"
    for name in (
        "config.yaml",
        "environment.json",
        "log.jsonl",
        "last.pt",
        "metrics.json",
        "summary.json",
    ):
        assert (run / name).is_file(), name
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    train_records = [r for r in records if "loss" in r]
    assert [r["iteration"] for r in train_records] == [1, 2, 3, 4, 5, 6]
    assert all(r["loss"] > 0 for r in train_records)
    assert set(summary["metrics"]) >= {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    env = json.loads((run / "environment.json").read_text())
    assert env["seed"] == 0 and env["torch"] == torch.__version__
    state = load_checkpoint(run / "last.pt")
    assert state["iteration"] == 6 and [c["id"] for c in state["categories"]] == [
        c["id"] for c in json.loads(Path(synth.train).read_text())["categories"]
    ]


def test_resume_after_interrupt_is_exact(synth, tmp_path, monkeypatch):
    train(tiny(synth, tmp_path / "full"), evaluate=False, show_progress=False)

    real = train_module.build_train_loader

    def interrupting(*args, **kwargs):
        loader = real(*args, **kwargs)
        calls = {"n": 0}
        original = type(loader).__next__

        class Interrupting(type(loader)):
            def __next__(self):
                calls["n"] += 1
                if calls["n"] == 5:  # in the middle of iteration 5: resume from 4 completed
                    raise KeyboardInterrupt
                return original(self)

        loader.__class__ = Interrupting
        return loader

    monkeypatch.setattr(train_module, "build_train_loader", interrupting)
    with pytest.raises(KeyboardInterrupt):
        train(tiny(synth, tmp_path / "cut"), evaluate=False, show_progress=False)
    assert load_checkpoint(tmp_path / "cut" / "last.pt")["iteration"] == 4
    monkeypatch.setattr(train_module, "build_train_loader", real)
    train(tiny(synth, tmp_path / "cut"), resume=True, evaluate=False, show_progress=False)

    assert _same_weights(_weights(tmp_path / "full" / "last.pt"), _weights(tmp_path / "cut" / "last.pt"))
    full = [json.loads(x) for x in (tmp_path / "full" / "log.jsonl").read_text().splitlines()]
    cut = [json.loads(x) for x in (tmp_path / "cut" / "log.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in full] == [r["loss"] for r in cut]


def poison_loss_at(call: int, monkeypatch) -> None:
    """Make the first loss term NaN in the ``call``-th forward (1-based) of every detector built by
    ``engine.train``."""
    real = train_module.build_detector

    def poisoned(cfg):
        model = real(cfg)
        forward, calls = model.forward, {"n": 0}

        def nan_at(*args, **kwargs):
            out = forward(*args, **kwargs)
            calls["n"] += 1
            if calls["n"] == call and isinstance(out, dict):
                key = sorted(out)[0]
                out[key] = out[key] * float("nan")
            return out

        model.forward = nan_at
        return model

    monkeypatch.setattr(train_module, "build_detector", poisoned)


def test_non_finite_loss_stops_with_iteration_and_part(synth, tmp_path, monkeypatch):
    cfg = tiny(synth, tmp_path / "nan", "train.iterations=5")
    poison_loss_at(4, monkeypatch)
    with pytest.raises(TrainingError, match=r"iteration 3: loss \w+ is not finite"):
        train(cfg, evaluate=False, show_progress=False)
    assert load_checkpoint(tmp_path / "nan" / "last.pt")["iteration"] == 3

    skip = tiny(synth, tmp_path / "skip", "train.iterations=5", "train.on_nonfinite=skip")
    summary = train(skip, evaluate=False, show_progress=False)
    assert summary["skipped_steps"] == 1
    state = load_checkpoint(tmp_path / "skip" / "last.pt")
    assert state["iteration"] == 5 and all(torch.isfinite(v).all() for v in state["model"].values())


def test_cli_train_eval_predict(synth, tmp_path):
    runner = CliRunner()
    cfg_path = tmp_path / "tiny.yaml"
    cfg = tiny(synth, tmp_path / "cli", "train.iterations=3")
    cfg_path.write_text(__import__("anchorlab.config", fromlist=["dump_config"]).dump_config(cfg))
    result = runner.invoke(app, ["train", str(cfg_path), "--no-eval"])
    assert result.exit_code == 0, result.output
    ckpt = tmp_path / "cli" / "last.pt"
    assert ckpt.is_file()

    result = runner.invoke(app, ["eval", str(cfg_path), "--checkpoint", str(ckpt), "--json", "--nms-recall"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    assert 0 <= metrics["AP50"] <= 1 and len(metrics["nms_recall"]["recall_before"]) == 9  # IoU 0.5..0.9

    images = Path(synth.train).parent / "images"
    result = runner.invoke(
        app,
        ["predict", str(ckpt), str(images), "--out", str(tmp_path / "pred"), "--conf", "0.0", "--save-json"],
    )
    assert result.exit_code == 0, result.output
    dets = json.loads((tmp_path / "pred" / "detections.json").read_text())
    files = json.loads((tmp_path / "pred" / "images.json").read_text())
    assert len(files) == 16 and len(list((tmp_path / "pred" / "images").glob("*.png"))) == 16
    cat_ids = {c["id"] for c in json.loads(Path(synth.train).read_text())["categories"]}
    assert dets and {d["category_id"] for d in dets} <= cat_ids

    bad = runner.invoke(app, ["train", str(cfg_path), "--set", "model.hed=1"])
    assert bad.exit_code == 1 and "did you mean 'head'" in bad.stderr


def test_mixed_precision_keeps_losses_float32(synth, tmp_path):
    cfg = tiny(synth, tmp_path / "amp", "train.amp=true", "train.iterations=2")
    summary = train(cfg, evaluate=False, show_progress=False)
    assert all(math.isfinite(v) for v in summary["final_losses"].values())
    model = build_detector(cfg).train()
    images = [torch.rand(3, 96, 96)]
    targets = [{"boxes": torch.tensor([[10.0, 10.0, 60.0, 50.0]]), "labels": torch.tensor([1])}]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model(images, targets)
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())


def test_unwritable_output_is_a_clear_cli_error(synth, tmp_path):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the run folder should go")
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(
        __import__("anchorlab.config", fromlist=["dump_config"]).dump_config(tiny(synth, blocker / "run"))
    )
    result = CliRunner().invoke(app, ["train", str(cfg_path), "--no-eval"])
    assert result.exit_code == 1 and "not_a_folder" in result.stderr and "Traceback" not in result.output
    assert blocker.read_text().startswith("a file")
