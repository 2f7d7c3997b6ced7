"""The command line's consoles: see :mod:`anchorlab.console` (re-exported here for the commands)."""

from anchorlab.console import UNLIMITED, make_console, plain

__all__ = ["UNLIMITED", "make_console", "plain"]
