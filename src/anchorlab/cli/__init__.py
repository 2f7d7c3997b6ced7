"""``anchorlab`` command line: one module per command group, all registered on ``cli.app.app``."""

from anchorlab.cli import (  # noqa: F401
    anchors,
    assign_report,
    compare,
    data,
    evaluate,
    export,
    predict,
    report,
    train,
    weights,
)
from anchorlab.cli.app import app

__all__ = ["app"]
