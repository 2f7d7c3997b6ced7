"""Pieces the train, eval and predict loops share: devices, seeds, data preparation, versions."""

from __future__ import annotations

import platform
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from anchorlab.config import Config

__all__ = ["environment", "load_split", "move_targets", "prepare_data", "resolve_device", "seed_everything"]


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available, else CPU; anything else goes to ``torch.device``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN runs bfloat16 natively on this CPU (AVX512-BF16 or AMX): only then is CPU autocast
    faster than float32 (1.5x for the quick ResNet-18 configs on an AVX512-BF16 Zen 5)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_amp(setting: bool | str, device: torch.device) -> bool:
    """``train.amp`` for ``device``: True / False as given; ``"auto"``: on CUDA, and on CPUs with native
    bfloat16."""
    if setting == "auto":
        return device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16())
    return bool(setting)


def seed_everything(seed: int) -> None:
    """One seed for Python, numpy and torch (data order and augmentation are seeded by the loader)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def environment() -> dict[str, Any]:
    """Versions and machine facts recorded in every run folder."""
    import torchvision

    import anchorlab

    return {
        "anchorlab": anchorlab.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "threads": torch.get_num_threads(),
    }


def ensure_synthetic(cfg: Config) -> None:
    """Generate the built-in synthetic dataset when the config asks for it and it is not there yet."""
    spec = cfg.data.synthetic
    if not spec or cfg.data.train is None:
        return
    train = Path(cfg.data.train)
    if train.is_file() and (cfg.data.val is None or Path(cfg.data.val).is_file()):
        return
    from anchorlab.data import make_synthetic

    make_synthetic(train.parent, **spec)


def load_split(cfg: Config, split: str):
    """The ``train`` or ``val`` DetectionSet of a config (images next to the JSON or under data.images)."""
    from anchorlab.data import load_coco

    path = getattr(cfg.data, split)
    if path is None:
        raise ValueError(f"the config has no data.{split} (a COCO JSON path)")
    return load_coco(path, images_dir=cfg.data.images)


def prepare_data(cfg: Config):
    """Load train (and val, if any) and fill ``model.num_classes`` from the data when unset;
    ``train.preset: auto`` is resolved here against the training split (``compare.auto.apply_auto``)."""
    ensure_synthetic(cfg)
    train = load_split(cfg, "train")
    if cfg.train.preset == "auto":
        announce_auto(cfg, train)
    val = load_split(cfg, "val") if cfg.data.val else None
    if cfg.model.num_classes is None:
        cfg.model.num_classes = train.num_classes
    elif cfg.model.num_classes != train.num_classes:
        raise ValueError(
            f"model.num_classes is {cfg.model.num_classes} but {cfg.data.train} "
            f"has {train.num_classes} categories"
        )
    return train, val


def announce_auto(cfg: Config, train_set) -> None:
    """Apply the auto budget to ``cfg`` in place; the main process prints its one line (and warnings) and
    records it as OUT/auto_budget.json when the run folder exists (in its ``.incoming/`` staging folder
    while a replacing run has not written its first checkpoint, so an earlier run stays untouched)."""
    from rich.console import Console

    from anchorlab import distributed as dist_utils
    from anchorlab.compare.auto import apply_auto

    budget = apply_auto(cfg, train_set)
    if not dist_utils.is_main():
        return
    console = Console(stderr=True)
    console.print(budget.line(), soft_wrap=True)
    for warning in budget.warnings:
        console.print(f"[yellow]warning:[/] {warning}", soft_wrap=True)
    out = Path(cfg.train.out)
    if out.is_dir():
        folder = out / ".incoming" if (out / ".incoming").is_dir() else out
        write_json(folder / "auto_budget.json", budget.to_dict())


def move_targets(targets: list[dict[str, Any]], device: torch.device) -> list[dict[str, Any]]:
    return [
        {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in t.items()}
        for t in targets
    ]


def write_json(path: Path, obj: Any) -> None:
    """Atomic JSON write (:func:`anchorlab.io.write_json`): a failure is an ``OSError`` naming the file."""
    from anchorlab.io import write_json as atomic_json

    atomic_json(path, obj)
