"""Properties of the detection transforms (``anchorlab.data.transforms``).

Random image sizes, boxes (tiny ones included, so some are dropped), resize settings, flip
probabilities, scale jitter and colour jitter. Labels are distinct (``10 + index``) so the test can
follow every box through the pipeline.
"""

from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st

from anchorlab.data.transforms import boxes_to_original, build_transforms


@st.composite
def sample(draw) -> tuple[torch.Tensor, dict]:
    """A uint8 image ``[3, H, W]`` and a target with ``M`` boxes inside it, labels ``10..10+M-1``."""
    h, w = draw(st.integers(4, 160)), draw(st.integers(4, 160))
    rows = []
    for _ in range(draw(st.integers(0, 8))):
        x1, y1 = draw(st.floats(0, w - 1)), draw(st.floats(0, h - 1))
        tiny = draw(st.booleans())
        bw = draw(st.floats(0.01, 1.0)) if tiny else draw(st.floats(0.01, w - x1))
        bh = draw(st.floats(0.01, 1.0)) if tiny else draw(st.floats(0.01, h - y1))
        rows.append([x1, y1, min(x1 + bw, w), min(y1 + bh, h)])
    boxes = torch.tensor(rows, dtype=torch.float32).reshape(-1, 4)
    seed = draw(st.integers(0, 2**31 - 1))
    image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
    target = {"boxes": boxes, "labels": torch.arange(10, 10 + len(rows)), "image_id": 7}
    if draw(st.booleans()):
        target["crowd"] = boxes[: draw(st.integers(0, len(rows)))].clone()
    return image, target


SIZES = st.lists(st.integers(8, 160), min_size=1, max_size=3).map(tuple)
MAX_SIZE = st.one_of(st.none(), st.integers(16, 200))


def _expected(
    boxes: torch.Tensor, scale: tuple[float, float], size: tuple[int, int], flip: bool
) -> torch.Tensor:
    """Input boxes resized by ``scale``, optionally mirrored, clamped to ``size = (h, w)``."""
    sx, sy = scale
    h, w = size
    out = boxes * boxes.new_tensor([sx, sy, sx, sy])
    if flip:
        out = torch.stack((w - out[:, 2], out[:, 1], w - out[:, 0], out[:, 3]), dim=1)
    return torch.minimum(out.clamp(min=0), out.new_tensor([w, h, w, h]))


@given(
    sample(),
    SIZES,
    MAX_SIZE,
    st.sampled_from([0.0, 0.5, 1.0]),
    st.one_of(
        st.none(), st.tuples(st.integers(8, 80), st.integers(0, 80)).map(lambda t: (t[0], t[0] + t[1]))
    ),
    st.booleans(),
    st.sampled_from([1.0, 2.0, 3.5]),
    st.integers(0, 2**31 - 1),
)
def test_train_transform_keeps_boxes_inside_and_labels_in_order(
    case, min_size, max_size, hflip, jitter, photometric, min_box, seed
) -> None:
    image, target = case
    tf = build_transforms(
        True,
        min_size=min_size,
        max_size=max_size,
        hflip=hflip,
        scale_jitter=jitter,
        photometric=photometric,
        min_box_size=min_box,
    )
    torch.manual_seed(seed)
    out, t = tf(image, dict(target))
    h, w = t["size"]
    assert out.dtype == torch.float32 and tuple(out.shape) == (3, h, w)
    assert ((out >= 0) & (out <= 1)).all()
    assert t["orig_size"] == tuple(image.shape[-2:]) and t["image_id"] == 7
    if max_size is not None:
        assert max(h, w) <= max_size + 1  # rounding of the shorter side may add one pixel at most
    boxes, labels = t["boxes"], t["labels"]
    for b in (boxes, t["crowd"]):
        assert b.dtype == torch.float32 and b.ndim == 2 and b.shape[1] == 4
        assert (b >= 0).all() and (b[:, 0::2] <= w).all() and (b[:, 1::2] <= h).all()
        assert (b[:, 2:] >= b[:, :2]).all()
    # surviving labels are the input labels minus the dropped ones, in input order
    assert labels.dtype == torch.int64 and labels.shape[0] == boxes.shape[0]
    assert (labels.diff() > 0).all() and torch.isin(labels, target["labels"]).all()
    assert t["dropped"] == target["labels"].shape[0] - labels.shape[0]
    assert ((boxes[:, 2:] - boxes[:, :2]) >= min_box - 1e-4).all()
    # every surviving box is its own input box resized (and mirrored when flipped): labels kept their boxes
    src = target["boxes"][labels - 10]
    options = {False: hflip < 1, True: hflip > 0}
    fits = {
        flip: torch.allclose(boxes, _expected(src, t["scale"], (h, w), flip), atol=1e-3, rtol=1e-4)
        for flip, allowed in options.items()
        if allowed
    }
    assert any(fits.values()), f"boxes {boxes} do not follow inputs {src} at scale {t['scale']}"
    # the dropped boxes are exactly those that became smaller than min_box_size
    for flip, ok in fits.items():
        if ok:
            exp = _expected(target["boxes"], t["scale"], (h, w), flip)
            small = ((exp[:, 2:] - exp[:, :2]) < min_box).any(dim=1)
            border = ((exp[:, 2:] - exp[:, :2]) - min_box).abs().amin(dim=1) < 1e-3
            kept = torch.isin(target["labels"], labels)
            assert (small[~border] == ~kept[~border]).all()


