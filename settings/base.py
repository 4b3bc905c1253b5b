"""The one way every settings class reads the environment: `R3_*`, then `.env`, extra ignored.

A renamed setting keeps working for one release under its old name: `RENAMED` lists each old
variable with its new one, and reading an old name warns (DeprecationWarning and a log line)
with the name to use instead.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dotenv import dotenv_values
from pydantic import Field
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from settings.layout import DataLayout

log = logging.getLogger(__name__)

PREFIX = "R3_"


@dataclass(frozen=True)
class Renamed:
    """An old variable's new name; `scale` converts an old unit (ms → seconds: 0.001)."""

    new: str  # the field name (the variable is R3_ + its upper case)
    scale: float | None = None


# Accepted for one release, then removed. Old variable → its new field.
RENAMED: Mapping[str, Renamed] = {
    "R3_RECLAIM_IDLE_MS": Renamed("reclaim_idle_seconds", scale=0.001),
    "R3_NODE_BATCH_WAIT_MS": Renamed("node_batch_wait_seconds", scale=0.001),
    "R3_NODE_DRAIN_S": Renamed("node_drain_seconds"),
    "R3_FEEDER_INTERVAL_S": Renamed("feeder_interval_seconds"),
    "R3_FIXED_EVAL_MAX_NEW_TOKENS": Renamed("eval_max_tokens"),
}


def _deprecated_message(old: str, new: str, scale: float | None) -> str:
    unit = f" (the new one is in seconds: {old}'s value × {scale:g})" if scale else ""
    return f"{old} is deprecated and will be removed: set {new} instead{unit}"


class _RenamedSource(PydanticBaseSettingsSource):
    """Values given under an old name (environment first, then `.env`), as their new field."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ reads the old names itself

    def __call__(self) -> dict[str, Any]:
        fields = self.settings_cls.model_fields
        wanted = {old: r for old, r in RENAMED.items() if r.new in fields}
        if not wanted:
            return {}
        env_file = self.config.get("env_file")
        from_file: dict[str, str | None] = {}
        if isinstance(env_file, str | Path) and Path(env_file).is_file():
            from_file = dict(dotenv_values(env_file))
        found: dict[str, Any] = {}
        for old, renamed in wanted.items():
            raw = os.environ.get(old, from_file.get(old))
            if raw is None:
                continue
            new_var = PREFIX + renamed.new.upper()
            message = _deprecated_message(old, new_var, renamed.scale)
            warnings.warn(message, DeprecationWarning, stacklevel=2)
            log.warning("%s", message)
            if renamed.scale:
                try:
                    found[renamed.new] = float(raw) * renamed.scale
                except ValueError:
                    raise SettingsError(
                        f"{old}={raw!r} is not a number; set {new_var} (in seconds) instead"
                    ) from None
            else:
                found[renamed.new] = raw
        return found


class R3Settings(BaseSettings):
    """Base of every settings class: `R3_<FIELD>` from the environment, else from `.env` in
    the working directory; unknown variables are ignored (each class reads its own)."""

    model_config = SettingsConfigDict(env_prefix=PREFIX, env_file=".env", extra="ignore")

    data_dir: Path = Field(
        Path("data"),
        description="Root for datasets, checkpoints, models, validation sets and a private "
        "Redis's files (settings.layout names every folder).",
    )

    @property
    def layout(self) -> DataLayout:
        """The folders under `data_dir`."""
        return DataLayout(self.data_dir)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # A new name wins over an old one wherever each is given.
        return (
            init_settings,
            env_settings,
            dotenv_settings,
            _RenamedSource(settings_cls),
            file_secret_settings,
        )
