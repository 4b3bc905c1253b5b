"""Publish→reader latency and the highest sustained rate of the bus, with 1 and 10 readers.

Each reader is its own process running the real BroadcastReader (XREAD + decoding into
typed events), as the gateway and `regime3 events` do. Latency is the reader's clock minus
the event's `time` (same machine, same clock).

    python bench/bus_latency.py                      # the recorded run
    python bench/bus_latency.py --rates 1000 --readers 1 --seconds 5

Runs against R3_BENCH_REDIS_URL, else claims an empty database on 127.0.0.1:6379 (never
touching keys it did not create) and empties it at the end.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import statistics
import time
from datetime import UTC, datetime

import redis
from redis_claim import claim_db  # bench/ is on sys.path when run as a script

from bus import keys
from bus.broadcast import BroadcastReader
from bus.events import TrainStep
from bus.publish import Publisher

STREAM = keys.STREAM_TRAINING


def reader(url: str, start_id: str, expected: int, ready: mp.Event, out: mp.Queue) -> None:
    # decode_responses: hiredis turns bytes into str in C, cheaper than doing it per field.
    r = redis.Redis.from_url(url, decode_responses=True)
    rd = BroadcastReader(r, {STREAM: start_id}, block_ms=1000, count=2000)
    latencies: list[float] = []
    ready.set()
    last = time.time()  # when the last entry arrived: the drain time, not the exit time
    while len(latencies) < expected and time.time() - last < 3:
        batch = rd.read(block_ms=500)
        now = datetime.now(UTC)
        if batch:
            last = time.time()
        latencies.extend((now - d.event.time).total_seconds() * 1000 for d in batch)
    out.put((latencies, last))


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def run(url: str, *, rate: int | None, readers: int, seconds: float, batch: int) -> dict:
    r = redis.Redis.from_url(url)
    r.delete(STREAM)
    start_id = "0-0"
    expected = int(rate * seconds) if rate else None
    # Unpaced runs publish for `seconds`; readers learn the count from a sentinel length.
    count_hint = expected if expected is not None else 10**9
    ready_events = [mp.Event() for _ in range(readers)]
    out: mp.Queue = mp.Queue()
    procs = [
        mp.Process(target=reader, args=(url, start_id, count_hint, ev, out)) for ev in ready_events
    ]
    for p in procs:
        p.start()
    for ev in ready_events:
        ev.wait(10)
    pub = Publisher(r)
    sent = 0
    t0 = time.perf_counter()
    if rate:
        interval = 1.0 / rate
        for i in range(expected or 0):
            target = t0 + i * interval
            delay = target - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            pub.publish(TrainStep(current_step=i, loss=1.0, learning_rate=1e-4))
            sent += 1
    else:
        while time.perf_counter() - t0 < seconds:
            pub.publish_many(
                TrainStep(current_step=sent + j, loss=1.0, learning_rate=1e-4) for j in range(batch)
            )
            sent += batch
    publish_seconds = time.perf_counter() - t0
    publish_end_wall = time.time()
    results = [out.get(timeout=120) for _ in procs] or [([], time.time())]
    for p in procs:
        p.join(timeout=10)
        if p.is_alive():
            p.terminate()
    all_lat = [x for lat, _ in results for x in lat]
    delivered = [len(lat) for lat, _ in results]
    # Time until the slowest reader had everything, measured from the first publish.
    drain = max(end for _, end in results) - (publish_end_wall - publish_seconds)
    row = {
        "readers": readers,
        "target_rate": rate,
        "batch": None if rate else batch,
        "published": sent,
        "publish_rate": round(sent / publish_seconds),
        "delivered_min": min(delivered) if readers else None,
        "delivered_rate_per_reader": (
            round(min(delivered) / max(drain, publish_seconds)) if readers else None
        ),
        "p50_ms": round(percentile(all_lat, 50), 3) if all_lat else None,
        "p99_ms": round(percentile(all_lat, 99), 3) if all_lat else None,
        "max_ms": round(max(all_lat), 3) if all_lat else None,
        "mean_ms": round(statistics.fmean(all_lat), 3) if all_lat else None,
    }
    r.delete(STREAM)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rates", default="1000,5000", help="paced rates, events/s")
    ap.add_argument("--readers", default="0,1,10", help="0: publish only, nobody reading")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--batch", type=int, default=200, help="pipeline size for the unpaced run")
    args = ap.parse_args()
    url = claim_db()
    rows = []
    try:
        for n in [int(x) for x in args.readers.split(",")]:
            for rate in [int(x) for x in args.rates.split(",")]:
                rows.append(run(url, rate=rate, readers=n, seconds=args.seconds, batch=args.batch))
            rows.append(run(url, rate=None, readers=n, seconds=args.seconds, batch=args.batch))
    finally:
        if "R3_BENCH_REDIS_URL" not in os.environ:
            redis.Redis.from_url(url).flushdb()
    print(
        f"machine: {platform.node()} {os.cpu_count()} cores, {platform.processor() or ''}"
        f" python {platform.python_version()}, redis on loopback"
    )
    head = (
        "readers",
        "target_rate",
        "batch",
        "published",
        "publish_rate",
        "delivered_min",
        "delivered_rate_per_reader",
        "p50_ms",
        "p99_ms",
        "max_ms",
    )
    print(" | ".join(head))
    for row in rows:
        print(" | ".join(str(row[h]) for h in head))
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
