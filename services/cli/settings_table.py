"""`regime3 settings`: every R3_* setting with its default and meaning (docs/settings.md)."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import click
from pydantic_core import PydanticUndefined
from pydantic_settings import BaseSettings

# Every settings class, by dotted path; one that does not import is a bug, not a gap.
SETTINGS_CLASSES = (
    "bus.settings:BusSettings",
    "services.model.config:ModelSettings",
    "services.trainer.config:TrainerSettings",
    "checkpoints.settings:CheckpointSettings",
    "services.trainer.loop_config:LoopSettings",
    "services.inbox.config:InboxSettings",
    "services.gateway.config:GatewaySettings",
    "services.node.config:NodeSettings",
    "services.feeder.config:FeederSettings",
)


def settings_classes() -> list[type[BaseSettings]]:
    found = []
    for path in SETTINGS_CLASSES:
        module, _, name = path.partition(":")
        found.append(getattr(importlib.import_module(module), name))
    return found


def _default(info: Any) -> str:
    extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
    if "shown_default" in extra:
        return str(extra["shown_default"])
    if info.default is PydanticUndefined:
        return "(required)" if info.default_factory is None else str(info.default_factory())
    return "(none)" if info.default is None else str(info.default)


def markdown_table() -> str:
    rows = ["| variable | default | what it does |", "|---|---|---|"]
    seen: set[str] = set()
    for cls in settings_classes():
        prefix = str(cls.model_config.get("env_prefix", "")).upper()
        for name, info in cls.model_fields.items():
            var = prefix + name.upper()
            if var in seen:  # a setting shared by two services is listed once
                continue
            seen.add(var)
            default = _default(info).replace("|", "\\|")
            doc = (info.description or "").replace("|", "\\|")
            rows.append(f"| `{var}` | `{default}` | {doc} |")
    return "\n".join(rows)


START, END = "<!-- settings-table:start -->", "<!-- settings-table:end -->"


# The file that holds the table, relative to the repository root.
TABLE_FILE = "docs/settings.md"


def with_table(text: str) -> str:
    """`text` with the part between the markers replaced by the current table."""
    head, found, rest = text.partition(START)
    _, found_end, tail = rest.partition(END)
    if not (found and found_end):
        raise click.ClickException(f"no {START} … {END} markers in the file")
    return f"{head}{START}\n{markdown_table()}\n{END}{tail}"


@click.command("settings")
@click.option(
    "--update",
    "--update-readme",
    "update",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help=f"Rewrite the table between the settings-table markers of this file ({TABLE_FILE}).",
)
def settings_command(update: Path | None) -> None:
    """Print every R3_* setting as a Markdown table (the one in docs/settings.md)."""
    if update is None:
        click.echo(markdown_table())
        return
    update.write_text(with_table(update.read_text(encoding="utf-8")), encoding="utf-8")
    click.echo(f"updated the settings table in {update}", err=True)
