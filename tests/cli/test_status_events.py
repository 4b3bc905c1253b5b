from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import redis
from click.testing import CliRunner

from bus import keys, queues
from bus.events import Alert, TrainStep
from bus.publish import Publisher
from bus.status import StatusStore
from bus.worker import EventWorker
from services.cli.main import cli


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_status_json_shows_queues_workers_training_and_nodes(r: redis.Redis) -> None:
    queues.enqueue(
        r, "tests.fixtures.jobs.record", kind="train", priority="low", kwargs={"tag": "a"}
    )
    queues.enqueue(
        r, "tests.fixtures.jobs.record", kind="node", priority="high", kwargs={"tag": "b"}
    )
    worker = EventWorker(queues.queues(r, "train"), connection=r, name="trainer-1")
    worker.register_birth()
    StatusStore(r).update(
        status="training", current_step=12, total_steps=100, loss=1.25, current_file="a.jsonl"
    )
    r.sadd(keys.NODES, "node-3090")
    r.set(keys.node_active_model_key("node-3090"), "step-000100")  # the node's registry
    data = json.loads(invoke("status", "--json").output)
    assert data["queues"]["train"] == {"high": 0, "normal": 0, "low": 1}
    assert data["queues"]["node"] == {"high": 1, "normal": 0, "low": 0}
    assert [w["name"] for w in data["workers"]] == ["trainer-1"]
    assert data["workers"][0]["queues"] == ["train-high", "train-normal", "train-low"]
    assert data["training"]["current_step"] == 12 and data["training"]["loss"] == 1.25
    assert data["nodes"] == {"node-3090": {"active_model": "step-000100"}}
    text = invoke("status").output
    assert "trainer-1" in text and "step 12/100" in text and "step-000100" in text
    worker.register_death()


def test_events_prints_recent_entries_in_order(r: redis.Redis) -> None:
    pub = Publisher(r)
    for i in range(30):
        pub.publish(TrainStep(current_step=i, loss=2.0, learning_rate=1e-3))
    pub.publish(Alert(level="warning", source="trainer", code="oom_recovered", message="x"))
    out = invoke("events", "--stream", "training", "--last", "5").output.splitlines()
    assert [line.split()[2] for line in out] == ["train.step"] * 5
    assert [line.split("current_step=")[1].split()[0] for line in out] == [
        "25",
        "26",
        "27",
        "28",
        "29",
    ]
    both = invoke("events", "--last", "1", "--json").output.splitlines()
    kinds = [json.loads(line)["type"] for line in both]
    assert kinds == ["train.step", "alert"]  # merged in id order


def test_events_since_an_id_resumes_after_it(r: redis.Redis) -> None:
    pub = Publisher(r)
    ids = [pub.publish(TrainStep(current_step=i, loss=1.0, learning_rate=1e-3)) for i in range(4)]
    out = invoke("events", "--stream", "training", "--since", ids[1]).output.splitlines()
    assert [line.split()[0] for line in out] == ids[2:]


def test_events_follow_prints_what_arrives_later(r: redis.Redis, redis_url: str) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "events", "--follow", "--stream", "alerts"],
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ),
    )
    try:
        time.sleep(1.5)
        Publisher(redis.Redis.from_url(redis_url)).publish(
            Alert(level="error", source="node", code="swap_failed", message="bad sha")
        )
        line = _readline(proc, timeout=10)
        assert " alerts alert " in line and "code=swap_failed" in line
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _readline(proc, timeout: float) -> str:
    box: list[str] = []
    t = threading.Thread(target=lambda: box.append(proc.stdout.readline()), daemon=True)
    t.start()
    t.join(timeout)
    assert box, "no line within the timeout"
    return box[0]
