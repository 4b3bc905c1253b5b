"""`python -m services.node.worker`: the node-worker, running eval and generation jobs.

It listens on node-high, node-normal and node-low, in that order, and does its work as a
client of the local node (R3_NODE_URL): it never loads weights itself.
"""

from __future__ import annotations

import argparse
import logging

import redis

from bus import queues
from bus.connections import connect
from bus.worker import EventWorker


def build_worker(connection: redis.Redis, *, name: str | None = None) -> EventWorker:
    """An EventWorker on the three node queues, high first."""
    return EventWorker(queues.queues(connection, "node"), connection=connection, name=name)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m services.node.worker", description=__doc__)
    parser.add_argument(
        "--burst", action="store_true", help="Work the queued jobs, then exit (tests, cron)."
    )
    parser.add_argument("--name", help="Worker name in RQ (default: RQ's own).")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    worker = build_worker(connect(), name=args.name)
    worker.work(burst=args.burst)


if __name__ == "__main__":
    main()
