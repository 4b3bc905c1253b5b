"""An empty Redis database for a benchmark, claimed so two benchmarks never share one."""

import os

import redis


def claim_db() -> str:
    if url := os.environ.get("R3_BENCH_REDIS_URL"):
        return url
    for db in range(15, 0, -1):
        r = redis.Redis(db=db)
        if r.dbsize() == 0 and r.set("r3:bench:claim", "1", nx=True):
            return f"redis://127.0.0.1:6379/{db}"
    raise SystemExit("no empty Redis database to benchmark in; set R3_BENCH_REDIS_URL")
