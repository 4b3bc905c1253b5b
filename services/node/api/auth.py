"""Bearer-token checks: admin endpoints off without R3_ADMIN_TOKEN; reads open unless protected."""

from __future__ import annotations

import hmac

from fastapi import Request

from services.node.config import NodeSettings
from services.node.errors import ApiError


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def _matches(given: str, expected: str) -> bool:
    # Constant time, so the comparison's duration reveals nothing of the token.
    return hmac.compare_digest(given.encode(), expected.encode())


def _settings(request: Request) -> NodeSettings:
    return request.app.state.node.settings  # type: ignore[no-any-return]


def check_admin(settings: NodeSettings, token: str | None) -> None:
    """Raise ApiError 403/401 unless `token` is the configured admin token."""
    if settings.admin_token is None or not settings.admin_token.get_secret_value():
        raise ApiError(
            403,
            "admin endpoints are off on this node: set R3_ADMIN_TOKEN and restart it, then "
            "send `Authorization: Bearer <token>`.",
            type="permission_error",
            code="admin_disabled",
        )
    if token is None:
        raise ApiError(
            401,
            "this endpoint needs `Authorization: Bearer <R3_ADMIN_TOKEN>`.",
            type="authentication_error",
            code="missing_token",
        )
    if not _matches(token, settings.admin_token.get_secret_value()):
        raise ApiError(
            401, "the bearer token is wrong.", type="authentication_error", code="invalid_token"
        )


def check_reader(settings: NodeSettings, token: str | None) -> None:
    """Raise ApiError unless reads are open or `token` is the API or admin token."""
    if not settings.node_protect_reads:
        return
    accepted = [
        s.get_secret_value()
        for s in (settings.node_api_token, settings.admin_token)
        if s is not None and s.get_secret_value()
    ]
    if not accepted:
        raise ApiError(
            403,
            "R3_NODE_PROTECT_READS is on but no token is configured: set R3_NODE_API_TOKEN "
            "(or R3_ADMIN_TOKEN), or turn R3_NODE_PROTECT_READS off.",
            type="permission_error",
            code="reads_disabled",
        )
    if token is None:
        raise ApiError(
            401,
            "this node requires `Authorization: Bearer <R3_NODE_API_TOKEN>` for every request.",
            type="authentication_error",
            code="missing_token",
        )
    # Compare against every accepted token, never stopping early.
    if not any([_matches(token, expected) for expected in accepted]):
        raise ApiError(
            401, "the bearer token is wrong.", type="authentication_error", code="invalid_token"
        )


async def require_admin(request: Request) -> None:
    """FastAPI dependency for register, set_active, DELETE /models, power."""
    check_admin(_settings(request), _bearer(request))


async def require_reader(request: Request) -> None:
    """FastAPI dependency for inference and read endpoints (open unless protected)."""
    check_reader(_settings(request), _bearer(request))
