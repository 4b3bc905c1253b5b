"""Streaming figures: CE EMA, variance, the trend rule, running accuracy, throughput and ETA."""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from services.trainer.gpu import GpuMeter, GpuSample
from services.trainer.layer_monitor import LayerMonitor, layer_of
from services.trainer.metrics import (
    EMA_ALPHA,
    HISTORY,
    TREND_WINDOW,
    Accuracy,
    LossStats,
    Throughput,
    estimate_total_steps,
    trend,
)


def test_streaming_ce_is_an_ema_and_ignores_non_finite_losses() -> None:
    stats = LossStats()
    stats.add(2.0, entropy=3.0)
    assert stats.streaming_ce == 2.0 and stats.loss_variance is None
    stats.add(1.0)
    assert stats.streaming_ce == pytest.approx(EMA_ALPHA * 1.0 + (1 - EMA_ALPHA) * 2.0)
    stats.add(math.nan)
    stats.add(math.inf)
    assert stats.streaming_ce == pytest.approx(1.9) and len(stats.history) == 2
    assert stats.loss_variance == pytest.approx(statistics.variance([2.0, 1.0]))
    assert stats.token_entropy == 3.0


def test_the_loss_history_is_bounded() -> None:
    stats = LossStats()
    for i in range(HISTORY + 50):
        stats.add(float(i))
    assert len(stats.history) == HISTORY and stats.history[0] == 50.0


def test_the_trend_rule_compares_two_windows() -> None:
    assert trend([1.0] * 5, 3, 0.1, lower_is_better=True) is None  # not two windows yet
    assert trend([2, 2, 2, 1, 1, 1], 3, 0.1, lower_is_better=True) == "improving"
    assert trend([1, 1, 1, 2, 2, 2], 3, 0.1, lower_is_better=True) == "degrading"
    assert trend([1, 1, 1, 1.05, 1.05, 1.05], 3, 0.1, lower_is_better=True) == "stable"
    assert trend([50, 50, 50, 70, 70, 70], 3, 5, lower_is_better=False) == "improving"

    falling = LossStats()
    for i in range(2 * TREND_WINDOW):
        falling.add(3.0 - 0.05 * i)
    assert falling.loss_trend == "improving"
    flat = LossStats()
    for i in range(2 * TREND_WINDOW):
        flat.add(3.0 + 0.001 * (i % 2))
    assert flat.loss_trend == "stable"


def test_running_accuracy_windows_and_trend() -> None:
    acc = Accuracy()
    assert acc.fields()["accuracy_percent"] is None
    for i in range(60):
        acc.add(i >= 30)  # wrong for 30 samples, then right
    fields = acc.fields()
    assert fields["total_evals"] == 60 and fields["total_correct"] == 30
    assert fields["accuracy_percent"] == 50.0
    assert fields["accuracy_last_20"] == 100.0
    assert fields["accuracy_last_50"] == pytest.approx(60.0)
    assert fields["accuracy_trend"] == "stable"  # the last two windows of 10 are both right
    acc2 = Accuracy()
    for i in range(20):
        acc2.add(i >= 10)
    assert acc2.trend == "improving" and acc2.history[-1] == 0.5


def test_throughput_and_eta() -> None:
    clock = Throughput(window=2)
    assert clock.tokens_per_sec is None and clock.eta_seconds(10) is None
    clock.steps.extend([(1.0, 100), (3.0, 500)])
    assert clock.tokens_per_sec == 150.0 and clock.seconds_per_step == 2.0
    assert clock.eta_seconds(5) == 10.0 and clock.eta_seconds(-1) == 0.0
    clock.start()
    assert clock.stop(10) >= 0 and len(clock.steps) == 2
    assert estimate_total_steps(10, 0.25) == 40
    assert estimate_total_steps(0, 0.5) is None and estimate_total_steps(3, 2.0) == 3


def test_layer_monitor_reports_grad_and_update_norms_per_layer() -> None:
    torch.manual_seed(0)
    model = torch.nn.Module()
    model.embed_tokens = torch.nn.Embedding(5, 4)
    model.layers = torch.nn.ModuleList([torch.nn.Linear(4, 4) for _ in range(2)])
    monitor = LayerMonitor(model, every=3)
    assert monitor.due(3) and not monitor.due(4)
    assert set(monitor.groups) == {"embed", "layer_00", "layer_01"}
    out = model.layers[1](model.layers[0](model.embed_tokens(torch.tensor([1, 2]))))
    out.sum().backward()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor.before_step()
    optimizer.step()
    summary = monitor.after_step()
    layer = summary["layer_00"]
    grad = math.sqrt(sum(float(p.grad.pow(2).sum()) for p in model.layers[0].parameters()))
    assert layer["grad_norm"] == pytest.approx(grad)
    assert layer["update_norm"] == pytest.approx(0.1 * grad, rel=1e-5)
    assert layer["update_ratio"] > 0
    assert layer_of("model.layers.12.mlp.up_proj.weight") == "layer_12"
    assert layer_of("model.norm.weight") == "norm" and layer_of("lm_head.weight") == "head"


def test_gpu_readings_are_empty_without_a_gpu() -> None:
    meter = GpuMeter()
    if meter.available:
        pytest.skip("this machine has a GPU NVML can read")
    assert meter.read() == GpuSample() and meter.reason
    assert set(GpuSample().as_fields()) == {
        "gpu_temp_c",
        "gpu_vram_used_bytes",
        "gpu_vram_total_bytes",
        "gpu_power_watts",
    }
