"""Fixtures of the jobs tests: the worker's settings pointed at a test node, a real gateway,
a model that memorized three answers (the evaluation tests' known figures)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.node.config import get_node_settings
from tests.node.swap_fixtures import NODE_TOKEN, serve_app
from tests.rig.node import RunningNode
from tests.rig.threads import torch_threads

MAX_TOKENS = 16


@pytest.fixture
def jobs_env(
    node: RunningNode, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[RunningNode]:
    """The worker's settings point at the test node; answers kept short for a CPU."""
    monkeypatch.setenv("R3_NODE_URL", node.url)
    monkeypatch.setenv("R3_DATA_DIR", str(tmp_path / "node-data"))
    monkeypatch.setenv("R3_EVAL_MAX_TOKENS", str(MAX_TOKENS))
    monkeypatch.setenv("R3_GEN_MAX_TOKENS", str(MAX_TOKENS))
    monkeypatch.setenv("R3_NODE_NAME", node.state.node_name)  # the registry jobs read steps from
    get_node_settings.cache_clear()
    yield node
    get_node_settings.cache_clear()


@pytest.fixture
def gateway_url(redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The real gateway (dataset uploads into its store, queued on train-*)."""
    from services.gateway.app import create_app
    from services.gateway.config import GatewaySettings

    app = create_app(
        GatewaySettings(node_token=NODE_TOKEN, admin_token=None, data_dir=tmp_path / "gw")
    )
    with serve_app(app) as url:
        monkeypatch.setenv("R3_GATEWAY_URL", url)
        monkeypatch.setenv("R3_NODE_TOKEN", NODE_TOKEN)
        get_node_settings.cache_clear()
        yield url


# A model that memorized three answers (the third one "wrongly": the set's golden is 2), so
# the figures have a known shape: EM 2/3, no parse failure, and ECE = |2/3 − mean confidence|
# when every confidence lands in the top bin.
MEMORIZED = [
    ("Calculate 3 + 4.", "🤔🤔🤔🤔\nadd\n🛑🛑\n7", "7"),
    ("Calculate 5 × 2.", "🤔🤔🤔🤔\nmul\n🛑🛑\n10", "10"),
    ("Calculate 9 - 8 + 1.", "🤔🤔🤔🤔\nsub\n🛑🛑\n3", "2"),
]


@pytest.fixture(scope="session")
def memorized_dir(embedded_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded model trained (about 60 steps, one thread) until it answers MEMORIZED."""
    import torch

    from services.model.loading import load_model_and_tokenizer

    out = tmp_path_factory.mktemp("memorized") / "memorized-7"
    with torch_threads(1):  # tiny matmuls on a shared CPU: threads only contend
        torch.manual_seed(0)
        model, tok = load_model_and_tokenizer(embedded_dir)
        batch = []
        for question, turn, _golden in MEMORIZED:
            prompt = str(
                tok.apply_chat_template(
                    [{"role": "user", "content": question}],
                    add_generation_prompt=True,
                    tokenize=False,
                )
            )
            ids = tok(prompt + turn + "<|im_end|>", add_special_tokens=False)["input_ids"]
            first = len(tok(prompt, add_special_tokens=False)["input_ids"])
            batch.append((torch.tensor([ids]), torch.tensor([[-100] * first + ids[first:]])))
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
        model.train()
        for _ in range(70):
            loss = sum(model(ids, labels=labels).loss for ids, labels in batch) / len(batch)
            optimizer.zero_grad()
            loss.backward()  # type: ignore[union-attr]
            optimizer.step()
        model.save_pretrained(out)
        tok.save_pretrained(out)
    return out


def memorized_set(path: Path) -> Path:
    with path.open("w", encoding="utf-8") as handle:
        for i, (question, turn, golden) in enumerate(MEMORIZED):
            line = {
                "messages": [
                    {"role": "user", "content": question},
                    {"role": "assistant", "content": turn},
                ],
                "meta": {
                    "id": f"t{i}",
                    "golden": golden,
                    "domain": "arithmetic",
                    "difficulty": 1 + i // 2,
                },
            }
            handle.write(json.dumps(line, ensure_ascii=False) + "\n")
    return path
