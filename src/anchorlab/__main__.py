"""``python -m anchorlab`` (and ``torchrun -m anchorlab train ...``) runs the CLI."""

from anchorlab.cli import app

app(prog_name="anchorlab")
