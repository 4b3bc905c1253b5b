"""Settings for where the model comes from (env `R3_*`)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field

from settings.base import R3Settings


class ModelSettings(R3Settings):
    model: str | None = Field(
        default=None,
        description=(
            "A local directory holding a Hugging Face causal LM and its tokenizer (e.g. a "
            "Qwen3-0.6B snapshot); never downloaded. Unset: the embedded tiny CPU model, built "
            "on first use under R3_DATA_DIR/models."
        ),
    )
    @property
    def models_dir(self) -> Path:
        """Where built-in models are cached: `<data_dir>/models`."""
        return self.layout.models


@lru_cache
def get_model_settings() -> ModelSettings:
    """The settings read once per process; tests that change env call `cache_clear()`."""
    return ModelSettings()
