"""The YOLO-style grid detector learns with every IoU-family box loss on crowded synthetic data (issue 5):
the training loss falls and val AP50 ends well above the same model untrained (same seed, same images).

The data are ``make_synthetic(crowded=True)`` at 96 px: 2-3 overlapping objects per image share one
stride-16 cell, so centre-cell collisions happen (checked below). To fit four trainings into the suite,
the ResNet-18 body stays frozen at a random initialisation (``trainable_layers: 0`` with a seeded random
state dict as its weights file: a frozen body needs weights, even random ones, to be a valid config): the
box loss lives in the head, and the FPN + head learn on top of fixed features.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torchvision

from anchorlab.assign import grid_assign
from anchorlab.config import Config, load_config
from anchorlab.data import make_synthetic
from anchorlab.engine.common import prepare_data, seed_everything
from anchorlab.engine.evaluate import evaluate_model
from anchorlab.engine.train import train
from anchorlab.models import build_detector

SIZE = 96
ITERATIONS = 150
IOU_KINDS = ("iou", "giou", "diou", "ciou")


def random_body(folder: Path) -> Path:
    """A seeded random ResNet-18 state dict (the frozen body's weights file)."""
    path = folder / "resnet18_random.pth"
    if not path.is_file():
        torch.manual_seed(0)
        torch.save(torchvision.models.resnet18().state_dict(), path)
    return path


def grid_config(data: tuple[Path, Path], out: Path, box_loss: str = "giou") -> Config:
    train_json, val_json = data
    return load_config(
        "configs/grid_r18_fpn_quick.yaml",
        [
            f"data.train={train_json}",
            f"data.val={val_json}",
            "data.synthetic=null",
            f"data.min_size={SIZE}",
            f"data.max_size={SIZE}",
            "model.backbone.trainable_layers=0",
            f"model.backbone.weights={random_body(train_json.parent)}",
            "model.fpn.channels=32",
            "model.head.channels=32",
            f"model.grid.box_loss={box_loss}",
            f"train.iterations={ITERATIONS}",
            "train.batch_size=4",
            "train.warmup_iters=10",
            "train.workers=0",
            "train.log_every=5",
            "train.checkpoint_every=1000",
            "train.device=cpu",
            "train.threads=1",
            f"train.out={out}",
        ],
    )


@pytest.fixture(scope="module")
def crowded(tmp_path_factory) -> tuple[Path, Path]:
    """32 training and 16 val images of 96 px, crowded."""
    root = tmp_path_factory.mktemp("crowded")
    synth = make_synthetic(
        root, images=48, val_images=16, seed=0, size=SIZE, min_object=16, max_object=48, crowded=True
    )
    return synth.train, synth.val


@pytest.fixture(scope="module")
def untrained_ap50(crowded, tmp_path_factory) -> float:
    """Val AP50 of the detector as ``train`` initialises it (same seed), before any step."""
    cfg = grid_config(crowded, tmp_path_factory.mktemp("untrained"))
    _, val = prepare_data(cfg)
    seed_everything(cfg.train.seed)
    return float(evaluate_model(build_detector(cfg), cfg, val)["AP50"])


def test_the_crowded_set_makes_centres_collide(crowded, tmp_path) -> None:
    train_set, _ = prepare_data(grid_config(crowded, tmp_path))
    boxes = [torch.as_tensor(r.boxes) for r in train_set.images]
    sizes = [(SIZE // s, SIZE // s) for s in (8, 16, 32)]
    collisions = int(grid_assign(boxes, sizes, [8, 16, 32]).collisions.sum())
    assert collisions >= 5, collisions  # measured 9 among 89 objects


@pytest.mark.parametrize("box_loss", IOU_KINDS)
def test_grid_learns_with_iou_loss_on_crowded_data(box_loss, crowded, untrained_ap50, tmp_path) -> None:
    cfg = grid_config(crowded, tmp_path / "run", box_loss)
    metrics = train(cfg, show_progress=False)["metrics"]
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").open()]
    losses, box = [r["loss"] for r in log], [r["loss_box"] for r in log]
    # every 5th iteration is logged
    ratio = sum(losses[-3:]) / sum(losses[:3])
    # measured (seed 0, class biases starting at 1/K) total 0.51-0.60, box term 0.43-0.47 of the first
    assert ratio < 0.75, (box_loss, losses)
    assert sum(box[-3:]) / 3 < 0.75 * box[0], (box_loss, box)
    assert untrained_ap50 < 0.02
    # measured AP50 0.055 (giou) to 0.083 (ciou), seed 0, frozen random backbone, 150 iterations;
    # untrained 0.0 (the docs table has the full-budget figures)
    assert metrics["AP50"] >= untrained_ap50 + 0.03, (box_loss, metrics)
