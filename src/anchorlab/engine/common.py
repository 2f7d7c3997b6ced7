"""Pieces the train, eval and predict loops share: devices, seeds, data preparation, versions."""

from __future__ import annotations

import os
import platform
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from anchorlab.config import Config
from anchorlab.console import make_console
from anchorlab.data.core import DetectionSet

__all__ = [
    "declares_split",
    "ensure_synthetic",
    "environment",
    "load_split",
    "move_targets",
    "prepare_data",
    "resolve_device",
    "seed_everything",
    "split_key",
]


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available, else CPU; anything else goes to ``torch.device`` and must exist
    on this machine (a ``ValueError`` naming ``train.device`` otherwise)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(
            f"train.device {name!r} is not a device (use auto, cpu, cuda, cuda:N or mps)"
        ) from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"train.device {name!r}: no CUDA GPU is available here (use cpu or auto)")
        if device.index is not None and device.index >= count:
            raise ValueError(f"train.device {name!r}: this machine has {count} CUDA GPU(s)")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"train.device {name!r}: MPS is not available here (use cpu or auto)")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"train.device {name!r}: anchorlab trains on cpu, cuda or mps")
    return device


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN runs bfloat16 natively on this CPU (AVX512-BF16 or AMX): only then is CPU autocast
    faster than float32 (docs/training.md)."""
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
        "torch": str(torch.__version__),  # plain str: TorchVersion is not plain data in a checkpoint
        "torchvision": str(torchvision.__version__),
        "numpy": np.__version__,
        "platform": platform.platform(),
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "threads": torch.get_num_threads(),
    }


def ensure_synthetic(cfg: Config) -> None:
    """Generate the built-in synthetic dataset when the config asks for it (``data.synthetic``) and it is
    not there yet. It is written only to the folder of ``data.train``, which must be named
    ``FOLDER/train.json`` (and ``data.val`` ``FOLDER/val.json``) and be empty or absent: the generator
    never writes over existing files (a typo in a path is an error, not a silent synthetic run). The
    data are generated in a temporary sibling folder renamed into place, so a killed run leaves no half
    dataset behind. Raises ``FileNotFoundError`` / ``FileExistsError`` naming the paths."""
    spec = cfg.data.synthetic
    if not spec or cfg.data.train is None:
        return
    train = Path(cfg.data.train)
    folder = train.parent
    wanted = {"data.train": (train, folder / "train.json")}
    if cfg.data.val is not None:
        wanted["data.val"] = (Path(cfg.data.val), folder / "val.json")
    if all(p.exists() for p, _ in wanted.values()):
        return
    for key, (given, expected) in wanted.items():
        if os.path.normpath(given) != os.path.normpath(expected):
            if given.exists():
                continue  # the user's own file beside generated data
            raise FileNotFoundError(
                f"{key} {given} does not exist, and data.synthetic generates only {expected} "
                f"(train.json / val.json in the folder of data.train): fix the path or remove data.synthetic"
            )
    if folder.exists() and any(folder.iterdir()):
        missing = ", ".join(f"{k} {p}" for k, (p, _) in wanted.items() if not p.is_file())
        raise FileNotFoundError(
            f"{missing} does not exist; data.synthetic would generate it into {folder}, which is not empty:"
            " refusing to write beside existing files (fix the path, or empty the folder)"
        )
    _generate_into(folder, spec)


def _generate_into(folder: Path, spec: dict[str, Any]) -> None:
    """``make_synthetic`` into a temporary sibling, then rename it to ``folder`` (absent or empty)."""
    import shutil
    import tempfile

    from anchorlab.data import make_synthetic

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        make_synthetic(tmp, **spec)
        if folder.exists():
            folder.rmdir()  # empty (checked above); OSError if another process filled it meanwhile
        os.replace(tmp, folder)
    except OSError:
        if not (folder / "train.json").is_file():  # not another process's finished copy
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def declares_split(path: str | os.PathLike, split: str) -> bool:
    """Whether ``path`` (a data.yaml, a folder holding one, a CVAT export or a VOC folder) names a
    ``split`` of its own: then the same path serves as ``data.train`` and ``data.val``."""
    import yaml

    from anchorlab.data.yolo import SPLIT_ALIASES

    p = Path(path)
    keys = SPLIT_ALIASES.get(split, (split,))
    yaml_file = p if p.suffix in {".yaml", ".yml"} else p / "data.yaml"
    try:
        if yaml_file.is_file():
            data = yaml.safe_load(yaml_file.read_text(encoding="utf-8")) or {}
            return isinstance(data, dict) and any(data.get(k) for k in keys)
        obj = p / "obj.data" if p.is_dir() else p
        if obj.name == "obj.data" and obj.is_file():
            lines = obj.read_text(encoding="utf-8").splitlines()
            return any(ln.partition("=")[0].strip() in keys for ln in lines)
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    return any((p / "ImageSets" / "Main" / f"{k}.txt").is_file() for k in keys)


def split_key(cfg: Config, split: str, fmt: str, path: Path) -> str | None:
    """Which split of ``path`` the config's ``split`` (train / val / test) reads: ``data.split[split]``
    when given; the split's own name when the file declares splits (a data.yaml, a CVAT obj.data or a VOC
    ImageSets file used for several splits, a YOLO folder with ``images/<split>/``); else None (all)."""
    if cfg.data.split and split in cfg.data.split:
        return cfg.data.split[split]
    if fmt == "yolo":
        has_yaml = path.suffix in {".yaml", ".yml"} or (path / "data.yaml").is_file()
        return split if has_yaml or (path / "images" / split).is_dir() else None
    shared = sum(1 for s in ("train", "val", "test") if getattr(cfg.data, s, None) == str(path)) > 1
    if fmt == "voc" and shared and (path / "ImageSets" / "Main" / f"{split}.txt").is_file():
        return split
    if fmt == "cvat" and shared:
        return split
    return None


def load_split(
    cfg: Config, split: str, path: str | os.PathLike | None = None, *, check_images: str = "exists"
) -> DetectionSet:
    """The ``train``, ``val`` (or ``test``) DetectionSet of a config: ``path`` (default ``data.<split>``)
    in any format ``anchorlab.data.load_dataset`` reads, with ``data.format``, ``data.split``,
    ``data.classes``, ``data.images``, ``data.policy`` and ``data.max_pixels``. Every command loads data
    through here. Raises ``FileNotFoundError`` naming a missing path, ``DataError`` listing problems."""
    from anchorlab.data import detect_format, load_dataset

    path = path if path is not None else getattr(cfg.data, split, None)
    if path is None:
        raise ValueError(
            f"the config has no data.{split} (a COCO JSON, VOC / YOLO folder, data.yaml or CVAT export)"
        )
    if not Path(path).exists():
        raise FileNotFoundError(f"data.{split}: {path} does not exist")
    fmt, resolved = detect_format(path) if cfg.data.format == "auto" else (cfg.data.format, Path(path))
    return load_dataset(
        resolved,
        fmt,  # type: ignore[arg-type]
        images_dir=cfg.data.images if fmt in ("coco", "voc") else None,
        classes=None if fmt == "coco" else cfg.data.classes,
        policy=cfg.data.policy,
        split=None if fmt == "coco" else split_key(cfg, split, fmt, Path(path)),
        check_images=check_images,  # type: ignore[arg-type]
        max_pixels=cfg.data.max_pixels,
    )


def prepare_data(cfg: Config):
    """Load train (and val, if any) and fill ``model.num_classes`` from the data when unset.

    Everything that would otherwise fail after training is checked here, before it starts: every val
    image is decoded (unreadable ones follow ``data.policy``), val categories are matched to train's by
    id (``align_categories``: extra ids in use are an error naming them), and class names and paths are
    checked printable (``check_printable``).
    ``train.preset: auto`` is resolved here against the training split (``compare.auto.apply_auto``)."""
    from anchorlab.data import align_categories, check_printable

    ensure_synthetic(cfg)
    if cfg.data.val is not None and not Path(cfg.data.val).exists():
        raise FileNotFoundError(f"data.val: {cfg.data.val} does not exist")
    train = load_split(cfg, "train")
    if cfg.train.preset == "auto":
        announce_auto(cfg, train)
    val = load_split(cfg, "val", check_images="decode") if cfg.data.val else None
    if val is not None:
        val = align_categories(val, train.categories, model=f"the training data {cfg.data.train}")
    check_printable(train, val)
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

    from anchorlab import distributed as dist_utils
    from anchorlab.compare.auto import apply_auto

    budget = apply_auto(cfg, train_set)
    if not dist_utils.is_main():
        return
    console = make_console(stderr=True)
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
