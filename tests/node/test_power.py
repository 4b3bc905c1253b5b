"""Power profiles: clamping to the card, NVML's refusal explained, the daily schedule."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime
from datetime import time as clock

import httpx
import pytest

from services.node.hardware.ops import get_ops
from services.node.hardware.power import (
    PowerController,
    PowerError,
    ScheduleRule,
    parse_schedule,
    scheduled_profile,
)
from services.node.hardware.telemetry import GpuProbe
from tests.node.fake_nvml import FakeBoard, FakeNvml
from tests.rig.node import RunningNode

WATTS = {"quiet": 220.0, "normal": 280.0, "max": 350.0}


def controller(nvml: FakeNvml, **kw: object) -> PowerController:
    return PowerController(GpuProbe(nvml), profiles=WATTS, **kw)  # type: ignore[arg-type]


def test_profiles_are_clamped_to_the_range_the_card_allows() -> None:
    # A card allowing 250-300 W: quiet's 220 and max's 350 are both outside.
    nvml = FakeNvml([FakeBoard(min_mw=250_000, max_mw=300_000, limit_mw=300_000)], root=True)
    power = controller(nvml)
    high = power.apply("max")
    (limit,) = high.gpus
    assert (limit.requested_watts, limit.applied_watts, limit.clamped) == (350.0, 300.0, True)
    assert limit.previous_watts == 300.0 and limit.method == "nvml"
    low = power.apply("quiet")
    assert (low.gpus[0].applied_watts, low.gpus[0].clamped) == (250.0, True)
    normal = power.apply("normal")
    assert (normal.gpus[0].applied_watts, normal.gpus[0].clamped) == (280.0, False)
    assert nvml.set_calls == [(0, 300_000), (0, 250_000), (0, 280_000)]
    assert nvml.boards[0].limit_mw == 280_000
    assert power.profile == "normal" and power.by == "manual"
    state = power.state()
    assert state["gpus"][0]["limit_watts"] == 280.0
    assert (state["gpus"][0]["min_watts"], state["gpus"][0]["max_watts"]) == (250.0, 300.0)


def test_every_gpu_gets_the_profile_or_just_the_one_named() -> None:
    nvml = FakeNvml([FakeBoard(), FakeBoard(max_mw=300_000)], root=True)
    power = controller(nvml)
    result = power.apply("max")
    assert [g.applied_watts for g in result.gpus] == [350.0, 300.0]
    one = power.apply("quiet", gpu=1)
    assert [g.index for g in one.gpus] == [1] and nvml.boards[1].limit_mw == 220_000
    assert power.profile == "max"  # a single GPU's change is not the node's profile
    with pytest.raises(PowerError, match="no GPU 5") as raised:
        power.apply("quiet", gpu=5)
    assert raised.value.kind == "invalid"


def test_without_root_nvml_refuses_and_the_answer_says_why_and_what_to_change() -> None:
    nvml = FakeNvml(root=False)
    power = controller(nvml)
    with pytest.raises(PowerError) as raised:
        power.apply("quiet")
    error = raised.value
    assert error.kind == "refused"
    assert "NVML_ERROR_NO_PERMISSION" in error.reason and "needs root" in error.reason
    assert "R3_POWER_SUDO_NVIDIA_SMI=true" in error.reason
    assert "sudo nvidia-smi -i 0 -pl 220" in error.reason
    assert nvml.boards[0].limit_mw == 350_000 and power.profile is None


def test_the_sudo_fallback_really_runs_and_reports_its_own_failure() -> None:
    # This host has no nvidia-smi (and maybe no sudo): the real command fails, and says so.
    power = controller(FakeNvml(root=False), sudo_nvidia_smi=True)
    with pytest.raises(PowerError) as raised:
        power.apply("normal")
    assert "Tried `sudo -n nvidia-smi -i 0 -pl 280`" in raised.value.reason
    assert "NVML_ERROR_NO_PERMISSION" in raised.value.reason


def test_the_sudo_fallback_sets_the_clamped_watts() -> None:
    calls: list[list[str]] = []

    def nvidia_smi(args: Sequence[str]) -> subprocess.CompletedProcess[str]:
        calls.append(list(args))
        return subprocess.CompletedProcess(list(args), 0, "Power limit set", "")

    nvml = FakeNvml([FakeBoard(max_mw=300_000)], root=False)
    power = controller(nvml, sudo_nvidia_smi=True, runner=nvidia_smi)
    result = power.apply("max")
    assert calls == [["sudo", "-n", "nvidia-smi", "-i", "0", "-pl", "300"]]
    assert result.gpus[0].method == "nvidia-smi" and result.gpus[0].applied_watts == 300.0


def test_a_card_that_cannot_limit_power_says_so() -> None:
    power = controller(FakeNvml([FakeBoard(supports_limit=False)], root=True))
    with pytest.raises(PowerError, match="does not support setting a power limit"):
        power.apply("quiet")


@pytest.mark.skipif(GpuProbe().available, reason="needs a host without NVML")
def test_without_nvml_profiles_are_unavailable_with_the_reason() -> None:
    power = PowerController(GpuProbe(), profiles=WATTS)
    with pytest.raises(PowerError, match="need an NVIDIA GPU and NVML: NVML could not start") as e:
        power.apply("quiet")
    assert e.value.kind == "unavailable"
    state = power.state()
    assert state["gpus"] is None and "NVML could not start" in state["reason"]


def test_unknown_profile_is_refused() -> None:
    with pytest.raises(PowerError, match="unknown power profile 'turbo'"):
        controller(FakeNvml(root=True)).apply("turbo")


def test_schedule_rules_parse_and_wrap_past_midnight() -> None:
    rules = parse_schedule("quiet=22:00-07:00, max=09:30-12:00")
    assert rules == [
        ScheduleRule("quiet", clock(22), clock(7)),
        ScheduleRule("max", clock(9, 30), clock(12)),
    ]
    at = {
        t: scheduled_profile(rules, clock(*t), "normal")
        for t in [(23, 30), (6, 59), (7, 0), (9, 30), (12, 0)]
    }
    assert at == {
        (23, 30): "quiet",
        (6, 59): "quiet",
        (7, 0): "normal",
        (9, 30): "max",
        (12, 0): "normal",
    }
    assert parse_schedule("") == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("quiet 22:00-07:00", "write it as profile=HH:MM-HH:MM"),
        ("silent=22:00-07:00", "unknown profile 'silent'"),
        ("quiet=25:00-07:00", "'25:00' is not a time"),
    ],
)
def test_a_bad_schedule_says_which_rule_and_how_to_write_it(text: str, message: str) -> None:
    with pytest.raises(PowerError, match=message):
        parse_schedule(text)


def test_the_schedule_acts_at_its_boundaries_and_a_manual_profile_stands_between() -> None:
    nvml = FakeNvml(root=True)
    power = controller(nvml, schedule=parse_schedule("quiet=22:00-07:00"))
    first = power.tick(datetime(2026, 1, 1, 21, 0))
    assert first is not None and first.profile == "normal" and first.by == "schedule"
    assert power.tick(datetime(2026, 1, 1, 21, 30)) is None  # no boundary crossed
    power.apply("max")  # by hand in the evening
    assert power.tick(datetime(2026, 1, 1, 21, 59)) is None and nvml.boards[0].limit_mw == 350_000
    night = power.tick(datetime(2026, 1, 1, 22, 0))
    assert night is not None and night.profile == "quiet" and nvml.boards[0].limit_mw == 220_000
    morning = power.tick(datetime(2026, 1, 2, 7, 0))
    assert morning is not None and morning.profile == "normal" and power.by == "schedule"


def test_power_over_http_needs_the_admin_token_and_explains_no_gpu(
    node_factory: Callable[..., RunningNode],
) -> None:
    node = node_factory(checkpoint_watch=False)
    url = node.url + "/power/profile"
    assert httpx.post(url, json={"profile": "quiet"}, timeout=10).status_code == 401
    bad = httpx.post(url, json={"profile": "turbo"}, headers=node.admin_headers, timeout=10)
    assert bad.status_code == 422 or bad.status_code == 400
    state = httpx.get(node.url + "/power", timeout=10).json()
    assert state["profiles"] == WATTS and state["schedule"] == []
    assert state["schedule_error"] is None
    if state["gpus"] is None:  # this host: no NVML
        refused = httpx.post(url, json={"profile": "quiet"}, headers=node.admin_headers, timeout=10)
        assert refused.status_code == 503
        error = refused.json()["error"]
        assert error["code"] == "power_unavailable" and "NVML" in error["message"]


def test_power_over_http_clamps_and_relays_nvmls_refusal(
    node_factory: Callable[..., RunningNode],
) -> None:
    node = node_factory(checkpoint_watch=False, power_schedule="quiet=22:00-07:00")
    ops = get_ops(node.state)
    assert [str(rule) for rule in ops.power.schedule] == ["quiet=22:00-07:00"]
    # The node's real routes, over a fake board (no GPU here): first without root.
    nvml = FakeNvml([FakeBoard(max_mw=300_000)], root=False)
    node.state.ops = replace(ops, gpu=GpuProbe(nvml), power=controller(nvml))
    url = node.url + "/power/profile"
    refused = httpx.post(url, json={"profile": "max"}, headers=node.admin_headers, timeout=10)
    assert refused.status_code == 403
    error = refused.json()["error"]
    assert error["code"] == "power_refused" and "R3_POWER_SUDO_NVIDIA_SMI" in error["message"]
    nvml.root = True
    done = httpx.post(url, json={"profile": "max"}, headers=node.admin_headers, timeout=10)
    assert done.status_code == 200, done.text
    (limit,) = done.json()["gpus"]
    assert limit["applied_watts"] == 300.0 and limit["clamped"] is True
    state = httpx.get(node.url + "/power", timeout=10).json()
    assert state["profile"] == "max" and state["gpus"][0]["limit_watts"] == 300.0
    gpu = httpx.get(node.url + "/gpu", timeout=10).json()
    assert gpu["gpus"][0]["power_limit_watts"] == 300.0 and gpu["reason"] is None


def test_an_unreadable_schedule_is_reported_and_telemetry_still_runs(
    node_factory: Callable[..., RunningNode],
) -> None:
    node = node_factory(checkpoint_watch=False, power_schedule="quiet 22-7")
    state = httpx.get(node.url + "/power", timeout=10).json()
    assert state["schedule"] == []
    assert "R3_POWER_SCHEDULE ignored" in state["schedule_error"]
    assert "profile=HH:MM-HH:MM" in state["schedule_error"]
    assert httpx.get(node.url + "/gpu", timeout=10).status_code == 200
