"""``Detections``: len, iteration, to_dict / to_coco / to_yolo, plot and atomic save."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from anchorlab.results import Box, Detections


def detections(path=None, image=None) -> Detections:
    return Detections(
        xyxy=torch.tensor([[10.0, 20.0, 50.0, 60.0], [0.0, 0.0, 30.0, 15.0]]),
        scores=torch.tensor([0.9, 0.4]),
        labels=torch.tensor([1, 0]),
        names=["cat", "dog"],
        image_shape=(80, 100),
        path=path,
        category_ids=[7, 9],
        image=image,
    )


def test_len_iteration_and_dict():
    det = detections()
    assert len(det) == 2
    boxes = list(det)
    assert boxes[0] == Box((10.0, 20.0, 50.0, 60.0), pytest.approx(0.9), 1, "dog")
    assert [b.name for b in boxes] == det.class_names == ["dog", "cat"]
    d = det.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert (
        d["boxes"][1] == [0.0, 0.0, 30.0, 15.0]
        and d["names"] == ["dog", "cat"]
        and d["image_shape"] == [80, 100]
    )
    empty = Detections(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64), ["a"], (5, 5))
    assert len(empty) == 0 and list(empty) == [] and empty.to_coco(1) == [] and empty.to_yolo() == ""
    blank = np.full((5, 5, 3), 7, np.uint8)
    np.testing.assert_array_equal(empty.plot(image=blank), blank)


def test_to_coco_uses_the_files_category_ids():
    det = detections()
    coco = det.to_coco(42)
    assert coco[0] == {
        "image_id": 42,
        "category_id": 9,
        "bbox": [10.0, 20.0, 40.0, 40.0],
        "score": pytest.approx(0.9),
    }
    assert coco[1]["category_id"] == 7 and coco[1]["bbox"] == [0.0, 0.0, 30.0, 15.0]
    assert [r["category_id"] for r in det.to_coco(1, category_ids=[100, 200])] == [200, 100]
    with pytest.raises(ValueError, match="3 category ids for 2 classes"):
        det.to_coco(1, [1, 2, 3])


def test_to_yolo_is_normalised_centre_size():
    lines = detections().to_yolo().splitlines()
    assert lines[0].split() == ["1", "0.300000", "0.500000", "0.400000", "0.500000"]
    assert lines[1].split() == ["0", "0.150000", "0.093750", "0.300000", "0.187500"]


def test_plot_draws_boxes_on_the_kept_image_or_the_file(tmp_path):
    image = torch.zeros(3, 80, 100, dtype=torch.uint8)
    drawn = detections(image=image).plot()
    assert isinstance(drawn, np.ndarray) and drawn.shape == (80, 100, 3) and drawn.dtype == np.uint8
    assert drawn[20, 10:50].any() and not drawn[70:, 60:].any()  # the box edge is drawn, the corner untouched
    path = tmp_path / "img.png"
    Image.fromarray(np.zeros((80, 100, 3), np.uint8)).save(path)
    pil = detections(path=path).plot(pil=True)
    assert isinstance(pil, Image.Image) and pil.size == (100, 80)
    np.testing.assert_array_equal(np.asarray(pil), drawn)
    np.testing.assert_array_equal(detections().plot(image=np.zeros((80, 100, 3), np.uint8)), drawn)
    with pytest.raises(ValueError, match="no image to draw on"):
        detections().plot()
    with pytest.raises(ValueError, match="detections of"):
        detections().plot(image=torch.zeros(3, 10, 10, dtype=torch.uint8))


def test_save_by_suffix_is_atomic(tmp_path):
    det = detections(image=torch.zeros(3, 80, 100, dtype=torch.uint8))
    for name in ("out/a.png", "out/a.jpg", "out/a.json", "out/a.txt"):
        assert det.save(tmp_path / name).is_file()
    assert Image.open(tmp_path / "out/a.png").size == (100, 80)
    assert json.loads((tmp_path / "out/a.json").read_text())["scores"] == pytest.approx([0.9, 0.4])
    assert (tmp_path / "out/a.txt").read_text() == det.to_yolo()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.jpg", "a.json", "a.png", "a.txt"]
    with pytest.raises(ValueError, match="unknown file type"):
        det.save(tmp_path / "a.xyz")
    assert repr(det) == "Detections(2 boxes on 100x80)"
