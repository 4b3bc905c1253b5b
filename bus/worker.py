"""The RQ worker every regime3 service runs: in-process, with job events and heartbeats.

In-process (RQ's SimpleWorker) because the trainer keeps its model and optimizer in memory
from one job to the next; a forked horse would throw them away. SimpleWorker does not
heartbeat while a job runs, so RQ would call an hours-long training job abandoned; a thread
here refreshes the worker, execution and job TTLs every `job_monitoring_interval` seconds.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, ClassVar, Literal

from rq import get_current_job
from rq.executions import Execution
from rq.job import Job
from rq.queue import Queue
from rq.timeouts import BaseDeathPenalty
from rq.worker import SimpleWorker

from bus.events import Event, JobFailed, JobFinished, JobProgress, JobQueued, JobStarted
from bus.keys import heartbeat_key
from bus.publish import Publisher
from bus.settings import get_bus_settings

log = logging.getLogger(__name__)


class NoTimeLimit(BaseDeathPenalty):
    """For workers whose jobs may rightly take hours (training a file): no timer kills them.

    A job queued with `rq enqueue` and no `--timeout` gets RQ's 180 s default, which would
    cut a training file short; liveness comes from the heartbeat instead.
    """

    def setup_death_penalty(self) -> None:
        pass

    def cancel_death_penalty(self) -> None:
        pass


class Interrupted(Exception):
    """Raised by a job stopped on request (SIGTERM, Ctrl-C) after saving where it was.

    Not a failure: the worker puts the job back at the front of its queue (status queued, no
    traceback in RQ's failed registry), and the next worker to take it resumes it.
    """


def _priority(queue_name: str) -> Literal["high", "normal", "low"]:
    tail = queue_name.rpartition("-")[2]
    return tail if tail in ("high", "low") else "normal"  # type: ignore[return-value]


def _one_line(exc: BaseException | None) -> str:
    if exc is None:
        return "the job failed without an exception (killed or timed out)"
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


class EventWorker(SimpleWorker):
    """Listens on its queues in the order given (high before normal before low)."""

    job_monitoring_interval = 10  # seconds between in-job heartbeats
    # When set, each in-job heartbeat also SETs `r3:heartbeat:<service>:<host>` with the job
    # heartbeat's TTL: what the gateway reads to show a dead trainer as crashed, not training.
    heartbeat_service: ClassVar[str | None] = None

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        # A few missed beats, not RQ's 7 minutes: a killed trainer's job is seen abandoned
        # (and RQ moves it to the failed registry) within about half a minute.
        return int(3 * self.job_monitoring_interval + 2)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # RQ 3's constructor sets job_monitoring_interval on the instance (default 30 s),
        # which silently overrode the class's 10 s: beats every 30 s and a 92 s TTL.
        kwargs.setdefault("job_monitoring_interval", type(self).job_monitoring_interval)
        super().__init__(*args, **kwargs)
        self.publisher = Publisher(self.connection)
        self._last_exc: BaseException | None = None
        self.push_exc_handler(self._remember_exception)  # type: ignore[no-untyped-call]

    def subscribe(self) -> None:
        """RQ's command channel, listened to by a thread that wakes every second, not 60 s:
        after a Redis restart RQ's shutdown (unsubscribe, then join that thread) otherwise
        waited out redis-py's 60 s wait for a subscription, past a supervisor's grace time."""
        self.log.info("Worker %s: subscribing to channel %s", self.name, self.pubsub_channel_name)
        self.pubsub = self.connection.pubsub()
        self.pubsub.subscribe(**{self.pubsub_channel_name: self.handle_payload})
        self.pubsub_thread = self.pubsub.run_in_thread(  # type: ignore[assignment]
            sleep_time=1, daemon=True, exception_handler=self._pubsub_exception_handler
        )

    def _remember_exception(
        self, job: Job, exc_type: type[BaseException], exc: BaseException, tb: TracebackType
    ) -> bool:
        self._last_exc = exc
        return True  # let RQ's own handlers (logging) run too

    def _publish(self, event: Event) -> None:
        # An event that cannot be sent must never fail the job or kill the worker.
        try:
            self.publisher.publish(event)
        except Exception:
            log.exception("could not publish %s", event.TYPE)

    def _service_beat(self, job: Job) -> None:
        if self.heartbeat_service is None:
            return
        key = heartbeat_key(self.heartbeat_service, get_bus_settings().host_name)
        stamp = datetime.now(UTC).isoformat(timespec="seconds")
        self.connection.set(key, f"{stamp} {job.id}", ex=self.get_heartbeat_ttl(job))

    def _beat(self, job: Job, execution: Execution, stop: threading.Event) -> None:
        while not stop.wait(self.job_monitoring_interval):
            try:
                self.maintain_heartbeats(job, execution)
                self._service_beat(job)
            except Exception:
                log.exception("heartbeat for job %s failed; retrying", job.id)

    def _finalize_failure(
        self,
        job: Job,
        queue: Queue,
        execution: Execution,
        exc_info: tuple[type[BaseException] | None, BaseException | None, TracebackType | None],
    ) -> None:
        exc = exc_info[1]
        if not isinstance(exc, Interrupted):
            super()._finalize_failure(job, queue, execution, exc_info)
            return
        # A requested stop: the job's execution ends, and the job goes back to the front of
        # its queue, as RQ would queue a new one (RQ itself knows only failed or finished).
        self._last_exc = exc
        with self.connection.pipeline() as pipeline:
            self.cleanup_execution(job, pipeline=pipeline, execution=execution)
            pipeline.execute()
        queue.enqueue_job(job, at_front=True)
        log.info(
            "job %s stopped on request and queued again at the front of %s: %s",
            job.id,
            queue.name,
            _one_line(exc),
        )

    def perform_job(self, job: Job, queue: Queue, execution: Execution) -> bool:
        self._last_exc = None
        base = {
            "job_id": job.id,
            "queue": queue.name,
            "func": job.func_name,
            "description": job.description,
        }
        self._publish(JobStarted(**base, worker=self.name))
        try:
            self._service_beat(job)
        except Exception:
            log.exception("heartbeat for job %s failed; the beat thread retries", job.id)
        started = time.monotonic()
        stop = threading.Event()
        beat = threading.Thread(
            target=self._beat, args=(job, execution, stop), daemon=True, name=f"heartbeat-{job.id}"
        )
        beat.start()
        try:
            ok = super().perform_job(job, queue, execution)
        finally:
            stop.set()
            beat.join()
        took = time.monotonic() - started
        if ok:
            value = job.return_value()
            self._publish(
                JobFinished(
                    **base,
                    worker=self.name,
                    duration_seconds=took,
                    result=value if isinstance(value, dict) else None,
                )
            )
        elif isinstance(self._last_exc, Interrupted):
            self._publish(
                JobQueued(
                    job_id=job.id,
                    queue=queue.name,
                    func=job.func_name,
                    description=job.description,
                    priority=_priority(queue.name),
                )
            )
        else:
            exc = self._last_exc
            self._publish(
                JobFailed(
                    **base,
                    worker=self.name,
                    duration_seconds=took,
                    reason=_one_line(exc),
                    exc_type=type(exc).__name__ if exc else None,
                )
            )
        return ok


def report_progress(
    done: int, total: int | None = None, *, unit: str = "items", message: str | None = None
) -> None:
    """Called from inside a job function: publishes `job.progress` for the current job."""
    job = get_current_job()
    if job is None:
        return
    Publisher(job.connection).publish(
        JobProgress(
            job_id=job.id,
            queue=job.origin,
            func=job.func_name,
            done=done,
            total=total,
            unit=unit,
            message=message,
        )
    )


class LongJobWorker(EventWorker):
    """The trainer's worker: a job runs as long as it needs; the heartbeat shows it alive."""

    death_penalty_class = NoTimeLimit
    heartbeat_service = "trainer"
