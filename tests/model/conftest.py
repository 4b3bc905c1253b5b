"""Fixtures for the model tests: where the session's embedded model was built."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.model.fixtures import embedded_models_root


@pytest.fixture(scope="session")
def models_root(tmp_path_factory: pytest.TempPathFactory, embedded_dir: Path) -> Path:
    """The root `embedded_dir` was built in (so R3_DATA_DIR can point at its parent)."""
    return embedded_models_root(tmp_path_factory)
