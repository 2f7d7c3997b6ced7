"""TensorBoard scalars for a training run (``train.tensorboard``; the optional ``tensorboard`` extra).

``TensorBoardLogger`` wraps ``torch.utils.tensorboard.SummaryWriter`` writing to ``OUT/tensorboard/``:
``train/*`` (total loss, every loss term, lr, images/s) at each log step and ``eval/*`` (AP, AP50, ...,
``eval/nms_recall/*`` when present) at each evaluation. ``TensorBoardCallback`` plugs it into the training
loop as a :class:`~anchorlab.engine.callbacks.Callback` (rank 0 only). A fresh run starts without old
event files; a resumed run appends and hides the points a crashed run logged after its last checkpoint.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from anchorlab.engine.callbacks import Callback

__all__ = [
    "INSTALL_HINT",
    "TensorBoardCallback",
    "TensorBoardLogger",
    "TensorBoardMissing",
    "tensorboard_logger",
]

INSTALL_HINT = "pip install 'anchorlab[tensorboard]'"


class TensorBoardMissing(ImportError):
    """``train.tensorboard`` is on but the ``tensorboard`` package cannot be imported."""


def _summary_writer_class() -> type:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise TensorBoardMissing(
            f"train.tensorboard (--tensorboard) needs the tensorboard package: {INSTALL_HINT}"
        ) from exc
    return SummaryWriter


def _scalars(values: Mapping[str, Any], prefix: str) -> dict[str, float]:
    """The numbers of ``values`` (nested dicts too) as ``{prefix/key: float}``; lists are skipped."""
    out: dict[str, float] = {}
    for key, value in values.items():
        tag = f"{prefix}/{key}"
        if isinstance(value, Mapping):
            out.update(_scalars(value, tag))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[tag] = float(value)
    return out


class TensorBoardLogger:
    """Scalars of one run under ``log_dir``; the event file is opened by ``open`` (once the start is known).

    Creating one imports TensorBoard, so a missing package fails before any training starts.
    """

    def __init__(self, log_dir: str | Path) -> None:
        self.log_dir = Path(log_dir)
        self._writer_class = _summary_writer_class()
        self._writer = None

    def open(self, start: int, *, resume: bool) -> None:
        """Start writing; ``start`` is the number of iterations already done (the checkpoint's).

        Steps are 1-based iteration counts, so a resumed run purges steps > ``start``: the points a
        crashed run logged after its last checkpoint, which this run logs again.
        """
        if not resume and self.log_dir.is_dir():
            for old in self.log_dir.glob("events.out.tfevents.*"):
                old.unlink()
        purge_step = start + 1 if resume else None
        self._writer = self._writer_class(log_dir=str(self.log_dir), purge_step=purge_step)

    def log_train(self, step: int, values: Mapping[str, float]) -> None:
        """``values``: total loss, loss terms, lr, images/s ... each written as ``train/<key>``."""
        self._add(_scalars(values, "train"), step)

    def log_eval(self, step: int, metrics: Mapping[str, Any]) -> None:
        """COCO metrics (``eval/AP``, ...) and ``eval/nms_recall/*`` means; lists and strings are skipped."""
        keep = {k: v for k, v in metrics.items() if k not in ("iteration", "num_detections")}
        self._add(_scalars(keep, "eval"), step)
        if self._writer is not None:
            self._writer.flush()

    def _add(self, scalars: Mapping[str, float], step: int) -> None:
        if self._writer is None:
            raise RuntimeError("TensorBoardLogger.open() must be called before logging")
        for tag, value in scalars.items():
            self._writer.add_scalar(tag, value, global_step=step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def tensorboard_logger(enabled: bool, out: str | Path, *, main: bool) -> TensorBoardLogger | None:
    """The run's logger under ``out/tensorboard`` on rank 0 when ``enabled``, else None.

    Raises ``TensorBoardMissing`` (naming the install command) if the package is missing.
    """
    return TensorBoardLogger(Path(out) / "tensorboard") if enabled and main else None


#: ``log.jsonl`` keys that are not curves.
_NOT_SCALARS = ("iteration", "time", "skipped_steps", "skipped_images")


class TensorBoardCallback(Callback):
    """``train.tensorboard`` as a training callback: ``OUT/tensorboard/`` of the folder the run writes
    to. Creating one imports TensorBoard (a missing package fails before training starts)."""

    def __init__(self) -> None:
        self._writer_class = _summary_writer_class()
        self.logger: TensorBoardLogger | None = None

    def on_start(self, info: dict[str, Any]) -> None:
        self.logger = TensorBoardLogger(Path(info["out"]) / "tensorboard")
        self.logger.open(int(info["start"]), resume=bool(info["resume"]))

    def on_log(self, record: dict[str, Any]) -> None:
        if self.logger is not None:
            values = {k: v for k, v in record.items() if k not in _NOT_SCALARS}
            self.logger.log_train(int(record["iteration"]), values)

    def on_eval(self, record: dict[str, Any]) -> None:
        if self.logger is not None:
            self.logger.log_eval(int(record["iteration"]), record["metrics"])

    def close(self) -> None:
        if self.logger is not None:
            self.logger.close()
