"""Atomic checkpoints: a write that is interrupted half-way never replaces the last good file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from anchorlab.io import OutputError, atomic_write

__all__ = ["CheckpointError", "atomic_write_bytes", "load_checkpoint", "save_checkpoint"]


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be written or read; the message names the file."""


def atomic_write_bytes(path: str | Path, write: Any) -> Path:
    """Call ``write(fileobj)`` on a temporary file beside ``path``, fsync it, then rename it over ``path``
    (:func:`anchorlab.io.atomic_write`); a failed write is a :class:`CheckpointError` naming the file."""
    try:
        atomic_write(path, write)
    except OutputError as exc:
        raise CheckpointError(str(exc)) from exc
    return Path(path)


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` with ``torch.save`` atomically."""
    return atomic_write_bytes(path, lambda f: torch.save(state, f))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (``weights_only=False``: it holds RNG states)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:
        raise CheckpointError(f"checkpoint {path} is not readable: {exc}") from exc
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{path} is not an anchorlab checkpoint (no 'model' entry)")
    return state
