"""Mosaic: every box lands on its own pixels (synthetic images with one flat colour per box), nothing
visible is lost, boxes stay in the canvas, the visibility rule, empty images, crowd regions, and
reproducibility through the dataset's per-sample seed."""

import numpy as np
import pytest
import torch
from torchvision.io import write_png

from anchorlab.data.core import Category, DetectionSet, ImageRecord
from anchorlab.data.loader import DetectionDataset
from anchorlab.data.mosaic import Mosaic, _other_indices, _place, mosaic_tiles
from anchorlab.data.transforms import build_transforms


def _colour(k: int) -> torch.Tensor:
    """Distinct flat colours (never black, the background) for labels 0..63."""
    return torch.tensor([55 + (17 * k) % 200, 55 + (71 * k + 90) % 200, 55 + (37 * k + 130) % 200])


def _tile(height: int, width: int, boxes: list, first_label: int, crowd: list = ()) -> tuple:
    """A black image with each box filled with its label's colour (crowd regions with colour 63)."""
    image = torch.zeros((3, height, width), dtype=torch.uint8)
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        image[:, y0:y1, x0:x1] = _colour(first_label + i)[:, None, None]
    for x0, y0, x1, y1 in crowd:
        image[:, y0:y1, x0:x1] = _colour(63)[:, None, None]
    labels = torch.arange(first_label, first_label + len(boxes), dtype=torch.int64)
    as_boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    return image, as_boxes, labels, torch.tensor(list(crowd), dtype=torch.float32).reshape(-1, 4)


def _tiles() -> list[tuple]:
    # non-overlapping boxes of several sizes, 6+ px apart, in images of different shapes
    return [
        _tile(120, 160, [[5, 5, 45, 35], [60, 10, 150, 40], [10, 60, 30, 110], [100, 70, 140, 115]], 0),
        _tile(100, 100, [[0, 0, 50, 50], [60, 60, 100, 100]], 4, crowd=[[60, 0, 95, 40]]),
        _tile(160, 90, [[20, 20, 70, 60], [5, 80, 40, 150], [50, 100, 85, 155]], 6),
        _tile(80, 140, [[10, 10, 130, 25], [40, 40, 70, 75]], 9),
    ]


def _colour_bbox(image: torch.Tensor, k: int) -> tuple[torch.Tensor | None, int]:
    """xyxy pixel extent and pixel count of label ``k``'s exact colour in ``image`` [3, H, W]."""
    mask = (image == _colour(k)[:, None, None].to(image.dtype)).all(dim=0)
    if not mask.any():
        return None, 0
    ys, xs = torch.nonzero(mask, as_tuple=True)
    extent = torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()
    return extent, int(mask.sum())


def _check_boxes_on_their_pixels(
    canvas: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor, blur: float = 1.5
) -> None:
    h, w = canvas.shape[-2:]
    assert (boxes >= 0).all() and (boxes[:, 0::2] <= w).all() and (boxes[:, 1::2] <= h).all()
    assert (boxes[:, 2:] > boxes[:, :2]).all()
    for box, label in zip(boxes, labels.tolist(), strict=True):
        extent, _ = _colour_bbox(canvas, label)
        assert extent is not None, f"label {label}: box {box.tolist()} but its colour is not in the mosaic"
        # the flat-coloured pixels lie inside the box, and the box ends within the blurred edge around them
        assert (extent[:2] >= box[:2] - 1e-3).all() and (extent[2:] <= box[2:] + 1e-3).all(), label
        assert (box[:2] >= extent[:2] - blur).all() and (box[2:] <= extent[2:] + blur).all(), label


@pytest.mark.parametrize("seed", range(12))
def test_boxes_land_on_their_pixels_and_nothing_visible_is_lost(seed):
    torch.manual_seed(seed)
    canvas, out = mosaic_tiles(_tiles(), (128, 144), min_visible=0.0, min_box_size=1.0)
    assert canvas.shape == (3, 128, 144) and canvas.dtype == torch.uint8
    assert out["boxes"].shape[0] == out["labels"].shape[0] == 11 - out["dropped"]
    _check_boxes_on_their_pixels(canvas, out["boxes"], out["labels"])
    kept = set(out["labels"].tolist())
    for label in range(11):  # with min_visible 0, every object still showing 3+ px each way is kept
        extent, _ = _colour_bbox(canvas, label)
        if extent is not None and (extent[2:] - extent[:2] >= 3).all():
            assert label in kept, f"label {label} is visible at {extent.tolist()} but was dropped"
    # the crowd region follows its pixels too (when a piece of it is left)
    extent, _ = _colour_bbox(canvas, 63)
    if out["crowd"].shape[0]:
        (crowd,) = out["crowd"]
        assert extent is not None
        assert (extent[:2] >= crowd[:2] - 1e-3).all() and (extent[2:] <= crowd[2:] + 1e-3).all()
        assert (crowd[:2] >= extent[:2] - 1.5).all() and (crowd[2:] <= extent[2:] + 1.5).all()
    else:
        assert extent is None or (extent[2:] - extent[:2] < 3).any()


