"""POST /datasets under hostile input and a missing bus: a 4xx or 503 that says what
happened (stored? queued?), never a 500, never a cut file queued as complete."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import httpx
import pytest
import redis

from bus import queues
from tests.faults import redis_server
from tests.faults.redis_server import KillableRedis
from tests.gateway.rig import AUTH, Gateway, gateway_env, jsonl, upload

HEAD = b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="a.jsonl"\r\n\r\n'
MULTIPART = {**AUTH, "Content-Type": "multipart/form-data; boundary=xyz"}
killable_redis = redis_server.killable_redis  # a Redis this module may kill


def stored_files(gw: Gateway) -> list[str]:
    store = Path(gw.env["R3_DATA_DIR"]) / "datasets"
    return sorted(p.name for p in store.iterdir()) if store.exists() else []


def test_a_body_without_its_closing_boundary_is_never_queued(
    gateway: Gateway, r: redis.Redis
) -> None:
    resp = httpx.post(gateway.url + "/datasets", content=HEAD + jsonl(5), headers=MULTIPART)
    assert resp.status_code == 400 and "closing boundary" in resp.json()["error"]
    assert sum(queues.depths(r).values()) == 0 and stored_files(gateway) == []


@pytest.mark.parametrize(
    "body",
    [
        b"--xyz\r\nContent-Disposition form-data\r\n\r\nx\r\n--xyz--\r\n",  # header without ':'
        b"--abc\r\n\r\n",  # another boundary than the declared one
        b"--xyz\r\n" + b"X" * 70_000 + b": y\r\n\r\n",  # a header past the parser's limit
    ],
)
def test_a_malformed_multipart_body_is_a_400_not_a_500(
    gateway: Gateway, r: redis.Redis, body: bytes
) -> None:
    resp = httpx.post(gateway.url + "/datasets", content=body, headers=MULTIPART)
    assert resp.status_code == 400, resp.text
    assert sum(queues.depths(r).values()) == 0 and stored_files(gateway) == []


@pytest.mark.parametrize(
    ("line", "why"),
    [
        (b'{"messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n", "nested too deeply"),
        (b'{"n": ' + b"9" * 5000 + b"}\n", "4300"),
    ],
)
def test_a_line_json_loads_refuses_is_a_422_with_its_line(
    gateway: Gateway, r: redis.Redis, line: bytes, why: str
) -> None:
    resp = upload(gateway, jsonl(2) + line)
    assert resp.status_code == 422, resp.text
    error = resp.json()["error"]
    assert "shard-7.jsonl:3: not JSON" in error and why in error
    assert sum(queues.depths(r).values()) == 0 and stored_files(gateway) == []


def test_a_utf8_bom_is_accepted_and_no_server_path_is_answered(
    gateway: Gateway, r: redis.Redis
) -> None:
    resp = upload(gateway, b"\xef\xbb\xbf" + jsonl(3))
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["lines"] == 3 and body["queued"] is True
    assert body["path"] == f"datasets/{body['sha256']}.jsonl"
    assert gateway.env["R3_DATA_DIR"] not in json.dumps(body)


def test_an_upload_while_redis_is_down_says_stored_not_queued(
    killable_redis: KillableRedis, tmp_path: Path
) -> None:
    env = gateway_env(killable_redis.url, tmp_path, {})
    gw = Gateway(env, int(env["R3_GATEWAY_PORT"]), tmp_path / "gateway.log")
    gw.start()
    try:
        killable_redis.kill()
        resp = upload(gw, jsonl(4))
        assert resp.status_code == 503, resp.text
        body = resp.json()
        assert body["queued"] is False and body["stored"] is True
        assert "NOT queued" in body["error"] and "Retry-After" in resp.headers
        assert stored_files(gw) == [f"{body['sha256']}.jsonl"]
        killable_redis.start()
        again = upload(gw, jsonl(4))  # the retry the answer asked for
        assert again.status_code == 200 and again.json()["queued"] is True
        assert again.json()["new"] is False
        assert queues.depths(killable_redis.client())["train-normal"] == 1
    finally:
        gw.stop()


@pytest.mark.parametrize("where", ["receiving", "storing"])
def test_a_full_disk_is_a_507_that_says_nothing_was_stored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    from fastapi.testclient import TestClient

    from services.dataset_store import DatasetStore
    from services.gateway import uploads
    from services.gateway.app import create_app
    from services.gateway.config import GatewaySettings

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    if where == "receiving":
        monkeypatch.setattr(uploads._FileField, "_data", full)
    else:
        monkeypatch.setattr(DatasetStore, "add", full)
    settings = GatewaySettings(data_dir=tmp_path, node_token=AUTH["Authorization"].split()[1])
    client = TestClient(create_app(settings), raise_server_exceptions=False)
    resp = client.post(
        "/datasets", files={"file": ("a.jsonl", jsonl(3), "application/x-ndjson")}, headers=AUTH
    )
    assert resp.status_code == 507, resp.text
    assert resp.json()["stored"] is False and "disk is full" in resp.json()["error"]
    assert str(tmp_path) not in resp.text
    assert [p.name for p in (tmp_path / "datasets").iterdir()] == []
