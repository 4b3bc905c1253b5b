"""A node under test: started in a thread on a free port (real uvicorn, real Redis), and model
variants whose behaviour a test knows."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI

from services.node.api.app import create_app
from services.node.config import NodeSettings
from services.node.state import NodeState

ADMIN_TOKEN = "admin-secret-for-tests"


@dataclass
class RunningNode:
    """A node serving on a free port: its base URL, app, settings and live state."""

    url: str
    app: FastAPI
    settings: NodeSettings
    server: uvicorn.Server
    thread: threading.Thread

    @property
    def state(self) -> NodeState:
        return self.app.state.node  # type: ignore[no-any-return]

    @property
    def admin_headers(self) -> dict[str, str]:
        token = self.settings.admin_token
        return {"Authorization": f"Bearer {token.get_secret_value()}"} if token else {}

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def start_node(settings: NodeSettings, timeout: float = 60.0) -> RunningNode:
    """Start `create_app(settings)` under uvicorn in a thread; returns once it serves."""
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=settings.node_port,
        log_level="warning",
        lifespan="on",
        timeout_graceful_shutdown=max(1, round(settings.node_drain_seconds)),  # as __main__ runs it
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="test-node", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("the node did not start (its lifespan failed; see the log above)")
        if time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"the node did not start within {timeout} s")
        time.sleep(0.02)
    return RunningNode(f"http://127.0.0.1:{settings.node_port}", app, settings, server, thread)


def save_model_variant(source: Path, dest: Path, edit: Callable[[Any, Any], None]) -> Path:
    """Load `source`, apply `edit(model, tokenizer)` to its weights, save both to `dest`."""
    import torch

    from services.model.loading import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(source)
    with torch.no_grad():
        edit(model, tokenizer)
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    return dest


def nudge(model: Any, tokenizer: Any) -> None:
    import torch

    generator = torch.Generator().manual_seed(7)
    for p in model.parameters():
        p.add_(torch.randn(p.shape, generator=generator) * 0.05)


# The marker-loving model's preferences for the next token, whatever the context:
# 🤔 first, then the word " one", then 🛑, then everything else (tied).
MARKER_WORD = " one"


def love_markers(model: Any, tokenizer: Any) -> None:
    # Tied embeddings: a large constant in dimension 0 of every token's embedding dominates
    # the residual stream, so the final hidden state points along dimension 0 and each
    # token's logit is proportional to its own dimension-0 entry. Raising that entry for a
    # few tokens fixes the model's ranking regardless of context: a real model whose greedy
    # output is known, to test the marker rules end to end.
    weight = model.get_input_embeddings().weight
    base = 50.0
    weight[:, 0] = base
    for text, factor in (("🤔", 1.3), (MARKER_WORD, 1.2), ("🛑", 1.1)):
        (token,) = tokenizer.encode(text, add_special_tokens=False)
        weight[token, 0] = base * factor
