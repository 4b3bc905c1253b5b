"""`python -m services.node.worker`: the node-worker, running eval and generation jobs.

It listens on node-high, node-normal and node-low, in that order, and does its work as a
client of the local node (R3_NODE_URL): it never loads weights itself.
"""

from __future__ import annotations

import argparse
import logging
import time

import redis

from bus import queues
from bus.connections import connect_waiting
from bus.worker import EventWorker
from services.node.config import get_node_settings
from services.node.worker.node_client import NodeClient, NodeUnavailable

log = logging.getLogger(__name__)


def build_worker(connection: redis.Redis, *, name: str | None = None) -> EventWorker:
    """An EventWorker on the three node queues, high first."""
    return EventWorker(queues.queues(connection, "node"), connection=connection, name=name)


def wait_for_node(url: str, *, timeout: float | None = None, every: float = 1.0) -> str:
    """Block until the node answers GET /v1/models; returns the model it serves.

    Started beside the node (supervisor, compose), the worker would otherwise fail every job
    queued while the node is still loading its model.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    last_log = 0.0
    with NodeClient(url, timeout=10) as client:
        while True:
            try:
                return client.active_model()
            except NodeUnavailable as err:
                now = time.monotonic()
                if deadline is not None and now > deadline:
                    raise
                if now - last_log > 30:
                    log.info("waiting for the node: %s", err)
                    last_log = now
            time.sleep(every)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m services.node.worker", description=__doc__)
    parser.add_argument(
        "--burst", action="store_true", help="Work the queued jobs, then exit (tests, cron)."
    )
    parser.add_argument("--name", help="Worker name in RQ (default: RQ's own).")
    parser.add_argument(
        "--wait",
        type=float,
        default=None,
        metavar="SECONDS",
        help="Give up if the node (R3_NODE_URL) does not answer within this time "
        "(default: wait as long as it takes).",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    url = get_node_settings().node_url
    log.info("node at %s serves %s", url, wait_for_node(url, timeout=args.wait))
    worker = build_worker(connect_waiting(), name=args.name)
    worker.work(burst=args.burst)


if __name__ == "__main__":
    main()
