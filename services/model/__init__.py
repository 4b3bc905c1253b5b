"""The model package: the embedded default model and tokenizer, and loading a local one.

Importing the package loads no torch: the settings and errors come at once, the rest
(`embedded`, `loading`: torch and transformers) only when one of their names is asked for, so
code that needs `services.model.config` alone stays light (the bus and codec tests load no
torch; tests/model/test_lazy_import.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from services.model.config import ModelSettings, get_model_settings
from services.model.errors import ModelError, ModelNotFoundError

if TYPE_CHECKING:
    from services.model.embedded import (
        EMBEDDED_NAME,
        build_embedded_model,
        ensure_embedded_model,
    )
    from services.model.loading import (
        check_model_dir,
        load_default_tokenizer,
        load_model_and_tokenizer,
        load_tokenizer,
        resolve_model_dir,
    )

_EMBEDDED = {"EMBEDDED_NAME", "build_embedded_model", "ensure_embedded_model"}
_LOADING = {
    "check_model_dir",
    "load_default_tokenizer",
    "load_model_and_tokenizer",
    "load_tokenizer",
    "resolve_model_dir",
}


def __getattr__(name: str) -> Any:
    """The torch-bound names, imported from their submodule on first use."""
    if name in _EMBEDDED:
        from services.model import embedded

        return getattr(embedded, name)
    if name in _LOADING:
        from services.model import loading

        return getattr(loading, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
