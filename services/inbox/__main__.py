"""`python -m services.inbox`: watch the inbox until SIGTERM or Ctrl-C."""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

from bus.connections import connect
from services.inbox.config import get_inbox_settings
from services.inbox.watcher import Inbox

log = logging.getLogger("services.inbox")


def main() -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        log.info("%s: stopping after the file in hand", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    # No start-up check: if Redis is not up yet, files wait in the inbox until it is.
    Inbox(connect(check=False), get_inbox_settings()).run(stop)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
