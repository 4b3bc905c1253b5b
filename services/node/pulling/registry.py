"""The node's model registry in Redis: registered models (path or url) and the active one."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import redis
from pydantic import BaseModel, ConfigDict, Field

from bus import keys
from bus.encoding import as_str
from services.node.errors import ActiveModelDeleteError, RegistryError, UnknownModelError

# Ids become directory names and Redis hash fields: keep them to a safe alphabet.
MODEL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_model_id(model_id: str) -> str:
    if not MODEL_ID.match(model_id):
        raise RegistryError(
            f"model id {model_id!r} is not allowed: use 1–128 letters, digits, '.', '_' or "
            "'-', starting with a letter or digit."
        )
    return model_id


def _now() -> datetime:
    return datetime.now(UTC)


class ModelEntry(BaseModel):
    """One registered model. `path` is where its files are on this node; `url` where to pull."""

    model_config = ConfigDict(extra="ignore")

    id: str
    path: str | None = None
    url: str | None = None
    source: str = "manual"
    step: int | None = None
    registered_at: datetime = Field(default_factory=_now)


class Registry:
    """One node's registry: a Redis hash of entries and a string holding the active id."""

    def __init__(self, connection: redis.Redis, node: str) -> None:
        self.redis = connection
        self.node = node
        self.models_key = keys.node_models_key(node)
        self.active_key = keys.node_active_model_key(node)

    def register(
        self,
        model_id: str,
        *,
        path: str | None = None,
        url: str | None = None,
        source: str = "manual",
        step: int | None = None,
    ) -> ModelEntry:
        """Add or replace the entry for `model_id` (registering again updates it)."""
        check_model_id(model_id)
        entry = ModelEntry(id=model_id, path=path, url=url, source=source, step=step)
        self.redis.hset(self.models_key, model_id, entry.model_dump_json())
        return entry

    def get(self, model_id: str) -> ModelEntry:
        raw = self.redis.hget(self.models_key, model_id)
        if raw is None:
            raise UnknownModelError(model_id, self.ids())
        return ModelEntry.model_validate_json(raw)

    def ids(self) -> list[str]:
        return sorted(as_str(k) for k in self.redis.hkeys(self.models_key))

    def list(self) -> list[ModelEntry]:
        """Every entry, oldest registration first."""
        raw: dict[Any, Any] = self.redis.hgetall(self.models_key)
        entries = [ModelEntry.model_validate_json(v) for v in raw.values()]
        return sorted(entries, key=lambda e: (e.registered_at, e.id))

    def active_id(self) -> str | None:
        raw = self.redis.get(self.active_key)
        return None if raw is None else as_str(raw)

    def set_active(self, model_id: str) -> None:
        """Record `model_id` as active (the caller has already swapped it in)."""
        self.get(model_id)
        self.redis.set(self.active_key, model_id)

    def delete(self, model_id: str) -> ModelEntry:
        """Remove the entry (files stay on disk); refuses the active model."""
        entry = self.get(model_id)
        # WATCH the active id, so a set_active racing this delete cannot leave the registry
        # pointing at a model that is gone.
        with self.redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(self.active_key)  # type: ignore[no-untyped-call]
                    active = pipe.get(self.active_key)
                    if active is not None and as_str(active) == model_id:
                        raise ActiveModelDeleteError(model_id)
                    pipe.multi()
                    pipe.hdel(self.models_key, model_id)
                    pipe.execute()
                    return entry
                except redis.WatchError:
                    continue