def test_default_visibility_rule_drops_mostly_cut_boxes():
    # a 100x100 tile into a 50 (h) x 25 (w) quadrant: scale 0.5, a random 50 px wide window [x0, x0 + 50]
    tile = _tile(100, 100, [[0, 10, 20, 30], [25, 50, 75, 60]], 0)
    decided = {True: 0, False: 0}
    for seed in range(40):
        torch.manual_seed(seed)
        pixels, boxes, labels, _, dropped = _place(tile, (0, 0, 50, 25), 0.25, 1.0)
        assert pixels.shape == (3, 50, 25) and dropped == 2 - len(labels)
        _check_boxes_on_their_pixels(pixels, boxes, labels)
        _, count = _colour_bbox(pixels, 0)
        visible = count / (20 * 20 * 0.25)  # flat pixels over the box's scaled area (10 x 10)
        if abs(visible - 0.25) > 0.1:  # away from the threshold (blurred edges aside)
            assert (0 in labels.tolist()) == (visible > 0.25), (seed, visible)
            decided[visible > 0.25] += 1
    assert decided[True] and decided[False]  # both outcomes were exercised


def test_empty_images_give_empty_targets():
    tiles = [_tile(50, 60, [], 0) for _ in range(4)]
    torch.manual_seed(0)
    canvas, out = mosaic_tiles(tiles, (40, 40))
    assert canvas.shape == (3, 40, 40) and not canvas.any()
    assert out["boxes"].shape == (0, 4) and out["labels"].shape == (0,) and out["crowd"].shape == (0, 4)
    assert out["dropped"] == 0 and out["labels"].dtype == torch.int64
    with pytest.raises(ValueError, match="4 tiles"):
        mosaic_tiles(tiles[:3], (40, 40))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> DetectionSet:
    folder = tmp_path_factory.mktemp("mosaic")
    records = []
    for i, (image, boxes, labels, crowd) in enumerate([*_tiles(), _tile(64, 64, [], 0)]):
        file = folder / f"img_{i}.png"
        write_png(image, str(file))
        records.append(
            ImageRecord(
                id=i + 1,
                file=file,
                width=image.shape[-1],
                height=image.shape[-2],
                boxes=boxes.numpy(),
                labels=labels.numpy(),
                ann_ids=np.arange(len(labels)),
                crowd=crowd.numpy(),
                crowd_labels=np.zeros(len(crowd), np.int64),
            )
        )
    return DetectionSet(records, [Category(k, f"c{k}") for k in range(64)])


def _same(a: tuple, b: tuple) -> bool:
    (ia, ta), (ib, tb) = a, b
    return torch.equal(ia, ib) and all(torch.equal(ta[k], tb[k]) for k in ("boxes", "labels", "crowd"))


def test_dataset_mosaic_is_seeded_per_sample_and_keeps_the_sample_size(dataset):
    transforms = build_transforms(True, min_size=96, max_size=160, hflip=0.0)
    mosaic = DetectionDataset(dataset, transforms, mosaic=Mosaic(1.0))
    plain = DetectionDataset(dataset, transforms)
    for index in range(len(dataset.images)):
        image, target = mosaic[(index, 7)]
        assert image.shape == plain[(index, 7)][0].shape  # the canvas is the sample's own size
        assert target["image_id"] == index + 1
        assert _same(mosaic[(index, 7)], (image, target))  # same seed, same mosaic
        assert not _same(mosaic[(index, 8)], (image, target))
        assert not _same(plain[(index, 7)], (image, target))
    # boxes follow their pixels through the mosaic and the transforms (two resamplings: more blur)
    for seed in range(6):
        image, target = mosaic[(0, seed)]
        pixels = (image * 255).round().to(torch.uint8)
        _check_boxes_on_their_pixels(pixels, target["boxes"], target["labels"], blur=2.5)
    never = DetectionDataset(dataset, transforms, mosaic=Mosaic(0.0))
    assert all(_same(never[(i, 3)], plain[(i, 3)]) for i in range(len(dataset.images)))
    with pytest.raises(ValueError, match=r"data\.mosaic"):
        Mosaic(1.5)


def test_the_other_images_are_distinct_and_uniform():
    counts = torch.zeros(6)
    for seed in range(600):
        torch.manual_seed(seed)
        others = _other_indices(2, 6)
        assert len(set(others)) == 3 and 2 not in others
        counts[others] += 1
    assert counts[2] == 0 and (counts[[0, 1, 3, 4, 5]] > 300).all()  # 360 expected each
    assert _other_indices(0, 1) == [0, 0, 0] and set(_other_indices(0, 3)) == {1, 2}
