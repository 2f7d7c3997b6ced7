"""``model.init_from``: start training from a weights file or checkpoint, whatever its class count.

Every tensor of the new model whose name and shape match the file is loaded. The others keep the new
model's own initialisation and are listed as re-initialised with the reason: a shape mismatch (the
class-specific layers of another class count: the classifier then starts at the prior probability
``model.head.prior_prob``, the box predictor of Faster R-CNN at its small random init) or absence from
the file. Tensors of the file the model has no place for are listed as unused. Nothing is skipped
silently: the table is printed and saved as ``OUT/init_from.json``.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table
from torch import nn

from anchorlab.config import Config

__all__ = ["InitFromError", "apply_init_from", "match_state"]


class InitFromError(ValueError):
    """An ``init_from`` file that cannot initialise the model at all (one line naming the file)."""


def match_state(
    target: dict[str, torch.Tensor], source: dict[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(tensors to load, report)``: the report lists ``loaded`` keys, ``reinitialised`` entries
    ``{"key", "shape", "file_shape" | None, "reason"}`` and ``unused`` file keys with their shapes."""
    load, reinit = {}, []
    for key, tensor in target.items():
        theirs = source.get(key)
        if theirs is None:
            entry = {"key": key, "shape": list(tensor.shape), "file_shape": None, "reason": "not in file"}
            reinit.append(entry)
        elif theirs.shape != tensor.shape:
            reinit.append(
                {
                    "key": key,
                    "shape": list(tensor.shape),
                    "file_shape": list(theirs.shape),
                    "reason": "shape differs (class-specific)" if _class_specific(key) else "shape differs",
                }
            )
        else:
            load[key] = theirs
    unused = [{"key": k, "file_shape": list(v.shape)} for k, v in source.items() if k not in target]
    return load, {"loaded": sorted(load), "reinitialised": reinit, "unused": unused}


#: Parameter names whose shape follows the class count (RetinaNet/FCOS/grid/HNM classifiers, Faster
#: R-CNN's class scores and per-class boxes, CenterNet's heatmap).
_CLASS_LAYERS = ("cls_logits", "cls_score", "roi.bbox_pred", "heatmap")


def _class_specific(key: str) -> bool:
    return any(part in key for part in _CLASS_LAYERS)


def _table(report: dict[str, Any]) -> Table:
    table = Table(title=f"init_from {report['source']}", show_lines=False)
    for column in ("status", "tensors", "what"):
        table.add_column(column)
    groups = Counter(".".join(k.split(".")[:2]) for k in report["loaded"])
    table.add_row(
        "loaded", str(len(report["loaded"])), ", ".join(f"{g} ({n})" for g, n in sorted(groups.items()))
    )
    for entry in report["reinitialised"]:
        shapes = f"{entry['file_shape']} -> {entry['shape']}" if entry["file_shape"] else str(entry["shape"])
        table.add_row("re-initialised", "1", f"{entry['key']} {shapes}: {entry['reason']}")
    for entry in report["unused"]:
        table.add_row("unused", "1", f"{entry['key']} {entry['file_shape']}: not in this model")
    return table


def apply_init_from(
    model: nn.Module, cfg: Config, console: Console | None = None, report_path: Path | None = None
) -> dict[str, Any] | None:
    """Load ``cfg.model.init_from`` (an anchorlab weights file or checkpoint) into ``model`` as far as it
    fits; None when unset. With a ``console`` (the main process) the table is printed, and the report is
    written to ``report_path`` when given (the run folder's ``init_from.json``). Raises ``InitFromError``
    when nothing fits."""
    from anchorlab.engine.checkpoint import load_checkpoint
    from anchorlab.io import write_json

    path = cfg.model.init_from
    if path is None:
        return None
    state = load_checkpoint(path, map_location="cpu")
    source = {k: v for k, v in state["model"].items() if isinstance(v, torch.Tensor)}
    target = model.state_dict()
    load, report = match_state(target, source)
    if not load:
        raise InitFromError(
            f"model.init_from {path}: none of its {len(source)} tensors fits this "
            f"{cfg.model.detector} model (check model.detector and model.backbone.name)"
        )
    model.load_state_dict(load, strict=False)
    report = {"source": str(path), "file_categories": state.get("categories"), **report}
    if console is not None:
        console.print(_table(report))
    if report_path is not None:
        write_json(report_path, report)
    return report
