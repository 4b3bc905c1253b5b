"""Errors of the node: loading a model, the registry, and the API edge's OpenAI-shaped error."""

from __future__ import annotations

from typing import Literal

LoadFailure = Literal["missing", "invalid", "out_of_memory", "error"]


class NodeError(Exception):
    """Base class for every error of `services.node`."""


class ModelLoadError(NodeError):
    """A model could not be loaded or warmed up; whatever was serving keeps serving."""

    def __init__(self, version: str, reason: str, *, kind: LoadFailure = "error") -> None:
        self.version = version
        self.reason = reason
        self.kind = kind
        super().__init__(f"cannot load model {version!r}: {reason}")


class RegistryError(NodeError):
    """A registry operation that cannot be done as asked."""


class UnknownModelError(RegistryError):
    def __init__(self, model_id: str, known: list[str]) -> None:
        self.model_id = model_id
        shown = ", ".join(known[:20]) or "none"
        super().__init__(
            f"no model {model_id!r} in the registry (registered: {shown}); "
            "register it first with POST /models/register."
        )


class ActiveModelDeleteError(RegistryError):
    def __init__(self, model_id: str) -> None:
        self.model_id = model_id
        super().__init__(
            f"model {model_id!r} is the active model and cannot be deleted; activate another "
            "one first (POST /models/set_active), then delete this one."
        )


class EngineBusy(NodeError):
    """The engine's queue is full; the caller should retry later (HTTP 503)."""


class EngineClosed(NodeError):
    """The engine was stopped; no more requests are taken."""


class GenerationError(NodeError):
    """A batch failed on the device (out of memory, a kernel error); its requests fail."""


class ApiError(Exception):
    """An HTTP error in OpenAI's shape, raised only by route code at the API edge."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        super().__init__(message)

    def body(self) -> dict[str, dict[str, str | None]]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


class PromptError(NodeError, ValueError):
    """A request's prompt cannot be run: the chat template refused it, or it is too long."""
