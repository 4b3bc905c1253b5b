"""GET /status/training_status.json and /api/memory_stats: the users' viewer endpoints."""

from __future__ import annotations

import httpx
import redis

from bus.events import GpuReading, Telemetry
from bus.publish import Publisher
from bus.status import StatusStore, TrainingStatus
from tests.bus.samples import B2_FIELDS
from tests.gateway.rig import Gateway


def test_training_status_is_the_b2_payload(gateway: Gateway, r: redis.Redis) -> None:
    StatusStore(r).update(
        status="training",
        current_step=1500,
        total_steps=5000,
        loss=0.452,
        learning_rate=0.0002,
        current_file="syllo_batch_001.jsonl",
        answer_matches=True,
        accuracy_trend="improving",
        pattern_heatmap={"logic": {"easy": 0.9}},
        train_loss_history=[0.8, 0.65, 0.52],
        tokens_per_sec=1234.5,
    )
    resp = httpx.get(gateway.url + "/status/training_status.json", timeout=5)
    assert resp.status_code == 200
    payload = resp.json()
    assert set(B2_FIELDS) <= payload.keys()
    assert set(payload) == set(TrainingStatus.model_fields)
    assert payload["status"] == "training" and payload["current_step"] == 1500
    assert payload["loss"] == 0.452 and payload["learning_rate"] == 0.0002
    assert payload["answer_matches"] is True and payload["accuracy_trend"] == "improving"
    assert payload["pattern_heatmap"] == {"logic": {"easy": 0.9}}
    assert payload["train_loss_history"] == [0.8, 0.65, 0.52]
    assert payload["lora_stats"] is None
    assert payload["tokens_per_sec"] == 1234.5


def test_training_status_before_any_training_is_idle(gateway: Gateway) -> None:
    payload = httpx.get(gateway.url + "/status/training_status.json", timeout=5).json()
    assert payload["status"] == "idle" and payload["current_step"] == 0


def test_memory_stats_from_the_latest_telemetry(gateway: Gateway, r: redis.Redis) -> None:
    pub = Publisher(r)
    for used in (1, 2):  # the older reading of host a must not be reported
        pub.publish(
            Telemetry(
                host="a",
                role="trainer",
                cpu_percent=5.0,
                ram_used_bytes=used * 1000,
                ram_total_bytes=10_000,
                disk_free_bytes=500,
                disk_total_bytes=1000,
                gpus=[GpuReading(index=0, name="H100", vram_used_bytes=used, temp_c=50.0)],
            )
        )
    pub.publish(
        Telemetry(
            host="b",
            cpu_percent=1.0,
            ram_used_bytes=7,
            ram_total_bytes=8,
            disk_free_bytes=1,
            disk_total_bytes=2,
            gpu_reason="no NVML",
        )
    )
    stats = httpx.get(gateway.url + "/api/memory_stats", timeout=5).json()
    hosts = {h["host"]: h for h in stats["hosts"]}
    assert hosts["a"]["ram_used_bytes"] == 2000
    assert hosts["a"]["gpus"][0]["vram_used_bytes"] == 2
    assert hosts["b"]["gpus"] == [] and hosts["b"]["gpu_reason"] == "no NVML"
    assert stats["gateway_rss_bytes"] > 0
