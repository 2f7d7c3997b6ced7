import pytest
import torch
import torch.nn.functional as F
import torchvision

from anchorlab.losses import (
    PositiveNormalizer,
    l1_loss,
    penalty_reduced_focal_loss,
    reduce_loss,
    sigmoid_focal_loss,
    smooth_l1_loss,
)


def test_focal_equals_torchvision():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 30, 5, generator=g) * 3
    targets = (torch.rand(2, 30, 5, generator=g) > 0.8).float()
    for reduction in ("none", "mean", "sum"):
        ref = torchvision.ops.sigmoid_focal_loss(logits, targets, alpha=0.25, gamma=2, reduction=reduction)
        torch.testing.assert_close(sigmoid_focal_loss(logits, targets, reduction=reduction), ref)
    # integer / bool targets are accepted
    torch.testing.assert_close(
        sigmoid_focal_loss(logits, targets.bool()), sigmoid_focal_loss(logits, targets)
    )
    with pytest.raises(ValueError, match="none, mean, sum"):
        sigmoid_focal_loss(logits, targets, reduction="avg")


def test_smooth_l1_and_l1():
    pred = torch.tensor([0.0, 0.05, -0.2, 1.0])
    target = torch.zeros(4)
    beta = 0.11
    expected = torch.tensor([0.0, 0.5 * 0.05**2 / beta, 0.2 - 0.5 * beta, 1.0 - 0.5 * beta])
    torch.testing.assert_close(smooth_l1_loss(pred, target, beta=beta), expected)
    torch.testing.assert_close(smooth_l1_loss(pred, target, beta=beta, reduction="sum"), expected.sum())
    torch.testing.assert_close(smooth_l1_loss(pred, target, beta=0.0), pred.abs())
    torch.testing.assert_close(l1_loss(pred, target, reduction="mean"), pred.abs().mean())
    with pytest.raises(ValueError, match="reduction"):
        l1_loss(pred, target, reduction="batch")


def test_reduce_loss_mean_of_empty_is_zero_and_differentiable():
    x = torch.zeros(0, 4, requires_grad=True)
    out = reduce_loss(x * 2, "mean")
    assert out.item() == 0.0
    out.backward()
    assert x.grad.shape == (0, 4)


def direct_penalty_reduced_focal(logits, heatmap, alpha=2.0, beta=4.0):
    p = torch.sigmoid(logits.double())
    heatmap = heatmap.double()
    pos = heatmap == 1
    pos_loss = -((1 - p) ** alpha) * torch.log(p)
    neg_loss = -((1 - heatmap) ** beta) * p**alpha * torch.log(1 - p)
    return torch.where(pos, pos_loss, neg_loss)


def test_penalty_reduced_focal_matches_formula():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 8, 8, generator=g) * 2
    heatmap = torch.rand(2, 3, 8, 8, generator=g) * 0.99
    heatmap[0, 1, 2, 3] = 1.0
    heatmap[1, 0, 5, 5] = 1.0
    expected = direct_penalty_reduced_focal(logits, heatmap)
    got = penalty_reduced_focal_loss(logits, heatmap, reduction="none")
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        penalty_reduced_focal_loss(logits, heatmap).double(), expected.sum(), rtol=1e-5, atol=1e-5
    )
    # positives dominate where the centre is badly predicted
    assert got[0, 1, 2, 3] == pytest.approx(float(expected[0, 1, 2, 3]), rel=1e-5)


def test_penalty_reduced_focal_is_stable_for_extreme_logits():
    logits = torch.tensor([-200.0, -30.0, 0.0, 30.0, 200.0] * 2, requires_grad=True)
    heatmap = torch.tensor([1.0] * 5 + [0.0] * 5)
    loss = penalty_reduced_focal_loss(logits, heatmap, reduction="none")
    assert torch.isfinite(loss).all()
    # a confident wrong prediction costs ~|logit| (log-sigmoid), not a clamped constant
    assert loss[0].item() == pytest.approx(200.0, rel=1e-4)
    assert loss[9].item() == pytest.approx(200.0, rel=1e-4)
    assert loss[4].item() == pytest.approx(0.0, abs=1e-6)
    loss.sum().backward()
    assert torch.isfinite(logits.grad).all()


def test_positive_normalizer():
    norm = PositiveNormalizer(momentum=0.9)
    value = norm.update(torch.tensor([10, 30]))  # per-image counts, summed
    assert isinstance(value, torch.Tensor)
    assert value.item() == pytest.approx(0.9 * 100 + 0.1 * 40)
    value = norm.update(torch.tensor(0))  # at least 1
    assert value.item() == pytest.approx(0.9 * 94 + 0.1 * 1)
    state = norm.state_dict()
    other = PositiveNormalizer()
    other.load_state_dict(state)
    assert other.update(torch.tensor(5.0)).item() == pytest.approx(0.9 * state["value"] + 0.5, rel=1e-6)
    assert not norm.value.requires_grad
    with pytest.raises(ValueError, match="momentum"):
        PositiveNormalizer(momentum=1.0)


def test_smooth_l1_matches_torch_for_other_betas():
    g = torch.Generator().manual_seed(3)
    pred, target = torch.randn(50, 4, generator=g), torch.randn(50, 4, generator=g)
    for beta in (0.05, 1.0, 1 / 9):
        torch.testing.assert_close(
            smooth_l1_loss(pred, target, beta=beta, reduction="mean"),
            F.smooth_l1_loss(pred, target, beta=beta),
        )
