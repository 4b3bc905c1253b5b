"""`regime3 settings`: every R3_* setting with its default and meaning (the README's table)."""

from __future__ import annotations

import importlib
from typing import Any

import click
from pydantic_core import PydanticUndefined
from pydantic_settings import BaseSettings

# Every settings class, by dotted path; one not written yet is left out of the table.
SETTINGS_CLASSES = (
    "bus.settings:BusSettings",
    "services.model.config:ModelSettings",
    "services.trainer.config:TrainerSettings",
    "services.inbox.config:InboxSettings",
    "services.gateway.config:GatewaySettings",
    "services.node.config:NodeSettings",
)


def settings_classes() -> list[type[BaseSettings]]:
    found = []
    for path in SETTINGS_CLASSES:
        module, _, name = path.partition(":")
        try:
            found.append(getattr(importlib.import_module(module), name))
        except ModuleNotFoundError:
            continue
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


@click.command("settings")
def settings_command() -> None:
    """Print every R3_* setting as a Markdown table (the one in the README)."""
    click.echo(markdown_table())
