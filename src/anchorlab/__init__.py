"""anchorlab: anchor-based and anchor-free object detection, side by side."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def train(config_or_path: Any, callbacks: Any = None, **overrides: Any) -> dict[str, Any]:
    """Train from a config (YAML path, ``Config`` or dict) with ``section__key=value`` overrides and
    return the run summary; see :func:`anchorlab.engine.session.train` and docs/training.md."""
    from anchorlab.engine.session import train as _train

    return _train(config_or_path, callbacks, **overrides)
