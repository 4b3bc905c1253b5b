"""/events refuses a cursor it could not keep (400), instead of starting a stream that drops
and a browser that reconnects in a loop."""

from __future__ import annotations

import httpx
import pytest

from tests.gateway.rig import Gateway


@pytest.mark.parametrize(
    "since",
    ["18446744073709551616-0", "training:18446744073709551616-0", "5-0\n", "training:5-0\n"],
)
def test_a_cursor_past_u64_or_with_a_trailing_newline_is_a_400(
    gateway: Gateway, since: str
) -> None:
    resp = httpx.get(gateway.url + "/events", params={"since": since}, timeout=10)
    assert resp.status_code == 400, resp.text
    assert "entry id" in resp.json()["error"]
    huge = {"Last-Event-ID": "training:99999999999999999999-0"}
    resp = httpx.get(gateway.url + "/events", headers=huge, timeout=10)
    assert resp.status_code == 400
