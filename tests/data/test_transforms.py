import pytest
import torch

from anchorlab.data.transforms import (
    ResizeShortestEdge,
    boxes_to_original,
    build_transforms,
    shortest_edge_size,
)


def _image(h: int, w: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g)


def _target(boxes, labels=None, crowd=None) -> dict:
    boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    labels = torch.arange(len(boxes)) if labels is None else torch.tensor(labels)
    crowd = torch.zeros(0, 4) if crowd is None else torch.tensor(crowd, dtype=torch.float32).reshape(-1, 4)
    return {"boxes": boxes, "labels": labels, "crowd": crowd, "image_id": 42}


def test_flip_moves_box_and_pixels():
    image = _image(20, 40)
    t = build_transforms(True, min_size=20, max_size=1000, hflip=1.0)  # no resize: short side is 20
    out, target = t(image, _target([[4, 2, 10, 8]], crowd=[[0, 0, 5, 20]]))
    assert out.shape == (3, 20, 40) and out.dtype == torch.float32
    assert torch.equal(target["boxes"], torch.tensor([[30.0, 2.0, 36.0, 8.0]]))  # x -> 40 - x
    assert torch.equal(target["crowd"], torch.tensor([[35.0, 0.0, 40.0, 20.0]]))
    assert torch.allclose(out, image.flip(-1).float() / 255)
    assert target["scale"] == (1.0, 1.0) and target["image_id"] == 42


def test_resize_scales_box_and_image_by_the_same_factor():
    image = torch.zeros(3, 40, 60, dtype=torch.uint8)
    image[:, 5:15, 10:20] = 255  # a white square exactly under the box [10, 5, 20, 15]
    t = build_transforms(False, min_size=80, max_size=1000)
    out, target = t(image, _target([[10, 5, 20, 15]]))
    assert out.shape == (3, 80, 120)
    assert target["scale"] == (2.0, 2.0)
    assert target["orig_size"] == (40, 60) and target["size"] == (80, 120)
    assert torch.allclose(target["boxes"], torch.tensor([[20.0, 10.0, 40.0, 30.0]]))
    ys, xs = torch.nonzero(out[0] > 0.5, as_tuple=True)
    assert (xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1) == (20, 10, 40, 30)


def test_min_max_size_semantics():
    assert shortest_edge_size(100, 300, 128, 200) == (67, 200)  # longer side capped at max_size
    assert shortest_edge_size(300, 100, 128, 200) == (200, 67)
    assert shortest_edge_size(100, 150, 128, 1333) == (128, 192)  # cap not reached
    assert shortest_edge_size(100, 300, 128, None) == (128, 384)
    t = build_transforms(False, min_size=128, max_size=200)
    out, target = t(_image(100, 300), _target([[0, 0, 300, 100]]))
    assert out.shape == (3, 67, 200)
    assert target["scale"] == pytest.approx((200 / 300, 67 / 100))
    assert torch.allclose(target["boxes"], torch.tensor([[0.0, 0.0, 200.0, 67.0]]))


def test_scale_jitter_and_size_choice_stay_in_range():
    torch.manual_seed(0)
    jitter = build_transforms(True, min_size=50, max_size=1000, hflip=0.0, scale_jitter=(40, 60))
    shorts = {min(jitter(_image(50, 80), _target([]))[0].shape[-2:]) for _ in range(40)}
    assert min(shorts) >= 40 and max(shorts) <= 60 and len(shorts) > 5
    choice = build_transforms(True, min_size=(32, 48), max_size=1000, hflip=0.0)
    shorts = {min(choice(_image(50, 80), _target([]))[0].shape[-2:]) for _ in range(20)}
    assert shorts == {32, 48}
    resize = ResizeShortestEdge((32, 48), None)
    assert {resize.sample_short_side() for _ in range(20)} <= {32, 48}


def test_scale_jitter_list_draws_only_the_listed_sizes_and_eval_keeps_min_size():
    torch.manual_seed(0)
    sizes = (40, 48, 56, 64)  # the authors' {640, 672, ..., 800} pattern, scaled down
    jitter = build_transforms(True, min_size=50, max_size=1000, hflip=0.0, scale_jitter=sizes)
    shorts = {min(jitter(_image(50, 80), _target([]))[0].shape[-2:]) for _ in range(60)}
    assert shorts == set(sizes)  # [lo, hi] would also give 41, 42, ...
    evaluation = build_transforms(False, min_size=50, max_size=1000)
    assert min(evaluation(_image(50, 80), _target([]))[0].shape[-2:]) == 50
    with pytest.raises(ValueError, match="scale_jitter"):
        ResizeShortestEdge(32, 100, scale_jitter=(40, 0, 60))


def test_eval_is_deterministic_and_uses_largest_size():
    t = build_transforms(False, min_size=(32, 48), max_size=1000, hflip=1.0, photometric=True)
    a, ta = t(_image(50, 80), _target([[1, 2, 30, 40]]))
    b, tb = t(_image(50, 80), _target([[1, 2, 30, 40]]))
    assert a.shape == (3, 48, 77) and torch.equal(a, b) and torch.equal(ta["boxes"], tb["boxes"])
    assert ta["boxes"][0, 0].item() == pytest.approx(1 * 77 / 80)  # not flipped


