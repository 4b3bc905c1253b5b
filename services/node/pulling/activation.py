"""Activating a registered model: load beside the serving one, warm up, swap, publish."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Literal

from bus.events import ModelActivated, ModelSwapped
from services.node.config import NodeSettings
from services.node.errors import ModelLoadError
from services.node.pulling.puller import set_aside, verify_pulled
from services.node.pulling.registry import ModelEntry
from services.node.serving.engine import free_device_memory
from services.node.serving.loading import load_for_serving, warm_up
from services.node.state import NodeState


def entry_path(settings: NodeSettings, entry: ModelEntry) -> Path:
    """Where the entry's files are: its path, else `<models_dir>/<id>` (the users' layout).

    A copy this node pulled is verified again against its manifest first (every sha256):
    both ways to serve a model (start-up and activation) come here, so a copy corrupted on
    disk is never served. A corrupt one is moved aside (so the next pull fetches it again)
    and ModelLoadError says why; a copy placed by hand has no manifest and is loaded as is.
    """
    path = Path(entry.path).expanduser() if entry.path else settings.models_dir / entry.id
    if path.is_dir():
        problems = verify_pulled(path)
        if problems:
            aside = set_aside(path, problems)
            raise ModelLoadError(
                entry.id,
                f"the pulled copy failed verification ({'; '.join(problems)}); moved to "
                f"{aside.name}, not served; a new pull of {entry.id} fetches it afresh, or "
                "activate another model.",
                kind="invalid",
            )
    return path


def activate(
    state: NodeState,
    model_id: str,
    *,
    by: Literal["manual", "auto"] = "manual",
    bytes: int = 0,  # named like ModelSwapped's field, which callers pass on
    download_seconds: float = 0.0,
) -> ModelSwapped:
    """Make `model_id` the serving model; the old one serves until the swap and its requests end.

    Blocking (seconds to load): call it from a thread, never the event loop. Activations
    are serialized. Activating the model already serving reloads it from disk (files
    replaced in place, as with rsync). On any failure raises ModelLoadError (or
    UnknownModelError) and nothing changes: the old model keeps serving, the registry's
    active id is untouched, nothing is published.
    """
    with state.activation_lock:
        entry = state.registry.get(model_id)
        path = entry_path(state.settings, entry)
        if entry.path is None and entry.url is not None and not path.exists():
            raise ModelLoadError(
                model_id,
                f"it is registered by url ({entry.url}) and not downloaded to {path} yet; "
                "pull it first (the checkpoint watcher does) or register a local path.",
                kind="missing",
            )
        started = time.perf_counter()
        loaded = load_for_serving(path, model_id, state.settings, step=entry.step)
        try:
            warm_up(loaded)
        except ModelLoadError:
            device = loaded.device
            del loaded
            free_device_memory(device)
            raise
        load_seconds = time.perf_counter() - started
        swap_started = time.perf_counter()
        old = state.engine.swap(loaded)
        swap_seconds = time.perf_counter() - swap_started
        previous = old.version
        device = old.device
        # The engine keeps the old weights alive for requests still on them; this was the
        # last other reference.
        del old, loaded
        free_device_memory(device)
        state.registry.set_active(model_id)
    swapped = ModelSwapped(
        node=state.node_name,
        model_id=model_id,
        previous_model_id=previous,
        step=entry.step,
        bytes=bytes,
        download_seconds=download_seconds,
        load_seconds=load_seconds,
        swap_seconds=swap_seconds,
    )
    state.publisher.publish_many(
        [
            swapped,
            ModelActivated(
                node=state.node_name, model_id=model_id, previous_model_id=previous, by=by
            ),
        ]
    )
    return swapped
