"""The training clock: seconds of training, carried across ``--resume`` (``last.pt``'s ``elapsed_s``).

All of the loop's time readings go through :data:`now` (``time.perf_counter``), once per iteration, so a
test can replace it with a fake clock.
"""

from __future__ import annotations

import time

__all__ = ["RunClock", "now"]

now = time.perf_counter


class RunClock:
    """Seconds since this process started training (``session``) and in all, earlier sessions of a
    resumed run included (``elapsed``). :meth:`tick` reads the time source once."""

    def __init__(self, offset: float = 0.0) -> None:
        self.offset = float(offset)
        self.start = 0.0
        self.session = 0.0

    def restart(self) -> None:
        """Start this session's count now (right before the first iteration)."""
        self.start, self.session = now(), 0.0

    @property
    def elapsed(self) -> float:
        return self.offset + self.session

    def tick(self) -> float:
        """Read the clock; returns (and keeps) the seconds of this session."""
        self.session = now() - self.start
        return self.session
