"""`python -m services.cli` is the `regime3` command (for when the script is not on PATH)."""

from services.cli.main import cli

cli()
