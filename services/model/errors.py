"""Errors raised while finding, building or loading a model and its tokenizer."""

from __future__ import annotations

from pathlib import Path


class ModelError(Exception):
    """Base class for every error of `services.model`."""


class ModelNotFoundError(ModelError):
    """A model directory is missing or lacks files a Hugging Face model needs."""

    def __init__(self, path: Path, missing: str) -> None:
        self.path = path
        self.missing = missing
        super().__init__(
            f"cannot load a model from {path}: {missing}. Set R3_MODEL to a local directory "
            "holding a Hugging Face model (config.json, *.safetensors, tokenizer files), or "
            "unset R3_MODEL to use the embedded default model. Nothing is ever downloaded."
        )

    def __repr__(self) -> str:
        return f"ModelNotFoundError(path={str(self.path)!r}, missing={self.missing!r})"
