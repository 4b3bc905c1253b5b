"""Every settings class reads the environment one way: R3_*, then `.env`; old names still work."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest
from pydantic_settings import BaseSettings

from bus.settings import BusSettings
from services.cli.settings_table import settings_classes
from services.node.config import NodeSettings
from services.trainer.config import TrainerSettings
from services.trainer.loop_config import LoopSettings
from settings.base import RENAMED, R3Settings
from settings.layout import DataLayout


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A working directory of its own, and no R3_* variable from outside."""
    for name in list(os.environ):
        if name.startswith("R3_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_every_settings_class_inherits_the_one_base() -> None:
    classes = settings_classes()
    assert len(classes) >= 9
    assert all(issubclass(cls, R3Settings) for cls in classes), [
        cls.__name__ for cls in classes if not issubclass(cls, R3Settings)
    ]


def test_a_value_in_dot_env_reaches_every_settings_class(clean_env: Path) -> None:
    (clean_env / ".env").write_text("R3_DATA_DIR=/srv/r3\nR3_LEARNING_RATE=0.5\n")
    for cls in settings_classes():
        assert cls().data_dir == Path("/srv/r3"), cls.__name__  # type: ignore[attr-defined]
    assert TrainerSettings().learning_rate == 0.5


def test_the_environment_wins_over_dot_env(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (clean_env / ".env").write_text("R3_LEARNING_RATE=0.5\n")
    monkeypatch.setenv("R3_LEARNING_RATE", "0.25")
    assert TrainerSettings().learning_rate == 0.25


@pytest.mark.parametrize(
    ("cls", "old", "value", "field", "expected"),
    [
        (BusSettings, "R3_RECLAIM_IDLE_MS", "1500", "reclaim_idle_seconds", 1.5),
        (NodeSettings, "R3_NODE_BATCH_WAIT_MS", "20", "node_batch_wait_seconds", 0.02),
        (NodeSettings, "R3_NODE_DRAIN_S", "3", "node_drain_seconds", 3.0),
        (NodeSettings, "R3_FIXED_EVAL_MAX_NEW_TOKENS", "77", "eval_max_tokens", 77),
        (LoopSettings, "R3_FIXED_EVAL_MAX_NEW_TOKENS", "77", "eval_max_tokens", 77),
    ],
)
def test_an_old_name_still_works_and_warns_with_the_new_name(
    clean_env: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    cls: type[BaseSettings],
    old: str,
    value: str,
    field: str,
    expected: float,
) -> None:
    monkeypatch.setenv(old, value)
    new = "R3_" + field.upper()
    with pytest.warns(DeprecationWarning, match=new):
        got = getattr(cls(), field)
    assert got == pytest.approx(expected)
    assert any(new in r.getMessage() and old in r.getMessage() for r in caplog.records)


def test_an_old_name_in_dot_env_works_and_the_new_name_wins(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (clean_env / ".env").write_text("R3_FEEDER_INTERVAL_S=4\n")
    from services.feeder.config import FeederSettings

    with pytest.warns(DeprecationWarning, match="R3_FEEDER_INTERVAL_SECONDS"):
        assert FeederSettings().feeder_interval_seconds == 4.0
    monkeypatch.setenv("R3_FEEDER_INTERVAL_SECONDS", "6")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        assert FeederSettings().feeder_interval_seconds == 6.0


def test_no_old_name_warns_when_unset(clean_env: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        for cls in settings_classes():
            cls()


def test_every_renamed_setting_names_a_real_field() -> None:
    fields = {name for cls in settings_classes() for name in cls.model_fields}
    assert {r.new for r in RENAMED.values()} <= fields


def test_paths_come_from_the_one_layout(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("R3_DATA_DIR", str(clean_env / "d"))
    layout = DataLayout(clean_env / "d")
    node = NodeSettings()
    assert node.layout == layout
    assert node.models_dir == layout.models and node.validation_path == layout.validation
    # R3_VALIDATION_DIR moves the fixed sets for the node as for the trainer.
    monkeypatch.setenv("R3_VALIDATION_DIR", str(clean_env / "v"))
    assert NodeSettings().validation_path == clean_env / "v"
    assert LoopSettings().validation_path == clean_env / "v"


def test_an_old_millisecond_name_that_is_no_number_says_what_to_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pydantic_settings import SettingsError

    from services.node.config import NodeSettings

    monkeypatch.setenv("R3_NODE_BATCH_WAIT_MS", "fast")
    with pytest.raises(SettingsError, match="R3_NODE_BATCH_WAIT_SECONDS"):
        NodeSettings()
