"""The model package: the embedded default model and tokenizer, and loading a local one."""

from services.model.config import ModelSettings, get_model_settings
from services.model.embedded import EMBEDDED_NAME, build_embedded_model, ensure_embedded_model
from services.model.errors import ModelError, ModelNotFoundError
from services.model.loading import (
    check_model_dir,
    load_default_tokenizer,
    load_model_and_tokenizer,
    load_tokenizer,
    resolve_model_dir,
)

__all__ = [
    "EMBEDDED_NAME",
    "ModelError",
    "ModelNotFoundError",
    "ModelSettings",
    "build_embedded_model",
    "check_model_dir",
    "ensure_embedded_model",
    "get_model_settings",
    "load_default_tokenizer",
    "load_model_and_tokenizer",
    "load_tokenizer",
    "resolve_model_dir",
]
