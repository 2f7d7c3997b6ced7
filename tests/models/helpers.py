"""Shared pieces of the model tests: a tiny model config, a synthetic two-image batch, a short train loop."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from anchorlab.config import ModelConfig
from anchorlab.models import Detector

NUM_CLASSES = 3


def tiny_config(detector: str, **fields: Any) -> ModelConfig:
    """A small ``detector`` of ``NUM_CLASSES`` classes that keeps 7 detections at any score; each of
    ``fields`` replaces the default of that key (32-channel FPN, 2 GroupNorm head convs of 32)."""
    defaults: dict[str, Any] = {
        "num_classes": NUM_CLASSES,
        "fpn": {"channels": 32},
        "head": {"channels": 32, "num_convs": 2, "norm": "gn"},
        "inference": {"max_detections": 7, "score_thresh": 0.0},
    }
    return ModelConfig(detector=detector, **{**defaults, **fields})


def synthetic_batch() -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """Two images of different sizes with 1 and 3 bright rectangles whose colour is the class."""
    specs = [
        ((96, 96), [(10, 12, 52, 60, 0)]),
        ((80, 96), [(4, 6, 40, 30, 1), (50, 20, 90, 74, 2), (30, 40, 62, 70, 0)]),
    ]
    images, targets = [], []
    for (h, w), objects in specs:
        image = torch.full((3, h, w), 0.1)
        for x1, y1, x2, y2, label in objects:
            image[:, y1:y2, x1:x2] = 0.2
            image[label, y1:y2, x1:x2] = 0.9
        images.append(image)
        boxes = torch.tensor([o[:4] for o in objects], dtype=torch.float32)
        targets.append({"boxes": boxes, "labels": torch.tensor([o[4] for o in objects])})
    return images, targets


def train(
    model: Detector,
    iterations: int,
    lr: float = 2e-3,
    check: Callable[[dict[str, torch.Tensor]], None] | None = None,
) -> list[float]:
    """``iterations`` AdamW steps (gradients clipped at norm 10) on ``synthetic_batch``; the total loss of
    each step. ``check`` sees every step's loss dict."""
    images, targets = synthetic_batch()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    history = []
    for _ in range(iterations):
        losses = model(images, targets)
        if check is not None:
            check(losses)
        total = sum(losses.values())
        optimizer.zero_grad()
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimizer.step()
        history.append(float(total.detach()))
    return history


def plant_logit(module: torch.nn.Module, level: int, index: tuple[int, ...]) -> None:
    """Hook ``module`` (a prediction conv shared by the levels) so that its output on the ``level``-th
    call holds 100 at ``index`` (e.g. ``(image, channel, y, x)``)."""
    calls = []

    def plant(module, inputs, output):
        if len(calls) == level:
            output = output.clone()
            output[index] = 100.0
        calls.append(output.shape)
        return output

    module.register_forward_hook(plant)
