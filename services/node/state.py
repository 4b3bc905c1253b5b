"""`NodeState`: what one node process holds (settings, Redis, engine, registry, publisher…)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import redis

from bus.publish import Publisher
from services.node.config import NodeSettings
from services.node.pulling.registry import Registry
from services.node.serving.engine import Engine

if TYPE_CHECKING:  # both modules take a NodeState: importing them here at run time would loop
    from services.node.hardware.ops import Ops
    from services.node.pulling.checkpoint_watcher import CheckpointWatcher


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
    # The hardware probes and power controller, built on first use (`hardware.ops.get_ops`).
    ops: Ops | None = None
    # The running checkpoint watcher (None while R3_CHECKPOINT_WATCH is off or before startup).
    checkpoint_watcher: CheckpointWatcher | None = None
