"""GET /artifacts/checkpoints/...: Range, ETag, tokens, and every way out of the store refused."""

from __future__ import annotations

import hashlib
import http.client
import os
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from checkpoints.manifest import MANIFEST, MANIFEST_DIGEST, FileEntry, Manifest
from tests.gateway.rig import ADMIN, NODE, Gateway

CKPT = "step-00000100"
AUTH = {"Authorization": f"Bearer {NODE}"}


def write_checkpoint(root: Path, checkpoint_id: str = CKPT) -> dict[str, bytes]:
    """A published checkpoint in the trainer's layout: files, manifest.json, manifest.sha256."""
    base = root / checkpoint_id
    (base / "sub").mkdir(parents=True)
    files = {
        "model.safetensors": os.urandom(300_000),
        "config.json": b'{"model_type": "qwen3"}',
        "sub/extra.bin": b"x" * 1000,
    }
    for name, data in files.items():
        (base / name).write_bytes(data)
    manifest = Manifest(
        id=checkpoint_id,
        step=100,
        created=datetime.now(UTC),
        model_name="tiny",
        files=[
            FileEntry(path=n, size=len(d), sha256=hashlib.sha256(d).hexdigest())
            for n, d in files.items()
        ],
        total_bytes=sum(len(d) for d in files.values()),
    )
    raw = manifest.model_dump_json().encode()
    (base / MANIFEST).write_bytes(raw)
    (base / MANIFEST_DIGEST).write_text(f"{hashlib.sha256(raw).hexdigest()}  {MANIFEST}\n")
    return {**files, MANIFEST: raw}


@pytest.fixture
def store(gateway: Gateway) -> dict[str, bytes]:
    return write_checkpoint(Path(gateway.env["R3_CHECKPOINT_DIR"]))


def url(gw: Gateway, file: str, checkpoint_id: str = CKPT) -> str:
    return f"{gw.url}/artifacts/checkpoints/{checkpoint_id}/{file}"


def test_whole_file_with_the_manifest_sha256_as_etag(
    gateway: Gateway, store: dict[str, bytes]
) -> None:
    data = store["model.safetensors"]
    resp = httpx.get(url(gateway, "model.safetensors"), headers=AUTH, timeout=10)
    assert resp.status_code == 200
    assert resp.content == data
    assert resp.headers["etag"] == f'"{hashlib.sha256(data).hexdigest()}"'
    assert resp.headers["accept-ranges"] == "bytes"
    nested = httpx.get(url(gateway, "sub/extra.bin"), headers=AUTH, timeout=10)
    assert nested.status_code == 200 and nested.content == store["sub/extra.bin"]
    manifest = httpx.get(url(gateway, MANIFEST), headers=AUTH, timeout=10)
    assert manifest.content == store[MANIFEST]
    assert manifest.headers["etag"] == f'"{hashlib.sha256(store[MANIFEST]).hexdigest()}"'


def test_range_resume_and_unsatisfiable_range(gateway: Gateway, store: dict[str, bytes]) -> None:
    data = store["model.safetensors"]
    part = httpx.get(
        url(gateway, "model.safetensors"), headers={**AUTH, "Range": "bytes=1000-"}, timeout=10
    )
    assert part.status_code == 206
    assert part.content == data[1000:]
    assert part.headers["content-range"] == f"bytes 1000-{len(data) - 1}/{len(data)}"
    middle = httpx.get(
        url(gateway, "model.safetensors"), headers={**AUTH, "Range": "bytes=10-19"}, timeout=10
    )
    assert middle.status_code == 206 and middle.content == data[10:20]
    suffix = httpx.get(
        url(gateway, "model.safetensors"), headers={**AUTH, "Range": "bytes=-5"}, timeout=10
    )
    assert suffix.status_code == 206 and suffix.content == data[-5:]
    beyond = httpx.get(
        url(gateway, "model.safetensors"),
        headers={**AUTH, "Range": f"bytes={len(data)}-"},
        timeout=10,
    )
    assert beyond.status_code == 416
    assert beyond.headers["content-range"] == f"bytes */{len(data)}"


