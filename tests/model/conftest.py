"""Fixtures for the model tests: no hub access, one embedded model per session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from services.model.config import get_model_settings
from tests.model.fixtures import embedded_model_dir, embedded_models_root


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # Any attempt to reach a hub fails fast instead of hanging or downloading.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.delenv("R3_MODEL", raising=False)
    get_model_settings.cache_clear()
    yield
    get_model_settings.cache_clear()


@pytest.fixture(scope="session")
def embedded_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return embedded_model_dir(tmp_path_factory)


@pytest.fixture(scope="session")
def models_root(tmp_path_factory: pytest.TempPathFactory, embedded_dir: Path) -> Path:
    """The root `embedded_dir` was built in (so R3_DATA_DIR can point at its parent)."""
    return embedded_models_root(tmp_path_factory)
