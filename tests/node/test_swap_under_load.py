"""Hot swaps under load: 20 streaming clients (the official openai client) while the watcher
pulls and swaps in 5 checkpoints one after another. No request may fail, and every chunk of
a response must come from the one model version the response started on."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from openai import AsyncOpenAI

from bus import keys
from bus.encoding import from_fields
from bus.publish import Publisher
from services.node.pulling.checkpoint_watcher import CheckpointWatcher
from services.trainer.checkpoint import CheckpointStore, publish_ready
from tests.node.swap_fixtures import NODE_TOKEN, gateway, save_checkpoint
from tests.rig.node import RunningNode

CLIENTS = 20
SWAPS = 5


async def stream_once(client: AsyncOpenAI, n: int) -> tuple[set[str], str]:
    """One streamed completion: the versions its chunks named, and its text."""
    stream = await client.chat.completions.create(
        model="active",
        messages=[{"role": "user", "content": f"question {n}: what is 2 + {n}?"}],
        max_tokens=12,
        temperature=0.0,
        stream=True,
    )
    versions: set[str] = set()
    text = []
    async for chunk in stream:
        versions.add(chunk.model)
        text.extend(c.delta.content or "" for c in chunk.choices)
    return versions, "".join(text)


async def client_loop(
    url: str, done: threading.Event, results: list[set[str]], errors: list[BaseException], i: int
) -> None:
    client = AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)
    n = 0
    try:
        while not done.is_set() or n < 2:  # at least two full requests per client
            try:
                versions, _ = await stream_once(client, i * 1000 + n)
                results.append(versions)
            except Exception as exc:  # every failure is collected and fails the test below
                errors.append(exc)
            n += 1
    finally:
        await client.close()


@pytest.mark.slow
def test_twenty_streaming_clients_through_five_swaps_see_no_failure_and_no_mixed_version(
    node_factory: Callable[..., RunningNode],
    tmp_path: Path,
    embedded_dir: Path,
    r: redis.Redis,
) -> None:
    store = CheckpointStore(tmp_path / "trainer")
    infos = [
        save_checkpoint(store, embedded_dir, step=100 + k, with_optimizer=False, nudge=0.002 * k)
        for k in range(1, SWAPS + 1)
    ]
    with gateway(store.root) as gateway_url:
        node = node_factory(gateway_url=gateway_url, node_token=NODE_TOKEN, checkpoint_watch=False)
        first = node.state.engine.active.version
        watcher = CheckpointWatcher(node.state, start_id="0", block_ms=100)
        done = threading.Event()
        results: list[set[str]] = []
        errors: list[BaseException] = []
        swap_outcomes: list[str] = []

        def settle(count: int) -> None:
            # Let some requests finish on the model now serving (others stay in flight).
            target = len(results) + count
            for _ in range(1200):
                if len(results) >= target or errors:
                    return
                threading.Event().wait(0.05)

        def swap_all() -> None:
            try:
                publisher = Publisher(r)
                for info in infos:
                    settle(CLIENTS // 2)
                    publish_ready(publisher, info)
                    swap_outcomes.extend(o.result for o in watcher.group.run_once(block_ms=1000))
                settle(CLIENTS // 2)
            finally:
                done.set()

        async def main() -> None:
            swapper = asyncio.create_task(asyncio.to_thread(swap_all))
            await asyncio.gather(
                *(client_loop(node.url, done, results, errors, i) for i in range(CLIENTS))
            )
            await swapper

        asyncio.run(main())

    assert errors == [], errors[:3]
    assert swap_outcomes == ["acked"] * SWAPS
    swapped = [
        from_fields(raw, entry_id=eid.decode(), stream=keys.STREAM_MODELS)
        for eid, raw in r.xrange(keys.STREAM_MODELS)
    ]
    swapped_ids = [e.model_id for e in swapped if e.type == "model.swapped"]  # type: ignore[attr-defined]
    assert swapped_ids == [info.id for info in infos]
    assert node.state.engine.active.version == infos[-1].id
    # Each response came from exactly one version, and the load spanned the swaps.
    assert all(len(v) == 1 for v in results), [v for v in results if len(v) != 1][:3]
    seen = {next(iter(v)) for v in results}
    assert seen == {first, *(info.id for info in infos)}  # every version served some
    assert len(results) >= CLIENTS * 2
