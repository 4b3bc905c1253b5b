"""Bearer-token check for artifacts and uploads: the admin or the node token, compared in
constant time so response timing reveals nothing about either."""

from __future__ import annotations

import hmac

from fastapi import Request

from services.gateway.config import GatewaySettings
from services.gateway.errors import Forbidden, Unauthorized

CHALLENGE = {"WWW-Authenticate": 'Bearer realm="regime3"'}


def require_token(request: Request) -> None:
    """Raise unless `Authorization: Bearer <R3_ADMIN_TOKEN or R3_NODE_TOKEN>` is present."""
    settings: GatewaySettings = request.app.state.settings
    accepted = [t.encode() for t in (settings.admin_token, settings.node_token) if t]
    if not accepted:
        raise Forbidden(
            "this gateway has no token configured, so it serves no artifacts and takes no "
            "uploads: set R3_NODE_TOKEN (and/or R3_ADMIN_TOKEN) in the gateway's environment"
        )
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise Unauthorized(
            "missing token: send `Authorization: Bearer <R3_NODE_TOKEN or R3_ADMIN_TOKEN>`",
            headers=CHALLENGE,
        )
    candidate = given.strip().encode()
    # Compare against every token (no early exit), so timing does not tell which matched.
    matched = False
    for token in accepted:
        matched |= hmac.compare_digest(candidate, token)
    if not matched:
        raise Forbidden("wrong token: use the R3_NODE_TOKEN or R3_ADMIN_TOKEN of this gateway")
