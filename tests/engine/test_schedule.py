import pytest
import torch

from anchorlab.config import TrainConfig
from anchorlab.engine.schedule import build_optimizer, build_scheduler, lr_factor


def test_warmup_then_steps():
    cfg = TrainConfig(iterations=100, warmup_iters=10, warmup_factor=0.1, steps=[50, 80], gamma=0.1)
    assert lr_factor(0, cfg) == pytest.approx(0.1)
    assert lr_factor(5, cfg) == pytest.approx(0.55)
    assert lr_factor(10, cfg) == 1.0
    assert lr_factor(50, cfg) == pytest.approx(0.1)
    assert lr_factor(80, cfg) == pytest.approx(0.01)


def test_cosine_decays_to_one_percent():
    cfg = TrainConfig(iterations=100, warmup_iters=0, schedule="cosine")
    assert lr_factor(0, cfg) == pytest.approx(1.0)
    assert lr_factor(50, cfg) == pytest.approx(0.505)
    assert lr_factor(100, cfg) == pytest.approx(0.01)


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_optimizer_excludes_norms_and_biases_from_decay(name):
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    cfg = TrainConfig(optimizer=name, lr=0.1, weight_decay=1e-3, warmup_iters=2, warmup_factor=0.5)
    opt = build_optimizer(model, cfg)
    decay, no_decay = opt.param_groups
    assert len(decay["params"]) == 1 and decay["weight_decay"] == 1e-3
    assert len(no_decay["params"]) == 3 and no_decay["weight_decay"] == 0.0
    sched = build_scheduler(opt, cfg)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05)
    opt.step()
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.075)


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_optimizers_are_fused_on_cpu(name: str) -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    assert build_optimizer(model, TrainConfig(optimizer=name)).defaults["fused"] is True
