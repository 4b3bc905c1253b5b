"""`NodeState`: what one node process holds (settings, Redis, engine, registry, publisher)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import redis

from bus.publish import Publisher
from services.node.config import NodeSettings
from services.node.engine import Engine
from services.node.registry import Registry


@dataclass
class NodeState:
    """Shared by every route and background task as `app.state.node`."""

    settings: NodeSettings
    redis: redis.Redis
    engine: Engine
    registry: Registry
    publisher: Publisher
    node_name: str
    # One activation at a time: two loads beside the serving model could not both fit.
    activation_lock: threading.Lock = field(default_factory=threading.Lock)
    # Free slots for N2/N3 (their own objects: the watcher, the power controller…).
    extras: dict[str, Any] = field(default_factory=dict)
