"""POST /datasets: streamed to disk under a limit, checked, stored by content, queued."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import httpx
import redis
from rq import Queue

from bus import queues
from tests.gateway.rig import AUTH, NODE, Gateway, jsonl, upload


def test_a_good_file_is_stored_and_queued(gateway: Gateway, r: redis.Redis) -> None:
    data = jsonl(25)
    resp = upload(gateway, data, priority="high")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    digest = hashlib.sha256(data).hexdigest()
    assert body["sha256"] == digest and body["lines"] == 25 and body["rejects"] == 0
    assert body["name"] == "shard-7.jsonl" and body["priority"] == "high"
    assert body["queue"] == "train-high" and body["size_bytes"] == len(data)
    stored = Path(gateway.env["R3_DATA_DIR"]) / "datasets" / f"{digest}.jsonl"
    assert stored.read_bytes() == data
    # Nothing else left behind in the store (no temporary upload files).
    assert sorted(p.name for p in stored.parent.iterdir()) == [stored.name]
    job = Queue("train-high", connection=r).fetch_job(body["job_id"])
    assert job is not None and job.func_name == queues.TRAIN_FILE
    assert job.kwargs == {"path": str(stored.resolve()), "name": "shard-7.jsonl", "sha256": digest}
    assert queues.depths(r)["train-high"] == 1
    events = r.xrange("r3:stream:jobs")
    assert events and events[-1][1][b"type"] == b"job.queued"


def test_name_parameter_and_default_priority(gateway: Gateway, r: redis.Redis) -> None:
    resp = upload(gateway, jsonl(2), name="../../etc/evil.jsonl")
    assert resp.status_code == 200
    assert resp.json()["name"] == "evil.jsonl"  # a name, never a path
    assert resp.json()["queue"] == "train-normal"


def test_too_large_is_refused_and_nothing_is_stored(
    start_gateway: Callable[..., Gateway], r: redis.Redis
) -> None:
    gw = start_gateway(R3_UPLOAD_MAX_BYTES="10000")
    resp = upload(gw, jsonl(1000))
    assert resp.status_code == 413 and "R3_UPLOAD_MAX_BYTES" in resp.json()["error"]

    # Without a Content-Length (chunked), the limit is enforced while streaming.
    def chunks() -> object:
        boundary = b"xyz"
        yield b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="a.jsonl"\r\n\r\n'
        for _ in range(100):
            yield jsonl(10)
        yield b"\r\n--" + boundary + b"--\r\n"

    resp = httpx.post(
        gw.url + "/datasets",
        content=chunks(),  # type: ignore[arg-type]
        headers={**AUTH, "Content-Type": "multipart/form-data; boundary=xyz"},
        timeout=30,
    )
    assert resp.status_code == 413
    store = Path(gw.env["R3_DATA_DIR"]) / "datasets"
    assert not store.exists() or list(store.iterdir()) == []
    assert sum(queues.depths(r).values()) == 0


def test_not_jsonl_is_refused_with_the_line(gateway: Gateway, r: redis.Redis) -> None:
    resp = upload(gateway, jsonl(3) + b"this is not json\n")
    assert resp.status_code == 422
    error = resp.json()["error"]
    assert "shard-7.jsonl:4" in error and "not JSON" in error and "upload.part" not in error
    assert upload(gateway, b"[1, 2]\n").status_code == 422
    assert upload(gateway, b"").status_code == 422
    assert sum(queues.depths(r).values()) == 0
    store = Path(gateway.env["R3_DATA_DIR"]) / "datasets"
    assert list(store.iterdir()) == []


def test_token_and_form_are_required(gateway: Gateway, r: redis.Redis) -> None:
    assert upload(gateway, jsonl(2), headers={}).status_code == 401
    assert upload(gateway, jsonl(2), headers={"Authorization": "Bearer wrong"}).status_code == 403
    assert upload(gateway, jsonl(2), priority="urgent").status_code == 400
    raw = httpx.post(gateway.url + "/datasets", content=jsonl(2), headers=AUTH)
    assert raw.status_code == 400 and "multipart" in raw.json()["error"]
    other = httpx.post(
        gateway.url + "/datasets", files={"data": ("a.jsonl", jsonl(2))}, headers=AUTH
    )
    assert other.status_code == 400 and "`file`" in other.json()["error"]
    assert sum(queues.depths(r).values()) == 0


def test_without_any_token_configured_uploads_and_artifacts_are_off(
    start_gateway: Callable[..., Gateway],
) -> None:
    gw = start_gateway(R3_ADMIN_TOKEN="", R3_NODE_TOKEN="")
    headers = {"Authorization": f"Bearer {NODE}"}
    r = httpx.post(
        gw.url + "/datasets",
        headers=headers,
        files={"file": ("a.jsonl", b'{"messages": []}\n')},
        timeout=10,
    )
    assert r.status_code == 403 and "R3_NODE_TOKEN" in r.text
    r = httpx.get(
        gw.url + "/artifacts/checkpoints/step-00000001/manifest.json", headers=headers, timeout=10
    )
    assert r.status_code == 403 and "R3_NODE_TOKEN" in r.text