@given(sample(), SIZES, MAX_SIZE, st.integers(0, 1000), st.integers(0, 1000))
def test_eval_transform_is_deterministic_and_inverted_by_boxes_to_original(
    case, min_size, max_size, seed_a, seed_b
) -> None:
    image, target = case
    tf = build_transforms(False, min_size=min_size, max_size=max_size, photometric=True, hflip=1.0)
    torch.manual_seed(seed_a)
    out_a, t_a = tf(image, dict(target))
    torch.manual_seed(seed_b)
    out_b, t_b = tf(image, dict(target))
    assert torch.equal(out_a, out_b)
    assert t_a.keys() == t_b.keys()
    for key in t_a:
        a, b = t_a[key], t_b[key]
        assert torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b, key
    h, w = t_a["size"]
    H, W = image.shape[-2:]
    short = max(min_size)
    if max_size is None or max(H, W) * short / min(H, W) <= max_size:
        assert min(h, w) == short  # the largest min_size, no cap reached
    # resizing back undoes the scale: the kept boxes return to their input coordinates
    kept = target["boxes"][t_a["labels"] - 10]
    back = boxes_to_original(t_a["boxes"], t_a["scale"], (H, W))
    assert back.shape == kept.shape
    sx, sy = t_a["scale"]
    tol = 1e-3 / min(sx, sy) + 1e-3
    assert ((back - kept).abs() <= tol).all(), (back, kept)
    assert (back >= 0).all() and (back[:, 0::2] <= W).all() and (back[:, 1::2] <= H).all()


@given(
    st.lists(st.lists(st.floats(-50, 250), min_size=4, max_size=4), max_size=6),
    st.floats(0.1, 8),
    st.floats(0.1, 8),
    st.integers(1, 160),
    st.integers(1, 160),
)
def test_boxes_to_original_inverts_scale_and_clips(rows, sx, sy, h, w) -> None:
    boxes = torch.tensor(rows, dtype=torch.float64).reshape(-1, 4)
    scaled = boxes * boxes.new_tensor([sx, sy, sx, sy])
    torch.testing.assert_close(boxes_to_original(scaled, (sx, sy)), boxes)
    clipped = boxes_to_original(scaled, torch.tensor([sx, sy]), (h, w))
    expected = torch.minimum(boxes.clamp(min=0), boxes.new_tensor([w, h, w, h]))
    torch.testing.assert_close(clipped, expected)
