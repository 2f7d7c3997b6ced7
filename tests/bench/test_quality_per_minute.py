"""Pure-logic pieces of bench/quality_per_minute.py: YOLO label and prediction conversions, the reference
lr schedule of the torchvision entrant, and the marked docs section."""

import sys
from pathlib import Path

import numpy as np
import pytest

from anchorlab.data import load_coco, make_synthetic
from anchorlab.data.yolo import load_yolo

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from qpm_entrants import reference_lr_factor
from qpm_yolo import predictions_to_coco, write_yolo_dataset, yolo_label_lines
from quality_per_minute import MARK_END, MARK_START, replace_marked_section


def test_yolo_label_lines_normalise_and_clip():
    boxes = np.array([[10, 20, 30, 60], [-5, 90, 40, 110]], np.float32)  # the second leaves the image
    lines = yolo_label_lines(boxes, np.array([2, 0]), width=100, height=100)
    assert lines == ["2 0.200000 0.400000 0.200000 0.400000", "0 0.200000 0.950000 0.400000 0.100000"]
    with pytest.raises(ValueError, match="2 boxes but 1 labels"):
        yolo_label_lines(boxes, np.array([0]), width=100, height=100)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    paths = make_synthetic(root, images=6, seed=0, size=64, min_object=12, max_object=30, val_images=2)
    return load_coco(paths.train), load_coco(paths.val)


def test_yolo_dataset_round_trips_through_the_yolo_loader(synth, tmp_path):
    train, val = synth
    data_yaml, val_images = write_yolo_dataset(train, val, tmp_path / "yolo")
    assert [i for i, _ in val_images] == [r.id for r in val.images]
    back = load_yolo(data_yaml, split="val")
    assert back.class_names == val.class_names
    by_stem = {Path(r.file).stem: r for r in back.images}
    for record in val.images:
        got = by_stem[str(record.id)]
        np.testing.assert_array_equal(got.labels, record.labels)
        np.testing.assert_allclose(got.boxes, record.boxes, atol=1e-3)


def test_yolo_predictions_map_to_file_category_ids_and_xywh(synth):
    _, val = synth
    image_id = val.images[0].id
    pred = {"image_id": image_id, "boxes": [[10.0, 20.0, 30.0, 60.0]], "scores": [0.9], "labels": [1]}
    (result,) = predictions_to_coco([pred], val)
    assert result["category_id"] == val.categories[1].id != 1  # synthetic ids are 10, 20, 30
    assert result["bbox"] == pytest.approx([10, 20, 20, 40]) and result["image_id"] == image_id
    with pytest.raises(ValueError, match="image ids not in"):
        predictions_to_coco([{**pred, "image_id": 10**6}], val)


def test_reference_lr_schedule_warms_up_then_steps_at_budget_fractions():
    assert reference_lr_factor(0, 0.0, 260.0, warmup_iters=10) == pytest.approx(1e-3)
    assert reference_lr_factor(10, 100.0, 260.0, warmup_iters=10) == 1.0
    assert reference_lr_factor(50, 160.0, 260.0, warmup_iters=10) == pytest.approx(0.1)
    assert reference_lr_factor(90, 220.0, 260.0, warmup_iters=10) == pytest.approx(0.01)


def test_marked_section_is_appended_then_replaced():
    text = replace_marked_section("# Benchmarks\n\nintro\n", "| a |\n")
    assert text.startswith("# Benchmarks\n\nintro\n\n## Accuracy per CPU-minute\n\n" + MARK_START)
    again = replace_marked_section(text + "\n## Later section\n", "| b |")
    assert "| a |" not in again and "| b |" in again and again.endswith("\n## Later section\n")
    assert again.count(MARK_START) == again.count(MARK_END) == 1
    with pytest.raises(ValueError, match="out of order"):
        replace_marked_section(f"{MARK_END}\n{MARK_START}", "x")
