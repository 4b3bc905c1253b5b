"""`regime3 up` on one machine: the node token it shares between gateway and node."""

from __future__ import annotations

from pathlib import Path


def test_up_keeps_one_node_token_and_replaces_an_empty_one(tmp_path: Path) -> None:
    from services.cli.up import _one_machine_env

    env: dict[str, str] = {}
    assert _one_machine_env(env, tmp_path) is not None
    token = env["R3_NODE_TOKEN"]
    path = tmp_path / "secrets" / "node-token"
    assert len(token) >= 32 and path.stat().st_mode & 0o777 == 0o600
    again: dict[str, str] = {}
    assert _one_machine_env(again, tmp_path) is None and again["R3_NODE_TOKEN"] == token
    path.write_text("")  # as a crash between create and write once could leave it
    fresh: dict[str, str] = {}
    assert _one_machine_env(fresh, tmp_path) is not None
    assert fresh["R3_NODE_TOKEN"] and fresh["R3_NODE_TOKEN"] != token
    assert env["R3_GATEWAY_URL"] == "http://127.0.0.1:8080"
