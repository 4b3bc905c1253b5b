"""GET /healthz: the node is up and serving a model (what `regime3 health node` asks)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from services.node.state import NodeState

router = APIRouter()


@router.get("/healthz")
def healthz(request: Request) -> dict[str, Any]:
    # Open on purpose, like the gateway's: it says nothing a reader could not already see,
    # and a container healthcheck carries no token. The app serves only once a model loaded.
    state: NodeState = request.app.state.node
    return {"status": "ok", "node": state.node_name, "model": state.engine.active.version}
