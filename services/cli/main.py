"""The `regime3` command: one group, each subcommand in a module of its own."""

from __future__ import annotations

import logging

import click

from services.cli.codec_commands import codec_group
from services.cli.data_commands import data_group
from services.cli.enqueue import enqueue_command
from services.cli.events import events_command
from services.cli.health import health_command
from services.cli.settings_table import settings_command
from services.cli.status import status_command
from services.cli.study_commands import study_group
from services.cli.up import up_command


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log at debug level.")
def cli(verbose: bool) -> None:
    """regime3: continuous fine-tuning of a small LM, joined by Redis."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


cli.add_command(enqueue_command)
cli.add_command(status_command)
cli.add_command(events_command)
cli.add_command(up_command)
cli.add_command(settings_command)
cli.add_command(health_command)

cli.add_command(codec_group)
cli.add_command(data_group)
cli.add_command(study_group)
