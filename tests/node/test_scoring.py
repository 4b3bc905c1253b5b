"""POST /v1/score on a running node: teacher-forced log-probabilities that match HF's own loss."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import torch

from services.node.api.scoring import END_OF_TURN
from services.node.worker.node_client import NodeClient, NodeUnavailable
from tests.rig.node import RunningNode

PROMPT = [{"role": "user", "content": "Calculate 3 + 4."}]
COMPLETION = "🤔🤔🤔🤔\nWe add 3 and 4.\n🛑🛑\n7"


def hf_loss(node: RunningNode, completion: str) -> tuple[float, int]:
    """The mean NLL of the completion tokens as transformers computes it with labels."""
    loaded = node.state.engine.active
    tok = loaded.tokenizer
    prompt = str(tok.apply_chat_template(PROMPT, add_generation_prompt=True, tokenize=False))
    ids = tok(prompt + completion, add_special_tokens=False)["input_ids"]
    first = len(tok(prompt, add_special_tokens=False)["input_ids"])
    labels = [-100] * first + ids[first:]
    with torch.inference_mode():
        out = loaded.model(torch.tensor([ids]), labels=torch.tensor([labels]))
    return float(out.loss), len(ids) - first


def test_score_matches_the_models_own_loss_and_names_the_model(node: RunningNode) -> None:
    with NodeClient(node.url) as client:
        scored = client.score(PROMPT, COMPLETION)
        bare = client.score(PROMPT, COMPLETION, end_of_turn=False)
    assert scored.model == node.state.engine.active.version
    assert scored.tokens[-1] == END_OF_TURN and END_OF_TURN not in bare.tokens
    assert "".join(bare.tokens) == COMPLETION
    expected, count = hf_loss(node, COMPLETION + END_OF_TURN)
    assert len(scored.logprobs) == count
    assert scored.ce == pytest.approx(expected, rel=1e-4)
    assert scored.ce == pytest.approx(-sum(scored.logprobs) / len(scored.logprobs))
    # Offsets index the completion: the tokens tile it, the end-of-turn sits at its end.
    assert [COMPLETION[a:b] for a, b in bare.offsets] == bare.tokens
    assert scored.offsets[-1] == (len(COMPLETION), len(COMPLETION))


def test_bad_score_requests_are_4xx_with_a_reason(node: RunningNode) -> None:
    empty = httpx.post(f"{node.url}/v1/score", json={"messages": PROMPT, "completion": ""})
    assert empty.status_code in (400, 422)
    with NodeClient(node.url) as client, pytest.raises(NodeUnavailable, match="context"):
        client.score(PROMPT, "7 " * 5000)


def test_the_client_retries_a_node_that_does_not_answer_then_says_where() -> None:
    started = time.monotonic()
    with (
        NodeClient("http://127.0.0.1:9", retries=2, backoff=0.1) as client,
        pytest.raises(NodeUnavailable, match=r"R3_NODE_URL"),
    ):
        client.score(PROMPT, COMPLETION)
    assert time.monotonic() - started >= 0.1 + 0.2  # two backoffs before giving up


def test_score_and_jobs_are_protected_with_the_reads(
    node_factory: Callable[..., RunningNode],
) -> None:
    node = node_factory(node_protect_reads=True, node_api_token="reader-secret")
    body = {"messages": PROMPT, "completion": COMPLETION}
    for method, path, kwargs in (("POST", "/v1/score", {"json": body}), ("GET", "/jobs", {})):
        refused = httpx.request(method, f"{node.url}{path}", **kwargs)
        assert refused.status_code == 401, path
        wrong = httpx.request(
            method, f"{node.url}{path}", headers={"Authorization": "Bearer nope"}, **kwargs
        )
        assert wrong.status_code == 401, path
    with NodeClient(node.url, token="reader-secret") as client:
        scored = client.score(PROMPT, COMPLETION)
    answer = httpx.post(
        f"{node.url}/v1/score", json=body, headers={"Authorization": "Bearer reader-secret"}
    )
    assert answer.headers["X-Regime3-Model"] == scored.model == answer.json()["model"]


@pytest.mark.skipif(shutil.which("curl") is None, reason="the documented example uses curl")
def test_the_documented_score_example_runs_as_written(node: RunningNode) -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "jobs.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```sh\n(.*?)```", doc, flags=re.DOTALL)
    [example] = [b for b in blocks if b.startswith("curl") and "/v1/score" in b]
    argv = [a.replace("http://127.0.0.1:8765", node.url) for a in shlex.split(example)]
    done = subprocess.run(argv, check=True, capture_output=True, text=True, timeout=60)
    answer = json.loads(done.stdout)
    assert answer["model"] == node.state.engine.active.version
    assert answer["tokens"][-1] == END_OF_TURN and len(answer["logprobs"]) == len(answer["tokens"])
