"""The embedded model built once per test session, shared by tests/model and tests/codec."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.model.embedded import ensure_embedded_model


def embedded_models_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models root under the session's base temp dir, the same for every test module."""
    # Laid out like R3_DATA_DIR/models, so tests can point R3_DATA_DIR at its parent.
    return tmp_path_factory.getbasetemp() / "r3-data" / "models"


def embedded_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build (first caller) or find (later callers) the embedded model for this session."""
    return ensure_embedded_model(embedded_models_root(tmp_path_factory))
