"""anchorlab: anchor-based and anchor-free object detection, side by side.

Notebook use (see docs/api.md): ``model = anchorlab.load("runs/x")``, ``results = model.predict("images/")``,
``results[0].plot()``. Heavy modules are imported on first use, so ``import anchorlab`` stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["Detections", "Detector", "load", "train"]

if TYPE_CHECKING:
    from anchorlab.models.detector import Detector
    from anchorlab.results import Detections


def load(path: Any, device: Any = "auto", verbose: bool = True) -> Detector:
    """A trained detector in eval mode, ready for ``model.predict(...)``, from ``best.pt``, ``last.pt``, a
    legacy ``checkpoint.pt`` or a run folder (``best.pt``, else ``last.pt``, else ``checkpoint.pt``; with
    ``verbose`` the file chosen is printed to stderr). ``device``: ``"auto"`` (CUDA when there is one),
    ``"cpu"``, ``"cuda:1"``, ... It knows its class names (``model.names``), its training config
    (``model.config``: input size) and the file it came from (``model.checkpoint_path``)."""
    from anchorlab.engine.predict import load_detector

    return load_detector(path, device, verbose=verbose)


def train(config_or_path: Any, callbacks: Any = None, **overrides: Any) -> dict[str, Any]:
    """Train from a config (YAML path, ``Config`` or dict) with ``section__key=value`` overrides and
    return the run summary; see :func:`anchorlab.engine.session.train` and docs/training.md."""
    from anchorlab.engine.session import train as _train

    return _train(config_or_path, callbacks, **overrides)


def __getattr__(name: str) -> Any:
    if name == "Detections":
        from anchorlab.results import Detections

        return Detections
    if name == "Detector":
        from anchorlab.models.detector import Detector

        return Detector
    raise AttributeError(f"module 'anchorlab' has no attribute {name!r}")
