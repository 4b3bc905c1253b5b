"""Security: admin endpoints off without a token, bearer checks, optional read protection."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from services.node.api.auth import check_admin
from services.node.config import NodeSettings
from services.node.errors import ApiError
from tests.rig.node import ADMIN_TOKEN, RunningNode

ADMIN_CALLS = [
    ("POST", "/models/register", {"id": "x", "path": "/nowhere"}),
    ("POST", "/models/set_active", {"id": "embedded-v1"}),
    ("DELETE", "/models/embedded-v1", None),
]


def call(
    node: RunningNode, method: str, path: str, body: object, token: str | None
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.request(method, node.url + path, json=body, headers=headers, timeout=60)


@pytest.mark.parametrize(("method", "path", "body"), ADMIN_CALLS)
def test_admin_endpoints_are_off_without_a_configured_token(
    node_factory: Callable[..., RunningNode], method: str, path: str, body: object
) -> None:
    node = node_factory(admin_token=None)
    r = call(node, method, path, body, "anything")
    assert r.status_code == 403
    assert "R3_ADMIN_TOKEN" in r.json()["error"]["message"]
    assert httpx.get(f"{node.url}/models").json()["active"] == "embedded-v1"


@pytest.mark.parametrize(("method", "path", "body"), ADMIN_CALLS)
def test_admin_endpoints_need_the_right_bearer(
    node: RunningNode, method: str, path: str, body: object
) -> None:
    missing = call(node, method, path, body, None)
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "missing_token"
    wrong = call(node, method, path, body, ADMIN_TOKEN + "x")
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_token"
    right = call(node, method, path, body, ADMIN_TOKEN)
    assert right.status_code not in (401, 403)  # past auth (the call itself may be refused)


def test_reads_are_open_by_default(node: RunningNode) -> None:
    assert httpx.get(f"{node.url}/models").status_code == 200
    assert httpx.get(f"{node.url}/v1/models").status_code == 200


def test_protected_reads(node_factory: Callable[..., RunningNode]) -> None:
    node = node_factory(node_protect_reads=True, node_api_token="reader")
    assert httpx.get(f"{node.url}/v1/models").status_code == 401
    assert httpx.get(f"{node.url}/models").status_code == 401
    for token in ("reader", ADMIN_TOKEN):
        r = httpx.get(f"{node.url}/v1/models", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    r = httpx.post(
        f"{node.url}/v1/chat/completions", json=body, headers={"Authorization": "Bearer no"}
    )
    assert r.status_code == 401


def test_protected_reads_without_any_token_refuse_everyone(
    node_factory: Callable[..., RunningNode],
) -> None:
    node = node_factory(node_protect_reads=True, admin_token=None)
    r = httpx.get(f"{node.url}/v1/models", headers={"Authorization": "Bearer guess"})
    assert r.status_code == 403 and "R3_NODE_API_TOKEN" in r.json()["error"]["message"]


def test_an_empty_configured_token_counts_as_none() -> None:
    with pytest.raises(ApiError) as caught:
        check_admin(NodeSettings(admin_token=""), "")
    assert caught.value.status == 403
