"""The node-worker module and the `rq enqueue` examples of docs/jobs.md, run as written."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from bus import keys, queues
from bus.encoding import from_fields
from bus.events import EvalResult, JobFinished, JobStarted
from tests.node import jobs_fixtures
from tests.rig.node import RunningNode

jobs_env = jobs_fixtures.jobs_env
gateway_url = jobs_fixtures.gateway_url

REPO = Path(__file__).resolve().parents[2]
# The examples live in docs/jobs.md (the node jobs section).
SOURCES = (REPO / "docs" / "jobs.md",)
EXAMPLE = r"^rq enqueue .*services\.node\.worker\.jobs\.\w+.*$"


def node_examples() -> list[list[str]]:
    """The `rq enqueue … services.node.worker.jobs.*` commands of the first source that has them."""
    for source in SOURCES:
        text = source.read_text(encoding="utf-8").replace("\\\n", " ")
        found = [shlex.split(m.group(0)) for m in re.finditer(EXAMPLE, text, re.MULTILINE)]
        if found:
            return found
    sources = ", ".join(map(str, SOURCES))
    pytest.fail(f"no `rq enqueue … services.node.worker.jobs.*` example in {sources}")


def func_of(argv: list[str]) -> str:
    return next(a for a in argv if a.startswith("services.node.worker.jobs."))


def queue_of(argv: list[str]) -> str:
    return argv[argv.index("--queue") + 1]


def worker_env(redis_url: str, node: RunningNode) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("R3_")}
    env.update(
        {
            k: v
            for k, v in os.environ.items()
            if k in ("R3_DATA_DIR", "R3_GATEWAY_URL", "R3_NODE_TOKEN", "R3_MODEL")
        }
    )
    env.update(
        R3_REDIS_URL=redis_url,
        R3_NODE_URL=node.url,
        R3_NODE_NAME=node.state.node_name,
        R3_EVAL_MAX_TOKENS="8",
        R3_GEN_MAX_TOKENS="8",
        HF_HUB_OFFLINE="1",
    )
    return env


def stream(r: redis.Redis, key: str) -> list[object]:
    return [from_fields(raw) for _id, raw in r.xrange(key)]


@pytest.mark.slow
def test_the_readme_examples_run_under_the_worker_module_high_first(
    jobs_env: RunningNode, gateway_url: str, r: redis.Redis, redis_url: str
) -> None:
    examples = node_examples()
    funcs = {func_of(argv) for argv in examples}
    assert funcs == {queues.NODE_EVALUATE, queues.NODE_GENERATE}
    rq = str(Path(sys.executable).parent / "rq")
    # Queued in reverse, so the low-priority one is older: the worker must still take high first.
    ordered = sorted(examples, key=lambda argv: keys.NODE_QUEUES.index(queue_of(argv)))
    for argv in reversed(ordered):
        argv = [rq if i == 0 else a for i, a in enumerate(argv)]
        argv[argv.index("--url") + 1] = redis_url
        subprocess.run(argv, check=True, capture_output=True)
    assert sum(queues.depths(r)[q] for q in keys.NODE_QUEUES) == 2
    done = subprocess.run(
        [sys.executable, "-m", "services.node.worker", "--burst"],
        env=worker_env(redis_url, jobs_env),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    jobs = stream(r, keys.STREAM_JOBS)
    started = [e.func for e in jobs if isinstance(e, JobStarted)]
    assert started == [func_of(argv) for argv in ordered], "not taken high → normal → low"
    finished = [e for e in jobs if isinstance(e, JobFinished)]
    assert len(finished) == 2, done.stderr[-3000:]
    [result] = stream(r, keys.STREAM_EVAL)
    assert isinstance(result, EvalResult) and result.total > 0
    assert result.model_id == jobs_env.state.engine.active.version
    generated = next(e.result for e in finished if e.func == queues.NODE_GENERATE)
    assert generated is not None and generated["upload"]["queue"] == "train-low"
    assert queues.depths(r)["train-low"] == 1


def test_the_worker_listens_on_the_node_queues_in_priority_order(r: redis.Redis) -> None:
    from services.node.worker.runner import build_worker

    worker = build_worker(r)
    assert [q.name for q in worker.queues] == list(keys.NODE_QUEUES)
    assert keys.NODE_QUEUES == ("node-high", "node-normal", "node-low")


def test_the_worker_waits_for_the_node_and_gives_up_when_told(jobs_env: RunningNode) -> None:
    from services.node.worker.node_client import NodeUnavailable
    from services.node.worker.runner import wait_for_node

    assert wait_for_node(jobs_env.url) == jobs_env.state.engine.active.version
    started = time.monotonic()
    with pytest.raises(NodeUnavailable, match=r"127\.0\.0\.1:9"):
        wait_for_node("http://127.0.0.1:9", timeout=0.5, every=0.1)
    assert time.monotonic() - started < 10


def test_the_old_job_paths_still_name_the_jobs() -> None:
    # Jobs queued before the node-worker got its own package name `services.node.jobs.*`.
    from rq.utils import import_attribute

    from services.node.worker import jobs

    assert import_attribute("services.node.jobs.evaluate") is jobs.evaluate
    assert import_attribute("services.node.jobs.generate") is jobs.generate
    assert queues.NODE_EVALUATE == "services.node.worker.jobs.evaluate"


def test_the_worker_process_loads_no_torch() -> None:
    # The node-worker is a client of the node: the serving engine (and torch) stay out of it.
    code = (
        "import sys, services.node.worker.runner, services.node.worker.jobs; "
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('services.node.s')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
    )
    assert out.stdout.strip() == "[]", out.stdout
