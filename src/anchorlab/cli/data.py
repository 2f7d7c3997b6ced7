"""Commands: data."""

from anchorlab.cli.app import app  # noqa: F401
