"""The node-worker's jobs under their old dotted path, kept for one release (docs/jobs.md).

`services.node.jobs.evaluate` / `.generate` moved to `services.node.worker.jobs`. A job names
its function by dotted path, so jobs queued before the move, and `rq enqueue` commands typed
with the old names, still run; the worker logs that the name is going.
"""

from __future__ import annotations

import logging

from services.node.worker.jobs import evaluate, generate

__all__ = ["evaluate", "generate"]

logging.getLogger(__name__).warning(
    "services.node.jobs.evaluate/generate are now services.node.worker.jobs.evaluate/generate;"
    " the old names go in the next release"
)