def test_degenerate_boxes_dropped_with_labels_in_sync():
    boxes = [[5, 5, 5.5, 20], [0, 0, 40, 40], [10, 10, 13, 30], [20, 20, 60, 28]]
    crowd = [[0, 0, 2, 2], [0, 0, 80, 80]]
    t = build_transforms(False, min_size=20, max_size=1000)  # 80x80 -> 20x20: scale 1/4
    _, target = t(_image(80, 80), _target(boxes, labels=[3, 1, 2, 0], crowd=crowd))
    # box 0 is 0.125 px wide, box 2 is 0.75 px wide after resizing; box 3 is 2 px high
    assert target["labels"].tolist() == [1, 0]
    assert torch.allclose(target["boxes"], torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 15.0, 7.0]]))
    assert target["dropped"] == 2
    assert torch.allclose(target["crowd"], torch.tensor([[0.0, 0.0, 20.0, 20.0]]))
    assert target["labels"].dtype == torch.int64 and target["boxes"].dtype == torch.float32


def test_empty_target_and_plain_tensor_outputs():
    t = build_transforms(True, min_size=24, max_size=64, photometric=True)
    out, target = t(_image(30, 40), {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)})
    assert type(out) is torch.Tensor and type(target["boxes"]) is torch.Tensor
    assert target["boxes"].shape == (0, 4) and target["crowd"].shape == (0, 4) and target["dropped"] == 0
    assert out.min() >= 0.0 and out.max() <= 1.0


def test_boxes_to_original_round_trip():
    boxes = torch.tensor([[3.0, 7.0, 120.0, 90.0], [250.0, 0.0, 300.0, 100.0]])
    t = build_transforms(True, min_size=(64, 128), max_size=200, hflip=0.0)
    torch.manual_seed(1)
    for _ in range(4):
        _, target = t(_image(100, 300), _target(boxes.tolist()))
        back = boxes_to_original(target["boxes"], target["scale"])
        assert torch.allclose(back, boxes, atol=1e-3)
    clipped = boxes_to_original(torch.tensor([[-4.0, 2.0, 80.0, 90.0]]), (0.5, 0.5), orig_size=(100, 150))
    assert torch.equal(clipped, torch.tensor([[0.0, 4.0, 150.0, 100.0]]))


def test_same_seed_same_augmentation_and_photometric_changes_pixels():
    t = build_transforms(True, min_size=(24, 32), max_size=64, scale_jitter=None, photometric=True)
    image, target = _image(30, 40), _target([[1, 1, 20, 20]])
    torch.manual_seed(5)
    a, ta = t(image, target)
    torch.manual_seed(5)
    b, tb = t(image, target)
    assert torch.equal(a, b) and torch.equal(ta["boxes"], tb["boxes"])
    plain = build_transforms(True, min_size=(24, 32), max_size=64, photometric=False)
    torch.manual_seed(5)
    c, _ = plain(image, target)
    assert c.shape != a.shape or not torch.allclose(a, c)


def test_normalize_is_optional():
    image = _image(20, 20)
    plain, _ = build_transforms(False, min_size=20, max_size=100)(image, _target([]))
    assert torch.allclose(plain, image.float() / 255)  # default: 0..1, not normalised
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.5)
    t = build_transforms(False, min_size=20, max_size=100, normalize=(mean, std))
    normed, _ = t(image, _target([]))
    expected = (plain - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    assert torch.allclose(normed, expected, atol=1e-6)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="scale_jitter"):
        ResizeShortestEdge(32, 100, scale_jitter=(60, 40))
    with pytest.raises(ValueError, match="min_size"):
        ResizeShortestEdge((), 100)
    with pytest.raises(ValueError, match="labels"):
        build_transforms(False, min_size=20, max_size=100)(
            _image(20, 20), _target([[0, 0, 5, 5]], labels=[1, 2])
        )


@pytest.mark.parametrize("seed", range(4))
def test_photometric_is_v2_colour_jitter_and_leaves_boxes_unchanged(seed):
    from torchvision.transforms import v2

    jitter = build_transforms(True, min_size=(24, 32), max_size=64, scale_jitter=(20, 40), photometric=True)
    plain = build_transforms(True, min_size=(24, 32), max_size=64, scale_jitter=(20, 40))
    assert any(isinstance(t, v2.ColorJitter) for t in jitter.pipeline.transforms)
    image, target = _image(30, 40, seed), _target([[1, 1, 20, 20], [5, 10, 39, 29]], crowd=[[0, 0, 9, 9]])
    torch.manual_seed(seed)
    a, ta = jitter(image, target)
    torch.manual_seed(seed)
    b, tb = plain(image, target)  # the jitter comes last: size and flip draw the same numbers
    assert a.shape == b.shape and not torch.allclose(a, b)
    for key in ("boxes", "labels", "crowd"):
        assert torch.equal(ta[key], tb[key]), key
    assert ta["size"] == tb["size"] and ta["scale"] == tb["scale"]


def test_transforms_pickle_for_spawned_loader_workers() -> None:
    """Spawned data-loader workers (macOS / Windows default, `compare --jobs`) pickle the transforms."""
    import pickle

    from anchorlab.data.transforms import build_transforms

    for train in (True, False):
        transform = pickle.loads(pickle.dumps(build_transforms(train, min_size=64, max_size=None)))
        image, target = transform(
            torch.rand(3, 32, 48),
            {
                "boxes": torch.tensor([[1.0, 2.0, 20.0, 30.0]]),
                "labels": torch.tensor([1]),
                "crowd": torch.tensor([[0.0, 0.0, 0.2, 0.2]]),
            },
        )
        assert image.shape[-2:] == (64, 96) and target["boxes"].shape == (1, 4)
        assert target["crowd"].shape == (0, 4)  # a crowd region below min_box_size is dropped
