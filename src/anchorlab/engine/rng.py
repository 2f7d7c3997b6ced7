"""Random-number-generator states of Python, numpy and torch, as plain data for a checkpoint.

``capture()`` takes the states as the libraries return them (cheap: called every iteration);
``to_checkpoint()`` turns them into tensors, lists and numbers (what ``torch.load(weights_only=True)``
reads); ``restore()`` accepts both that and the raw form of older checkpoints.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

__all__ = ["capture", "restore", "to_checkpoint"]


def capture() -> dict[str, Any]:
    """The current states, raw."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def to_checkpoint(state: dict[str, Any]) -> dict[str, Any]:
    """A :func:`capture` result as tensors, lists, str, int and float."""
    name, keys, pos, has_gauss, cached = state["numpy"]
    version, internal, gauss_next = state["python"]
    out = {
        "torch": state["torch"],
        "numpy": {
            "bit_generator": str(name),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {"version": int(version), "state": list(internal), "gauss_next": gauss_next},
    }
    if "cuda" in state:
        out["cuda"] = list(state["cuda"])
    return out


def restore(state: dict[str, Any]) -> None:
    """Set every generator from a :func:`capture` or :func:`to_checkpoint` result."""
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    if isinstance(numpy_state, dict):
        keys = np.asarray(torch.as_tensor(numpy_state["keys"]).numpy(), dtype=np.uint32)
        numpy_state = (
            numpy_state["bit_generator"],
            keys,
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    np.random.set_state(numpy_state)
    python_state = state["python"]
    if isinstance(python_state, dict):
        python_state = (python_state["version"], tuple(python_state["state"]), python_state["gauss_next"])
    random.setstate(python_state)
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
