"""The ChatML template: Qwen3's layout, verbatim reasoning, and an exact assistant mask."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerBase

CONVERSATION = [
    {"role": "system", "content": "You solve problems. Think first."},
    {"role": "user", "content": "What is 3 + 4?"},
    {"role": "assistant", "content": "🤔🤔🤔🤔 (let v1 (add 3 4)) 🛑🛑 7"},
    {"role": "user", "content": "And twice that?"},
    {"role": "assistant", "content": "🤔🤔🤔🤔 (mul 2 7) 🛑🛑🛑 14"},
    {"role": "user", "content": "Thanks!"},
    {"role": "assistant", "content": "You're welcome. Ask me anything else."},
]


@pytest.fixture(scope="module")
def tokenizer(embedded_dir: Path) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(embedded_dir, local_files_only=True)


def test_renders_chatml_with_every_turn_verbatim(tokenizer: PreTrainedTokenizerBase) -> None:
    text = tokenizer.apply_chat_template(CONVERSATION, tokenize=False)
    expected = "".join(
        f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in CONVERSATION
    )
    # Earlier reasoning stays: unlike stock Qwen3, nothing is stripped from past turns.
    assert text == expected


def test_generation_prompt(tokenizer: PreTrainedTokenizerBase) -> None:
    text = tokenizer.apply_chat_template(
        CONVERSATION[:2], tokenize=False, add_generation_prompt=True
    )
    assert text.endswith("What is 3 + 4?<|im_end|>\n<|im_start|>assistant\n")


def _runs(mask: list[int]) -> list[tuple[int, int]]:
    runs, start = [], None
    for i, bit in enumerate([*mask, 0]):
        if bit and start is None:
            start = i
        elif not bit and start is not None:
            runs.append((start, i))
            start = None
    return runs


def test_assistant_mask_covers_content_and_im_end_only(
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    out = tokenizer.apply_chat_template(
        CONVERSATION, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    ids, mask = out["input_ids"], out["assistant_masks"]
    assert len(ids) == len(mask)
    answers = [m["content"] for m in CONVERSATION if m["role"] == "assistant"]
    runs = _runs(mask)
    assert [tokenizer.decode(ids[a:b]) for a, b in runs] == [f"{c}<|im_end|>" for c in answers]
    header = tokenizer.encode("<|im_start|>assistant\n", add_special_tokens=False)
    for start, _ in runs:
        # The tokens right before each run are the unmasked assistant header.
        assert ids[start - len(header) : start] == header
        assert not any(mask[start - len(header) : start])
    # Everything outside the runs (system, users, headers, trailing newlines) is unmasked.
    assert sum(mask) == sum(b - a for a, b in runs)


def test_non_string_content_is_refused(tokenizer: PreTrainedTokenizerBase) -> None:
    with pytest.raises(Exception, match="content must be a string"):
        tokenizer.apply_chat_template(
            [{"role": "user", "content": [{"type": "text", "text": "hi"}]}], tokenize=False
        )
