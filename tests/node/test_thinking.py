"""Thinking-marker rules: the state machine, the HF logits processor, and through the API."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import torch

from services.model.loading import load_model_and_tokenizer, load_tokenizer
from services.node.serving.thinking import (
    THINK_CLOSE,
    THINK_OPEN,
    Constraint,
    ThinkingLogitsProcessor,
    ThinkingMarkers,
    ThinkingOptions,
    ThinkingRules,
    ThinkingState,
    apply_constraints,
)
from tests.rig.node import MARKER_WORD, RunningNode

OPEN, CLOSE, WORD, OTHER = 10, 11, 12, 13
MARKERS = ThinkingMarkers(open_id=OPEN, close_id=CLOSE)
VOCAB = 16


def replay(tokens: list[int], rules: ThinkingRules | None = None) -> Constraint:
    state = ThinkingState(rules or ThinkingRules(), MARKERS)
    for t in tokens:
        state.advance(t)
    return state.constraint()


def test_before_anything_only_a_close_is_banned() -> None:
    assert replay([]) == Constraint(banned=(CLOSE,))


def test_the_open_run_is_capped() -> None:
    assert replay([OPEN] * 3) == Constraint(banned=(CLOSE,))
    assert replay([OPEN] * 4) == Constraint(banned=(CLOSE, OPEN))
    assert replay([OPEN] * 2, ThinkingRules(open_max=2)) == Constraint(banned=(CLOSE, OPEN))


def test_no_open_marker_once_reasoning_started() -> None:
    assert replay([OPEN, OPEN, WORD]) == Constraint(banned=(OPEN,))


def test_close_run_is_forced_to_its_minimum_then_capped() -> None:
    assert replay([OPEN, WORD, CLOSE]) == Constraint(forced=CLOSE)
    assert replay([OPEN, WORD, CLOSE, CLOSE]) == Constraint(banned=(OPEN,))
    assert replay([OPEN, WORD] + [CLOSE] * 4) == Constraint(banned=(OPEN, CLOSE))


def test_no_marker_after_the_stop_marker() -> None:
    assert replay([OPEN, WORD, CLOSE, CLOSE, WORD]) == Constraint(banned=(OPEN, CLOSE))
    assert replay([WORD]) == Constraint(banned=(OPEN, CLOSE))  # an answer without reasoning


def test_thinking_token_cap_forces_the_close() -> None:
    rules = ThinkingRules(max_tokens=3)
    assert replay([OPEN, WORD, WORD], rules) == Constraint(banned=(OPEN,))
    assert replay([OPEN, WORD, WORD, WORD], rules) == Constraint(forced=CLOSE)


def test_inconsistent_rules_are_refused_with_the_fields_named() -> None:
    with pytest.raises(ValueError, match="close_min"):
        ThinkingRules.resolve(ThinkingRules(), ThinkingOptions(close_min=5))


def test_request_options_override_only_what_they_set() -> None:
    rules = ThinkingRules.resolve(ThinkingRules(max_tokens=9), ThinkingOptions(open_max=2))
    assert rules == ThinkingRules(open_max=2, close_min=2, close_max=4, max_tokens=9)


def test_apply_constraints_bans_and_forces_rows_independently() -> None:
    scores = torch.zeros(3, VOCAB)
    apply_constraints(scores, [Constraint(banned=(OPEN, CLOSE)), Constraint(forced=CLOSE), None])
    assert torch.isinf(scores[0, [OPEN, CLOSE]]).all() and torch.isfinite(scores[0, WORD])
    assert scores[1].argmax() == CLOSE and torch.isinf(scores[1, WORD])
    assert torch.isfinite(scores[2]).all()


def test_logits_processor_replays_each_rows_generated_tokens() -> None:
    processor = ThinkingLogitsProcessor(ThinkingRules(), MARKERS, prompt_length=2)
    # The prompt (first 2 ids) may hold markers: they are not counted.
    ids = torch.tensor([[OPEN, OPEN, OPEN, OPEN, OPEN, OPEN], [CLOSE, 2, OPEN, WORD, CLOSE, CLOSE]])
    scores = processor(ids, torch.zeros(2, VOCAB))
    # Row 0 has written its 4 🤔: no 5th, and no 🛑 before some reasoning.
    assert torch.isinf(scores[0, [OPEN, CLOSE]]).all() and torch.isfinite(scores[0, WORD])
    # Row 1 is in a 🛑 run of 2: it may close further, never reopen.
    assert torch.isinf(scores[1, OPEN]) and torch.isfinite(scores[1, [CLOSE, WORD]]).all()


def test_markers_are_single_tokens_in_the_embedded_tokenizer(embedded_dir: Path) -> None:
    markers = ThinkingMarkers.from_tokenizer(load_tokenizer(embedded_dir))
    assert markers is not None and markers.open_id != markers.close_id


def test_processor_shapes_model_generate_output(marker_model_dir: Path) -> None:
    """With Hugging Face's own generate(): the marker-loving model is kept to the format."""
    model, tokenizer = load_model_and_tokenizer(marker_model_dir)
    markers = ThinkingMarkers.from_tokenizer(tokenizer)
    assert markers is not None
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=False,
    )
    ids = torch.tensor([prompt])

    def generate(processors: list[ThinkingLogitsProcessor]) -> str:
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=12,
            do_sample=False,
            logits_processor=processors,
            eos_token_id=None,
            pad_token_id=0,
        )
        return str(tokenizer.decode(out[0, len(prompt) :]))

    assert generate([]) == THINK_OPEN * 12  # the precondition: unconstrained, it never stops
    processor = ThinkingLogitsProcessor(ThinkingRules(max_tokens=2), markers, len(prompt))
    assert generate([processor]) == (
        THINK_OPEN * 4 + MARKER_WORD * 2 + THINK_CLOSE * 2 + MARKER_WORD * 4
    )


