"""GET /metrics: Prometheus text format, named by Prometheus conventions (base units, `_total`).

Everything is read when scraped, from where it already lives: the training status hash
(step, loss, tokens/s), the RQ queues (depth by kind and priority), the latest telemetry of
each host (GPU temperature, memory, power), and this process's SSE hub (clients, events
delivered, clients lagged). Nothing is kept in between, so a scrape is always current and
a restarted gateway reports the same training figures at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, Request, Response
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from bus import liveness, queues
from bus.status import StatusStore
from services.gateway.fanout import Hub
from services.gateway.telemetry import latest_by_host

router = APIRouter()

STATUSES = ("idle", "training", "crashed", "completed")
# TrainingStatus field → (metric name, help); each already in a base unit.
TRAINING_GAUGES = {
    "current_step": ("r3_training_step", "Optimizer steps taken in the current run."),
    "total_steps": ("r3_training_total_steps", "Steps the current run is planned to take."),
    "loss": ("r3_training_loss", "Training loss of the latest step."),
    "streaming_ce": ("r3_training_streaming_ce", "EMA-smoothed training cross-entropy."),
    "validation_loss": ("r3_training_validation_loss", "Latest validation loss."),
    "learning_rate": ("r3_training_learning_rate", "Learning rate of the latest step."),
    "tokens_per_sec": ("r3_training_tokens_per_second", "Training throughput in tokens/s."),
    "eta_seconds": ("r3_training_eta_seconds", "Estimated seconds until the run ends."),
    "fixed_eval_em": ("r3_eval_exact_match_ratio", "Fixed-eval exact match (0-1)."),
}
GPU_GAUGES = {
    "temp_c": ("r3_gpu_temperature_celsius", "GPU temperature."),
    "vram_used_bytes": ("r3_gpu_memory_used_bytes", "GPU memory in use."),
    "vram_total_bytes": ("r3_gpu_memory_total_bytes", "GPU memory in total."),
    "power_watts": ("r3_gpu_power_watts", "GPU power draw."),
    "power_limit_watts": ("r3_gpu_power_limit_watts", "GPU power limit."),
}
HOST_GAUGES = {
    "ram_used_bytes": ("r3_host_memory_used_bytes", "Host RAM in use."),
    "ram_total_bytes": ("r3_host_memory_total_bytes", "Host RAM in total."),
    "disk_free_bytes": ("r3_host_disk_free_bytes", "Free disk where the host keeps its data."),
}


class GatewayCollector:
    """A prometheus_client collector that reads Redis and the hub at each scrape."""

    def __init__(self, redis: Any, hub: Hub) -> None:
        self.redis = redis
        self.hub = hub

    def collect(self) -> Iterator[Metric]:
        yield from self._training()
        yield from self._queues()
        yield from self._telemetry()
        yield from self._sse()

    def _training(self) -> Iterator[Metric]:
        raw = StatusStore(self.redis).read()
        status = liveness.shown(raw, self.redis)
        yield GaugeMetricFamily(
            "r3_training_stale",
            "1 when the status says training but the trainer's heartbeat stopped "
            f"(no word for over {liveness.STALE_AFTER_SECONDS:g} s): shown as crashed.",
            value=1.0 if status is not raw else 0.0,
        )
        for field, (name, help_text) in TRAINING_GAUGES.items():
            value = getattr(status, field)
            gauge = GaugeMetricFamily(name, help_text)
            if value is not None:
                gauge.add_metric([], float(value))
            yield gauge
        state = GaugeMetricFamily(
            "r3_training_status", "1 for the trainer's current status.", labels=["status"]
        )
        for s in STATUSES:
            state.add_metric([s], 1.0 if status.status == s else 0.0)
        yield state

    def _queues(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily(
            "r3_queue_jobs", "Jobs waiting in an RQ queue.", labels=["kind", "priority"]
        )
        for name, n in queues.depths(self.redis).items():
            kind, _, priority = name.partition("-")
            depth.add_metric([kind, priority], float(n))
        yield depth

    def _telemetry(self) -> Iterator[Metric]:
        latest = latest_by_host(self.redis)
        gpu = {
            f: GaugeMetricFamily(n, h, labels=["host", "gpu", "name"])
            for f, (n, h) in GPU_GAUGES.items()
        }
        host = {f: GaugeMetricFamily(n, h, labels=["host"]) for f, (n, h) in HOST_GAUGES.items()}
        seen = GaugeMetricFamily(
            "r3_telemetry_timestamp_seconds",
            "Unix time of a host's latest telemetry.",
            labels=["host"],
        )
        for name, t in sorted(latest.items()):
            seen.add_metric([name], t.time.timestamp())
            for f, family in host.items():
                family.add_metric([name], float(getattr(t, f)))
            for g in t.gpus or []:
                for f, family in gpu.items():
                    value = getattr(g, f)
                    if value is not None:
                        family.add_metric([name, str(g.index), g.name], float(value))
        yield seen
        yield from host.values()
        yield from gpu.values()

    def _sse(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "r3_gateway_sse_clients", "SSE clients connected now.", value=len(self.hub.clients)
        )
        yield GaugeMetricFamily(
            "r3_gateway_sse_buffered_events",
            "Events waiting in SSE client buffers now.",
            value=self.hub.buffered_events,
        )
        yield CounterMetricFamily(
            "r3_gateway_sse_events_delivered",
            "SSE frames written to clients since the gateway started.",
            value=self.hub.events_delivered_total,
        )
        yield CounterMetricFamily(
            "r3_gateway_sse_lagged_clients",
            "SSE clients cut off for falling behind since the gateway started.",
            value=self.hub.lagged_total,
        )


@router.get("/metrics")
def metrics(request: Request) -> Response:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(GatewayCollector(request.app.state.redis, request.app.state.hub))
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
