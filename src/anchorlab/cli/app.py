"""The typer application every command module registers on."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="anchorlab",
    help="Train, evaluate and diagnose anchor-based and anchor-free object detectors on your own data.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