# --- through the API ------------------------------------------------------------------------


def _activate(node: RunningNode, model_dir: Path) -> None:
    r = httpx.post(
        f"{node.url}/models/register",
        json={"id": "markers", "path": str(model_dir)},
        headers=node.admin_headers,
    )
    assert r.status_code == 200, r.text
    r = httpx.post(
        f"{node.url}/models/set_active", json={"id": "markers"}, headers=node.admin_headers
    )
    assert r.status_code == 200, r.text


def _complete(node: RunningNode, **extra: object) -> str:
    body = {
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 14,
        "temperature": 0,
        **extra,
    }
    r = httpx.post(f"{node.url}/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["model"] == "markers"
    return str(r.json()["choices"][0]["message"]["content"])


def test_api_applies_node_defaults_and_request_overrides(
    node: RunningNode, marker_model_dir: Path
) -> None:
    _activate(node, marker_model_dir)
    assert _complete(node, thinking={"enabled": False}) == THINK_OPEN * 14
    assert _complete(node) == THINK_OPEN * 4 + MARKER_WORD * 10
    assert _complete(node, thinking={"open_max": 2, "max_tokens": 3}) == (
        THINK_OPEN * 2 + MARKER_WORD * 3 + THINK_CLOSE * 2 + MARKER_WORD * 7
    )


def test_api_per_node_settings(
    node_factory: Callable[..., RunningNode], marker_model_dir: Path
) -> None:
    node = node_factory(think_open_max=3, think_max_tokens=1, think_close_min=3)
    _activate(node, marker_model_dir)
    assert _complete(node) == THINK_OPEN * 3 + MARKER_WORD + THINK_CLOSE * 3 + MARKER_WORD * 7


def test_api_refuses_bad_thinking_options(node: RunningNode) -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], "thinking": {"close_min": 9}}
    r = httpx.post(f"{node.url}/v1/chat/completions", json=body)
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "thinking"
    body["thinking"] = {"open_max": -1}
    r = httpx.post(f"{node.url}/v1/chat/completions", json=body)
    assert r.status_code == 400 and "thinking.open_max" in r.json()["error"]["message"]
