"""Pure-logic pieces of bench/grid_collision.py: collision counts on hand-made boxes, the loss-curve
reader."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from grid_collision import collision_counts, loss_curve, parse_args


def test_collision_counts_on_a_hand_made_crowded_image(tmp_path):
    # 64 px image; three 10 px objects (level P3, stride 8) with centres in cell (2, 2) = 16..24 px:
    # (23, 23) first, (20.5, 20) second (nearest the cell centre 20, 20), (17, 17) last.
    boxes = [(18, 18, 10, 10), (15.5, 15, 10, 10), (12, 12, 10, 10), (40, 40, 10, 10)]
    anns = [
        {"id": k + 1, "image_id": 1, "category_id": 1, "bbox": list(b), "iscrowd": 0}
        for k, b in enumerate(boxes)
    ]
    data = {"images": [{"id": 1, "file_name": "a.png", "width": 64, "height": 64}], "annotations": anns,
            "categories": [{"id": 1, "name": "x"}]}  # fmt: skip
    path = tmp_path / "train.json"
    path.write_text(json.dumps(data))
    # two of the three lose under either policy; the winner differs (last: object 2, nearest: object 1)
    assert collision_counts(path, 64) == {"objects": 4, "losers": 2, "cells_with_another_owner": 1}


def test_loss_curve_reads_training_records_only(tmp_path):
    lines = [
        {"iteration": 1, "loss": 3.0, "loss_box": 1.0, "lr": 0.1},
        {"iteration": 1, "metrics": {"AP": 0.1}},
        {"iteration": 2, "loss": 2.0, "loss_box": 0.5},
    ]
    (tmp_path / "log.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    assert loss_curve(tmp_path) == [
        {"iteration": 1, "loss": 3.0, "loss_box": 1.0},
        {"iteration": 2, "loss": 2.0, "loss_box": 0.5},
    ]
    args = parse_args([])
    assert args.losses.split(",") == ["l1", "iou", "giou", "diou", "ciou"] and args.policies == "last,nearest"
