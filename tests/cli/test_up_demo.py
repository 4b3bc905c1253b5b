"""`regime3 up` applies the demo recipe only where the user set nothing (environment or .env)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from services.cli.up import _demo_env
from services.feeder.config import get_feeder_settings
from services.feeder.demo import DEMO_TRAINER_ENV


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A working directory of its own (the `.env` the services read) and fresh settings."""
    monkeypatch.chdir(tmp_path)
    for name in ("R3_DEMO_MODE", "R3_DEMO_DOMAIN", "R3_DEMO_DIFFICULTY", "R3_MODEL"):
        monkeypatch.delenv(name, raising=False)
    get_feeder_settings.cache_clear()
    yield tmp_path
    get_feeder_settings.cache_clear()


def test_the_user_s_variables_win_over_the_recipe(in_tmp: Path) -> None:
    (in_tmp / ".env").write_text("R3_EVAL_STEPS=7\nR3_DEMO_MODE=transitional\n")
    env = {"R3_TORCH_THREADS": "2"}
    assert _demo_env(env) is True
    assert env["R3_TORCH_THREADS"] == "2"
    assert "R3_EVAL_STEPS" not in env  # .env says 7; a recipe value here would beat it
    assert env["R3_LEARNING_RATE"] == DEMO_TRAINER_ENV["R3_LEARNING_RATE"]
    # R3_DEMO_MODE=transitional from .env: scored on the English set (a 'transitional' set
    # does not exist), whose budget covers the English answers the curriculum starts with.
    assert env["R3_FIXED_EVAL_SETS"] == "syllogism:1:english"


@pytest.mark.parametrize("where", ["environment", ".env"])
def test_a_configured_model_gets_no_recipe(in_tmp: Path, where: str) -> None:
    env: dict[str, str] = {}
    if where == "environment":
        env["R3_MODEL"] = "Qwen/Qwen3-0.6B"
    else:
        (in_tmp / ".env").write_text("R3_MODEL=Qwen/Qwen3-0.6B\n")
    before = dict(env)
    assert _demo_env(env) is False
    assert env == before
