import pytest
import torch
from torchvision.ops import (
    box_iou,
    complete_box_iou_loss,
    distance_box_iou_loss,
    generalized_box_iou_loss,
)

from anchorlab.losses import iou_loss

KINDS = ("iou", "giou", "diou", "ciou")


def random_boxes(n: int, generator: torch.Generator, dtype=torch.float64) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=generator, dtype=dtype) * 50
    wh = torch.rand(n, 2, generator=generator, dtype=dtype) * 40 + 0.5
    return torch.cat([xy, xy + wh], dim=1)


def torchvision_loss(kind: str, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if kind == "iou":
        return 1 - box_iou(pred, target).diagonal()
    fn = {"giou": generalized_box_iou_loss, "diou": distance_box_iou_loss, "ciou": complete_box_iou_loss}[
        kind
    ]
    return fn(pred, target)


@pytest.mark.parametrize("kind", KINDS)
def test_matches_torchvision_on_random_boxes(kind):
    g = torch.Generator().manual_seed(0)
    pred, target = random_boxes(200, g), random_boxes(200, g)
    # half of the pairs overlap heavily
    target[:100] = pred[:100] + torch.randn(100, 4, generator=g, dtype=torch.float64)
    target[:100, 2:] = torch.maximum(target[:100, 2:], target[:100, :2] + 0.5)
    ours = iou_loss(pred, target, kind=kind)
    torch.testing.assert_close(ours, torchvision_loss(kind, pred, target), rtol=0, atol=1e-6)
    ours32 = iou_loss(pred.float(), target.float(), kind=kind)
    assert ours32.dtype == torch.float32
    torch.testing.assert_close(ours32.double(), ours, rtol=0, atol=1e-5)


def test_hand_computed_values():
    pred = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 2.0, 1.0]])
    target = torch.tensor([[2.0, 0.0, 3.0, 1.0], [0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 1.0, 1.0]])
    # disjoint: IoU 0, enclosing area 3, union 2, centre distance^2 4, diagonal^2 10
    # identical: 0 for every kind; nested (2x1 vs 1x1): IoU 0.5, centres 0.5 apart, diagonal^2 5
    expected = {
        "iou": [1.0, 0.0, 0.5],
        "giou": [1 + 1 / 3, 0.0, 0.5],
        "diou": [1.4, 0.0, 0.5 + 0.25 / 5],
    }
    for kind, values in expected.items():
        torch.testing.assert_close(iou_loss(pred, target, kind=kind), torch.tensor(values), atol=1e-6, rtol=0)
    ciou = iou_loss(pred, target, kind="ciou")
    # same aspect ratio for the first two pairs -> CIoU == DIoU; the nested pair gets the aspect term
    torch.testing.assert_close(ciou[:2], torch.tensor([1.4, 0.0]), atol=1e-6, rtol=0)
    v = 4 / torch.pi**2 * (torch.atan(torch.tensor(1.0)) - torch.atan(torch.tensor(2.0))) ** 2
    alpha = v / (1 - 0.5 + v)
    assert ciou[2].item() == pytest.approx(0.55 + (alpha * v).item(), abs=1e-6)


def degenerate_pairs() -> tuple[torch.Tensor, torch.Tensor]:
    pred = torch.tensor(
        [
            [5.0, 5.0, 15.0, 5.0],  # zero height
            [5.0, 5.0, 5.0, 5.0],  # a point
            [5.0, 5.0, 5.0, 5.0],  # the same point
            [0.0, 0.0, 10.0, 10.0],  # disjoint
            [3.0, 3.0, 3.0, 9.0],  # zero width
            [10.0, 10.0, 4.0, 4.0],  # inverted
            [0.0, 0.0, 10.0, 10.0],  # identical
        ]
    )
    target = torch.tensor(
        [
            [0.0, 0.0, 10.0, 10.0],
            [0.0, 0.0, 10.0, 10.0],
            [5.0, 5.0, 5.0, 5.0],
            [100.0, 100.0, 120.0, 130.0],
            [0.0, 0.0, 0.0, 0.0],
            [0.0, 0.0, 10.0, 10.0],
            [0.0, 0.0, 10.0, 10.0],
        ]
    )
    return pred, target


@pytest.mark.parametrize("kind", KINDS)
def test_degenerate_inputs_give_finite_values_and_gradients(kind):
    pred, target = degenerate_pairs()
    pred.requires_grad_(True)
    target.requires_grad_(True)
    loss = iou_loss(pred, target, kind=kind)
    assert torch.isfinite(loss).all()
    assert (loss >= -1e-6).all()
    assert loss[-1].abs() < 1e-6  # identical boxes
    assert loss[3] >= 1.0  # disjoint boxes
    loss.sum().backward()
    assert torch.isfinite(pred.grad).all() and torch.isfinite(target.grad).all()
    if kind != "iou":  # the penalty terms pull disjoint boxes together
        assert pred.grad[3].abs().sum() > 0


@pytest.mark.parametrize("kind", ["iou", "giou", "diou"])
def test_gradcheck(kind):
    g = torch.Generator().manual_seed(1)
    pred = random_boxes(6, g).requires_grad_(True)
    target = pred.detach() + torch.rand(6, 4, generator=g, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda p: iou_loss(p, target, kind=kind), (pred,))


def test_reductions_and_shapes():
    g = torch.Generator().manual_seed(2)
    pred = random_boxes(12, g).reshape(2, 6, 4)
    target = random_boxes(12, g).reshape(2, 6, 4)
    for kind in KINDS:
        none = iou_loss(pred, target, kind=kind)
        assert none.shape == (2, 6)
        torch.testing.assert_close(iou_loss(pred, target, kind=kind, reduction="sum"), none.sum())
        torch.testing.assert_close(iou_loss(pred, target, kind=kind, reduction="mean"), none.mean())
        empty = torch.zeros(0, 4, requires_grad=True)
        out = iou_loss(empty, torch.zeros(0, 4), kind=kind, reduction="mean")
        assert out.item() == 0.0
        out.backward()
    # broadcasting one target against many predictions
    assert iou_loss(pred, target[0, 0], kind="giou").shape == (2, 6)


def test_wrong_kind_or_reduction_names_the_allowed_values():
    box = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    with pytest.raises(ValueError, match="iou, giou, diou, ciou"):
        iou_loss(box, box, kind="eiou")
    with pytest.raises(ValueError, match="none, mean, sum"):
        iou_loss(box, box, reduction="avg")
    with pytest.raises(ValueError, match=r"\[\.\.\., 4\]"):
        iou_loss(box[:, :3], box[:, :3])
