"""``anchorlab`` command line: one module per command group, all registered on ``cli.app.app``."""

from anchorlab.cli import anchors, assign_report, compare, data, evaluate, export, predict, train  # noqa: F401
from anchorlab.cli.app import app

__all__ = ["app"]
