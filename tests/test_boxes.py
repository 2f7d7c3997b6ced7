import numpy as np
import pytest
import torch

from anchorlab.boxes import (
    BoxCoder,
    clip_boxes,
    cxcywh_to_xyxy,
    pairwise_iou,
    xywh_to_xyxy,
    xyxy_to_cxcywh,
    xyxy_to_xywh,
    yolo_to_xyxy,
)


def test_format_conversions_numpy_and_torch():
    xywh = np.array([[10.0, 20.0, 30.0, 40.0]], dtype=np.float32)
    xyxy = xywh_to_xyxy(xywh)
    np.testing.assert_allclose(xyxy, [[10, 20, 40, 60]])
    np.testing.assert_allclose(xyxy_to_xywh(xyxy), xywh)
    t = torch.tensor([[10.0, 20.0, 40.0, 60.0]])
    assert torch.allclose(xyxy_to_cxcywh(t), torch.tensor([[25.0, 40.0, 30.0, 40.0]]))
    assert torch.allclose(cxcywh_to_xyxy(xyxy_to_cxcywh(t)), t)
    np.testing.assert_allclose(
        yolo_to_xyxy(np.array([[0.5, 0.5, 0.5, 0.25]]), 200, 100), [[50, 37.5, 150, 62.5]]
    )


def test_clip_and_empty_iou():
    boxes = torch.tensor([[-5.0, 3.0, 50.0, 120.0]])
    assert clip_boxes(boxes, height=100, width=40).tolist() == [[0.0, 3.0, 40.0, 100.0]]
    assert pairwise_iou(torch.zeros(0, 4), boxes).shape == (0, 1)
    assert pairwise_iou(boxes, torch.zeros(0, 4)).shape == (1, 0)


@pytest.mark.parametrize("stds", [(1.0, 1.0, 1.0, 1.0), (0.1, 0.1, 0.2, 0.2)])
def test_encode_decode_round_trip(stds):
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(50, 2, generator=g) * 100
    anchors = torch.cat([xy, xy + 1 + torch.rand(50, 2, generator=g) * 80], dim=1)
    xy2 = torch.rand(50, 2, generator=g) * 100
    gt = torch.cat([xy2, xy2 + 1 + torch.rand(50, 2, generator=g) * 80], dim=1)
    coder = BoxCoder(stds=stds)
    deltas = coder.encode(anchors, gt)
    assert torch.allclose(coder.decode(anchors, deltas), gt, atol=1e-3)


def test_encode_known_values_and_broadcast():
    coder = BoxCoder(stds=(0.1, 0.1, 0.2, 0.2))
    anchor = torch.tensor([0.0, 0.0, 10.0, 10.0])
    gt = torch.tensor([5.0, 0.0, 15.0, 20.0])  # centre +5 x, +5 y; w x1, h x2
    d = coder.encode(anchor, gt)
    assert torch.allclose(d, torch.tensor([5.0, 5.0, 0.0, float(np.log(2)) / 0.2]), atol=1e-5)
    batched = coder.decode(anchor.expand(3, 7, 4), torch.zeros(3, 7, 4))
    assert batched.shape == (3, 7, 4) and torch.allclose(batched, anchor.expand(3, 7, 4))


def test_decode_clamps_huge_deltas():
    coder = BoxCoder()
    out = coder.decode(torch.tensor([[0.0, 0.0, 16.0, 16.0]]), torch.tensor([[0.0, 0.0, 1e4, 1e4]]))
    assert torch.isfinite(out).all()
    assert (out[0, 2] - out[0, 0]).item() == pytest.approx(1000.0, rel=1e-4)


def test_bad_coder_arguments():
    with pytest.raises(ValueError, match="4 means"):
        BoxCoder(means=(0, 0))
    with pytest.raises(ValueError, match="positive"):
        BoxCoder(stds=(0.1, 0.1, 0.0, 0.2))
