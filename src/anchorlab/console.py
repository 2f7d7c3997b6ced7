"""Consoles that never cut output: a terminal gets its own width, anything else (a pipe, a file, a CI log)
an unlimited one, so no table cell, path or message is wrapped or cropped; and user text is shown as
text, never read as rich markup (``[x]`` in a path stays)."""

from __future__ import annotations

from rich.console import Console
from rich.text import Text

__all__ = ["UNLIMITED", "make_console", "plain"]

#: The width given to a console that is not a terminal: wide enough for any line.
UNLIMITED = 1_000_000


def make_console(stderr: bool = False) -> Console:
    """A rich console for command output: the terminal's width on a terminal, unlimited elsewhere."""
    console = Console(stderr=stderr, soft_wrap=True)
    if not console.is_terminal:
        console = Console(stderr=stderr, soft_wrap=True, width=UNLIMITED)
    return console


def plain(value: object) -> Text:
    """``value`` as literal text for a table cell or ``console.print`` (no markup, no highlighting)."""
    return Text(str(value))
