"""The browser listens for every event type bus/events.py defines, and for nothing else."""

from __future__ import annotations

import re
from pathlib import Path

from bus.events import EVENT_TYPES

SSE_JS = Path(__file__).resolve().parents[2] / "dashboards" / "sse.js"


def test_the_page_s_event_types_are_bus_events_types() -> None:
    source = SSE_JS.read_text(encoding="utf-8")
    block = re.search(r"export const EVENT_TYPES = \[(.*?)\];", source, re.S)
    assert block, "dashboards/sse.js no longer exports EVENT_TYPES as a literal list"
    listed = re.findall(r'"([^"]+)"', block.group(1))
    assert len(listed) == len(set(listed)), listed
    # EventSource drops a named event nobody listens for: a type missing here is never shown.
    assert set(listed) == set(EVENT_TYPES), (
        f"missing in sse.js: {sorted(set(EVENT_TYPES) - set(listed))}; "
        f"unknown to bus/events.py: {sorted(set(listed) - set(EVENT_TYPES))}"
    )
