"""Training history for weeks-long runs: min/max/last rollups per step bucket, kept bounded.

The training stream is trimmed (MAXLEN ~200k entries), so it cannot show a run of millions of
steps. The writer (the trainer, at publish time) folds every point into buckets of several
widths (`LEVELS` steps each); each level keeps its newest `BUCKETS_PER_LEVEL` buckets, so the
finest level holds the last few thousand steps point by point and the coarsest a year of
steps. A reader asks for a step range and gets the finest level that covers the range in at
most the number of points it can draw (services/gateway/history.py).

A bucket is one sorted-set member, scored by its index (`step // width`), in JSON a reader of
`redis-cli` can follow:

    {"i": 3906, "s0": 999936, "s1": 999999, "t1": 1733000000.5, "n": 64,
     "loss": [0.41, 0.52, 0.44], "ce": [...], "tps": [...], "acc": [...], "acc20": [...]}

`s0`/`s1` first and last step in it, `t1` the unix time of its last point, `n` its points, each
metric `[min, max, last]`. Keys and lifetimes: bus/keys.py (HISTORY, HISTORY_RUNS).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, cast

import redis

from bus import keys

# Steps per bucket, finest first. Each level keeps BUCKETS_PER_LEVEL buckets: 4,096 single
# steps, 65k steps in 16s, 1M (a week at ~2 steps/s) in 256s, 16.7M in 4096s, 268M in 65536s.
LEVELS: Final = (1, 16, 256, 4096, 65536)
BUCKETS_PER_LEVEL: Final = 4096
# The metrics a bucket may hold (others are ignored), as the page's series name them.
METRICS: Final = ("loss", "ce", "tps", "acc", "acc20")


@dataclass
class Bucket:
    """One bucket of one level while it is being filled."""

    index: int
    first_step: int
    last_step: int = 0
    last_time: float = 0.0
    n: int = 0
    values: dict[str, list[float]] = field(default_factory=dict)  # metric → [min, max, last]

    def add(self, step: int, time: float, values: Mapping[str, float]) -> None:
        """Fold one point in; `values` already filtered (finite, known metrics)."""
        if step > self.last_step:
            self.last_step = step
        if time > self.last_time:
            self.last_time = time
        self.n += 1
        for name, value in values.items():
            current = self.values.get(name)
            if current is None:
                self.values[name] = [value, value, value]
            else:
                current[0] = min(current[0], value)
                current[1] = max(current[1], value)
                current[2] = value

    def member(self) -> str:
        body: dict[str, Any] = {
            "i": self.index,
            "s0": self.first_step,
            "s1": self.last_step,
            "t1": round(self.last_time, 3),
            "n": self.n,
        }
        body.update(self.values)
        return json.dumps(body, separators=(",", ":"))

    @classmethod
    def from_member(cls, raw: bytes | str) -> Bucket:
        body = json.loads(raw)
        values = {k: list(v) for k, v in body.items() if k in METRICS}
        return cls(body["i"], body["s0"], body["s1"], body["t1"], body["n"], values)


class HistoryWriter:
    """Folds one run's points into every level's buckets and writes them to Redis.

    `add(..., write=True)` (the trainer, once a step) writes each level's open bucket in one
    round trip; `write=False` (a bulk import, a test fixture) keeps buckets in memory until
    they close or `flush()` runs. A point for an earlier step than the last one is a rewind (a
    resume from an earlier checkpoint): the buckets past it are deleted, as the page drops
    superseded points.
    """

    def __init__(self, connection: redis.Redis, run_id: str) -> None:
        self.redis = connection
        self.run_id = run_id
        self.keys = [keys.history_key(run_id, width) for width in LEVELS]
        self.open: list[Bucket | None] = [None] * len(LEVELS)
        self.loaded = False
        self.last_step: int | None = None
        self.first_step: int | None = None
        self.first_time: float | None = None
        self.pending: list[tuple[int, Bucket]] = []  # closed buckets not written yet

    def _load(self, step: int) -> None:
        """A restarted writer continues the bucket its predecessor left open."""
        self.loaded = True
        pipe = self.redis.pipeline(transaction=False)
        for level, width in enumerate(LEVELS):
            pipe.zrangebyscore(self.keys[level], step // width, step // width)
        pipe.hget(keys.HISTORY_RUNS, self.run_id)
        *found, run = pipe.execute()
        for level, members in enumerate(found):
            if members:
                bucket = Bucket.from_member(members[-1])
                if bucket.last_step <= step:
                    self.open[level] = bucket
        if run:
            info = json.loads(run)
            self.first_step, self.first_time = info["first_step"], info["first_time"]
            self.last_step = info["last_step"]

    def add(
        self, step: int, time: float, values: Mapping[str, float | None], *, write: bool = True
    ) -> None:
        if not self.loaded:
            self._load(step)
        if self.last_step is not None and step < self.last_step:
            self._rewind(step)
        if self.first_step is None:
            self.first_step, self.first_time = step, time
        self.last_step = step
        clean = {
            k: v for k, v in values.items() if v is not None and k in METRICS and math.isfinite(v)
        }
        for level, width in enumerate(LEVELS):
            index = step // width
            bucket = self.open[level]
            if bucket is None or bucket.index != index:
                if bucket is not None:
                    self.pending.append((level, bucket))
                bucket = self.open[level] = Bucket(index, step)
            bucket.add(step, time, clean)
        if write or len(self.pending) >= 10_000:
            self.flush(final=write)

    def _rewind(self, step: int) -> None:
        """Drop the buckets past `step`. The bucket that holds `step` keeps the points before
        it (a coarse bucket spans up to 65,536 steps, all of which a resume would otherwise
        wipe); its min/max may still count superseded points, since they cannot be unfolded."""
        self.flush()
        pipe = self.redis.pipeline(transaction=False)
        for level, width in enumerate(LEVELS):
            pipe.zrangebyscore(self.keys[level], step // width, step // width)
            pipe.zremrangebyscore(self.keys[level], f"({step // width}", "+inf")
        found = pipe.execute()[0::2]
        pipe = self.redis.pipeline(transaction=False)
        for level, width in enumerate(LEVELS):
            members = found[level]
            bucket = Bucket.from_member(members[-1]) if members else None
            if bucket is None or bucket.first_step >= step:
                pipe.zremrangebyscore(self.keys[level], step // width, step // width)
                self.open[level] = None
            else:
                bucket.last_step = min(bucket.last_step, step - 1)
                self.open[level] = bucket
        pipe.execute()

    def flush(self, *, final: bool = True) -> None:
        """Write closed buckets (and, when `final`, the open ones) and the run's summary."""
        if self.last_step is None:
            return
        pipe = self.redis.pipeline(transaction=False)
        trimmed: set[int] = set()
        # A closed bucket the level's cap would trim at once is never written (a bulk import
        # of a week writes 4,096 single steps, not a million).
        newest = {lv: b.index for lv, b in enumerate(self.open) if b is not None}
        keep = {lv: index - BUCKETS_PER_LEVEL for lv, index in newest.items()}
        written = [(lv, b) for lv, b in self.pending if b.index > keep.get(lv, b.index - 1)]
        if final:
            written += [(lv, b) for lv, b in enumerate(self.open) if b is not None]
        for level, bucket in written:
            key = self.keys[level]
            pipe.zremrangebyscore(key, bucket.index, bucket.index)
            pipe.zadd(key, {bucket.member(): bucket.index})
            trimmed.add(level)
        for level in trimmed:
            top = max(b.index for lv, b in written if lv == level)
            pipe.zremrangebyscore(self.keys[level], "-inf", f"({top - BUCKETS_PER_LEVEL + 1}")
            pipe.expire(self.keys[level], keys.HISTORY_TTL_S)
        finest = self.open[0]
        summary = {
            "first_step": self.first_step,
            "first_time": self.first_time,
            "last_step": self.last_step,
            "last_time": finest.last_time if finest is not None else self.first_time,
        }
        pipe.hset(keys.HISTORY_RUNS, self.run_id, json.dumps(summary))
        pipe.execute()
        self.pending.clear()


