"""Checkpoint files: atomic writes, safe reads (nothing loaded from disk runs code), and their layout.

A *weights file* (``best.pt``) is ``{"format": "anchorlab/1", "model": state_dict, "config":
cfg.model_dump(mode="json"), "categories": [{"id", "name"}], "iteration": int, "metrics": {str:
float}}``; the resumable ``last.pt`` adds ``optimizer``, ``scheduler``, ``loader``, ``rng``, ``elapsed_s``,
``tracker`` (and ``train_model`` / ``ema`` with an EMA). Every entry is a tensor, dict, list, str, int,
float, bool or None, so :func:`load_checkpoint` reads it with ``torch.load(weights_only=True)``; a file
that needs any other pickled object (a class, a function: code) is refused with a :class:`CheckpointError`
before anything in it runs.
"""

from __future__ import annotations

import re
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from anchorlab.io import OutputError, atomic_write

__all__ = [
    "BEST",
    "FORMAT",
    "LAST",
    "LEGACY",
    "CheckpointError",
    "atomic_write_bytes",
    "load_checkpoint",
    "resumable_checkpoint",
    "safe_torch_load",
    "save_checkpoint",
    "trained_weights",
]

#: ``format`` entry of every checkpoint written by this version.
FORMAT = "anchorlab/1"
#: File names in a run folder: the resumable checkpoint, the best weights, the resumable file's old name.
LAST, BEST, LEGACY = "last.pt", "best.pt", "checkpoint.pt"


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


_PLAIN = (str, int, float, bool, type(None))


def _check_plain(value: Any, where: str) -> None:
    """Raise :class:`CheckpointError` when ``value`` holds anything but tensors, dicts, lists, tuples, str,
    int, float, bool or None (what ``weights_only=True`` reads back)."""
    if isinstance(value, torch.Tensor) or type(value) in _PLAIN:
        return
    if isinstance(value, dict):
        for key, item in value.items():
            _check_plain(key, where)
            _check_plain(item, f"{where}[{key!r}]")
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _check_plain(item, f"{where}[{i}]")
    else:
        raise CheckpointError(f"checkpoint entry {where} is a {type(value).__name__}, not plain data")


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` with ``torch.save`` atomically, after checking that it holds only what
    :func:`load_checkpoint` reads back (tensors and plain data)."""
    _check_plain(state, "state")
    return atomic_write_bytes(path, lambda f: torch.save(state, f))


def _legacy_numpy_globals() -> list[Any]:
    """The numpy pieces a checkpoint of anchorlab < the ``anchorlab/1`` format needs (its numpy RNG state
    is an ``ndarray`` of uint32): plain arrays only, no Python objects."""
    import numpy as np

    core = getattr(np, "_core", None) or np.core
    return [core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def _unsafe_reason(exc: Exception) -> str | None:
    """The forbidden global named by a ``weights_only`` refusal, or None when ``exc`` is another error."""
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
    return found.group(1) if found else None


def _first_line(exc: Exception) -> str:
    """A one-line reason: the ``WeightsUnpickler error`` detail when there is one."""
    text = str(exc)
    detail = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\n\n|\s*Check the documentation|$)", text, re.S)
    if detail:
        return " ".join(detail.group(1).split())
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _torch_load(path: Path, map_location: Any, allow_legacy_numpy: bool) -> Any:
    scope = torch.serialization.safe_globals(_legacy_numpy_globals()) if allow_legacy_numpy else nullcontext()
    with scope:
        return torch.load(path, map_location=map_location, weights_only=True)


def safe_torch_load(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(path, weights_only=True)`` (plus the numpy arrays of an older anchorlab's RNG state),
    any failure a one-line :class:`CheckpointError` naming the file; a file that needs another pickled
    object (code) is refused, never executed."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        return _torch_load(path, map_location, allow_legacy_numpy=True)
    except Exception as exc:
        unsafe = _unsafe_reason(exc)
        if unsafe is not None:
            raise CheckpointError(
                f"checkpoint {path} refused: it needs the pickled object {unsafe!r}, which could run code; "
                "anchorlab loads only tensors and plain data (torch.load weights_only=True)"
            ) from None
        raise CheckpointError(f"checkpoint {path} is not readable: {_first_line(exc)}") from None


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read an anchorlab checkpoint (``best.pt``, ``last.pt``, an older ``checkpoint.pt``) with
    :func:`safe_torch_load`: tensors and plain data only; a file that needs any other pickled object is
    refused with a one-line :class:`CheckpointError` naming it and the object, and nothing in it runs."""
    state = safe_torch_load(path, map_location)
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{path} is not an anchorlab checkpoint (no 'model' entry)")
    return state


def resumable_checkpoint(folder: str | Path) -> Path:
    """The resumable checkpoint of a run folder: ``last.pt``, or ``checkpoint.pt`` of a run written by
    an older anchorlab; ``last.pt``'s path when neither exists."""
    folder = Path(folder)
    last, legacy = folder / LAST, folder / LEGACY
    return legacy if not last.is_file() and legacy.is_file() else last


def trained_weights(folder: str | Path) -> Path:
    """The weights to evaluate or use from a run folder: ``best.pt`` when the run evaluated, else its
    resumable checkpoint (:func:`resumable_checkpoint`)."""
    best = Path(folder) / BEST
    return best if best.is_file() else resumable_checkpoint(folder)
