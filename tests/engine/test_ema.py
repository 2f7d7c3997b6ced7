"""ModelEMA: the update maths against a hand computation, the decay ramp, buffers, DDP unwrapping, and in
training: skipped steps, exact resume with EMA (and mosaic) on, evaluation and checkpoints on the EMA."""

import json
import math

import pytest
import torch
from torch import nn

from anchorlab.engine import train as train_module
from anchorlab.engine.checkpoint import load_checkpoint
from anchorlab.engine.ema import ModelEMA, unwrap_model
from anchorlab.engine.predict import load_trained
from anchorlab.engine.train import train

from .test_train import _same_weights, poison_loss_at, synth, tiny  # noqa: F401  (synth is a fixture)


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))


def _perturb(model: nn.Module, step: int) -> None:
    """Change every parameter and the BatchNorm statistics, as a training step would."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * (step + 1) * torch.randn_like(p))
    model.train()
    model(torch.randn(8, 3) * (step + 2))  # new running_mean / running_var, num_batches_tracked + 1


def test_update_matches_hand_computed_average_of_parameters_and_buffers():
    model = _net()
    ema = ModelEMA(model, decay=0.9, tau=2.0)
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    for n in range(1, 5):
        _perturb(model, n)
        ema.update(model)
        d = 0.9 * (1 - math.exp(-n / 2.0))
        current = model.state_dict()
        for key, value in current.items():
            if value.is_floating_point():
                expected[key] = d * expected[key] + (1 - d) * value
            else:
                expected[key] = value.clone()
    got = ema.module.state_dict()
    assert ema.updates == 4 and got.keys() == expected.keys()
    for key in expected:
        assert torch.allclose(got[key], expected[key], atol=1e-6), key
    # the buffers moved too: BatchNorm statistics averaged, the integer counter copied
    assert not torch.allclose(got["1.running_mean"], torch.zeros(4))
    assert got["1.num_batches_tracked"].item() == 4
    # the copy is separate from the model, in eval mode and without gradients
    assert not torch.equal(got["0.weight"], model.state_dict()["0.weight"])
    assert not ema.module.training and not any(p.requires_grad for p in ema.module.parameters())


def test_decay_ramps_up_to_its_final_value():
    ema = ModelEMA(_net(), decay=0.9998, tau=2000)
    ramp = [ema.current_decay(n) for n in (1, 10, 100, 2000, 10000, 100000)]
    assert ramp == sorted(ramp)
    assert ramp[0] == pytest.approx(0.9998 * (1 - math.exp(-1 / 2000)))
    assert ramp[0] < 1e-3  # the first updates follow the model almost exactly
    assert ramp[3] == pytest.approx(0.9998 * (1 - math.exp(-1)))
    assert ramp[-1] == pytest.approx(0.9998, abs=1e-12)
    assert ModelEMA(_net(), decay=0.5, tau=0).current_decay(1) == 0.5
    with pytest.raises(ValueError, match="ema_decay"):
        ModelEMA(_net(), decay=1.0)


def test_reset_restarts_from_the_model():
    model = _net()
    ema = ModelEMA(model, decay=0.99, tau=0.0001)  # no ramp in effect: d ~ 0.99 from the start
    _perturb(model, 0)
    ema.update(model)
    w0, m0 = ema.module.state_dict()["0.weight"], model.state_dict()["0.weight"]
    assert not torch.allclose(w0, m0)
    ema.reset(model)
    assert ema.updates == 0 and _same_weights(ema.module.state_dict(), model.state_dict())


def test_averages_the_module_under_distributed_data_parallel(tmp_path):
    import torch.distributed as dist

    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        model = _net()
        wrapped = nn.parallel.DistributedDataParallel(model)
        ema = ModelEMA(wrapped, decay=0.5, tau=0)
        assert unwrap_model(wrapped) is model and type(ema.module) is nn.Sequential
        before = ema.module.state_dict()["3.bias"].clone()
        _perturb(model, 1)
        ema.update(wrapped)
        expected = 0.5 * before + 0.5 * model.state_dict()["3.bias"]
        assert torch.allclose(ema.module.state_dict()["3.bias"], expected)
    finally:
        dist.destroy_process_group()


def test_skipped_non_finite_steps_do_not_update(synth, tmp_path, monkeypatch):  # noqa: F811
    poison_loss_at(3, monkeypatch)
    cfg = tiny(synth, tmp_path / "skip", "train.iterations=4", "train.on_nonfinite=skip", "train.ema=true")
    summary = train(cfg, evaluate=False, show_progress=False)
    state = load_checkpoint(tmp_path / "skip" / "last.pt")
    assert summary["skipped_steps"] == 1 and state["ema"]["updates"] == 3
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def _interrupt_at(n: int, monkeypatch) -> None:
    real = train_module.build_train_loader

    def interrupting(*args, **kwargs):
        loader = real(*args, **kwargs)
        calls = {"n": 0}
        original = type(loader).__next__

        class Interrupting(type(loader)):
            def __next__(self):
                calls["n"] += 1
                if calls["n"] == n:
                    raise KeyboardInterrupt
                return original(self)

        loader.__class__ = Interrupting
        return loader

    monkeypatch.setattr(train_module, "build_train_loader", interrupting)


def test_resume_with_ema_and_mosaic_is_exact(synth, tmp_path, monkeypatch):  # noqa: F811
    extra = ("train.iterations=4", "train.ema=true", "train.ema_decay=0.9", "train.ema_tau=2")
    extra += ("data.mosaic=0.5",)
    train(tiny(synth, tmp_path / "full", *extra), evaluate=False, show_progress=False)
    with monkeypatch.context() as patch:
        _interrupt_at(3, patch)
        with pytest.raises(KeyboardInterrupt):
            train(tiny(synth, tmp_path / "cut", *extra), evaluate=False, show_progress=False)
    assert load_checkpoint(tmp_path / "cut" / "last.pt")["ema"]["updates"] == 2
    train(tiny(synth, tmp_path / "cut", *extra), resume=True, evaluate=False, show_progress=False)

    full = load_checkpoint(tmp_path / "full" / "last.pt")
    cut = load_checkpoint(tmp_path / "cut" / "last.pt")
    assert full["ema"]["updates"] == cut["ema"]["updates"] == 4
    assert _same_weights(full["model"], cut["model"])  # the EMA
    assert _same_weights(full["train_model"], cut["train_model"])
    assert not _same_weights(full["model"], full["train_model"])
    logs = [
        [json.loads(x)["loss"] for x in (tmp_path / name / "log.jsonl").read_text().splitlines()]
        for name in ("full", "cut")
    ]
    assert logs[0] == logs[1]


def test_evaluation_and_saved_inference_weights_are_the_ema(synth, tmp_path, monkeypatch):  # noqa: F811
    seen = []
    real = train_module._evaluate_and_log

    def spy(model, *args, **kwargs):
        seen.append({k: v.clone() for k, v in model.state_dict().items()})
        return real(model, *args, **kwargs)

    monkeypatch.setattr(train_module, "_evaluate_and_log", spy)
    cfg = tiny(synth, tmp_path / "run", "train.iterations=4", "train.ema=true", "train.ema_tau=2")
    summary = train(cfg, show_progress=False)
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert len(seen) == 1 and _same_weights(seen[0], state["model"])
    assert not _same_weights(state["model"], state["train_model"])
    assert "AP" in summary["metrics"]
    model, _, _ = load_trained(tmp_path / "run" / "last.pt", "cpu")
    assert _same_weights(model.state_dict(), state["model"])


def test_resume_switches_ema_on_and_off(synth, tmp_path, monkeypatch):  # noqa: F811
    iters = "train.iterations=4"
    train(tiny(synth, tmp_path / "ref", iters), evaluate=False, show_progress=False)
    out = tmp_path / "run"
    plan = [((iters,), 2), ((iters, "train.ema=true"), 2), ((iters,), None)]  # 1, 1 then 2 steps
    for extra, stop in plan:
        with monkeypatch.context() as patch:
            if stop is not None:
                _interrupt_at(stop, patch)
                with pytest.raises(KeyboardInterrupt):
                    train(tiny(synth, out, *extra), resume=out.exists(), evaluate=False, show_progress=False)
            else:
                train(tiny(synth, out, *extra), resume=True, evaluate=False, show_progress=False)
        state = load_checkpoint(out / "last.pt")
        if len(extra) > 1:  # EMA switched on at resume: it starts from the resumed weights
            assert state["iteration"] == 2 and state["ema"]["updates"] == 1
    # switched off again: training continued from the training weights, not from the average
    assert state["iteration"] == 4 and "ema" not in state and "train_model" not in state
    assert _same_weights(state["model"], load_checkpoint(tmp_path / "ref" / "last.pt")["model"])
