"""Shared pieces of the prediction tests: a tiny synthetic set, a 2-iteration training run, a weights file."""

from __future__ import annotations

from pathlib import Path

import torch

from anchorlab.config import Config, load_config
from anchorlab.data import make_synthetic
from anchorlab.data.synthetic import SyntheticPaths
from anchorlab.engine.train import train

SIZE = 96  # synthetic images and the model's input size (data.min_size = data.max_size)


def synth_set(out: Path) -> SyntheticPaths:
    """12 PNGs of 96 x 96 with 1-3 objects (categories 10/20/30 of the synthetic set)."""
    return make_synthetic(out, images=12, seed=0, size=SIZE, min_object=20, max_object=48, objects=(1, 3))


def tiny_config(synth: SyntheticPaths, out: Path, *extra: str) -> Config:
    """A 16-channel RetinaNet on 96 px inputs that keeps up to 20 detections at any score."""
    return load_config(
        None,
        [
            f"data.train={synth.train}",
            f"data.val={synth.val}",
            f"data.min_size={SIZE}",
            f"data.max_size={SIZE}",
            "model.fpn.channels=16",
            "model.fpn.max_level=5",
            "model.head.channels=16",
            "model.head.num_convs=1",
            "model.head.norm=gn",
            "model.anchors.octave_base_scale=2",
            "model.inference.max_detections=20",
            "train.iterations=2",
            "train.batch_size=2",
            "train.workers=0",
            "train.device=cpu",
            "train.threads=1",
            f"train.out={out}",
            *extra,
        ],
    )


def train_tiny(synth: SyntheticPaths, out: Path) -> Path:
    """Train 2 iterations; the resumable checkpoint's path (``summary["checkpoint"]``)."""
    summary = train(tiny_config(synth, out), evaluate=False, show_progress=False)
    return Path(summary["checkpoint"])


def write_weights_file(resumable: Path, path: Path) -> Path:
    """A weights-only file (``best.pt`` format ``anchorlab/1``) with the model of ``resumable``."""
    from anchorlab.engine.checkpoint import load_checkpoint, save_checkpoint

    state = load_checkpoint(resumable)
    keep = ("model", "config", "categories", "iteration")
    weights = {"format": "anchorlab/1", **{k: state[k] for k in keep if k in state}, "metrics": {}}
    return save_checkpoint(path, weights)


def image_u8(path: Path) -> torch.Tensor:
    from anchorlab.data.loader import read_rgb

    return read_rgb(path)
