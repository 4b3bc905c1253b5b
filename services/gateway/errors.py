"""HTTP errors of the gateway's API edge: each says what went wrong and what to do, as JSON."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse


class GatewayError(Exception):
    """Raised by a route; answered as `{"error": message}` with `status`."""

    status = 500

    def __init__(
        self,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        fields: dict[str, object] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers
        self.fields = fields or {}  # more of the answer, beside "error" (e.g. "queued": false)


class BadRequest(GatewayError):
    status = 400


class Unauthorized(GatewayError):
    status = 401


class Forbidden(GatewayError):
    status = 403


class NotFound(GatewayError):
    status = 404


class TooLarge(GatewayError):
    status = 413


class Unprocessable(GatewayError):
    status = 422


class Unavailable(GatewayError):
    status = 503


class InsufficientStorage(GatewayError):
    status = 507


def install(app: FastAPI) -> None:
    """Answer every GatewayError as JSON with its status and headers."""

    async def handle(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, GatewayError)
        return JSONResponse(
            {"error": exc.message, **exc.fields}, status_code=exc.status, headers=exc.headers
        )

    app.add_exception_handler(GatewayError, handle)
