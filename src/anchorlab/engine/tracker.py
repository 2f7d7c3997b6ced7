"""Evaluations during training: when they are due, the best AP so far, patience, ``results.csv``.

``results.csv`` (written atomically after each evaluation) has one row per evaluation: ``iteration``,
``epoch``, the step's ``loss`` and ``loss_*`` terms, ``lr``, the COCO metrics (``AP``, ``AP50``,
``AP75``, ``APs``, ``APm``, ``APl``, ``AR1``, ...), ``best`` (1 on the row whose weights are ``best.pt``
at that time) and ``time`` (seconds of training, earlier sessions of a resumed run included).
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

from anchorlab.io import write_text

__all__ = ["EvalTracker", "numeric_metrics"]

_NOT_METRICS = ("iteration",)


def numeric_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The top-level numbers of an evaluation's metrics as ``{name: float}`` (nested dicts, lists and
    strings left out): what checkpoints and ``results.csv`` record."""
    return {
        k: float(v)
        for k, v in metrics.items()
        if k not in _NOT_METRICS and isinstance(v, int | float) and not isinstance(v, bool)
    }


class EvalTracker:
    """Which iterations evaluate (every ``every`` iterations, 0: none but the last), the best AP and the
    evaluations since it (``patience``: how many without a better AP stop training)."""

    def __init__(self, every: int, patience: int | None, enabled: bool) -> None:
        self.every, self.patience, self.enabled = every, patience, enabled
        self.best_ap: float | None = None
        self.best_iteration: int | None = None
        self.since_best = 0
        self.last_iteration: int | None = None
        self.last_metrics: dict[str, float] = {}
        self.rows: list[dict[str, Any]] = []

    def due(self, done: int, total: int, stopping: bool) -> bool:
        """Whether to evaluate after iteration ``done``: periodically, at the last iteration and when
        training stops early."""
        if not self.enabled:
            return False
        return (self.every > 0 and done % self.every == 0) or done == total or stopping

    def update(self, iteration: int, metrics: dict[str, Any], row: dict[str, Any]) -> bool:
        """Record an evaluation (``row``: the training columns of its ``results.csv`` row); True if its AP
        is the best so far (a NaN AP never is)."""
        values = numeric_metrics(metrics)
        ap = values.get("AP", float("nan"))
        best = math.isfinite(ap) and (self.best_ap is None or ap > self.best_ap)
        if best:
            self.best_ap, self.best_iteration, self.since_best = ap, iteration, 0
        else:
            self.since_best += 1
        self.last_iteration, self.last_metrics = iteration, values
        self.rows.append({**row, **values, "best": int(best)})
        return best

    @property
    def exhausted(self) -> bool:
        """``patience`` evaluations in a row without a better AP."""
        return self.patience is not None and self.since_best >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return {
            "best_ap": self.best_ap,
            "best_iteration": self.best_iteration,
            "since_best": self.since_best,
            "last_iteration": self.last_iteration,
            "last_metrics": dict(self.last_metrics),
        }

    def load_state_dict(self, state: dict[str, Any] | None, csv_path: Path | None, iteration: int) -> None:
        """Continue from a checkpoint's tracker state and the rows of ``results.csv`` up to
        ``iteration`` (the checkpoint's)."""
        state = state or {}
        self.best_ap = state.get("best_ap")
        self.best_iteration = state.get("best_iteration")
        self.since_best = int(state.get("since_best", 0))
        self.last_iteration = state.get("last_iteration")
        self.last_metrics = dict(state.get("last_metrics", {}))
        if csv_path is not None and csv_path.is_file():
            rows = list(csv.DictReader(io.StringIO(csv_path.read_text())))
            self.rows = [r for r in rows if int(float(r.get("iteration") or 0)) <= iteration]

    def write_csv(self, path: Path) -> None:
        """All rows, atomically; the columns of the first row, then any new ones."""
        columns: list[str] = []
        for row in self.rows:
            columns += [k for k in row if k not in columns]
        if "time" in columns:  # last, like the layout
            columns.append(columns.pop(columns.index("time")))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, restval="", lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        write_text(path, buffer.getvalue())
