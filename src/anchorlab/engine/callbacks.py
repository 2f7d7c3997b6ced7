"""Training callbacks: plug a logger (W&B, MLflow, a CSV file, ...) into ``train`` without editing it.

Subclass :class:`Callback`, override what you need, pass instances as ``train(cfg, callbacks=[...])`` or
``anchorlab.train(config, callbacks=[...])``. Only the main process (rank 0) calls them, in list order,
in this order within a run: ``on_start`` once, then per logged iteration ``on_log``, per evaluation
``on_eval``, per checkpoint written ``on_checkpoint``, and ``on_end`` once with the run summary (not
when training raised). An exception in a callback stops training like any other error.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

__all__ = ["Callback", "CallbackList"]


class Callback:
    """No-op hooks of a training run; override any of them."""

    def on_start(self, info: dict[str, Any]) -> None:
        """Before the first iteration: ``{"out": Path (the folder this run writes to now), "start":
        iterations already done (resume), "resume": bool, "iterations": total, "config": dict}``."""

    def on_log(self, record: dict[str, Any]) -> None:
        """Every ``train.log_every`` iterations: the ``log.jsonl`` record (``iteration``, ``loss``, each
        ``loss_*`` term, ``lr``, ``images_per_s``, ``time`` in s, ``skipped_steps``, ``skipped_images``)."""

    def on_eval(self, record: dict[str, Any]) -> None:
        """After each evaluation on the val split: ``{"iteration": int, "metrics": {"AP", "AP50", ...},
        "best": bool}`` (``best``: the best AP so far, written to ``best.pt``)."""

    def on_checkpoint(self, path: Path, kind: Literal["last", "best"], iteration: int) -> None:
        """After ``last.pt`` (resumable) or ``best.pt`` (weights) is written at ``path``."""

    def on_end(self, summary: dict[str, Any]) -> None:
        """After training and the final evaluation: the summary ``train`` returns."""

    def close(self) -> None:
        """Release resources; called once whether the run succeeded or failed."""


class CallbackList(Callback):
    """Calls every callback of a list, in order."""

    def __init__(self, callbacks: Iterable[Callback] = ()) -> None:
        self.callbacks = list(callbacks)
        for cb in self.callbacks:
            if not isinstance(cb, Callback):
                raise TypeError(f"callbacks must subclass anchorlab.engine.callbacks.Callback, got {cb!r}")

    def on_start(self, info: dict[str, Any]) -> None:
        for cb in self.callbacks:
            cb.on_start(info)

    def on_log(self, record: dict[str, Any]) -> None:
        for cb in self.callbacks:
            cb.on_log(record)

    def on_eval(self, record: dict[str, Any]) -> None:
        for cb in self.callbacks:
            cb.on_eval(record)

    def on_checkpoint(self, path: Path, kind: Literal["last", "best"], iteration: int) -> None:
        for cb in self.callbacks:
            cb.on_checkpoint(path, kind, iteration)

    def on_end(self, summary: dict[str, Any]) -> None:
        for cb in self.callbacks:
            cb.on_end(summary)

    def close(self) -> None:
        for cb in self.callbacks:
            cb.close()
