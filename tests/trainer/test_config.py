"""TrainerSettings: the questionnaire's defaults, env overrides, and errors that name the option."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.trainer.config import TrainerSettings, get_trainer_settings
from tests.rig.trainer import settings


def test_defaults_are_the_documented_ones() -> None:
    s = settings()
    assert s.max_length == 4096
    assert s.tokens_per_step == 32768
    assert s.thinking_markers == "require"
    assert s.think_open_count == 4
    assert (s.stop_min_count, s.stop_max_count) == (2, 4)
    assert s.overlong == "reject"
    assert s.reject_threshold == 0.01
    assert s.eval_steps == 50
    assert s.save_steps == 1000
    assert s.rows_per_micro_batch == s.micro_batch_tokens // s.max_length >= 1


def test_every_setting_is_described() -> None:
    for name, info in TrainerSettings.model_fields.items():
        assert info.description and len(info.description) > 10, name


def test_checkpoint_retention_is_not_here() -> None:
    # Retention has its own settings class (checkpoints.settings).
    names = set(TrainerSettings.model_fields)
    retention = {"keep_last", "keep_last_checkpoints", "snapshot_time", "min_free_disk_bytes"}
    assert not names & retention


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("R3_MAX_LENGTH", "2048")
    monkeypatch.setenv("R3_OVERLONG", "split")
    monkeypatch.setenv("R3_THINKING_MARKERS", "allow")
    monkeypatch.setenv("R3_ACTIVATION_CHECKPOINTING", "false")
    get_trainer_settings.cache_clear()
    try:
        s = get_trainer_settings()
        assert (s.max_length, s.overlong, s.thinking_markers) == (2048, "split", "allow")
        assert s.activation_checkpointing is False
    finally:
        get_trainer_settings.cache_clear()


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"micro_batch_tokens": 1024}, "R3_MICRO_BATCH_TOKENS"),
        ({"tokens_per_step": 4096, "micro_batch_tokens": 8192}, "R3_TOKENS_PER_STEP"),
        ({"stop_min_count": 5}, "R3_STOP_MIN_COUNT"),
        ({"thinking_markers": "sometimes"}, "thinking_markers"),
        ({"overlong": "truncate"}, "overlong"),
        ({"reject_threshold": 1.5}, "reject_threshold"),
        ({"learning_rate": 0}, "learning_rate"),
    ],
)
def test_bad_values_name_the_option(overrides: dict[str, object], named: str) -> None:
    with pytest.raises(ValidationError) as caught:
        settings(**overrides)
    assert named in str(caught.value)
