"""Commands: evaluate."""

from anchorlab.cli.app import app  # noqa: F401