@dataclass(frozen=True)
class HistoryWindow:
    """The buckets of one level over a step range, as the reader returns them."""

    run_id: str
    width: int  # steps per bucket of the level read
    buckets: list[Bucket]


def runs(connection: redis.Redis) -> dict[str, dict[str, Any]]:
    """Every run with history: run id → {first_step, first_time, last_step, last_time}."""
    raw = cast(dict[bytes, bytes], connection.hgetall(keys.HISTORY_RUNS))
    return {k.decode(): json.loads(v) for k, v in raw.items()}


def read(
    connection: redis.Redis,
    run_id: str,
    *,
    first: int | None = None,
    last: int | None = None,
    points: int = 1000,
) -> HistoryWindow:
    """The finest level that still holds `first` and spans [first, last] in at most `points`
    buckets (else the coarsest level), with its buckets in that range."""
    lo, hi = first if first is not None else 0, last if last is not None else 2**62
    pipe = connection.pipeline(transaction=False)
    for width in LEVELS:
        key = keys.history_key(run_id, width)
        pipe.zrange(key, 0, 0)  # the oldest bucket the level still holds
        pipe.zcount(key, lo // width, hi // width)
    answers = pipe.execute()
    info = runs(connection).get(run_id)
    start = max(lo, info["first_step"]) if info else lo
    chosen = len(LEVELS) - 1
    for level in range(len(LEVELS)):
        oldest, count = answers[2 * level], answers[2 * level + 1]
        if not oldest or count == 0:
            continue
        covers = Bucket.from_member(oldest[0]).first_step <= start
        if covers and count <= points:
            chosen = level
            break
    width = LEVELS[chosen]
    members = connection.zrangebyscore(keys.history_key(run_id, width), lo // width, hi // width)
    return HistoryWindow(run_id, width, [Bucket.from_member(m) for m in cast(list[bytes], members)])
