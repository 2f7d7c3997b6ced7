"""Properties of the box operations in ``anchorlab.boxes`` and ``anchorlab.losses.iou_loss``.

Boxes are drawn as absolute xyxy with ``x1 <= x2``, ``y1 <= y2`` (the library's invariant), including
zero-width/-height (degenerate), disjoint, nested and identical boxes, over coordinates up to 1e4 px.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from hypothesis import given
from hypothesis import strategies as st

from anchorlab.boxes import (
    BoxCoder,
    cxcywh_to_xyxy,
    generalized_box_iou,
    pairwise_iou,
    xywh_to_xyxy,
    xyxy_to_cxcywh,
    xyxy_to_xywh,
    yolo_to_xyxy,
)
from anchorlab.losses import iou_loss
from anchorlab.losses.iou import IOU_KINDS

COORD = st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False, width=32)
SIZE = st.one_of(st.just(0.0), st.floats(0.0, 1e4, allow_nan=False, width=32))
POS_SIZE = st.floats(0.5, 2e3, allow_nan=False, width=32)


@st.composite
def boxes(draw, n=st.integers(0, 8), size=SIZE, dtype=torch.float32) -> torch.Tensor:
    """``[N, 4]`` xyxy; a share of exact repeats and shared corners so ties and identity occur."""
    count = draw(n)
    rows = []
    for _ in range(count):
        if rows and draw(st.booleans()) and draw(st.booleans()):
            rows.append(list(rows[draw(st.integers(0, len(rows) - 1))]))  # an exact duplicate
            continue
        x, y, w, h = draw(COORD), draw(COORD), draw(size), draw(size)
        rows.append([x, y, x + w, y + h])
    return torch.tensor(rows, dtype=dtype).reshape(-1, 4)


@given(boxes(), boxes())
def test_iou_symmetric_and_in_unit_interval(a: torch.Tensor, b: torch.Tensor) -> None:
    iou = pairwise_iou(a, b)
    assert iou.shape == (a.shape[0], b.shape[0])
    assert torch.isfinite(iou).all(), f"non-finite IoU {iou} for {a} and {b}"
    assert ((iou >= 0) & (iou <= 1 + 1e-6)).all()
    torch.testing.assert_close(iou, pairwise_iou(b, a).T)


@given(boxes(n=st.integers(1, 8), size=POS_SIZE))
def test_iou_of_a_box_with_itself_is_one(a: torch.Tensor) -> None:
    torch.testing.assert_close(pairwise_iou(a, a).diagonal(), torch.ones(a.shape[0]), atol=1e-5, rtol=0)


@given(boxes(n=st.integers(1, 6), size=POS_SIZE), st.floats(0.0, 1e3, width=32))
def test_disjoint_boxes_have_zero_iou_and_negative_giou(a: torch.Tensor, gap: float) -> None:
    shifted = a.clone()
    shifted[:, 0::2] += (a[:, 2] - a[:, 0]).max() + float(a[:, 2].max() - a[:, 0].min()) + gap
    assert (pairwise_iou(a, shifted) == 0).all()
    assert (generalized_box_iou(a, shifted) <= 0).all()


@given(boxes(size=POS_SIZE), boxes(size=POS_SIZE))
def test_giou_in_minus_one_one_and_at_most_iou(a: torch.Tensor, b: torch.Tensor) -> None:
    giou = generalized_box_iou(a.double(), b.double())
    assert torch.isfinite(giou).all()
    assert ((giou >= -1 - 1e-9) & (giou <= 1 + 1e-9)).all()
    assert (giou <= pairwise_iou(a.double(), b.double()) + 1e-9).all()


ANY_COORD = st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False, width=32)


@given(
    st.integers(1, 6).flatmap(
        lambda n: st.tuples(
            st.lists(st.lists(ANY_COORD, min_size=4, max_size=4), min_size=n, max_size=n),
            st.lists(st.lists(ANY_COORD, min_size=4, max_size=4), min_size=n, max_size=n),
        )
    ),
    st.sampled_from(IOU_KINDS),
)
def test_iou_loss_finite_with_finite_gradients_for_any_finite_boxes(pair, kind: str) -> None:
    """Any finite boxes -- inverted, zero-area, identical, far apart -- give finite losses and gradients."""
    pred = torch.tensor(pair[0], dtype=torch.float32, requires_grad=True)
    target = torch.tensor(pair[1], dtype=torch.float32)
    loss = iou_loss(pred, target, kind=kind)
    assert loss.shape == (pred.shape[0],)
    assert torch.isfinite(loss).all(), f"{kind} loss {loss} for {pair}"
    loss.sum().backward()
    assert torch.isfinite(pred.grad).all(), f"{kind} gradient {pred.grad} for {pair}"


@given(boxes(n=st.integers(1, 6), size=POS_SIZE), st.sampled_from(IOU_KINDS))
def test_iou_loss_bounds_on_valid_boxes(a: torch.Tensor, kind: str) -> None:
    b = a.flip(0)
    loss = iou_loss(a.double(), b.double(), kind=kind)
    upper = {"iou": 1.0, "giou": 2.0, "diou": 2.0, "ciou": 3.0}[kind]
    assert ((loss >= -1e-6) & (loss <= upper + 1e-6)).all()
    same = iou_loss(a.double(), a.double(), kind=kind)
    torch.testing.assert_close(same, torch.zeros_like(same), atol=1e-5, rtol=0)


@st.composite
def coder_case(draw):
    """Positive-size anchors and gts whose log size ratios stay inside the decode clamp."""
    n = draw(st.integers(1, 8))
    anchors = draw(boxes(n=st.just(n), size=POS_SIZE, dtype=torch.float64))
    aw, ah = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    limit = math.log(1000.0 / 16) - 1e-3
    log_w = torch.tensor(draw(st.lists(st.floats(-6, limit), min_size=n, max_size=n)), dtype=torch.float64)
    log_h = torch.tensor(draw(st.lists(st.floats(-6, limit), min_size=n, max_size=n)), dtype=torch.float64)
    shift = torch.tensor(
        draw(st.lists(st.floats(-5, 5), min_size=2 * n, max_size=2 * n)), dtype=torch.float64
    )
    cx = (anchors[:, 0] + anchors[:, 2]) / 2 + shift[:n] * aw
    cy = (anchors[:, 1] + anchors[:, 3]) / 2 + shift[n:] * ah
    gw, gh = aw * log_w.exp(), ah * log_h.exp()
    gt = torch.stack((cx - gw / 2, cy - gh / 2, cx + gw / 2, cy + gh / 2), dim=1)
    means = draw(st.lists(st.floats(-1, 1), min_size=4, max_size=4))
    stds = draw(st.lists(st.floats(0.05, 2), min_size=4, max_size=4))
    return anchors, gt, BoxCoder(means=means, stds=stds)


@given(coder_case())
def test_box_coder_round_trip(case) -> None:
    anchors, gt, coder = case
    deltas = coder.encode(anchors, gt)
    assert torch.isfinite(deltas).all()
    decoded = coder.decode(anchors, deltas)
    scale = (gt[:, 2:] - gt[:, :2]).amax(dim=1, keepdim=True) + gt.abs().amax(dim=1, keepdim=True)
    assert ((decoded - gt).abs() <= 1e-9 * scale + 1e-9).all(), (decoded, gt)
    # float32 round trip: relative to the box scale
    dec32 = coder.decode(anchors.float(), coder.encode(anchors.float(), gt.float())).double()
    assert ((dec32 - gt).abs() <= 1e-4 * scale + 1e-4).all(), (dec32, gt)


@given(boxes(n=st.integers(1, 4), size=POS_SIZE), st.lists(st.floats(-1e3, 1e3), min_size=4, max_size=4))
def test_box_coder_decode_never_overflows(anchors: torch.Tensor, raw) -> None:
    """Untrained heads output arbitrary deltas: decode stays finite thanks to the clamp."""
    deltas = torch.tensor(raw, dtype=torch.float32).expand(anchors.shape[0], 4)
    out = BoxCoder(stds=(0.1, 0.1, 0.2, 0.2)).decode(anchors, deltas)
    assert torch.isfinite(out).all()
    assert (out[:, 2:] >= out[:, :2]).all()


@given(
    st.integers(0, 6).flatmap(
        lambda n: st.lists(
            st.lists(st.floats(-1e4, 1e4, width=32), min_size=4, max_size=4), min_size=n, max_size=n
        )
    ),
    st.booleans(),
)
def test_format_conversions_round_trip(rows, as_numpy: bool) -> None:
    arr = np.asarray(rows, np.float64).reshape(-1, 4)
    x = arr if as_numpy else torch.as_tensor(arr)
    pairs = ((xywh_to_xyxy, xyxy_to_xywh), (cxcywh_to_xyxy, xyxy_to_cxcywh))
    tol = 1e-9 * (1 + np.abs(arr).max(initial=0))
    for forward, backward in pairs:
        for f, g in ((forward, backward), (backward, forward)):
            y = g(f(x))
            assert type(y) is type(x) and y.shape == x.shape
            assert np.abs(np.asarray(y) - arr).max(initial=0) <= 4 * tol
    assert np.array_equal(np.asarray(x), arr)  # conversions are out of place


@given(
    st.lists(st.lists(st.floats(0, 1), min_size=4, max_size=4), min_size=1, max_size=6),
    st.integers(1, 4000),
    st.integers(1, 4000),
)
def test_yolo_to_xyxy_is_scaled_cxcywh(rows, width: int, height: int) -> None:
    norm = np.asarray(rows, np.float64)
    out = yolo_to_xyxy(norm, width, height)
    expected = cxcywh_to_xyxy(norm * [width, height, width, height])
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-9)
    t = yolo_to_xyxy(torch.as_tensor(norm), width, height)
    np.testing.assert_allclose(t.numpy(), expected, rtol=1e-12, atol=1e-9)
    torch.testing.assert_close(
        xyxy_to_cxcywh(t) / t.new_tensor([width, height, width, height]), t.new_tensor(norm)
    )


def test_degenerate_iou_example_is_zero_not_nan() -> None:
    """The shrunk example behind the pairwise_iou fix: two zero-area boxes do not overlap."""
    a = torch.tensor([[1.0, 1.0, 1.0, 1.0], [2.0, 2.0, 2.0, 6.0]])
    assert pairwise_iou(a, a).tolist() == [[0.0, 0.0], [0.0, 0.0]]
