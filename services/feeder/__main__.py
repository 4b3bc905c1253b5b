"""`python -m services.feeder`: look at the queues every R3_FEEDER_INTERVAL_SECONDS, feed them."""

from __future__ import annotations

import logging
import signal
import threading

from bus.connections import connect_waiting
from services.feeder.config import get_feeder_settings
from services.feeder.feeder import Feeder

log = logging.getLogger("services.feeder")


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = get_feeder_settings()
    feeder = Feeder(connect_waiting(), settings)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.is_set():
        decision = feeder.step()
        if decision.action == "generate":
            log.info(
                "%d examples waiting (+%d being generated): queued generate job %s (%s)",
                decision.queued_examples,
                decision.pending_generation,
                decision.job_id,
                decision.mode,
            )
        stop.wait(settings.feeder_interval_seconds)


if __name__ == "__main__":
    main()
