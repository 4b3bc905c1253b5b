"""The registry: Redis storage, the users' routes, rollback, and what the node starts on."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import redis

from bus import keys
from services.node.errors import ActiveModelDeleteError, RegistryError, UnknownModelError
from services.node.pulling.registry import Registry
from tests.rig.node import RunningNode


def test_entries_live_in_the_nodes_redis_hash(r: redis.Redis) -> None:
    registry = Registry(r, "n1")
    registry.register("a", path="/models/a", source="4090", step=10)
    registry.register("b", url="http://gw/artifacts/checkpoints/b/")
    assert registry.ids() == ["a", "b"]
    assert r.hexists(keys.node_models_key("n1"), "a")
    assert registry.get("a").step == 10 and registry.get("b").url
    assert [e.id for e in registry.list()] == ["a", "b"]
    assert Registry(r, "another-node").ids() == []  # per node


def test_active_and_delete_rules(r: redis.Redis) -> None:
    registry = Registry(r, "n1")
    registry.register("a", path="/a")
    registry.register("b", path="/b")
    registry.set_active("a")
    assert registry.active_id() == "a"
    with pytest.raises(ActiveModelDeleteError, match="activate another one first"):
        registry.delete("a")
    assert registry.delete("b").id == "b"
    with pytest.raises(UnknownModelError, match="register it first"):
        registry.set_active("b")
    with pytest.raises(RegistryError, match="not allowed"):
        registry.register("../etc", path="/x")


def register(node: RunningNode, body: dict[str, object]) -> httpx.Response:
    return httpx.post(f"{node.url}/models/register", json=body, headers=node.admin_headers)


def set_active(node: RunningNode, model_id: str) -> httpx.Response:
    return httpx.post(
        f"{node.url}/models/set_active",
        json={"id": model_id},
        headers=node.admin_headers,
        timeout=60,
    )


def serving(node: RunningNode) -> str:
    r = httpx.post(
        f"{node.url}/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    assert r.headers["X-Regime3-Model"] == r.json()["model"]
    return str(r.json()["model"])


def test_node_starts_on_the_default_and_registers_it(node: RunningNode) -> None:
    listing = httpx.get(f"{node.url}/models").json()
    assert listing["active"] == listing["serving"] == "embedded-v1"
    (entry,) = listing["models"]
    assert entry["source"] == "default" and entry["active"] is True


def test_register_activate_rollback_delete(node: RunningNode, nudged_model_dir: Path) -> None:
    r = register(node, {"id": "ckpt-1", "path": str(nudged_model_dir), "source": "4090"})
    assert r.status_code == 200, r.text
    r = set_active(node, "ckpt-1")
    assert r.status_code == 200, r.text
    assert r.json()["previous_model_id"] == "embedded-v1"
    assert serving(node) == "ckpt-1"
    models = httpx.get(f"{node.url}/v1/models").json()["data"]
    assert [m["id"] for m in models] == ["ckpt-1"]
    # Rollback: the previous model made active again.
    assert set_active(node, "embedded-v1").status_code == 200
    assert serving(node) == "embedded-v1"
    r = httpx.delete(f"{node.url}/models/embedded-v1", headers=node.admin_headers)
    assert r.status_code == 409 and "active model" in r.json()["error"]["message"]
    r = httpx.delete(f"{node.url}/models/ckpt-1", headers=node.admin_headers)
    assert r.status_code == 200
    assert nudged_model_dir.is_dir()  # the registry forgets; the files stay
    r = httpx.delete(f"{node.url}/models/ckpt-1", headers=node.admin_headers)
    assert r.status_code == 404


def test_register_by_id_finds_the_users_layout(node: RunningNode, nudged_model_dir: Path) -> None:
    """Like the users' `{"id": "checkpoint_name"}` after an rsync into the models dir."""
    target = node.settings.models_dir / "rsynced"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.symlink_to(nudged_model_dir, target_is_directory=True)
    r = register(node, {"id": "rsynced", "source": "4090"})
    assert r.status_code == 200, r.text
    assert r.json()["model"]["path"] == str(target)
    assert set_active(node, "rsynced").status_code == 200


def test_register_refuses_incomplete_or_bad_entries(node: RunningNode, tmp_path: Path) -> None:
    r = register(node, {"id": "nothing-here"})
    assert r.status_code == 400 and "does not exist" in r.json()["error"]["message"]
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text("{}")
    r = register(node, {"id": "half", "path": str(tmp_path / "half")})
    assert r.status_code == 400 and "no weights" in r.json()["error"]["message"]
    r = register(node, {"id": "bad/id", "path": str(tmp_path)})
    assert r.status_code == 400
    r = register(node, {"path": str(tmp_path)})
    assert r.status_code == 400 and r.json()["error"]["param"] == "id"


def test_set_active_failures_keep_the_old_model(node: RunningNode, tmp_path: Path) -> None:
    assert set_active(node, "never-registered").status_code == 404
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in node.state.engine.active.path.iterdir():  # type: ignore[union-attr]
        (broken / f.name).write_bytes(f.read_bytes())
    assert register(node, {"id": "broken", "path": str(broken)}).status_code == 200
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    r = set_active(node, "broken")
    assert r.status_code == 400, r.text
    assert "Still serving 'embedded-v1'" in r.json()["error"]["message"]
    assert serving(node) == "embedded-v1"
    assert httpx.get(f"{node.url}/models").json()["active"] == "embedded-v1"


def test_restart_serves_the_registrys_active_model(
    node_factory: Callable[..., RunningNode], nudged_model_dir: Path
) -> None:
    first = node_factory()
    assert register(first, {"id": "ckpt-2", "path": str(nudged_model_dir)}).status_code == 200
    assert set_active(first, "ckpt-2").status_code == 200
    first.stop()
    second = node_factory()
    assert serving(second) == "ckpt-2"


def test_restart_falls_back_to_the_default_when_the_active_does_not_load(
    node_factory: Callable[..., RunningNode], r: redis.Redis, tmp_path: Path
) -> None:
    registry = Registry(r, "test-node")
    registry.register("gone", path=str(tmp_path / "deleted-meanwhile"))
    registry.set_active("gone")
    node = node_factory()
    assert serving(node) == "embedded-v1"
    assert registry.active_id() == "embedded-v1"


def test_the_users_curl_commands_work_as_written(node: RunningNode, nudged_model_dir: Path) -> None:
    """Questionnaire C2: `curl -X POST …/models/register -d '{…}'` — curl -d sends
    application/x-www-form-urlencoded, and the node must still read the JSON."""
    target = node.settings.models_dir / "checkpoint_name"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.symlink_to(nudged_model_dir, target_is_directory=True)
    auth = ["-H", f"Authorization: {node.admin_headers['Authorization']}"]
    for path, body in (
        ("/models/register", '{"id": "checkpoint_name", "source": "4090"}'),
        ("/models/set_active", '{"id": "checkpoint_name"}'),
    ):
        out = subprocess.run(
            [
                "curl",
                "-s",
                "-w",
                "\n%{http_code}",
                "-X",
                "POST",
                node.url + path,
                *auth,
                "-d",
                body,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout
        text, code = out.rsplit("\n", 1)
        assert code == "200", text
    assert node.state.engine.active.version == "checkpoint_name"
    bad = subprocess.run(
        ["curl", "-s", "-w", "\n%{http_code}", "-X", "POST", node.url + "/models/set_active",
         *auth, "-d", "id=checkpoint_name"],
        capture_output=True, text=True, timeout=60,
    ).stdout  # fmt: skip
    text, code = bad.rsplit("\n", 1)
    assert code == "400" and "JSON" in text
