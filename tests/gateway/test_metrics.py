"""GET /metrics parses as Prometheus text and reports training, queues, GPUs and SSE;
/healthz; the dashboard (or a plain-text note when there is none) at /."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import redis
from prometheus_client.parser import text_string_to_metric_families

from bus import queues
from bus.events import GpuReading, Telemetry
from bus.publish import Publisher
from bus.status import StatusStore
from tests.gateway.rig import Gateway


def test_metrics_parse_and_report_the_bus(gateway: Gateway, r: redis.Redis) -> None:
    StatusStore(r).update(status="training", current_step=42, loss=0.5, tokens_per_sec=900.0)
    queues.enqueue(r, queues.TRAIN_FILE, kind="train", priority="low", kwargs={"path": "x"})
    Publisher(r).publish(
        Telemetry(
            host="gpu-box",
            cpu_percent=3.0,
            ram_used_bytes=1,
            ram_total_bytes=2,
            disk_free_bytes=3,
            disk_total_bytes=4,
            gpus=[GpuReading(index=0, name="RTX 3090", temp_c=61.0, power_watts=250.0)],
        )
    )
    resp = httpx.get(gateway.url + "/metrics", timeout=5)
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(resp.text)}
    m = gateway.metrics()
    assert m["r3_training_step"] == 42 and m["r3_training_loss"] == 0.5
    assert m["r3_training_tokens_per_second"] == 900.0
    assert m['r3_training_status{status="training"}'] == 1
    assert m['r3_queue_jobs{kind="train",priority="low"}'] == 1
    assert m['r3_queue_jobs{kind="train",priority="high"}'] == 0
    assert m['r3_gpu_temperature_celsius{gpu="0",host="gpu-box",name="RTX 3090"}'] == 61.0
    assert m['r3_gpu_power_watts{gpu="0",host="gpu-box",name="RTX 3090"}'] == 250.0
    assert m["r3_gateway_sse_clients"] == 0
    assert families["r3_gateway_sse_events_delivered"].type == "counter"
    assert "r3_gateway_sse_events_delivered_total" in m


def test_healthz(gateway: Gateway) -> None:
    assert httpx.get(gateway.url + "/healthz").json()["ok"] is True


def test_dashboard_served_after_the_api(
    start_gateway: Callable[..., Gateway], tmp_path: Path
) -> None:
    board = tmp_path / "board"
    board.mkdir()
    (board / "index.html").write_text("<title>regime3</title>")
    (board / "app.js").write_text("console.log(1)")
    gw = start_gateway(R3_DASHBOARD_DIR=str(board))
    assert httpx.get(gw.url + "/").text == "<title>regime3</title>"
    assert httpx.get(gw.url + "/app.js").text == "console.log(1)"
    assert httpx.get(gw.url + "/healthz").json()["ok"] is True  # the API still wins


def test_no_dashboard_says_so(gateway: Gateway) -> None:
    resp = httpx.get(gateway.url + "/")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
    assert "no dashboard" in resp.text and "R3_DASHBOARD_DIR" in resp.text
