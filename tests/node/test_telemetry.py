"""Telemetry: NVML really absent here (gpus null with the reason), a fake board for the units."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path

import httpx
import pynvml
import pytest
import redis

from bus import keys
from bus.encoding import from_fields
from bus.events import Telemetry
from bus.publish import Publisher
from services.node.hardware.telemetry import GpuProbe, SystemProbe, TelemetryLoop, snapshot
from tests.node.fake_nvml import FakeBoard, FakeNvml
from tests.rig.node import RunningNode


def nvml_present() -> bool:
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return False
    pynvml.nvmlShutdown()
    return True


@pytest.mark.skipif(nvml_present(), reason="this host has NVML; the absent case needs one without")
def test_without_nvml_gpus_are_null_with_the_reason_and_nothing_fails(tmp_path: Path) -> None:
    probe = GpuProbe()  # the real pynvml, on a host with no NVIDIA driver
    assert not probe.available and probe.count == 0
    assert probe.read() is None
    assert probe.reason is not None and "NVML could not start" in probe.reason
    assert "NVML_ERROR_LIBRARY_NOT_FOUND" in probe.reason or "DRIVER" in probe.reason
    event = snapshot(probe, SystemProbe(tmp_path))
    assert event.gpus is None and event.gpu_reason == probe.reason
    assert event.ram_total_bytes > 0 and event.disk_total_bytes > 0
    with pytest.raises(LookupError, match="no GPU"):
        probe.handle(0)


def test_a_board_is_read_in_base_units() -> None:
    nvml = FakeNvml([FakeBoard(), FakeBoard(name="second", temp_c=70)])
    probe = GpuProbe(nvml)
    readings = probe.read()
    assert readings is not None and [g.index for g in readings] == [0, 1]
    first = readings[0]
    assert first.name == "NVIDIA GeForce RTX 3090"
    assert first.temp_c == 61.0
    assert first.vram_total_bytes == 24 << 30 and first.vram_used_bytes == 3 << 30
    assert first.power_watts == 187.0 and first.power_limit_watts == 350.0  # NVML said mW
    assert first.utilization_percent == 40.0
    assert (first.sm_clock_mhz, first.mem_clock_mhz) == (1695, 9751)
    assert readings[1].temp_c == 70.0 and probe.driver == "550.54.14"


def test_a_reading_the_board_does_not_support_is_none_and_the_rest_still_come() -> None:
    probe = GpuProbe(FakeNvml([FakeBoard(supports_power_reading=False)]))
    (reading,) = probe.read() or []
    assert reading.power_watts is None
    assert reading.temp_c == 61.0 and reading.power_limit_watts == 350.0


def test_a_host_with_nvml_but_no_board_says_so() -> None:
    probe = GpuProbe(FakeNvml([]))
    assert probe.read() is None and probe.reason == "NVML found no GPU on this host"


def test_the_loop_publishes_every_interval_and_marks_the_node(
    r: redis.Redis, tmp_path: Path
) -> None:
    loop = TelemetryLoop(
        Publisher(r),
        GpuProbe(FakeNvml()),
        SystemProbe(tmp_path / "not-yet-created"),  # a fresh host: measures the parent's disk
        node="node-a",
        interval_s=0.2,
        power_profile=lambda: "quiet",
    )
    stop = threading.Event()
    thread = threading.Thread(target=loop.run, args=(stop,))
    thread.start()
    started = time.monotonic()
    deadline = started + 30  # a loaded CI machine may be slow; the spacing is what counts
    while r.xlen(keys.STREAM_TELEMETRY) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    elapsed = time.monotonic() - started
    stop.set()
    thread.join(timeout=5)
    entries = r.xrange(keys.STREAM_TELEMETRY)
    assert len(entries) >= 3
    # Every interval_s, not faster: ids carry the millisecond each reading was published.
    ms = [int(eid.split(b"-")[0]) for eid, _ in entries]
    assert all(later - earlier >= 150 for earlier, later in pairwise(ms))
    assert len(entries) <= elapsed / 0.2 + 2
    events = [
        from_fields(raw, entry_id=eid.decode(), stream=keys.STREAM_TELEMETRY)
        for eid, raw in entries
    ]
    assert all(isinstance(e, Telemetry) for e in events)
    last = events[-1]
    assert isinstance(last, Telemetry)
    assert last.role == "node" and last.power_profile == "quiet"
    assert last.gpus is not None and last.gpus[0].power_watts == 187.0
    status = r.hgetall(keys.node_status_key("node-a"))
    assert status[b"power_profile"] == b"quiet" and b"telemetry_time" in status
    assert r.sismember(keys.NODES, "node-a")


def test_a_real_reading_without_a_gpu_round_trips_through_the_bus(
    r: redis.Redis, tmp_path: Path
) -> None:
    probe = GpuProbe(FakeNvml([])) if nvml_present() else GpuProbe()
    loop = TelemetryLoop(Publisher(r), probe, SystemProbe(tmp_path), node="cpu-node")
    sent = loop.publish_once()
    ((eid, raw),) = r.xrange(keys.STREAM_TELEMETRY)
    assert b"gpus" not in raw  # null is left out of the entry and reads back as None
    back = from_fields(raw, entry_id=eid.decode(), stream=keys.STREAM_TELEMETRY)
    assert isinstance(back, Telemetry)
    assert back.gpus is None and back.gpu_reason == sent.gpu_reason is not None


def test_the_node_serves_gpu_and_system_and_publishes_telemetry(
    node_factory: Callable[..., RunningNode], r: redis.Redis
) -> None:
    node = node_factory(telemetry_interval_seconds=0.2, checkpoint_watch=False)
    gpu = httpx.get(node.url + "/gpu", timeout=10)
    assert gpu.status_code == 200
    body = gpu.json()
    if body["gpus"] is None:  # this host: no NVML, and the answer says why
        assert "NVML" in body["reason"]
    else:
        assert body["reason"] is None and body["gpus"][0]["vram_total_bytes"] > 0
    system = httpx.get(node.url + "/system", timeout=10).json()
    assert system["ram_total_bytes"] > system["ram_used_bytes"] > 0
    assert system["disk_total_bytes"] >= system["disk_free_bytes"] > 0
    assert system["cpu_count"] >= 1
    deadline = time.monotonic() + 10
    while r.xlen(keys.STREAM_TELEMETRY) < 2:
        assert time.monotonic() < deadline, "the node published no telemetry"
        time.sleep(0.05)
    eid, raw = r.xrange(keys.STREAM_TELEMETRY)[-1]
    event = from_fields(raw, entry_id=eid.decode(), stream=keys.STREAM_TELEMETRY)
    assert isinstance(event, Telemetry) and event.role == "node"
    assert (event.gpus is None) == (body["gpus"] is None)
    assert event.gpu_reason == body["reason"]
