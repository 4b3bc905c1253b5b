"""The checkpoint watcher: on `checkpoint.ready`, pull and verify, register, activate by policy.

It reads the checkpoints stream in this node's consumer group (a WorkGroup), so an entry is
acknowledged only once its checkpoint is on disk, verified, registered and (by policy)
serving. Any failure — a corrupt or truncated file, a manifest mismatch, a download cut
midway, a load that runs out of memory — publishes `model.swap_failed` with the reason and
leaves the entry pending: the serving model is untouched, the retry resumes the download,
and after R3_MAX_DELIVERIES failed deliveries the WorkGroup dead-letters the entry (the
partial download is then removed and an alert raised).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import threading
from typing import Any, cast

from bus import keys
from bus.encoding import as_str
from bus.events import Alert, CheckpointPulled, CheckpointReady, Event, ModelSwapFailed
from bus.workgroup import WorkGroup
from checkpoints.manifest import parse_id
from services.node.errors import ActiveModelDeleteError, UnknownModelError
from services.node.pulling.activation import activate
from services.node.pulling.puller import PULLED, Puller, PullResult, discard_staging
from services.node.state import NodeState

log = logging.getLogger(__name__)


class CheckpointWatcher:
    """One node's reader of `checkpoint.ready`. `run_once` handles what is waiting."""

    def __init__(
        self,
        state: NodeState,
        *,
        puller: Puller | None = None,
        consumer: str | None = None,
        start_id: str = "$",
        reclaim_idle_ms: int | None = None,
        max_deliveries: int | None = None,
        block_ms: int = 1_000,
    ) -> None:
        self.state = state
        settings = state.settings
        token = settings.node_token.get_secret_value() if settings.node_token else None
        self.puller = puller or Puller(
            base_url=settings.gateway_url,
            models_dir=settings.models_dir,
            token=token,
            skip=settings.pull_skip_files,
            retries=settings.pull_retries,
            timeout_s=settings.pull_timeout_seconds,
        )
        self.group = WorkGroup(
            state.redis,
            stream=keys.STREAM_CHECKPOINTS,
            group=keys.node_checkpoints_group(state.node_name),
            consumer=consumer or state.node_name,
            handler=self.handle,
            start_id=start_id,
            reclaim_idle_ms=reclaim_idle_ms,
            max_deliveries=max_deliveries,
            block_ms=block_ms,
            count=1,  # one checkpoint at a time: each may be gigabytes
        )
        self.val_loss_key = keys.node_val_loss_key(state.node_name)

    # -- the handler --------------------------------------------------------------------------

    def handle(self, event: Event, entry_id: str) -> None:
        """Raise to leave the entry pending (retried, then dead-lettered); return to ack."""
        if not isinstance(event, CheckpointReady):
            return  # checkpoint.pruned and the like: nothing for a node to do
        attempt = self._deliveries(entry_id)
        try:
            self._pull_and_swap(event)
        except Exception as exc:  # every failure is reported, whatever raised it
            reason = getattr(exc, "reason", None) or f"{type(exc).__name__}: {exc}"
            self._failed(event, reason, attempt)
            raise

    def _deliveries(self, entry_id: str) -> int:
        rows = cast(
            list[dict[str, Any]],
            self.state.redis.xpending_range(
                self.group.stream, self.group.group, min=entry_id, max=entry_id, count=1
            ),
        )
        return int(rows[0]["times_delivered"]) if rows else 1

    def _pull_and_swap(self, event: CheckpointReady) -> None:
        state = self.state
        result = self.puller.pull(event.checkpoint_id, manifest_sha256=event.manifest_sha256)
        state.publisher.publish(
            CheckpointPulled(
                node=state.node_name,
                checkpoint_id=event.checkpoint_id,
                bytes=result.fetched_bytes,
                download_seconds=result.download_seconds,
                resumed_bytes=result.resumed_bytes,
            )
        )
        state.registry.register(
            event.checkpoint_id,
            path=str(result.path),
            source=event.host or "trainer",
            step=event.step,
        )
        if event.val_loss is not None:
            state.redis.hset(self.val_loss_key, event.checkpoint_id, repr(event.val_loss))
        go, why = self._should_activate(event)
        log.info("checkpoint %s pulled; activate: %s (%s)", event.checkpoint_id, go, why)
        if go:
            self._activate(result)
        try:
            self.prune()
        except Exception:
            # Housekeeping: the checkpoint is pulled and (by policy) serving, so the entry is
            # done; a pruning error must not turn it into a swap failure and a redelivery.
            log.exception("pruning old pulled checkpoints failed; trying again after the next")

    def _activate(self, result: PullResult) -> None:
        activate(
            self.state,
            result.checkpoint_id,
            by="auto",
            bytes=result.fetched_bytes,
            download_seconds=result.download_seconds,
        )

    def _should_activate(self, event: CheckpointReady) -> tuple[bool, str]:
        policy = self.state.settings.swap_policy
        if policy == "manual":
            return False, "R3_SWAP_POLICY=manual: activate it with POST /models/set_active"
        registry = self.state.registry
        active = registry.active_id()
        if active == event.checkpoint_id:
            return False, "it is already serving"
        if active is not None:
            try:
                serving_step = registry.get(active).step
            except UnknownModelError:
                serving_step = None
            # A reclaimed old entry must not replace a newer checkpoint already serving.
            if serving_step is not None and serving_step > event.step:
                return False, f"step {serving_step} is serving, newer than this step {event.step}"
        if policy == "every":
            return True, "R3_SWAP_POLICY=every"
        if event.val_loss is None:
            return False, "R3_SWAP_POLICY=improving and the checkpoint carries no val_loss"
        current = self._val_loss(active)
        if current is None:
            return True, "the serving model has no val_loss to beat"
        if event.val_loss < current:
            return True, f"val_loss {event.val_loss:.4f} < serving {current:.4f}"
        return False, f"val_loss {event.val_loss:.4f} does not improve on {current:.4f}"

    def _val_loss(self, model_id: str | None) -> float | None:
        if model_id is None:
            return None
        raw = self.state.redis.hget(self.val_loss_key, model_id)
        return None if raw is None else float(as_str(raw))

    def _failed(self, event: CheckpointReady, reason: str, attempt: int) -> None:
        state = self.state
        serving = state.engine.active.version
        log.error(
            "checkpoint %s not swapped in (attempt %d of %d), %s keeps serving: %s",
            event.checkpoint_id,
            attempt,
            self.group.max_deliveries,
            serving,
            reason,
        )
        events: list[Event] = [
            ModelSwapFailed(
                node=state.node_name,
                checkpoint_id=event.checkpoint_id,
                reason=reason,
                attempt=attempt,
                serving_model_id=serving,
            )
        ]
        if attempt >= self.group.max_deliveries:  # the WorkGroup dead-letters it next
            discard_staging(self.puller.models_dir, event.checkpoint_id)
            events.append(
                Alert(
                    level="error",
                    source="node",
                    code="swap_failed",
                    message=f"node {state.node_name} gave up on checkpoint "
                    f"{event.checkpoint_id} after {attempt} attempts (dead-lettered); "
                    f"{serving} keeps serving. Last reason: {reason}",
                )
            )
        state.publisher.publish_many(events)

    # -- keep the last K ----------------------------------------------------------------------

    def prune(self) -> list[str]:
        """Delete pulled checkpoints beyond the newest R3_KEEP_MODELS; never the active one.

        Only directories this watcher pulled (they hold `pulled.json`) are considered, so a
        model copied in by hand is never touched.
        """
        models_dir = self.puller.models_dir
        if not models_dir.is_dir():
            return []
        pulled = sorted(
            (
                (order, path)
                for path in models_dir.iterdir()
                if (order := parse_id(path.name)) is not None and (path / PULLED).is_file()
            ),
            reverse=True,
        )
        active = self.state.registry.active_id()
        removed = []
        for _order, path in pulled[self.state.settings.keep_models :]:
            if path.name == active:
                continue
            try:
                self.state.registry.delete(path.name)
            except UnknownModelError:
                pass  # unregistered by hand already: the files still go
            except ActiveModelDeleteError:
                continue  # activated meanwhile
            self.state.redis.hdel(self.val_loss_key, path.name)
            shutil.rmtree(path)
            removed.append(path.name)
            log.info(
                "removed pulled checkpoint %s (keeping the newest %d)",
                path.name,
                self.state.settings.keep_models,
            )
        return removed

    # -- running ------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        try:
            self.group.run(stop)
        finally:
            self.puller.close()


async def run(state: NodeState) -> None:
    """The app's background task: the watcher in a thread until the app shuts down."""
    if not state.settings.checkpoint_watch:
        log.info("checkpoint watcher off (R3_CHECKPOINT_WATCH=false)")
        return
    watcher = CheckpointWatcher(state)
    state.checkpoint_watcher = watcher
    stop = threading.Event()
    try:
        await asyncio.to_thread(watcher.run, stop)
    finally:
        stop.set()  # the thread leaves within one XREADGROUP block (1 s)
