"""Shared by the pull/swap tests: real checkpoints of the embedded model, a real gateway."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import uvicorn

from codec.codebook import Codebook
from codec.hf_extension import add_codes
from services.model.loading import load_model_and_tokenizer
from services.trainer.checkpoint import CheckpointInfo, CheckpointStore
from tests.rig.ports import free_port

NODE_TOKEN = "node-secret-for-tests"


@contextmanager
def serve_app(app: Any) -> Iterator[str]:
    """A real uvicorn server on a free port in a thread; yields its base URL."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError(f"uvicorn did not start on port {port}")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=20)


@contextmanager
def gateway(checkpoints_root: Path, token: str = NODE_TOKEN) -> Iterator[str]:
    """The real gateway app serving `checkpoints_root` under /artifacts/checkpoints/."""
    from services.gateway.app import create_app
    from services.gateway.config import GatewaySettings

    app = create_app(GatewaySettings(node_token=token, admin_token=None))
    app.state.checkpoints_root = checkpoints_root
    with serve_app(app) as url:
        yield url


def save_checkpoint(
    store: CheckpointStore,
    model_dir: Path,
    *,
    step: int,
    val_loss: float | None = None,
    with_optimizer: bool = True,
    nudge: float = 0.0,
    codebook: Codebook | None = None,
) -> CheckpointInfo:
    """A real checkpoint of the embedded model; `nudge` shifts the weights so versions differ.

    With `codebook`, its codes are added to the tokenizer and model as a run with code
    tokens does (codec.hf_extension), and the checkpoint holds it as codebook.json.
    """
    model, tokenizer = load_model_and_tokenizer(model_dir)
    if codebook is not None:
        add_codes(tokenizer, model, codebook.codes())
    if nudge:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(nudge)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3) if with_optimizer else None
    if optimizer is not None:  # one step, so the optimizer has state to save like a real one
        model.train()
        ids = torch.tensor([[1, 2, 3, 4]])
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return store.save(
        model,
        tokenizer,
        step=step,
        optimizer=optimizer,
        val_loss=val_loss,
        model_name="tiny",
        codebook=codebook,
    )


def flip_byte(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))
