"""Errors of the bus package."""

from __future__ import annotations


class BusError(Exception):
    """Base of every bus error."""


class MalformedEntry(BusError):
    """A stream entry that is not a valid event of a schema this reader knows."""

    def __init__(self, reason: str, *, entry_id: str = "", stream: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.entry_id = entry_id
        self.stream = stream

    def __repr__(self) -> str:
        return f"MalformedEntry({self.reason!r}, stream={self.stream!r}, id={self.entry_id!r})"


class RedisUnavailable(BusError):
    """No Redis answers where the settings say; the message says where and what to do."""