def test_if_none_match_and_if_range(gateway: Gateway, store: dict[str, bytes]) -> None:
    data = store["config.json"]
    etag = f'"{hashlib.sha256(data).hexdigest()}"'
    same = httpx.get(url(gateway, "config.json"), headers={**AUTH, "If-None-Match": etag})
    assert same.status_code == 304 and same.content == b""
    other = httpx.get(url(gateway, "config.json"), headers={**AUTH, "If-None-Match": '"abc"'})
    assert other.status_code == 200 and other.content == data
    # A Range with a stale If-Range gets the whole (new) file, never a spliced one.
    stale = httpx.get(
        url(gateway, "config.json"),
        headers={**AUTH, "Range": "bytes=2-", "If-Range": '"stale"'},
    )
    assert stale.status_code == 200 and stale.content == data
    fresh = httpx.get(
        url(gateway, "config.json"), headers={**AUTH, "Range": "bytes=2-", "If-Range": etag}
    )
    assert fresh.status_code == 206 and fresh.content == data[2:]


def test_tokens(gateway: Gateway, store: dict[str, bytes]) -> None:
    target = url(gateway, "config.json")
    missing = httpx.get(target)
    assert missing.status_code == 401 and "Bearer" in missing.headers["www-authenticate"]
    assert "R3_NODE_TOKEN" in missing.json()["error"]
    assert httpx.get(target, headers={"Authorization": "Bearer nope"}).status_code == 403
    assert httpx.get(target, headers={"Authorization": f"Basic {NODE}"}).status_code == 401
    assert httpx.get(target, headers={"Authorization": f"Bearer {ADMIN}"}).status_code == 200
    assert httpx.get(target, headers=AUTH).status_code == 200


def test_no_path_leaves_the_checkpoint_store(
    gateway: Gateway, store: dict[str, bytes], tmp_path: Path
) -> None:
    root = Path(gateway.env["R3_CHECKPOINT_DIR"])
    secret = tmp_path / "secret.txt"
    secret.write_text("do not serve")
    (root / "outside.txt").write_text("in the root but in no checkpoint")
    (root / CKPT / "unlisted.txt").write_text("in the directory, not in the manifest")
    (root / CKPT / "link.bin").symlink_to(secret)
    # A manifest that lists a symlink pointing out of the store is not trusted either.
    evil = "step-00000200"
    write_checkpoint(root, evil)
    (root / evil / "model.safetensors").unlink()
    (root / evil / "model.safetensors").symlink_to(secret)
    (root / ".tmp-step-00000300-abcd").mkdir()
    (root / ".tmp-step-00000300-abcd" / MANIFEST).write_text("{}")

    base = f"{gateway.url}/artifacts/checkpoints"
    attempts = [
        f"{base}/{CKPT}/../outside.txt",
        f"{base}/{CKPT}/..%2Foutside.txt",
        f"{base}/{CKPT}/%2E%2E/%2E%2E/secret.txt",
        f"{base}/{CKPT}/%2Fetc%2Fpasswd",
        f"{base}/{CKPT}//etc/passwd",
        f"{base}/{CKPT}/unlisted.txt",
        f"{base}/{CKPT}/link.bin",
        f"{base}/{evil}/model.safetensors",
        f"{base}/..%2F{CKPT}/config.json",
        f"{base}/.tmp-step-00000300-abcd/{MANIFEST}",
        f"{base}/step-00000999/config.json",
    ]
    host = gateway.url.removeprefix("http://")
    for attempt in attempts:
        # http.client sends the path byte for byte; httpx would resolve the dots itself.
        conn = http.client.HTTPConnection(host, timeout=10)
        conn.request("GET", attempt.removeprefix(gateway.url), headers=AUTH)
        resp = conn.getresponse()
        body = resp.read()
        conn.close()
        assert resp.status == 404, (attempt, resp.status, body[:200])
        assert b"do not serve" not in body and b"root:" not in body
